"""``seproxy ls``, ``stat`` and ``rm``: the namespace of a storage element, through ``callProxyMethod``.

They read as gfal-ls, gfal-stat and gfal-rm do: ``ls`` of a file shows the
file, ``rm`` of a missing file or of a directory without ``-r`` fails for
that path (the storage operations themselves follow DIRAC, where removing
a missing file succeeds, so the CLI looks first).
"""

from __future__ import annotations

import argparse
import datetime
import posixpath
from contextlib import closing
from typing import Any

from seproxy.cli.client_options import SE_HELP, add_command, connect, report, report_bulk
from seproxy.cli.human import format_size, plural
from seproxy.transfer.returnvalues import S_ERROR, S_OK, ReturnValue
from seproxy.transfer.se_proxy_client import StorageElementProxyClient


def register(commands: Any) -> None:
    listing = add_command(
        commands,
        "ls",
        run=run_ls,
        help="list a directory on a storage element",
        description="List the entries of a directory on a storage element (directories end with /), "
        "or show the file when PATH is one.",
    )
    _se_and_paths(listing, several=False)
    listing.add_argument("-l", "--long", action="store_true", help="type, size in bytes and modification time")

    stat = add_command(
        commands,
        "stat",
        run=run_stat,
        help="show metadata of files and directories",
        description="Show type, size, modification time and checksum of each PATH.",
    )
    _se_and_paths(stat)

    remove = add_command(
        commands,
        "rm",
        run=run_rm,
        help="remove files (and with -r directories)",
        description="Remove files from a storage element; directories, with all they hold, only with -r. "
        "Needs write rights on the storage element.",
    )
    _se_and_paths(remove)
    remove.add_argument("-r", "--recursive", action="store_true", help="remove directories and their content")


def _se_and_paths(parser: argparse.ArgumentParser, *, several: bool = True) -> None:
    parser.add_argument("se", metavar="SE", help=SE_HELP)
    if several:
        parser.add_argument("paths", nargs="+", metavar="PATH", help="path on the storage element")
    else:
        parser.add_argument("path", metavar="PATH", help="path on the storage element")


def run_ls(args: argparse.Namespace) -> int:
    with closing(connect(args)) as client:
        result = _listing(client, args.se, args.path)
    return report(args, result, lambda listing: _print_listing(listing, long=args.long))


def run_stat(args: argparse.Namespace) -> int:
    with closing(connect(args)) as client:
        result = client.callProxyMethod(args.se, "getFileMetadata", [args.paths])
    return report_bulk(args, result, _describe)


def run_rm(args: argparse.Namespace) -> int:
    with closing(connect(args)) as client:
        result = _remove(client, args.se, args.paths, recursive=args.recursive)
    return report_bulk(args, result, _removed)


def _listing(client: StorageElementProxyClient, se: str, path: str) -> ReturnValue:
    """S_OK({"Files": {path: metadata}, "SubDirs": {path: metadata}}): a directory's entries, or the file."""
    found = _single(client.callProxyMethod(se, "getFileMetadata", [path]), path)
    if not found["OK"]:
        return found
    if found["Value"]["Directory"]:
        return _single(client.callProxyMethod(se, "listDirectory", [path]), path)
    return S_OK({"Files": {path: found["Value"]}, "SubDirs": {}})


def _single(result: ReturnValue, path: str) -> ReturnValue:
    """The outcome for ``path`` in a bulk result, as S_OK/S_ERROR (DIRAC's returnSingleResult)."""
    if not result["OK"]:
        return result
    if path in result["Value"]["Failed"]:
        return S_ERROR(f"{path}: {result['Value']['Failed'][path]}")
    return S_OK(result["Value"]["Successful"][path])


def _remove(client: StorageElementProxyClient, se: str, paths: list[str], *, recursive: bool) -> ReturnValue:
    """Remove files, and directories if ``recursive``; DIRAC's bulk result over all ``paths``."""
    found = client.callProxyMethod(se, "getFileMetadata", [paths])
    if not found["OK"]:
        return found
    failed = dict(found["Value"]["Failed"])
    files, directories = [], []
    for path, metadata in found["Value"]["Successful"].items():
        if not metadata["Directory"]:
            files.append(path)
        elif recursive:
            directories.append(path)
        else:
            failed[path] = "is a directory (remove it with -r)"
    successful: dict[str, Any] = {}
    for operation, targets, options in (("removeFile", files, {}), ("removeDirectory", directories, {"recursive": True})):
        if not targets:
            continue
        done = client.callProxyMethod(se, operation, [targets], options)
        if done["OK"]:
            successful.update(done["Value"]["Successful"])
            failed.update(done["Value"]["Failed"])
        else:
            failed.update(dict.fromkeys(targets, done["Message"]))
    return S_OK({"Successful": successful, "Failed": failed})


def _print_listing(listing: dict[str, Any], *, long: bool) -> None:
    entries = [(path, metadata, False) for path, metadata in listing["Files"].items()]
    entries += [(path, metadata, True) for path, metadata in listing["SubDirs"].items()]
    for path, metadata, is_dir in sorted(entries):
        name = posixpath.basename(path.rstrip("/")) + ("/" if is_dir else "")
        if long:
            print(f"{'d' if is_dir else '-'} {metadata.get('Size', 0):>14} {_when(metadata.get('ModTime'))}  {name}")
        else:
            print(name)


def _describe(path: str, metadata: dict[str, Any]) -> str:
    lines = [path, f"  type      {'directory' if metadata['Directory'] else 'file'}"]
    if not metadata["Directory"]:
        lines.append(f"  size      {metadata['Size']} ({format_size(metadata['Size'])})")
    lines.append(f"  modified  {_when(metadata.get('ModTime'))}")
    if metadata.get("Checksum"):
        lines.append(f"  adler32   {metadata['Checksum']}")
    return "\n".join(lines)


def _removed(path: str, value: Any) -> str:
    if isinstance(value, dict):  # a directory: what went with it
        return f"removed {path} ({plural(value['FilesRemoved'], 'file')}, {format_size(value['SizeRemoved'])})"
    return f"removed {path}"


def _when(moment: datetime.datetime | None) -> str:
    """DIRAC's ModTime (naive UTC) as ``2026-01-31 12:00 UTC``."""
    return f"{moment:%Y-%m-%d %H:%M} UTC" if moment else "-"
