"""The embedded default: what ``seproxy serve`` runs with no config file.

A working service on loopback with nothing to set up: development
credentials (CA, host, user, proxy, a token issuer) generated under the
state folder, a registry that knows the development user (by DN and token), one storage element,
``LocalSE``, a directory in the state folder, and the HTTP side server, so
that ``prepareFileForHTTP("/vo/a.dat")`` serves the file uploaded to
``LocalSE`` at ``/vo/a.dat``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from seproxy.config import Settings, default_state_dir, settings_from_dict
from seproxy.security.devcreds import DEV_TOKEN_ISSUER, DEV_USER_DN, ensure_dev_token_issuer

DEV_USERNAME = "dev"
DEV_GROUP = "dev_user"
DEV_VO = "dev"


def embedded_settings() -> Settings:
    """The embedded default; creates the LocalSE directory, which the defaults promise."""
    state_dir = default_state_dir()
    (state_dir / "storage" / "LocalSE").mkdir(parents=True, exist_ok=True)
    return settings_from_dict(embedded_config(state_dir), source="<embedded default>")


def embedded_config(state_dir: Path) -> dict[str, Any]:
    """The table of the embedded default with its state in ``state_dir`` (the token issuer's key made there)."""
    token_key = ensure_dev_token_issuer(state_dir / "dev-credentials")
    return {
        "service": {"state_dir": str(state_dir)},
        "registry": {
            "users": {
                DEV_USERNAME: {
                    "dn": [DEV_USER_DN],
                    "groups": [DEV_GROUP],
                    "token_subjects": [{"issuer": DEV_TOKEN_ISSUER, "subject": DEV_USERNAME}],
                }
            },
            "groups": {DEV_GROUP: {"vo": DEV_VO, "properties": ["NormalUser", "FileWrite", "CSAdministrator"]}},
        },
        "storage_elements": {
            "LocalSE": {"plugin": "file", "base": str(state_dir / "storage" / "LocalSE"), "vos": [DEV_VO]},
        },
        # `seproxy token` signs tokens for the development user with this issuer's key.
        "tokens": {"issuers": {"development": {"issuer": DEV_TOKEN_ISSUER, "keys": [str(token_key)], "algorithms": ["ES256"]}}},
        # prepareFileForHTTP: LFNs resolve on LocalSE (the default: LFN = path), served on port 9180.
        "http": {"enabled": True},
    }
