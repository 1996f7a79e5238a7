"""The HTTP side of one service: signer, link store and server, opened and closed together.

``publish`` turns staged cache entries into a signed URL: it pins the files
until the URL expires, records the link and signs the key (with the URL's
grant inside: its LFNs and user). The server then answers that URL from its
own threads, sharing the service's cache; with ``serve_on_demand``, it also
answers URLs it holds no link for, staging their files through the
application's resolver. A file still being staged may be published too
(``http.answer_when = "started"``): it is pinned when its staging commits
(``pending_pins``), and served as it grows until then.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

from seproxy.cache import Cache, Entry, Growing
from seproxy.config import ConfigError, Settings, url_host
from seproxy.http_side.body import body_length
from seproxy.http_side.downloads import Downloads
from seproxy.http_side.grants import Grant, served_names
from seproxy.http_side.links import Link, LinkStore, Member
from seproxy.http_side.on_demand import OnDemand, Resolver
from seproxy.http_side.pending_pins import PendingPins
from seproxy.http_side.server import SideServer
from seproxy.http_side.signing import CLOCK_SKEW, Signer, load_secret, new_link_id
from seproxy.http_side.tar_stream import tar_body
from seproxy.security.host_credentials import server_credentials
from seproxy.security.tls import server_context

log = logging.getLogger("seproxy.http")

# Seconds that downloads in progress get to finish when the service stops.
STOP_GRACE = 10.0
# Seconds a connection waits for a staging on demand beyond its time limit, for its 504 to arrive.
WAIT_MARGIN = 5.0


@dataclass(frozen=True)
class Published:
    """What ``prepareFileForHTTP`` hands out for one link."""

    url: str
    key: str
    expires: int
    size: int | None  # of what the URL serves: the file, or the whole archive; None: not known yet


class HTTPSide:
    """The side server and what it needs, for one service and its cache."""

    def __init__(self, settings: Settings, cache: Cache, service_host: str) -> None:
        http = settings.http
        self.settings = http
        self.cache = cache
        self.signer = Signer(http.key_id, _secret(settings), _retired_secrets(settings))
        self.links = LinkStore(settings.cache_root)
        self.pending_pins = PendingPins(cache)
        tls = None
        if http.tls:
            credentials = server_credentials(settings)
            tls = server_context(
                http.host_cert or credentials.host_cert,
                http.host_key or credentials.host_key,
                credentials.ca_dir,
                min_version=settings.tls.min_version,
            )
            tls.verify_mode = ssl.CERT_NONE  # downloads are authorized by the signed URL, not a certificate
        self.downloads = Downloads(self.signer, self.links, cache, http.route)
        self.server = SideServer(
            self.downloads.answer,
            host=http.host or settings.service.host,
            port=http.port,
            threads=http.threads or (1 if settings.service.workers > 1 else 2),
            max_connections=http.max_connections,
            max_per_address=http.max_connections_per_address,
            idle_timeout=http.idle_timeout,
            handshake_timeout=http.handshake_timeout,
            tls=tls,
            niceness=http.niceness,
            reuse_port=settings.service.workers > 1,
        )
        self.public_host = http.public_name or service_host
        self.replica_places = settings.lfn_places()

    def serve_on_demand(self, resolve: Resolver, time_limit: float) -> None:
        """Serve URLs this instance holds no link for (another instance's), staging with ``resolve``
        for at most ``time_limit`` seconds each; call before ``start``."""
        self.downloads.on_demand = OnDemand(
            resolve, self.links, stagings=self.settings.on_demand_stagings, share=self.settings.on_demand_share, time_limit=time_limit
        )
        self.server.wait_limit = time_limit + WAIT_MARGIN

    def start(self) -> None:
        try:
            self.server.start()
        except OSError as exc:
            where = f"{self.server.host or '*'}:{self.server.port}"
            raise ConfigError(f"http.port: the side server cannot listen on {where}: {exc.strerror or exc}") from None

    def stop(self) -> None:
        self.server.stop(STOP_GRACE)
        self.pending_pins.close()
        self.downloads.close()
        self.links.close()

    @property
    def base_url(self) -> str:
        port = self.settings.public_port or self.server.port
        route = f"/{self.settings.route}" if self.settings.route else ""
        return f"{'https' if self.settings.tls else 'http'}://{url_host(self.public_host)}:{port}{route}"

    def pin(self, entry: Entry) -> None:
        """Keep ``entry`` in the cache for as long as a URL made now is accepted
        (``FileNotFoundError`` if it is gone already)."""
        self._pin(entry, self._expiry())

    def _pin(self, entry: Entry, expires: int) -> None:
        self.cache.pin(entry.id, expires + CLOCK_SKEW)

    def _expiry(self) -> int:
        return int(time.time() + self.settings.url_lifetime)

    def publish(self, owner: str, files: Sequence[tuple[str, Entry | Growing]], *, group: str | None = None) -> Published:
        """A signed URL serving ``files`` (LFN, cache entry): one as itself, several as one tar archive.

        The one file of a URL that is not an archive may still be growing.
        With ``group`` (the owner's group, as the registry knows them), the
        URL carries its grant, so that any instance of the same secret can
        stage and serve it; without, only this one serves it.
        """
        now = time.time()
        expires = self._expiry()
        for _, entry in files:
            if isinstance(entry, Growing):
                self.pending_pins.add(entry.entry_id, expires + CLOCK_SKEW)
            else:
                self._pin(entry, expires)
        link_id = new_link_id()
        lfns = [lfn for lfn, _ in files]
        name, names = served_names(link_id, lfns)
        members = [(member, entry) for member, (_, entry) in zip(names, files, strict=True)]
        archive = len(files) > 1
        self.links.forget_expired(now - CLOCK_SKEW)
        self.links.add(
            Link(
                link_id, name, archive, owner, now, expires, self.settings.single_use,
                tuple(Member(_entry_id(entry), member) for member, entry in members),
            )
        )  # fmt: skip
        grant = None if group is None else Grant(owner, group, tuple(lfns), self.settings.single_use)
        key = self.signer.sign(link_id, expires, name, self.settings.route, grant)
        size = body_length(tar_body(_whole(members))) if archive else members[0][1].size
        log.info("link %s:%s for %s: %d file(s), %s bytes, until %d", self.signer.key_id, link_id, owner, len(members), size, expires)
        return Published(f"{self.base_url}/{key}/{quote(name, safe='')}", key, expires, size)


def _entry_id(entry: Entry | Growing) -> str:
    return entry.entry_id if isinstance(entry, Growing) else entry.id


def _whole(members: Sequence[tuple[str, Entry | Growing]]) -> list[tuple[str, Entry]]:
    """The members of an archive, which are all whole: a growing file is never archived (a
    member's tar header carries its size before its bytes, and the source may not have told it)."""
    whole = [(name, entry) for name, entry in members if isinstance(entry, Entry)]
    if len(whole) != len(members):
        raise ValueError("an archive is made of staged files only")
    return whole


def _secret(settings: Settings) -> bytes:
    """The URL signing secret: ``http.secret``, or the secret file (made at the first start)."""
    http = settings.http
    if http.secret:
        return http.secret.encode()
    try:
        return load_secret(http.secret_file or settings.service.state_dir / "http-secret")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"http.secret_file: {exc}") from None


def _retired_secrets(settings: Settings) -> dict[str, bytes]:
    """The secrets of ``http.retired_keys``, by key id: they must exist (nothing is generated)."""
    secrets = {}
    for key_id, path in settings.http.retired_keys.items():
        try:
            secrets[key_id] = load_secret(path, create=False)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"http.retired_keys.{key_id}: {exc}") from None
    return secrets
