"""``prepareFileForHTTP``: logical file names in, one signed download URL out.

There is no file catalogue here: a logical file name (LFN) is looked for on
the storage elements of ``http.lfn_storage_elements`` in that order, at the
path its element's ``lfn_path`` template gives (the embedded default: the
LFN itself, on LocalSE). The first element that delivers the file wins; the
ones that failed before it are named in the answer with their reasons, and
when none delivers, the error names them all. A caller may only reach
elements its VO may use, as for ``prepareFile``.

The files of one call are staged concurrently, ``http.staging_concurrency``
at a time. Each file is pinned as soon as it is staged, so that the first
files of a large bundle are not evicted while the last ones arrive. One LFN
is served as itself; several are served as one tar archive whose members are
the LFNs without their leading ``/`` (as ``tar`` itself stores absolute paths).

With ``http.answer_when = "started"``, one LFN is answered as soon as its
staging has started (``Stager.open``): the URL serves the file as it grows,
and it is pinned when its staging ends. The replica walk then stops at the
first element whose staging starts: a staging that fails later cuts the
downloads in progress, and the URL answers 404 afterwards (a new call tries
the elements again). An archive waits for all its members, whatever the
setting: its members' sizes go into the tar headers before their bytes.
"""

from __future__ import annotations

import contextvars
import datetime
import errno
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from seproxy.cache import Entry, Growing, VerificationError
from seproxy.config import LFN_FIELD
from seproxy.errors import failure
from seproxy.http_side.grants import Grant
from seproxy.http_side.side import HTTPSide
from seproxy.proxy.describe import describe
from seproxy.proxy.staging import Stager
from seproxy.registry import Caller, Registry
from seproxy.rpc.executor import check_cancelled
from seproxy.storage.base import path_text_problem
from seproxy.transfer import S_ERROR, S_OK, SErrorException

T = TypeVar("T")


@dataclass(frozen=True)
class Staged:
    se: str
    entry: Entry | Growing  # growing: answered when its staging started
    # Elements tried before, with why they could not deliver.
    replica_errors: dict[str, str]


class NoReplica(Exception):
    """No storage element delivered the file."""

    def __init__(self, errors: dict[str, str], code: int) -> None:
        # Storage errors usually name their element already.
        reasons = [why if why.startswith(f"{se}: ") else f"{se}: {why}" for se, why in errors.items()]
        super().__init__("; ".join(reasons) or "no storage element is configured")
        self.code = code


def prepare_for_http(stager: Stager, http: HTTPSide | None, caller: Caller, lfns: str | list[Any]) -> dict[str, Any]:
    """Stage the files named by ``lfns`` (one LFN or a list) and answer with their download URL."""
    if http is None:
        return S_ERROR(errno.ENOSYS, "prepareFileForHTTP: the HTTP side server is not enabled here ([http] enabled)")
    wanted = _checked_lfns(lfns, http.settings.max_files)
    started = http.settings.answer_when == "started" and len(wanted) == 1
    staged, failed = _stage_all(
        wanted, lambda lfn: _stage_replica(stager, http, caller, lfn, http.pin, started=started), http.settings.staging_concurrency
    )
    if failed:
        first = next(iter(failed.values()))
        details = " | ".join(f"{lfn}: {exc}" for lfn, exc in failed.items())
        return S_ERROR(first.code, f"prepareFileForHTTP: {len(failed)} of {len(wanted)} file(s) could not be staged: {details}")
    archive = len(wanted) > 1
    # A caller the registry knows gets a URL that any instance can serve (as that user and group).
    group = caller.group if caller.valid_group else None
    published = http.publish(caller.username, [(lfn, staged[lfn].entry) for lfn in wanted], group=group)
    files = {}
    for lfn, done in staged.items():
        files[lfn] = {"SE": done.se, **describe(done.entry)}
        if done.replica_errors:
            files[lfn]["ReplicaErrors"] = done.replica_errors
    return S_OK(
        {
            "HttpURL": published.url,
            "HttpKey": published.key,
            "Expires": datetime.datetime.fromtimestamp(published.expires, datetime.UTC),
            "SingleUse": http.settings.single_use,
            "Archive": archive,
            "Size": published.size,
            "Files": files,
            "Staged": not any(isinstance(done.entry, Growing) for done in staged.values()),
        }
    )


def _checked_lfns(lfns: str | list[Any], limit: int) -> list[str]:
    """The distinct LFNs asked for, in order; ``SErrorException(EINVAL)`` for anything that is not one."""
    given = [lfns] if isinstance(lfns, str) else lfns
    if not given:
        raise SErrorException("prepareFileForHTTP: no LFN given", errno=errno.EINVAL)
    if len(given) > limit:
        raise SErrorException(f"prepareFileForHTTP: {len(given)} LFNs, at most {limit} per call", errno=errno.EINVAL)
    for lfn in given:
        problem = lfn_problem(lfn)
        if problem:
            shown = repr(lfn)[:200] if isinstance(lfn, str) else type(lfn).__name__
            raise SErrorException(f"prepareFileForHTTP: {shown} is not an LFN: {problem}", errno=errno.EINVAL)
    return list(dict.fromkeys(given))


def lfn_problem(lfn: Any) -> str | None:
    if not isinstance(lfn, str):
        return "an LFN is a string"
    if not lfn.startswith("/") or lfn.endswith("/"):
        return "an LFN is an absolute path to a file, such as /vo/data/file.dat"
    problem = path_text_problem(lfn)
    if problem:
        return problem
    if any(part in (".", "..") for part in lfn.split("/")):
        return "'.' and '..' are not allowed"
    return None


def first_replica(places: list[tuple[str, str]], lfn: str, attempt: Callable[[str, str], T], doing: str) -> tuple[str, T, dict[str, str]]:
    """The walk over the replicas of ``lfn``: ``attempt(se, pfn)`` on each place in order, the first
    that succeeds wins: (its element, its result, why the ones before failed); ``NoReplica`` otherwise."""
    errors: dict[str, str] = {}
    codes: set[int] = set()
    for se, template in places:
        try:
            return se, attempt(se, template.replace(LFN_FIELD, lfn)), errors
        except (SErrorException, OSError, VerificationError) as exc:
            reason = failure(exc, doing, "-").result
            errors[se] = reason["Message"]
            codes.add(reason.get("Errno") or errno.EIO)
    raise NoReplica(errors, codes.pop() if len(codes) == 1 else errno.EIO)


def _stage_all(wanted: list[str], stage: Callable[[str], Staged], width: int) -> tuple[dict[str, Staged], dict[str, NoReplica]]:
    """``stage`` each LFN, ``width`` at a time: (staged, failed), both in the order asked.

    The files of one call are independent, so a bundle of many small files on
    a slow element takes the time of the slowest few, not of all in a row.
    Each staging runs in the caller's context (its deadline and cancellation);
    anything but ``NoReplica`` ends the call, the first in the order asked.
    """
    with ThreadPoolExecutor(min(width, len(wanted)), thread_name_prefix="prepare") as pool:
        futures = [pool.submit(contextvars.copy_context().run, _one, stage, lfn) for lfn in wanted]
        try:
            outcomes = [future.result() for future in futures]
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    staged = {lfn: outcome for lfn, outcome in zip(wanted, outcomes) if isinstance(outcome, Staged)}
    failed = {lfn: outcome for lfn, outcome in zip(wanted, outcomes) if isinstance(outcome, NoReplica)}
    return staged, failed


def _one(stage: Callable[[str], Staged], lfn: str) -> Staged | NoReplica:
    check_cancelled()
    try:
        return stage(lfn)
    except NoReplica as exc:
        return exc


def _stage_replica(
    stager: Stager, http: HTTPSide, caller: Caller, lfn: str, pin: Callable[[Entry], None], *, started: bool = False
) -> Staged:
    """The first replica of ``lfn`` that stages (with ``started``: whose staging starts), ``pin``ned
    once whole; ``NoReplica`` naming every failure otherwise."""

    def stage(se: str, pfn: str) -> Entry | Growing:
        got = stager.open(caller, se, pfn, name=lfn) if started else stager.stage(caller, se, pfn, name=lfn)
        if isinstance(got, Entry):
            pin(got)
        return got

    se, entry, errors = first_replica(http.replica_places, lfn, stage, "prepareFileForHTTP")
    return Staged(se, entry, errors)


def stage_for_url(stager: Stager, http: HTTPSide, registry: Callable[[], Registry], grant: Grant, pin_until: float) -> list[Entry]:
    """The side server's resolver: the files of a URL made elsewhere, staged as its user (as the
    registry knows them now) would stage them with ``prepareFileForHTTP``, pinned until ``pin_until``."""
    caller = registry().caller_of_url(grant.user, grant.group)

    def pin(entry: Entry) -> None:
        stager.cache.pin(entry.id, pin_until)

    entries = []
    for lfn in grant.lfns:
        check_cancelled()
        problem = lfn_problem(lfn)
        if problem:
            raise ValueError(f"{lfn[:200]!r} is not an LFN: {problem}")
        try:
            entry = _stage_replica(stager, http, caller, lfn, pin).entry
        except NoReplica as exc:
            raise SErrorException(f"{lfn}: {exc}", errno=exc.code) from None
        assert isinstance(entry, Entry), "staged whole: not started=True"
        entries.append(entry)
    return entries
