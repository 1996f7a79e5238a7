"""Configuration: one TOML file, read into typed, validated settings.

Every option has a default here and an entry in ``deploy/seproxy.example.toml``.
A mistake is reported as ``<file>: <key>: <what is wrong>`` and stops the
service before it listens, because a proxy that half-understood its config
would serve the wrong files to the wrong people.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ROUTE_PART = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
SE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
LFN_FIELD = "{lfn}"
# Shorter inline secrets are refused: an HMAC is only as strong as its key.
MIN_SECRET_LENGTH = 32
# Stagings of one prepareFileForHTTP call at once: beyond this, threads and storage connections, not speed, grow.
MAX_STAGING_CONCURRENCY = 64


class ConfigError(ValueError):
    """The configuration is wrong; the message names the file and the key."""


class ByteSize(int):
    """A size that the config may write as ``1048576``, ``"512M"`` or ``"1.5G"``."""


class Duration(float):
    """Seconds, which the config may write as ``90``, ``"30s"``, ``"15m"``, ``"2h"`` or ``"1d"``."""


class Workers(int):
    """A number of processes, which the config may write as ``"auto"``: one per core this process may run on."""


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    return len(os.sched_getaffinity(0))


_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "P": 1024**5}
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_size(text: str) -> int:
    """Parse ``"64M"``, ``"1.5G"``, ``"10GiB"`` or ``"4096"`` into bytes (binary units)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"{text!r} is not a size (examples: 4096, 512M, 1.5G, 2T)")
    number, unit = match.groups()
    return int(float(number) * _SIZE_UNITS[unit.upper()])


def parse_duration(text: str) -> float:
    """Parse ``"90"``, ``"30s"``, ``"15m"``, ``"2h"``, ``"1d"`` or ``"1w"`` into seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not match:
        raise ValueError(f"{text!r} is not a duration (examples: 90, 30s, 15m, 2h, 1d)")
    number, unit = match.groups()
    return float(number) * _DURATION_UNITS[unit]


def url_host(host: str) -> str:
    """``host`` as it stands in a URL: an IPv6 address in brackets (RFC 3986)."""
    return f"[{host}]" if ":" in host else host


def default_state_dir() -> Path:
    """Where the embedded default keeps credentials, cache and storage."""
    if os.environ.get("SEPROXY_STATE_DIR"):
        return Path(os.environ["SEPROXY_STATE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "seproxy"


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _not_negative(value: float) -> str | None:
    return None if value >= 0 else "must be 0 or more"


def _port(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "must be a port number from 0 to 65535 (0: any free port)"


def _niceness(value: int) -> str | None:
    return None if 0 <= value <= 19 else "must be from 0 (as the service) to 19 (lowest CPU priority)"


def _fraction(value: float) -> str | None:
    return None if 0 < value <= 1 else "must be a fraction greater than 0 and at most 1"


def _staging_concurrency(value: int) -> str | None:
    return None if 1 <= value <= MAX_STAGING_CONCURRENCY else f"must be from 1 to {MAX_STAGING_CONCURRENCY}"


def _check(rule: Any) -> dict[str, Any]:
    return {"check": rule}


@dataclass
class ServiceSettings:
    """The HTTPS RPC service."""

    host: str = "127.0.0.1"
    port: int = field(default=8443, metadata=_check(_port))
    system: str = "DataManagement"
    component: str = "StorageElementProxy"
    # The host name written into URLs handed to clients; empty: the host's FQDN.
    public_name: str = ""
    state_dir: Path = field(default_factory=default_state_dir)
    # Processes serving the ports together (a supervisor restarts them); "auto": one per available core.
    workers: Workers = field(default_factory=lambda: Workers(available_cores()), metadata=_check(_positive))
    worker_threads: int = field(default=16, metadata=_check(_positive))
    call_timeout: Duration = field(default=Duration(600), metadata=_check(_positive))
    max_form_size: ByteSize = field(default=ByteSize(64 * 1024**2), metadata=_check(_positive))
    # The form body of a caller without certificate or token: they may only reach ping, echo and whoami.
    max_anonymous_form_size: ByteSize = field(default=ByteSize(64 * 1024), metadata=_check(_positive))
    # The largest file DIRAC's sendFile may send inside the form (decoded into the cache as it arrives,
    # for callers who may upload).
    max_form_upload: ByteSize = field(default=ByteSize(1024**3), metadata=_check(_positive))
    # Keep-alive idle limit; also the time for a request head, and a body's grace before 1 KiB/s is due.
    idle_connection_timeout: Duration = field(default=Duration(120), metadata=_check(_positive))
    max_connections: int = field(default=1024, metadata=_check(_positive))
    # One client address's share of max_connections (behind a load balancer: max_connections).
    max_connections_per_address: int = field(default=256, metadata=_check(_positive))
    # A new connection must complete TLS and send a request head within this, or it is closed.
    handshake_timeout: Duration = field(default=Duration(10), metadata=_check(_positive))
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # How long an INFO or DEBUG line may wait before it is written, with others (0: each line at once);
    # a WARNING or ERROR goes out at once, with the lines before it.
    log_flush_after: Duration = field(default=Duration(0.2), metadata=_check(_not_negative))


@dataclass
class TLSSettings:
    """Server credentials and the trust store for client certificates."""

    # Empty host_cert/host_key: generate and use development credentials
    # under <state_dir>/dev-credentials (never for production).
    host_cert: Path | None = None
    host_key: Path | None = None
    # A hashed CA directory (c_rehash / openssl rehash layout); empty with
    # development credentials: the generated development CA.
    ca_dir: Path | None = None
    min_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2"
    # Check CRLs (<hash>.r0 files in ca_dir) for the client's certificate chain.
    crl_check: bool = False


@dataclass
class CacheSettings:
    """The staging cache: where it lives and how big it may grow."""

    # Empty: <service.state_dir>/cache.
    root: Path | None = None
    quota: ByteSize = field(default=ByteSize(20 * 1024**3), metadata=_check(_positive))
    # Eviction starts when usage passes high_watermark * quota and stops below
    # low_watermark * quota.
    high_watermark: float = field(default=0.9, metadata=_check(_fraction))
    low_watermark: float = field(default=0.8, metadata=_check(_fraction))
    # Free disk kept in reserve: a staging or upload that would eat into it is refused.
    min_free: ByteSize = field(default=ByteSize(1024**3))
    # An upload not pushed with uploadFile within this time is abandoned: evicted and purged
    # like any other entry, so that uploads nobody finishes cannot fill the cache.
    upload_lifetime: Duration = field(default=Duration(86400), metadata=_check(_positive))
    # The share of the quota one user's uploads (waiting for uploadFile, or arriving) may hold:
    # one writer cannot fill the cache for everyone.
    upload_share: float = field(default=0.5, metadata=_check(_fraction))
    # Stagings that readers streaming while staging (the door) may start and leave running, at once in
    # each worker process; more wait for one to end. Each runs to its end (at most service.call_timeout)
    # even when its reader leaves, so that the next reader finds the file.
    background_stagings: int = field(default=4, metadata=_check(_positive))
    # A staged copy is served without asking its storage element for this long after it was staged
    # or last revalidated; later it is compared with the source (size, mtime, ADLER32 where offered)
    # before it is served, and staged again if it changed. 0: compare before every use. Writes through
    # seproxy drop the cached copy at once, whatever this says (docs/operations.md, "Freshness").
    revalidate_after: Duration = field(default=Duration(600), metadata=_check(_not_negative))


@dataclass
class GroupSettings:
    """A group: the VO it belongs to and the properties it grants."""

    vo: str
    properties: list[str] = field(default_factory=list)


@dataclass
class TokenSubjectSettings:
    """A bearer-token identity: the issuer's ``iss`` and the token's ``sub``."""

    issuer: str
    subject: str


@dataclass
class UserSettings:
    """A user: the DNs that identify them and the groups they may act in (first: default)."""

    dn: list[str]
    groups: list[str]
    # Bearer-token identities of this user (issuer and subject).
    token_subjects: list[TokenSubjectSettings] = field(default_factory=list)


@dataclass
class RegistrySettings:
    """Who is who: DNs to users, users to groups, groups to properties and VO."""

    users: dict[str, UserSettings] = field(default_factory=dict)
    groups: dict[str, GroupSettings] = field(default_factory=dict)


@dataclass
class StorageElementSettings:
    """One storage element the proxy may reach."""

    plugin: Literal["file", "webdav", "xroot"]
    # file: a directory; webdav: an http(s) URL; xroot: a root:// URL.
    base: str
    # VOs that may use this element; empty: every VO.
    vos: list[str] = field(default_factory=list)
    read_only: bool = False
    # Properties of which a caller's group needs one to write or remove here.
    write_properties: list[str] = field(default_factory=lambda: ["FileWrite"])
    # Credentials the proxy presents to the storage (webdav, xroot).
    x509_proxy: Path | None = None
    x509_cert: Path | None = None
    x509_key: Path | None = None
    bearer_token_file: Path | None = None
    # CA directory used to check the storage's certificate; empty: tls.ca_dir.
    ca_dir: Path | None = None
    timeout: Duration = field(default=Duration(60), metadata=_check(_positive))
    # Where a logical file name (LFN) lives on this element (prepareFileForHTTP):
    # "{lfn}" is replaced by the LFN, e.g. "/data{lfn}".
    lfn_path: str = LFN_FIELD


@dataclass
class MetricsSettings:
    """Prometheus metrics at http://<host>:<port>/metrics."""

    enabled: bool = True
    # Loopback by default: metrics tell who uses the service and how much.
    host: str = "127.0.0.1"
    # Not 9100 (node_exporter on most hosts) nor any port of Prometheus's default
    # port allocations (9100-9999 are all taken, new exporters get 10000 upwards).
    port: int = field(default=19180, metadata=_check(_port))


@dataclass
class HTTPSettings:
    """The HTTP side server: downloads by signed URL of files prepared with prepareFileForHTTP."""

    enabled: bool = False
    # Address to listen on; empty: service.host.
    host: str = ""
    port: int = field(default=9180, metadata=_check(_port))
    # The host name written into HttpURL; empty: the service's public name.
    public_name: str = ""
    # The port written into HttpURL (a load balancer's); 0: the port listened on.
    public_port: int = field(default=0, metadata=_check(_port))
    # This instance's name behind a load balancer, written as the first segment of its URLs so
    # that the balancer sends each download to the instance whose cache holds the file.
    route: str = ""
    tls: bool = False
    # With tls: the certificate and key; empty: the service's (tls.host_cert / host_key or development ones).
    host_cert: Path | None = None
    host_key: Path | None = None
    # The HMAC secret URLs are signed with, shared by instances that must accept each other's URLs.
    # Empty secret_file and secret: <service.state_dir>/http-secret, generated (mode 0600) if missing.
    secret_file: Path | None = None
    secret: str = field(default="", repr=False)
    # Secrets being retired, by key id: URLs they signed stay valid until they expire.
    retired_keys: dict[str, Path] = field(default_factory=dict)
    # Names the secret inside every URL (letters, digits, '_', '-'): change it with the secret.
    key_id: str = "k1"
    url_lifetime: Duration = field(default=Duration(1800), metadata=_check(_positive))
    # A URL serves one GET only (HEAD does not count): no second download, no resume.
    single_use: bool = False
    # Storage elements where LFNs are looked for, in order; empty: every element in config order.
    lfn_storage_elements: list[str] = field(default_factory=list)
    # Most LFNs in one prepareFileForHTTP call (they become one tar archive).
    max_files: int = field(default=1000, metadata=_check(_positive))
    # Files of one prepareFileForHTTP call staged at the same time (each holds a thread and a
    # connection to its storage element while it runs).
    staging_concurrency: int = field(default=4, metadata=_check(_staging_concurrency))
    # When prepareFileForHTTP answers: "staged", once its files are whole in the cache (what DIRAC
    # clients expect), or "started", as soon as the staging of its one file has started: the URL then
    # serves the file as it arrives, and cuts the download short if the staging fails.
    answer_when: Literal["staged", "started"] = "staged"
    # Downloads of URLs this instance holds no link for (another instance's, when that one is down)
    # whose files it stages at once, per worker process; one more is answered 503 with Retry-After.
    on_demand_stagings: int = field(default=4, metadata=_check(_positive))
    # The share of those one user's URLs may take at once (at least one staging): one user's many
    # URLs cannot keep every other user's waiting.
    on_demand_share: float = field(default=0.5, metadata=_check(_fraction))
    # Threads of the side server in each process, each serving many connections (sendfile does the
    # copying); more than 2 mostly contend for Python's GIL. 0: 2 in a service of one process, 1 in
    # each worker process (the workers already use every core, and a second thread only contends).
    threads: int = field(default=0, metadata=_check(_not_negative))
    # Added to the side server threads' nice value: when the cores are busy, downloads wait, not RPC calls.
    niceness: int = field(default=10, metadata=_check(_niceness))
    max_connections: int = field(default=1024, metadata=_check(_positive))
    # One client address's share of max_connections (behind a load balancer: max_connections).
    max_connections_per_address: int = field(default=256, metadata=_check(_positive))
    # A new connection must complete TLS (with tls) and send a request head within this, or it is closed.
    handshake_timeout: Duration = field(default=Duration(10), metadata=_check(_positive))
    # A connection that makes no progress this long (idle keep-alive, stalled client) is closed;
    # a request's headers must also arrive within it.
    idle_timeout: Duration = field(default=Duration(60), metadata=_check(_positive))


def _door_prefix(value: str) -> str | None:
    if not _DOOR_PREFIX.fullmatch(value):
        return f"must be a path such as /lfn (letters, digits, '_', '-', '.', no trailing '/'), got {value!r}"
    return None


_DOOR_PREFIX = re.compile(r"(/[A-Za-z0-9_.-]+)+")


@dataclass
class DoorSettings:
    """The storage door: davs:// and https:// access by LFN on the service port, through the cache."""

    enabled: bool = True
    # URLs are https://HOST:PORT<prefix>/<LFN>; LFNs resolve as for prepareFileForHTTP (http.lfn_storage_elements).
    prefix: str = field(default="/lfn", metadata=_check(_door_prefix))


@dataclass
class TokenIssuerSettings:
    """An issuer of bearer tokens (JWT) this service trusts."""

    # The "iss" claim, exactly as the issuer writes it.
    issuer: str
    # Its public keys: PEM files or JWKS files, read at start-up and on SIGHUP
    # (never fetched from the network while answering).
    keys: list[Path]
    algorithms: list[str] = field(default_factory=lambda: ["RS256", "ES256"])
    # Where the paths of its tokens' storage.* scopes start, in every storage element's namespace:
    # with "/vo", a token's storage.read:/data covers /vo/data on the elements.
    base_path: str = "/"


@dataclass
class TokenSettings:
    """Bearer-token authentication, beside X.509."""

    # A token's "aud" may name one of these, besides the service's own names
    # (https://<public name>, with and without its port; the same for http.public_name)
    # and the WLCG "any" audience.
    audiences: list[str] = field(default_factory=list)
    issuers: dict[str, TokenIssuerSettings] = field(default_factory=dict)


@dataclass
class Settings:
    """Everything the service reads from its config file."""

    service: ServiceSettings = field(default_factory=ServiceSettings)
    tls: TLSSettings = field(default_factory=TLSSettings)
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    storage_elements: dict[str, StorageElementSettings] = field(default_factory=dict)
    http: HTTPSettings = field(default_factory=HTTPSettings)
    tokens: TokenSettings = field(default_factory=TokenSettings)
    door: DoorSettings = field(default_factory=DoorSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    # Method name -> who may call it ("all", "authenticated" or properties);
    # overrides the handler's own auth_<method>.
    authorization: dict[str, list[str]] = field(default_factory=dict)
    # Where the settings came from, for messages; not a config key.
    source: str = field(default="<embedded default>", metadata={"internal": True})

    @property
    def route(self) -> str:
        return f"/{self.service.system}/{self.service.component}"

    def lfn_places(self) -> list[tuple[str, str]]:
        """Where LFNs are looked for, in order: (storage element, LFN-to-path template)."""
        names = self.http.lfn_storage_elements or list(self.storage_elements)
        return [(name, self.storage_elements[name].lfn_path) for name in names]

    @property
    def cache_root(self) -> Path:
        return self.cache.root or self.service.state_dir / "cache"


class _Reader:
    """Turns nested TOML tables into the dataclasses above, checking each value."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, what: str) -> typing.NoReturn:
        raise ConfigError(f"{self.source}: {key or '<top level>'}: {what}")

    def build(self, cls: type, data: Any, key: str) -> Any:
        if not isinstance(data, dict):
            self.fail(key, f"expected a table, got {_kind(data)}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            self.fail(_join(key, unknown[0]), f"unknown key (known keys: {', '.join(sorted(fields))})")
        values = {}
        for name, spec in fields.items():
            sub = _join(key, name)
            if name not in data:
                if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                    self.fail(sub, "required key is missing")
                continue
            value = self.value(hints[name], data[name], sub)
            check = spec.metadata.get("check")
            problem = check(value) if check and value is not None else None
            if problem:
                self.fail(sub, f"{problem}, got {data[name]!r}")
            values[name] = value
        return cls(**values)

    def value(self, hint: Any, raw: Any, key: str) -> Any:
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        if origin in (typing.Union, types.UnionType):
            inner = [a for a in args if a is not type(None)]
            if raw == "" and type(None) in args:
                return None
            return self.value(inner[0], raw, key)
        if origin is Literal:
            if raw not in args:
                self.fail(key, f"must be one of {', '.join(map(repr, args))}, got {raw!r}")
            return raw
        if origin is list:
            if not isinstance(raw, list):
                self.fail(key, f"expected a list, got {_kind(raw)}")
            return [self.value(args[0], item, f"{key}[{i}]") for i, item in enumerate(raw)]
        if origin is dict:
            if not isinstance(raw, dict):
                self.fail(key, f"expected a table, got {_kind(raw)}")
            return {name: self.value(args[1], item, _join(key, name)) for name, item in raw.items()}
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            return self.build(hint, raw, key)
        return self.scalar(hint, raw, key)

    def scalar(self, hint: Any, raw: Any, key: str) -> Any:
        if hint is bool:
            if not isinstance(raw, bool):
                self.fail(key, f"expected true or false, got {_kind(raw)}")
            return raw
        if hint is ByteSize or hint is Duration:
            parse = parse_size if hint is ByteSize else parse_duration
            if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
                self.fail(key, f"expected a number or a string such as '512M' / '2h', got {_kind(raw)}")
            try:
                return hint(parse(raw) if isinstance(raw, str) else raw)
            except ValueError as exc:
                self.fail(key, str(exc))
        if hint is Workers:
            if raw == "auto":
                return Workers(available_cores())
            if isinstance(raw, bool) or not isinstance(raw, int):
                self.fail(key, f'expected a number of processes or "auto", got {_kind(raw)}')
            return Workers(raw)
        if hint is int or hint is float:
            if isinstance(raw, bool) or not isinstance(raw, (int, float)) or (hint is int and isinstance(raw, float)):
                self.fail(key, f"expected {'an integer' if hint is int else 'a number'}, got {_kind(raw)}")
            return hint(raw)
        if hint is str or hint is Path:
            if not isinstance(raw, str):
                self.fail(key, f"expected a string, got {_kind(raw)}")
            if "\x00" in raw:
                self.fail(key, "must not contain a NUL character")
            return Path(raw).expanduser() if hint is Path else raw
        raise TypeError(f"config schema uses an unsupported type {hint!r} at {key}")


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _kind(value: Any) -> str:
    return {dict: "a table", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), f"{type(value).__name__} {value!r}"
    )


def _validate(settings: Settings, reader: _Reader) -> None:
    """Rules that span several keys."""
    for part in ("system", "component"):
        if not ROUTE_PART.match(getattr(settings.service, part)):
            reader.fail(f"service.{part}", "must be letters, digits and underscores, starting with a letter")
    tls = settings.tls
    if (tls.host_cert is None) != (tls.host_key is None):
        reader.fail("tls.host_cert", "host_cert and host_key must be set together (or both left out)")
    if tls.host_cert is not None and tls.ca_dir is None:
        reader.fail("tls.ca_dir", "required when host_cert is set (the hashed CA directory)")
    if settings.cache.low_watermark >= settings.cache.high_watermark:
        reader.fail("cache.low_watermark", "must be below cache.high_watermark")
    groups = settings.registry.groups
    for user, spec in settings.registry.users.items():
        if not spec.groups:
            reader.fail(f"registry.users.{user}.groups", "a user needs at least one group")
        for group in spec.groups:
            if group not in groups:
                reader.fail(f"registry.users.{user}.groups", f"group {group!r} is not defined in [registry.groups]")
    issuers = {spec.issuer for spec in settings.tokens.issuers.values()}
    for name, issuer in settings.tokens.issuers.items():
        if not issuer.base_path.startswith("/") or ".." in issuer.base_path.split("/"):
            reader.fail(f"tokens.issuers.{name}.base_path", f"must be an absolute path without '..', got {issuer.base_path!r}")
    for user, spec in settings.registry.users.items():
        for identity in spec.token_subjects:
            if identity.issuer not in issuers:
                reader.fail(f"registry.users.{user}.token_subjects", f"issuer {identity.issuer!r} is not in [tokens.issuers]")
    seen: dict[str, str] = {}
    for user, spec in settings.registry.users.items():
        for dn in spec.dn:
            if dn in seen:
                reader.fail(f"registry.users.{user}.dn", f"DN {dn!r} is already given to user {seen[dn]!r}")
            seen[dn] = user
    for name, element in settings.storage_elements.items():
        if not SE_NAME.match(name):
            reader.fail(f"storage_elements.{name}", "a storage element name is letters, digits, '.', '_' and '-'")
        template = element.lfn_path
        rest = template.replace(LFN_FIELD, "", 1)
        if LFN_FIELD not in template or "{" in rest or "}" in rest:
            reader.fail(f"storage_elements.{name}.lfn_path", f"must contain {LFN_FIELD} once and no other braces, got {template!r}")
    _validate_http(settings, reader)


def _validate_http(settings: Settings, reader: _Reader) -> None:
    http = settings.http
    if not KEY_ID.match(http.key_id):
        reader.fail("http.key_id", f"must be 1 to 32 letters, digits, '_' or '-', got {http.key_id!r}")
    for key_id in http.retired_keys:
        if not KEY_ID.match(key_id) or key_id == http.key_id:
            reader.fail(f"http.retired_keys.{key_id}", f"must be 1 to 32 letters, digits, '_' or '-', other than key_id {http.key_id!r}")
    if http.route and not KEY_ID.match(http.route):
        reader.fail("http.route", f"must be 1 to 32 letters, digits, '_' or '-' (or empty), got {http.route!r}")
    if http.secret and http.secret_file is not None:
        reader.fail("http.secret", "set secret or secret_file, not both")
    if http.secret and len(http.secret) < MIN_SECRET_LENGTH:
        reader.fail("http.secret", f"must be at least {MIN_SECRET_LENGTH} characters (try: openssl rand -hex 32)")
    if (http.host_cert is None) != (http.host_key is None):
        reader.fail("http.host_cert", "host_cert and host_key must be set together (or both left out)")
    for name in http.lfn_storage_elements:
        if name not in settings.storage_elements:
            known = ", ".join(settings.storage_elements) or "none"
            reader.fail("http.lfn_storage_elements", f"{name!r} is not in [storage_elements] (configured: {known})")


def load_settings(path: str | Path) -> Settings:
    """Read and check a config file."""
    source = str(path)
    try:
        with open(path, "rb") as stream:
            data = tomllib.load(stream)
    except FileNotFoundError:
        raise ConfigError(f"{source}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    settings = settings_from_dict(data, source)
    if settings.http.secret and os.stat(path).st_mode & stat.S_IRWXO:
        raise ConfigError(
            f"{source}: http.secret: a file holding the URL signing secret must not be accessible to other users (chmod o-rwx)"
        )
    return settings


def settings_from_dict(data: dict[str, Any], source: str = "<dict>") -> Settings:
    """Build settings from an already-parsed table (tests, embedded defaults)."""
    reader = _Reader(source)
    settings: Settings = reader.build(Settings, data, "")
    settings.source = source
    _validate(settings, reader)
    return settings
