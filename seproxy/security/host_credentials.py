"""The host credentials a server presents: from the config, or development ones made on demand.

The RPC service and the HTTP side server present the same certificate
unless the config gives the side server one of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from seproxy.config import Settings
from seproxy.security.devcreds import DevCredentials, ensure_dev_credentials


@dataclass(frozen=True)
class ServerCredentials:
    host_cert: Path
    host_key: Path
    ca_dir: Path
    development: DevCredentials | None


def server_credentials(settings: Settings) -> ServerCredentials:
    """The host credentials from the config, or development ones made on demand."""
    tls = settings.tls
    if tls.host_cert is not None and tls.host_key is not None and tls.ca_dir is not None:
        return ServerCredentials(tls.host_cert, tls.host_key, tls.ca_dir, None)
    dev = ensure_dev_credentials(settings.service.state_dir / "dev-credentials")
    return ServerCredentials(dev.host_cert, dev.host_key, tls.ca_dir or dev.ca_dir, dev)
