"""WLCG storage scopes (common JWT profile v1.3): what a bearer token lets its holder do, and where.

A token that carries ``storage.*`` scopes is a capability: those scopes are
the whole authorization, whatever groups the token or the registry name. A
scope's path is mandatory and relative to a base path the operator sets per
issuer (so one issuer's ``/`` can be a VO's corner of the storage); it covers
a storage path when it equals it or is one of its parent directories, whole
components only (``/foo/bar`` covers ``/foo/bar/x``, never ``/foo/bargain``).
"""

from __future__ import annotations

import enum
import posixpath
from dataclasses import dataclass

STORAGE_PREFIX = "storage."


class Access(enum.Enum):
    """The kinds of storage access the profile names."""

    READ = "storage.read"  # read data and metadata
    CREATE = "storage.create"  # new files and directories; no overwrite, no delete
    MODIFY = "storage.modify"  # create, overwrite and delete
    STAGE = "storage.stage"  # bring data online; does not imply read of metadata

    @property
    def writes(self) -> bool:
        return self in (Access.CREATE, Access.MODIFY)


class ScopeRefused(ValueError):
    """A ``storage.*`` scope the profile does not allow (no path, unknown kind, a path that escapes)."""


@dataclass(frozen=True)
class StorageScope:
    access: Access
    path: str  # absolute, normalized, with the issuer's base path already applied

    def covers(self, path: str) -> bool:
        return self.path == "/" or path == self.path or path.startswith(self.path + "/")


@dataclass(frozen=True)
class StorageScopes:
    """The storage scopes of one token."""

    scopes: tuple[StorageScope, ...]

    def allows(self, access: Access, path: str) -> bool:
        """Whether ``access`` on the clean absolute storage ``path`` is granted (MODIFY grants CREATE)."""
        granting = (Access.CREATE, Access.MODIFY) if access is Access.CREATE else (access,)
        return any(scope.access in granting and scope.covers(path) for scope in self.scopes)

    def allows_somewhere(self, access: Access) -> bool:
        granting = (Access.CREATE, Access.MODIFY) if access is Access.CREATE else (access,)
        return any(scope.access in granting for scope in self.scopes)

    def describe(self) -> str:
        return " ".join(f"{scope.access.value}:{scope.path}" for scope in self.scopes)


def _clean(path: str, scope: str) -> str:
    if not path.startswith("/"):
        raise ScopeRefused(f"scope {scope[:200]!r}: the path must be absolute (start with '/')")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ScopeRefused(f"scope {scope[:200]!r}: '..' is not allowed in a scope's path")
    return "/" + "/".join(parts)


def parse_scopes(claim: object, base_path: str = "/") -> StorageScopes | None:
    """The storage scopes of a ``scope`` claim (space-separated), under ``base_path``; None without any.

    Scopes of other services (``openid``, ``compute.*``...) are ignored; a
    malformed ``storage.*`` one refuses the whole token, since its holder
    would otherwise get more (or other) rights than the issuer wrote.
    """
    if claim is None:
        return None
    if not isinstance(claim, str):
        raise ScopeRefused("the scope claim must be a string of space-separated scopes")
    base = _clean(base_path, base_path)
    found = []
    for scope in claim.split():
        if not scope.startswith(STORAGE_PREFIX):
            continue
        kind, colon, path = scope.partition(":")
        try:
            access = Access(kind)
        except ValueError:
            known = ", ".join(access.value for access in Access)
            raise ScopeRefused(f"scope {scope[:200]!r}: unknown storage scope (known: {known})") from None
        if not colon or not path:
            raise ScopeRefused(f"scope {scope[:200]!r}: a storage scope needs a path, such as {kind}:/")
        found.append(StorageScope(access, posixpath.join(base, _clean(path, scope).lstrip("/")).rstrip("/") or "/"))
    return StorageScopes(tuple(found)) if found else None

