"""Download keys: an HMAC signature over what a URL designates and until when.

A key (``HttpKey``, the first path segment of ``HttpURL``, after the route)
reads ``<key id>.<link id>.<expires>.<grant>.<signature>``:

- key id: names the secret (``http.key_id``), so that an instance can tell
  a URL signed with another secret from a forged one, and a rotated secret
  gets a new id;
- link id: 32 random hex digits naming the link (what to serve) in the link
  store; it cannot be guessed, and without the secret it cannot be signed;
- expires: Unix time in whole seconds;
- grant: what the URL serves and for whom (``grants``), so that an instance
  that does not hold the link can stage it and serve it;
- signature: base64url (no padding) of HMAC-SHA256 over a version tag, the
  four fields above, the route (the instance named by the URL's first
  segment behind a load balancer, or empty) and the file name of the URL's
  last segment, so no part of the URL can be changed.

A key without a grant (``<key id>.<link id>.<expires>.<signature>``, the
only shape before grants, signed under the version tag ``seproxy-http-v1``)
is still made when the grant would make the URL too long
(``grants.MAX_ENCODED``), and keys made before grants keep being accepted
until they expire: the instance holding their link serves them.

Any instance holding the secret checks a key without asking anyone. While a
secret is replaced, the old one stays as a retired key: the URLs it signed
are accepted until they expire, and new ones get the new key id. Clocks
of instances differ a little: a key is still accepted ``CLOCK_SKEW`` seconds
after its stamp, and the files behind it are pinned that much longer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from seproxy.config import MIN_SECRET_LENGTH
from seproxy.http_side.grants import MAX_ENCODED, BadGrant, Grant
from seproxy.http_side.response import Refused

# Seconds a key stays valid past its expiry, for clocks of instances that differ.
CLOCK_SKEW = 30
_VERSION = b"seproxy-http-v1"
_GRANT_VERSION = b"seproxy-http-v2"
# How many checked keys a signer remembers (then it starts again: a few MiB at most).
_VERIFIED_KEYS = 8192
_KEY = re.compile(
    rf"([A-Za-z0-9_-]{{1,32}})\.([0-9a-f]{{32}})\.([0-9]{{1,12}})(?:\.([A-Za-z0-9_-]{{1,{MAX_ENCODED}}}))?\.([A-Za-z0-9_-]{{43}})"
)


@dataclass(frozen=True)
class SignedKey:
    """What a checked key says."""

    key_id: str
    link_id: str
    expires: int
    # What the URL serves and for whom; None in a key without one.
    grant: Grant | None = None


class Signer:
    """Signs keys with the current secret; checks them with it or a retired one."""

    def __init__(self, key_id: str, secret: bytes, retired: Mapping[str, bytes] | None = None) -> None:
        self.key_id = key_id
        # key id -> secret of every secret a key may carry: the current one signs, all check.
        self._secrets = {**(retired or {}), key_id: secret}
        # Keys whose signature checked out, with their URL's name and route: a popular URL is fetched
        # many times, and its HMAC need not be computed again (expiry is still checked every time).
        self._verified: dict[tuple[str, str, str], SignedKey] = {}

    def sign(self, link_id: str, expires: int, name: str, route: str = "", grant: Grant | None = None) -> str:
        """The key for ``link_id`` until ``expires``, for a URL whose last segment is ``name``;
        with ``grant`` inside unless it would make the URL too long."""
        fields = f"{self.key_id}.{link_id}.{expires}"
        encoded = grant.encode() if grant is not None else ""
        if encoded and len(encoded) <= MAX_ENCODED:
            fields = f"{fields}.{encoded}"
        return f"{fields}.{self._signature(fields, name, route, self._secrets[self.key_id])}"

    def check(self, key: str, name: str, now: float, route: str = "") -> SignedKey:
        """The fields of a genuine, unexpired key; ``Refused`` otherwise.

        A key not even shaped like ours is a 404 (a path we do not serve);
        a wrong signature (any part of the URL changed: its files, its
        user, its name), another key id or an expired key is a 403.
        """
        signed = self._verified.get((key, name, route))
        if signed is None:
            signed = self._verify(key, name, route)
            if len(self._verified) >= _VERIFIED_KEYS:
                self._verified.clear()
            self._verified[(key, name, route)] = signed
        if now > signed.expires + CLOCK_SKEW:
            raise Refused(403, "this link has expired")
        return signed

    def _verify(self, key: str, name: str, route: str) -> SignedKey:
        match = _KEY.fullmatch(key)
        if match is None:
            raise Refused(404, "no such download")
        key_id, link_id, expires, encoded, signature = match.groups()
        secret = self._secrets.get(key_id)
        if secret is None:
            raise Refused(403, "this link was signed with another key")
        fields = f"{key_id}.{link_id}.{expires}" + (f".{encoded}" if encoded else "")
        expected = self._signature(fields, name, route, secret)
        if not hmac.compare_digest(expected, signature):
            raise Refused(403, "invalid link: its signature does not match what it names (changed or forged)")
        try:
            grant = Grant.decode(encoded) if encoded else None
        except BadGrant as exc:
            raise Refused(403, str(exc)) from None
        return SignedKey(key_id, link_id, int(expires), grant)

    @staticmethod
    def _signature(fields: str, name: str, route: str, secret: bytes) -> str:
        version = _VERSION if fields.count(".") == 2 else _GRANT_VERSION
        message = b"\n".join((version, fields.encode(), route.encode(), name.encode("utf-8", "surrogateescape")))
        digest = hmac.new(secret, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def load_secret(path: Path, *, create: bool = True) -> bytes:
    """The secret in ``path``, generated there (mode 0600) if the file does not exist and ``create``.

    Several processes may start at once: the secret is written to a private
    temporary file and linked into place, so a reader never sees it half
    written and two starters never end up with two secrets.
    """
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        try:
            with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as stream:
                stream.write(secrets.token_hex(32) + "\n")
            os.link(temporary, path)
        except FileExistsError:
            pass  # another process was first: use its secret
        finally:
            temporary.unlink(missing_ok=True)
    mode = path.stat().st_mode
    if mode & stat.S_IRWXO:
        raise PermissionError(f"{path}: the URL signing secret must not be accessible to other users (chmod o-rwx)")
    secret = path.read_text().strip()
    if len(secret) < MIN_SECRET_LENGTH:
        raise ValueError(f"{path}: the URL signing secret must be at least {MIN_SECRET_LENGTH} characters")
    return secret.encode()


def new_link_id() -> str:
    return secrets.token_hex(16)

