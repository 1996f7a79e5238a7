"""The storage operations ``callProxyMethod`` offers, by name, and DIRAC's bulk result shape.

DIRAC's own proxy called ``getattr(storageElement, name)`` with a name from
the wire. Here an explicit table is the whole list: a name not in it is
refused, and each entry says which kind of access it needs (a write needs write rights).
Every operation takes a path, a list of paths or a dict keyed by paths, and
answers ``{"Successful": {path: value}, "Failed": {path: message}}`` as
DIRAC's StorageElement does, so one bad path does not fail the others.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from seproxy.security.scopes import Access
from seproxy.storage.base import FileInfo, PathRefused, StorageElement

MAX_PATHS = 10_000
# Every option any operation takes, with its type on the wire.
OPTION_TYPES: dict[str, type] = {"recursive": bool}


class OperationError(ValueError):
    """The arguments of a storage operation are malformed (the message says how)."""


@dataclass(frozen=True)
class Operation:
    access: Access
    run: Callable[..., Any]
    # Keyword options the caller may pass (positionally after the paths too).
    options: tuple[str, ...] = ()

    @property
    def writes(self) -> bool:
        return self.access.writes


def _file_size(element: StorageElement, path: str) -> int:
    info = element.stat(path)
    if info.is_dir:
        raise IsADirectoryError(f"{element.name}: {path}: is a directory")
    return info.size


def _listing(element: StorageElement, path: str) -> list[FileInfo]:
    if not element.stat(path).is_dir:
        raise NotADirectoryError(f"{element.name}: {path}: not a directory")
    return element.listdir(path)


def _list_directory(element: StorageElement, path: str) -> dict[str, Any]:
    entries = _listing(element, path)
    return {
        "Files": {e.path: e.as_metadata() for e in entries if not e.is_dir},
        "SubDirs": {e.path: e.as_metadata() for e in entries if e.is_dir},
    }


def _directory_size(element: StorageElement, path: str) -> dict[str, int]:
    """DIRAC's getDirectorySize: the files directly in ``path`` (not recursive)."""
    entries = _listing(element, path)
    files = [e for e in entries if not e.is_dir]
    return {"Files": len(files), "Size": sum(e.size for e in files), "SubDirs": len(entries) - len(files)}


def _remove_file(element: StorageElement, path: str) -> bool:
    """Removing a file that is already gone succeeds, as in DIRAC: the caller's wish holds."""
    try:
        element.remove(path)
    except FileNotFoundError:
        pass
    return True


def _remove_directory(element: StorageElement, path: str, recursive: bool = False) -> dict[str, int]:
    files = size = 0
    pending = [path]
    while recursive and pending:
        for entry in _listing(element, pending.pop()):
            if entry.is_dir:
                pending.append(entry.path)
            else:
                files, size = files + 1, size + entry.size
    element.rmdir(path, recursive=recursive)
    return {"FilesRemoved": files, "SizeRemoved": size}


def _create_directory(element: StorageElement, path: str) -> bool:
    element.mkdir(path)
    return True


OPERATIONS: dict[str, Operation] = {
    "exists": Operation(Access.READ, lambda element, path: element.exists(path)),
    "isFile": Operation(Access.READ, lambda element, path: not element.stat(path).is_dir),
    "isDirectory": Operation(Access.READ, lambda element, path: element.stat(path).is_dir),
    "getFileSize": Operation(Access.READ, _file_size),
    "getFileMetadata": Operation(Access.READ, lambda element, path: element.stat(path).as_metadata()),
    "listDirectory": Operation(Access.READ, _list_directory),
    "getDirectorySize": Operation(Access.READ, _directory_size),
    "createDirectory": Operation(Access.CREATE, _create_directory),
    "removeFile": Operation(Access.MODIFY, _remove_file),
    "removeDirectory": Operation(Access.MODIFY, _remove_directory, options=("recursive",)),
}


def paths_of(argument: Any) -> list[str]:
    """The paths of DIRAC's path argument: a string, a list of strings or a dict keyed by them."""
    if isinstance(argument, str):
        paths = [argument]
    elif isinstance(argument, list):
        paths = argument
    elif isinstance(argument, Mapping):
        paths = list(argument)
    else:
        raise OperationError("the first argument must be a path, a list of paths or a dict keyed by paths")
    if not all(isinstance(path, str) for path in paths):
        raise OperationError("every path must be a string")
    if len(paths) > MAX_PATHS:
        raise OperationError(f"at most {MAX_PATHS} paths in one call, got {len(paths)}")
    return paths


def options_of(operation: Operation, name: str, extra_args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Positional options after the paths and keyword options, checked against the operation."""
    if len(extra_args) > len(operation.options):
        raise OperationError(f"{name} takes {len(operation.options)} option(s) after the paths, got {len(extra_args)}")
    options = dict(zip(operation.options, extra_args))
    unknown = sorted(set(kwargs) - set(operation.options))
    if unknown:
        offered = ", ".join(operation.options) or "none"
        raise OperationError(f"{name} has no option {unknown[0]!r} (options: {offered})")
    options.update(kwargs)
    for option, value in options.items():
        if not isinstance(value, OPTION_TYPES[option]):
            raise OperationError(f"{name}: option {option!r} must be a {OPTION_TYPES[option].__name__}")
    return options


def run_bulk(
    element: StorageElement,
    operation: Operation,
    paths: list[str],
    options: dict[str, Any],
    check: Callable[[str], None] = lambda path: None,
    done: Callable[[str], object] | None = None,
) -> dict[str, Any]:
    """Run ``operation`` for every path that passes ``check``; an ``OSError`` fails that path only.
    ``done(path)`` follows every run that may have changed the path, whether it succeeded or failed
    (a removal may stop half-way); not one the element refused before touching anything."""
    successful: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for original in paths:
        try:
            path = element.normalize(original)
            check(path)
            touched = True
            try:
                successful[original] = operation.run(element, path, **options)
            except PathRefused:
                touched = False
                raise
            finally:
                if done is not None and touched:
                    done(path)
        except OSError as exc:
            failed[original] = str(exc.strerror or exc)
    return {"Successful": successful, "Failed": failed}
