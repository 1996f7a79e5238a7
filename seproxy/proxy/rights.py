"""Who may use a storage element, and who may write to it.

One rule for the RPC methods (which name the element) and for uploads into
the cache (which do not yet: the element comes with ``uploadFile``). An
upload is taken only from a caller who could push it somewhere, so that a
user without write rights cannot fill the cache with files nobody may push.

A caller whose bearer token carries WLCG storage scopes is allowed what the
scopes grant, on the paths they name: the group's properties neither widen
nor replace them (``check_access`` takes the operation's kind and path).
"""

from __future__ import annotations

import errno
from collections.abc import Mapping

from seproxy.config import StorageElementSettings
from seproxy.registry import Caller
from seproxy.security.scopes import Access
from seproxy.transfer import SErrorException


def check_rights(se: str, settings: StorageElementSettings, caller: Caller, *, write: bool) -> None:
    """``SErrorException`` (EACCES, EROFS) naming what is missing if ``caller`` may not use ``se`` so."""
    if settings.vos and caller.vo not in settings.vos:
        raise SErrorException(f"VO {caller.vo!r} may not use storage element {se}", errno=errno.EACCES)
    if not write:
        return
    if caller.is_limited_proxy:
        # Globus's limited proxy is one a user hands to a job for reading its input: it may read, never write.
        raise SErrorException(
            f"a limited proxy may only read: writing to {se} needs a full proxy or certificate", errno=errno.EACCES
        )
    if settings.read_only:
        raise SErrorException(f"storage element {se} is read-only", errno=errno.EROFS)
    if caller.scopes is not None:
        if not caller.scopes.allows_somewhere(Access.CREATE):
            raise SErrorException(
                f"writing to {se} needs a storage.create or storage.modify scope; the token has {caller.scopes.describe()}",
                errno=errno.EACCES,
            )
        return  # the token's scopes decide, path by path (check_access)
    needed = settings.write_properties
    if not set(needed) & set(caller.properties):
        raise SErrorException(
            f"writing to {se} needs one of the properties {', '.join(needed)}; group "
            f"{caller.group!r} has {', '.join(caller.properties) or 'none'}",
            errno=errno.EACCES,
        )


def check_may_upload(elements: Mapping[str, StorageElementSettings], caller: Caller) -> None:
    """``SErrorException`` (EACCES) unless ``caller`` may write to at least one element."""
    reasons = []
    for se, settings in elements.items():
        try:
            check_rights(se, settings, caller, write=True)
        except SErrorException as exc:
            reasons.append(exc.result["Message"])
        else:
            return
    raise SErrorException(
        "uploads are taken only from callers who may write to a storage element: " + ("; ".join(reasons) or "none is configured"),
        errno=errno.EACCES,
    )


def check_access(se: str, caller: Caller, kinds: tuple[Access, ...], path: str) -> None:
    """``PermissionError`` (EACCES) unless the caller's storage scopes grant one of ``kinds`` on ``path``.

    ``path`` is the clean path inside element ``se``. A caller without
    storage scopes passes: ``check_rights`` (VO and properties) decided.
    """
    scopes = caller.scopes
    if scopes is None or any(scopes.allows(kind, path) for kind in kinds):
        return
    wanted = " or ".join(kind.value for kind in kinds)
    raise PermissionError(errno.EACCES, f"{se}: {path}: needs {wanted} covering this path; the token has {scopes.describe()}")


def upload_access(exists: bool) -> tuple[Access, ...]:
    """What writing a file needs: storage.create for a new one, storage.modify to replace one."""
    return (Access.MODIFY,) if exists else (Access.CREATE,)
