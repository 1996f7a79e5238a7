"""``seproxy cache ls|du|purge|verify``: the operator's view of the staging cache.

Safe while the service runs: the CLI opens the same index, and the cache
itself refuses to remove what is being read, staged or still owed to a
storage element. ``ls``, ``du`` and ``purge --dry-run`` open the cache read
only (no recovery, nothing changed) and stream what they print, so they cost
little memory whatever the size of the cache. Exit codes: 0 done, 1
something was found wrong or could not be removed (in use, damaged), 2
usage or configuration error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

import xxhash

from seproxy.cache import Cache, Entry, OutdatedIndex, PurgeRule, purging
from seproxy.cache.configured import open_cache
from seproxy.cli.client_options import CommandFailed, UsageError
from seproxy.cli.human import (
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


def _count_argument(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = -1
    if count < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (0, 1, 2, ...)")
    return count


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
    listing.add_argument("--limit", type=_count_argument, metavar="N", help="at most N entries (least recently used first)")
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
        "re-read entries and compare their checksums; find files without entry",
        "Re-read every selected entry and compare it with the checksums recorded when it was written; "
        "without filters or --sample, also walk the cache for files that no entry describes. Neither runs "
        "when the cache is opened (that stays quick at any size): this is the full consistency check. "
        "Exit code 1 when any entry is damaged or missing, or a file has no entry.",
    )
    verifying.add_argument("--remove", action="store_true", help="remove the damaged entries and the files without entry")
    verifying.add_argument(
        "--sample", type=_count_argument, metavar="N", help="check N entries picked at random (a spot check of a large cache)"
    )
    verifying.add_argument(
        "--time-budget", type=duration_argument, metavar="AGE", help="stop after this long (30m) and say how far it got"
    )


def _cache(args: argparse.Namespace, *, read_only: bool = False) -> Cache:
    """The cache the config describes; never created here, where an operator only looks or cleans."""
    settings = settings_from_args(args)
    missing = CommandFailed(
        f"the cache {settings.cache_root} does not exist (nothing was staged with this config yet; "
        "is it the service's config?)"
    )
    if not settings.cache_root.is_dir():
        raise missing
    try:
        return open_cache(settings, read_only=read_only)
    except FileNotFoundError:
        raise missing from None
    except OutdatedIndex as exc:
        raise UsageError(str(exc)) from None


def _selected(cache: Cache, args: argparse.Namespace, limit: int | None = None) -> Iterator[Entry]:
    """The entries the filter options select, least recently used first, read as consumed."""
    return cache.scan(
        area=getattr(args, "area", None), se=args.se, older_than=args.older_than, unused_for=args.unused_for, limit=limit
    )


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


def _json_list(items: Iterable[dict[str, Any]]) -> int:
    """Write a JSON array item by item (a listing of a million entries is never held whole); return its length."""
    count = 0
    sys.stdout.write("[")
    for item in items:
        sys.stdout.write(("," if count else "") + "\n  " + json.dumps(item, default=str))
        count += 1
    sys.stdout.write("\n]" if count else "]")
    return count


# Terminal columns of every field but the last (free-form): fixed, so that rows print as they are read.
_WIDTHS = (12, 6, 10, 7, 7, 20, 20, 16)


def _row(*cells: str) -> str:
    """One line of the listing, aligned on a terminal where a CJK character takes two columns."""
    *fixed, last = cells
    return "  ".join([*(pad(cell, width) for cell, width in zip(fixed, _WIDTHS)), last]).rstrip()


def run_ls(args: argparse.Namespace) -> int:
    with _cache(args, read_only=True) as cache:
        entries = _selected(cache, args, args.limit)
        if args.json:
            _json_list(_entry_json(entry) for entry in entries)
            print()
            return 0
        now = time.time()
        print(_row("ID", "AREA", "SIZE", "AGE", "UNUSED", "STATE", "SE", "OWNER", "SOURCE"))
        count = total = 0
        for entry in entries:
            print(_row(
                entry.id[:12], entry.area, format_size(entry.size), format_duration(now - entry.created),
                format_duration(now - entry.last_access), _state(entry, now), entry.se or "-",
                entry.owner or "-", entry.source_path or entry.name or "-",
            ))  # fmt: skip
            count += 1
            total += entry.size
    print(f"{plural(count, 'entry', 'entries')}, {format_size(total)}")
    return 0


def run_du(args: argparse.Namespace) -> int:
    with _cache(args, read_only=True) as cache:
        usage = cache.usage()
        root = cache.layout.root
    if args.json:
        ratios = {se: {**dataclasses.asdict(counts), "hit_ratio": counts.hit_ratio} for se, counts in usage.traffic.items()}
        _print_json({**dataclasses.asdict(usage), "traffic": ratios, "root": str(root)})
        return 0
    print(
        f"cache {root}: {format_size(usage.total)} in {plural(usage.count, 'entry', 'entries')}, "
        f"{plural(usage.staging, 'write')} in progress"
    )
    print(f"quota {format_size(usage.quota)}: eviction from {format_size(usage.high_watermark)} "
          f"down to {format_size(usage.low_watermark)}; disk free {format_size(usage.disk_free)}")
    for title, totals, counts in (
        ("by area", usage.by_area, usage.entries_by_area),
        ("by storage element", usage.by_se, usage.entries_by_se),
    ):
        print(f"{title}:")
        for name, size in sorted(totals.items()):
            print(f"  {name or '-':<24} {format_size(size):>10} in {plural(counts[name], 'entry', 'entries')}")
    if usage.traffic:
        print("traffic by storage element (hit: sent from the cache, miss: fetched, stream-through: sent while staged):")
    for se, seen in usage.traffic.items():
        ratio = "-" if seen.hit_ratio is None else f"{seen.hit_ratio:.0%}"
        print(
            f"  {se:<24} hit {format_size(seen.hit)}, miss {format_size(seen.miss)}, "
            f"stream-through {format_size(seen.stream_through)}; hit ratio {ratio}"
        )
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
    verb, keep = ("would remove", "would keep") if args.dry_run else ("removed", "kept")
    kept: list[tuple[Entry, str]] = []  # few, unlike what goes
    freed = 0

    def removed(outcomes: Iterable[tuple[Entry, str | None]]) -> Iterator[Entry]:
        nonlocal freed
        for entry, reason in outcomes:
            if reason is None:
                freed += entry.size
                yield entry
            else:
                kept.append((entry, reason))

    with _cache(args, read_only=args.dry_run) as cache:
        outcomes = purging(cache, rule, dry_run=args.dry_run, force=args.force)
        if args.json:
            sys.stdout.write(f'{{\n"dry_run": {json.dumps(args.dry_run)},\n"removed": ')
            _json_list(_entry_json(entry) for entry in removed(outcomes))
            sys.stdout.write(',\n"kept": ')
            _json_list({**_entry_json(entry), "reason": reason} for entry, reason in kept)
            print(f',\n"freed": {freed}\n}}')
            return 1 if kept else 0
        count = 0
        for entry in removed(outcomes):
            print(f"{verb} {entry.id[:12]} {format_size(entry.size)} {entry.source_path or entry.name or ''}")
            count += 1
    for entry, reason in kept:
        print(f"{keep} {entry.id[:12]} ({reason})")
    print(f"{verb} {plural(count, 'entry', 'entries')}, {format_size(freed)}; {keep} {len(kept)}")
    return 1 if kept else 0


def _damage(entry: Entry) -> str | None:
    """Why ``entry`` is not what the index says, or None when it is intact.

    Read without a lease (no write to the index per entry): an entry removed
    meanwhile still reads whole through the open file, or is missing, which
    the caller tells from damage by asking the index again.
    """
    try:
        with open(entry.path, "rb") as stream:
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
    filtered = args.se is not None or args.older_than is not None or args.unused_for is not None
    if args.sample is not None and filtered:
        raise UsageError("--sample picks from the whole cache: it cannot be combined with --se, --older-than, --unused-for")
    deadline = time.monotonic() + (args.time_budget if args.time_budget is not None else float("inf"))
    damaged: list[tuple[Entry, str, bool]] = []
    orphans: list[str] = []
    checked = 0
    complete = True
    with _cache(args) as cache:
        entries = cache.sample(args.sample) if args.sample is not None else _selected(cache, args)
        for entry in entries:
            if time.monotonic() > deadline:
                complete = False
                break
            checked += 1
            problem = _damage(entry)
            if problem == "missing" and cache.get(entry.id) is None:
                continue  # removed while we looked: not damage
            if problem is not None:
                removed = bool(args.remove) and cache.remove(entry.id, force=True)
                damaged.append((entry, problem, removed))
        # The files no entry describes: only a walk of the whole cache finds them.
        if args.sample is None and not filtered and complete:
            for path in cache.orphans():
                if time.monotonic() > deadline:
                    complete = False
                    break
                if args.remove:
                    path.unlink(missing_ok=True)
                orphans.append(str(path))
    if args.json:
        _print_json(
            {
                "checked": checked,
                "complete": complete,
                "damaged": [{**_entry_json(e), "problem": p, "removed": r} for e, p, r in damaged],
                "orphans": orphans,
                "orphans_removed": bool(args.remove),
            }
        )
    else:
        for entry, problem, removed in damaged:
            print(f"DAMAGED {entry.id[:12]} {entry.source_path or entry.name or ''}: {problem}"
                  + (" (removed)" if removed else ""))
        for orphan in orphans:
            print(f"NO ENTRY {orphan}" + (" (removed)" if args.remove else ""))
        print(f"checked {plural(checked, 'entry', 'entries')}: {len(damaged)} damaged; "
              f"{plural(len(orphans), 'file')} without entry" + ("" if complete else "; stopped at the time budget"))
    return 1 if damaged or orphans else 0
