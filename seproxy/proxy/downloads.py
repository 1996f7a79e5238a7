"""``streamToClient`` and ``bulkToClient``: cached files (or one ``Range`` of one) to a Tornado response, in chunks;
and files still being staged, followed as they grow (``send_followed``, the door's).

Each chunk is flushed before the next is read, so a slow client slows the
reads (back-pressure) instead of filling the service's memory; no whole
file is ever held in memory.

A file id (``getFile/<name>``) resolves only to a complete entry:
``prepareFile`` names the entry once its staging has ended, so
``streamToClient`` never meets a growing file; the door does.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import aiofiles
import tornado.iostream
import tornado.web

from seproxy import metrics
from seproxy.byte_range import RangeNotSatisfiable, parse_range
from seproxy.cache import Cache, Entry, Follower
from seproxy.cache.traffic import HIT, STREAM_THROUGH
from seproxy.transfer.checksum_headers import DIGEST_HEADER, XXH3_HEADER, format_digest

log = logging.getLogger("seproxy.streams")

CHUNK = 1024 * 1024
# Pauses of a reader waiting for a growing file's next bytes: short at first (the first byte of a
# staging is what a client waits for), longer while nothing comes, so that idle readers cost little.
_FIRST_PAUSE = 0.001
_LONGEST_PAUSE = 0.02


def _checksum_headers(entry: Entry) -> dict[str, str]:
    """What seproxy's client checks the bytes against: xxh3 always, ADLER32 when the entry has it."""
    headers = {XXH3_HEADER: entry.xxh3, "ETag": f'"{entry.xxh3}"'}
    if entry.adler32:
        headers[DIGEST_HEADER] = format_digest(entry.adler32)
    return headers


async def send_cached_file(handler: tornado.web.RequestHandler, entry: Entry, path: Path, cache: Cache) -> None:
    """Answer with the file at ``path`` (the committed bytes of ``entry``, counted as hits of its SE
    in ``cache``), honouring ``Range``.

    Raises ``RangeNotSatisfiable`` (with ``Content-Range`` set) for an
    unsatisfiable range. Once the first byte is out an error can only cut
    the connection, so the client sees a short body and never takes it for
    the whole file.
    """
    try:
        wanted = parse_range(handler.request.headers.get("Range"), entry.size)
    except RangeNotSatisfiable:
        handler.set_header("Content-Range", f"bytes */{entry.size}")
        raise
    start, length = (wanted.start, wanted.length) if wanted else (0, entry.size)
    if wanted:
        handler.set_status(206)
        handler.set_header("Content-Range", wanted.content_range(entry.size))
    handler.set_header("Content-Type", "application/octet-stream")
    handler.set_header("Accept-Ranges", "bytes")
    handler.set_header("Content-Length", str(length))
    for name, value in _checksum_headers(entry).items():
        handler.set_header(name, value)

    async def body() -> None:
        nonlocal length
        async with aiofiles.open(path, "rb") as stream:
            await stream.seek(start)
            while length:
                chunk = await stream.read(min(CHUNK, length))
                if not chunk:
                    raise OSError(errno.EIO, f"cache file {entry.id} is shorter than its index says")
                length -= len(chunk)
                await _send(handler, chunk)
                metrics.count_se_bytes(cache, entry.se, HIT, len(chunk))

    await _streamed(handler, body(), f"cache entry {entry.id}")


async def send_chunks(handler: tornado.web.RequestHandler, chunks: Iterator[bytes]) -> None:
    """Answer with what ``chunks`` yields (a body of unknown length, so chunked), as a tar archive.

    Each chunk is made off the event loop (reading a file, compressing),
    and sent before the next is made.
    """
    handler.set_header("Content-Type", "application/x-tar")
    loop = asyncio.get_running_loop()

    async def body() -> None:
        while (chunk := await loop.run_in_executor(None, next, chunks, None)) is not None:
            await _send(handler, chunk)

    await _streamed(handler, body(), "bulk")


async def send_followed(
    handler: tornado.web.RequestHandler, follower: Follower, start: int, length: int | None, route: str, cache: Cache
) -> None:
    """Send ``length`` bytes (to the end if None) of a file being staged from ``start``, each as soon
    as it has arrived (counted as stream-through of its SE in ``cache``, as hits once it is whole).

    The head of the answer leaves with the first byte, so a staging that
    fails before it still gets an error answer; after it, the error
    (``StagingFailed``, ``TimeoutError`` past the staging's deadline) is
    raised with the body short, and the caller cuts the connection.
    """
    offset, end = start, None if length is None else start + length
    while end is None or offset < end:
        available = await arrived(follower, offset)
        if not available:
            if end is None:
                return
            raise OSError(errno.EIO, f"cache file {follower.growing.entry_id} ended at {offset} bytes, before {end}")
        block = follower.read(offset, min(available, CHUNK, CHUNK if end is None else end - offset))
        handler.write(block)
        await handler.flush()
        offset += len(block)
        metrics.sent(route, len(block))
        metrics.count_se_bytes(cache, follower.growing.se, HIT if follower.done else STREAM_THROUGH, len(block))


async def committed(follower: Follower) -> None:
    """Wait until the file followed is committed (whole and verified)."""
    while not follower.done:
        await arrived(follower, follower.poll())


async def arrived(follower: Follower, offset: int) -> int:
    """Wait until bytes from ``offset`` on have arrived, on the event loop (a look costs a few
    system calls, no thread); how many (0: the file ended before ``offset``)."""
    pause = _FIRST_PAUSE
    while (available := follower.arrived(offset)) is None:
        await asyncio.sleep(pause)
        pause = min(2 * pause, _LONGEST_PAUSE)
    return available


async def _send(handler: tornado.web.RequestHandler, chunk: bytes) -> None:
    handler.write(chunk)
    await handler.flush()  # the back-pressure: the next chunk is read once this one is out
    metrics.sent("stream", len(chunk))


async def _streamed(handler: tornado.web.RequestHandler, body: Coroutine[Any, Any, None], what: str) -> None:
    """Run ``body`` (which writes the answer) and finish the request, however it ends."""
    try:
        with metrics.ACTIVE_TRANSFERS.labels("stream").track_inprogress():
            await body
    except tornado.iostream.StreamClosedError:
        # The client went away: end the request quietly (nothing can reach it), and the caller releases the files.
        log.info("the client left the stream of %s before its end", what)
    except Exception:
        # The head said 200: cutting the connection is the only way to tell the client.
        log.exception("stream of %s failed mid-way; cutting the connection", what)
        handler.request.connection.close()  # type: ignore[union-attr]
    handler.finish()
