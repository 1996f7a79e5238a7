"""``seproxy get`` and ``seproxy put``: files between this machine and a storage element, through the proxy.

Each file is one two-step dance done by the client library (``getFile``:
prepareFile then receiveFile; ``putFile``: sendFile then uploadFile),
streamed and checked against the checksums the service computed. As with
gfal-copy and xrdcp (and as ``overwrite=`` of the library), an existing
destination is replaced only with ``-f``; a destination ending with ``/``
is a directory, created if missing.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import closing
from typing import Any, BinaryIO

from seproxy.cli.client_options import (
    SE_HELP,
    ReaderGone,
    UsageError,
    abandon_stdout,
    add_command,
    connect,
    report_bulk,
)
from seproxy.cli.human import format_size
from seproxy.cli.progress import TransferProgress, rate

GET_EXAMPLES = """\
examples:
  seproxy get LocalSE /lab/data/run1.root .
  seproxy get LocalSE /lab/data/a.root /lab/data/b.root inputs/
  seproxy get LocalSE /lab/data/run1.root - | sha256sum
"""
PUT_EXAMPLES = """\
examples:
  seproxy put results.root LocalSE /lab/user/results.root
  seproxy put *.log LocalSE /lab/user/logs/
"""


def register(commands: Any) -> None:
    get = add_command(
        commands,
        "get",
        run=run_get,
        help="download files from a storage element",
        description="Have the service stage each file from the storage element into its cache, then download "
        "it: streamed, resumed if the connection breaks, and checked against the size and checksums the "
        "service announced. A failed download leaves nothing at DEST.",
        epilog=GET_EXAMPLES,
    )
    get.add_argument("se", metavar="SE", help=SE_HELP)
    get.add_argument("pfns", nargs="+", metavar="PFN", help="path of a file on the storage element")
    get.add_argument(
        "destination",
        metavar="DEST",
        help="local file or directory (a directory for several PFNs; ending with /, created if missing); "
        "- for standard output",
    )
    get.add_argument("-f", "--force", action="store_true", help="replace local files that exist")

    put = add_command(
        commands,
        "put",
        run=run_put,
        help="upload files to a storage element",
        description="Stream each file to the service, which checks it and pushes it to the storage element. "
        "With several sources, or a PFN ending with /, PFN is a directory and each file keeps its name.",
        epilog=PUT_EXAMPLES,
    )
    put.add_argument("sources", nargs="+", metavar="SRC", help="local file")
    put.add_argument("se", metavar="SE", help=SE_HELP)
    put.add_argument(
        "pfn", metavar="PFN", help="path on the storage element; with several sources, or ending with /, a directory"
    )
    put.add_argument("-f", "--force", action="store_true", help="replace files that exist on the storage element")


def run_get(args: argparse.Namespace) -> int:
    to_stdout = args.destination == "-"
    if to_stdout and (len(args.pfns) > 1 or args.json):
        raise UsageError("DEST - (standard output) takes one PFN, and no --json")
    into_directory = os.path.isdir(args.destination) or args.destination.endswith("/")
    if len(args.pfns) > 1 and not into_directory:
        raise UsageError(f"several PFNs go into a directory, and {args.destination} is not one (end it with / to create it)")
    pfns = args.pfns if len(args.pfns) > 1 else args.pfns[0]
    progress = _progress(args)
    with closing(connect(args)) as client:
        try:
            result = client.getFile(
                args.se,
                pfns,
                _StandardOutput(sys.stdout.buffer) if to_stdout else args.destination,
                overwrite=args.force,
                progress=progress,
            )
        finally:
            progress.clear()
    if to_stdout and (not result["OK"] or result["Value"]["Failed"]):
        abandon_stdout()  # what it could not take (a full disk) would fail again at exit

    def line(pfn: str, got: dict[str, Any]) -> str:
        return f"{pfn} -> {got['Path'] or '-'}  {_summary(got, progress.elapsed.get(pfn))}"

    return report_bulk(args, result, line, out=sys.stderr if to_stdout else sys.stdout)


def run_put(args: argparse.Namespace) -> int:
    sources = args.sources if len(args.sources) > 1 else args.sources[0]
    progress = _progress(args)
    with closing(connect(args)) as client:
        try:
            result = client.putFile(sources, args.se, args.pfn, overwrite=args.force, progress=progress)
        finally:
            progress.clear()
    return report_bulk(args, result, lambda pfn, stored: f"{stored['PFN']}  {_summary(stored, progress.elapsed.get(pfn))}")


class _StandardOutput:
    """Standard output as a download's destination, which tells a reader gone away from a write error."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def write(self, data: bytes) -> int:
        try:
            return self._stream.write(data)
        except BrokenPipeError:
            raise ReaderGone() from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise ReaderGone() from None

    def __getattr__(self, name: str) -> Any:  # tell, seek, truncate, ...: as the stream has them
        return getattr(self._stream, name)


def _progress(args: argparse.Namespace) -> TransferProgress:
    """A progress line on standard error when it is a terminal (and the output is not JSON)."""
    return TransferProgress(sys.stderr, live=sys.stderr.isatty() and not args.json)


def _summary(done: dict[str, Any], seconds: float | None) -> str:
    """Size, time, rate and checksums of one finished transfer."""
    parts = [format_size(done["Size"])]
    if seconds is not None:
        parts += [f"{seconds:.1f} s", rate(done["Size"], seconds)]
    if done.get("Checksum"):
        parts.append(f"adler32 {done['Checksum']}")
    parts.append(f"xxh3 {done['xxh3']}")
    return "  ".join(parts)
