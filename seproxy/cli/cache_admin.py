"""``seproxy cache ls|du|purge|verify``: the operator's view of the staging cache.

Safe while the service runs: the CLI opens the same index, and the cache
itself refuses to remove what is being read, staged or still owed to a
storage element. Exit codes: 0 done, 1 something was found wrong or could
not be removed (in use, damaged), 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import zlib
from typing import Any

import xxhash

from seproxy.cache import Cache, Entry, PurgeRule, purge
from seproxy.cache.configured import open_cache
from seproxy.cli.client_options import CommandFailed, UsageError
from seproxy.cli.human import (
    display_width,
    duration_argument,
    format_duration,
    format_size,
    pad,
    plural,
    size_argument,
    utc_time,
)
from seproxy.cli.settings import add_config_option, settings_from_args
from seproxy.transfer.checksum_headers import canonical_adler32

READ_CHUNK = 4 * 1024 * 1024


def register(commands: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    add_config_option(common)
    common.add_argument("--json", action="store_true", help="machine-readable output")
    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("--se", metavar="NAME", help="only entries staged from this storage element")
    filters.add_argument("--older-than", type=duration_argument, metavar="AGE", help="created at least AGE ago (2h, 1d)")
    filters.add_argument("--unused-for", type=duration_argument, metavar="AGE", help="not read for at least AGE")

    parser = commands.add_parser(
        "cache",
        help="inspect, verify and purge the staging cache",
        description="Work on the staging cache described by the config, also while the service runs.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def action(name: str, run: Any, parents: list[argparse.ArgumentParser], help: str, description: str) -> Any:
        sub = actions.add_parser(name, parents=parents, help=help, description=description)
        sub.set_defaults(run=run)
        return sub

    listing = action(
        "ls",
        run_ls,
        [common, filters],
        "list entries",
        "List the cache's entries, least recently used first: id, area (staged: fetched from a storage "
        "element; upload: sent by a client, owed to a storage element), size, age, time since the last "
        "read, source, owner and state (pinned by an HTTP URL, upload pending).",
    )
    listing.add_argument("--area", choices=("staged", "upload"), help="only this area")
    action(
        "du",
        run_du,
        [common],
        "totals by area and SE, quota and watermarks",
        "Show how full the cache is: bytes and entries in total, by area and by storage element, the "
        "quota with the watermarks between which eviction works, and the free disk space.",
    )
    purging = action(
        "purge",
        run_purge,
        [common, filters],
        "remove entries",
        "Remove the entries that match every condition given, least recently used first. Entries being "
        "read or written are never removed; pinned entries (unexpired HTTP URLs) and uploads still owed "
        "to a storage element only with --force, unless an upload is older than cache.upload_lifetime "
        "(abandoned). A dry run tells what the real run would remove and keep, and why.",
    )
    purging.add_argument("--to-size", type=size_argument, metavar="SIZE", help="stop once the cache holds at most SIZE (50G)")
    purging.add_argument("--all", action="store_true", help="every entry (still never one in use)")
    purging.add_argument("--dry-run", action="store_true", help="show what would be removed, remove nothing")
    purging.add_argument("--force", action="store_true", help="also pinned entries and pending uploads")
    verifying = action(
        "verify",
        run_verify,
        [common, filters],
        "re-read entries and compare their checksums",
        "Re-read every selected entry and compare it with the checksums recorded when it was written. "
        "Exit code 1 when any entry is damaged or missing.",
    )
    verifying.add_argument("--remove", action="store_true", help="remove the damaged entries")


def _cache(args: argparse.Namespace) -> Cache:
    """The cache the config describes; never created here, where an operator only looks or cleans."""
    settings = settings_from_args(args)
    if not settings.cache_root.is_dir():
        raise CommandFailed(
            f"the cache {settings.cache_root} does not exist (nothing was staged with this config yet; "
            "is it the service's config?)"
        )
    return open_cache(settings)


def _selected(cache: Cache, args: argparse.Namespace) -> list[Entry]:
    now = time.time()
    return [
        entry
        for entry in cache.entries(area=getattr(args, "area", None), se=args.se)
        if (args.older_than is None or now - entry.created >= args.older_than)
        and (args.unused_for is None or now - entry.last_access >= args.unused_for)
    ]


def _entry_json(entry: Entry) -> dict[str, Any]:
    """An entry for scripts, its moments in ISO 8601 with their offset (UTC) as every other output has them."""
    moments = {
        "created": utc_time(entry.created),
        "last_access": utc_time(entry.last_access),
        "pinned_until": utc_time(entry.pinned_until) if entry.pinned_until else None,
    }
    return {**dataclasses.asdict(entry), **moments, "path": str(entry.path)}


def _state(entry: Entry, now: float) -> str:
    states = []
    if entry.upload_pending:
        states.append("upload pending")
    if entry.pinned_until > now:
        states.append(f"pinned {format_duration(entry.pinned_until - now)}")
    return ", ".join(states) or "-"


def _print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, default=str)
    print()


def _table(rows: list[list[str]]) -> None:
    """Columns aligned on a terminal, where a CJK character takes two columns."""
    widths = [max(display_width(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(pad(cell, width) for cell, width in zip(row, widths)).rstrip())


def run_ls(args: argparse.Namespace) -> int:
    with _cache(args) as cache:
        entries = _selected(cache, args)
    if args.json:
        _print_json([_entry_json(entry) for entry in entries])
        return 0
    now = time.time()
    rows = [["ID", "AREA", "SIZE", "AGE", "UNUSED", "SE", "SOURCE", "OWNER", "STATE"]]
    rows += [
        [
            entry.id[:12],
            entry.area,
            format_size(entry.size),
            format_duration(now - entry.created),
            format_duration(now - entry.last_access),
            entry.se or "-",
            entry.source_path or entry.name or "-",
            entry.owner or "-",
            _state(entry, now),
        ]
        for entry in entries
    ]
    _table(rows)
    print(f"{plural(len(entries), 'entry', 'entries')}, {format_size(sum(e.size for e in entries))}")
    return 0


def run_du(args: argparse.Namespace) -> int:
    with _cache(args) as cache:
        usage = cache.usage()
        root = cache.layout.root
    if args.json:
        _print_json({**dataclasses.asdict(usage), "root": str(root)})
        return 0
    print(
        f"cache {root}: {format_size(usage.total)} in {plural(usage.count, 'entry', 'entries')}, "
        f"{plural(usage.staging, 'write')} in progress"
    )
    print(f"quota {format_size(usage.quota)}: eviction from {format_size(usage.high_watermark)} "
          f"down to {format_size(usage.low_watermark)}; disk free {format_size(usage.disk_free)}")
    for title, totals in (("by area", usage.by_area), ("by storage element", usage.by_se)):
        print(f"{title}:")
        for name, size in sorted(totals.items()):
            print(f"  {name or '-':<24} {format_size(size)}")
    return 0


def run_purge(args: argparse.Namespace) -> int:
    try:
        rule = PurgeRule(
            older_than=args.older_than, unused_for=args.unused_for, se=args.se, to_size=args.to_size, everything=args.all
        )
    except ValueError:  # the rule's only complaint: no condition
        raise UsageError(
            "a purge needs a condition (--older-than, --unused-for, --se, --to-size) or --all; see --help"
        ) from None
    with _cache(args) as cache:
        report = purge(cache, rule, dry_run=args.dry_run, force=args.force)
    if args.json:
        _print_json(
            {
                "dry_run": report.dry_run,
                "freed": report.freed,
                "removed": [_entry_json(e) for e in report.removed],
                "kept": [{**_entry_json(e), "reason": report.reasons[e.id]} for e in report.kept],
            }
        )
    else:
        verb = "would remove" if report.dry_run else "removed"
        for entry in report.removed:
            print(f"{verb} {entry.id[:12]} {format_size(entry.size)} {entry.source_path or entry.name or ''}")
        for entry in report.kept:
            print(f"{'would keep' if report.dry_run else 'kept'} {entry.id[:12]} ({report.reasons[entry.id]})")
        print(
            f"{verb} {plural(len(report.removed), 'entry', 'entries')}, {format_size(report.freed)}; "
            f"{'would keep' if report.dry_run else 'kept'} {len(report.kept)}"
        )
    return 1 if report.kept else 0


def _damage(cache: Cache, entry: Entry) -> str | None:
    """Why ``entry`` is not what the index says, or None when it is intact."""
    try:
        with cache.open_read(entry.id) as lease, open(lease.path, "rb") as stream:
            xxh3 = xxhash.xxh3_64()
            adler32 = 1
            size = 0
            while chunk := stream.read(READ_CHUNK):
                size += len(chunk)
                xxh3.update(chunk)
                if entry.adler32:
                    adler32 = zlib.adler32(chunk, adler32)
    except FileNotFoundError:
        return "missing"
    if size != entry.size:
        return f"size {size}, index says {entry.size}"
    if xxh3.hexdigest() != entry.xxh3:
        return f"xxh3 {xxh3.hexdigest()}, index says {entry.xxh3}"
    if entry.adler32 and f"{adler32:08x}" != canonical_adler32(entry.adler32):
        return f"adler32 {adler32:08x}, index says {entry.adler32}"
    return None


def run_verify(args: argparse.Namespace) -> int:
    damaged: list[tuple[Entry, str, bool]] = []
    with _cache(args) as cache:
        entries = _selected(cache, args)
        for entry in entries:
            problem = _damage(cache, entry)
            if problem is not None:
                removed = bool(args.remove) and cache.remove(entry.id, force=True)
                damaged.append((entry, problem, removed))
    if args.json:
        _print_json(
            {
                "checked": len(entries),
                "damaged": [{**_entry_json(e), "problem": p, "removed": r} for e, p, r in damaged],
            }
        )
    else:
        for entry, problem, removed in damaged:
            print(f"DAMAGED {entry.id[:12]} {entry.source_path or entry.name or ''}: {problem}"
                  + (" (removed)" if removed else ""))
        print(f"checked {plural(len(entries), 'entry', 'entries')}: {len(damaged)} damaged")
    return 1 if damaged else 0
