"""Who a caller is: DN to user, user to groups, group to VO and properties.

DIRAC keeps this in its Configuration Service; seproxy keeps it in the
``[registry]`` table of its config, so that a site can run the proxy without a
DIRAC installation and still make the same decisions DIRAC would.
"""

from __future__ import annotations

import datetime
import errno
from dataclasses import dataclass
from typing import Any

from seproxy.config import RegistrySettings
from seproxy.security.scopes import StorageScopes
from seproxy.security.tokens import TokenIdentity
from seproxy.security.x509 import PeerIdentity

ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Caller:
    """The credentials of one request, as handlers and authorization see them."""

    dn: str = ""
    subject: str = ""
    issuer: str = ""
    is_proxy: bool = False
    is_limited_proxy: bool = False
    username: str = ANONYMOUS
    group: str = ""
    vo: str = ""
    properties: tuple[str, ...] = ()
    valid_dn: bool = False
    valid_group: bool = False
    not_after: datetime.datetime | None = None
    # How the caller proved who they are: "x509", "token", "url" (a signed download URL made
    # for them, served by an instance staging it on demand), or "" (anonymous).
    authenticated_by: str = ""
    # A token's storage scopes: when set, they alone decide what the caller may do on storage.
    scopes: StorageScopes | None = None

    @property
    def anonymous(self) -> bool:
        return not self.authenticated_by

    def seconds_left(self) -> int:
        if self.not_after is None:
            return 0
        return max(0, int((self.not_after - datetime.datetime.now(datetime.UTC)).total_seconds()))

    def as_dirac_dict(self) -> dict[str, Any]:
        """The credential dict of DIRAC's ``whoami`` / ``getRemoteCredentials``."""
        return {
            "DN": self.dn,
            "identity": self.dn,
            "issuer": self.issuer,
            "subject": self.subject,
            "isProxy": self.is_proxy,
            "isLimitedProxy": self.is_limited_proxy,
            "username": self.username,
            "group": self.group,
            "VO": self.vo,
            "properties": list(self.properties),
            "secondsLeft": self.seconds_left(),
            "validDN": self.valid_dn,
            "validGroup": self.valid_group,
            "authenticatedBy": self.authenticated_by or "none",
        }


class Registry:
    """Resolves a verified certificate identity into a ``Caller``."""

    def __init__(self, settings: RegistrySettings) -> None:
        self._settings = settings
        self._user_by_dn = {dn: name for name, user in settings.users.items() for dn in user.dn}
        self._user_by_token = {
            (token.issuer, token.subject): name for name, user in settings.users.items() for token in user.token_subjects
        }

    def username_for_dn(self, dn: str) -> str | None:
        return self._user_by_dn.get(dn)

    def caller(self, identity: PeerIdentity | None) -> Caller:
        """The caller for a TLS peer; ``None`` (no certificate) is anonymous.

        The group is the one named in the proxy's DIRAC extension when the
        user belongs to it, otherwise the user's first group; a proxy naming
        a group the user is not in gives ``validGroup = False`` and no
        properties, as in DIRAC.
        """
        if identity is None:
            return Caller()
        base = {
            "dn": identity.dn,
            "subject": identity.subject,
            "issuer": identity.issuer,
            "is_proxy": identity.is_proxy,
            "is_limited_proxy": identity.is_limited_proxy,
            "not_after": identity.not_after,
            "authenticated_by": "x509",
        }
        return self._resolve(base, self.username_for_dn(identity.dn), identity.dirac_group)

    def caller_for_token(self, token: TokenIdentity) -> Caller:
        """The caller of a verified bearer token: its user's first DN and default group, as DIRAC does."""
        username = self._user_by_token.get((token.issuer, token.subject))
        base = {
            "dn": self._settings.users[username].dn[0] if username else "",
            "subject": token.subject,
            "issuer": token.issuer,
            "not_after": datetime.datetime.fromtimestamp(token.expires, datetime.UTC),
            "authenticated_by": "token",
            "scopes": token.scopes,
        }
        return self._resolve(base, username, None)

    def caller_of_url(self, username: str, group: str) -> Caller:
        """The user a signed download URL was made for, with the rights the registry gives them now;
        ``PermissionError`` (EACCES) naming why when it no longer knows them in that group."""
        if username not in self._settings.users:
            raise PermissionError(errno.EACCES, f"the user {username!r} this URL was made for is not known here")
        caller = self._resolve({"authenticated_by": "url"}, username, group)
        if not caller.valid_group:
            raise PermissionError(errno.EACCES, f"the user {username!r} this URL was made for is not in group {group!r} here")
        return caller

    def _resolve(self, base: dict[str, Any], username: str | None, requested_group: str | None) -> Caller:
        if username is None:
            return Caller(**base, username=ANONYMOUS, group=requested_group or "")
        groups = self._settings.users[username].groups
        group = requested_group or groups[0]
        if group not in groups:
            return Caller(**base, username=username, group=group, valid_dn=True)
        spec = self._settings.groups[group]
        return Caller(
            **base,
            username=username,
            group=group,
            vo=spec.vo,
            properties=tuple(spec.properties),
            valid_dn=True,
            valid_group=True,
        )
