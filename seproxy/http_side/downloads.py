"""The side server's only route: ``GET``/``HEAD /<key>/<name>``, the file or archive a link designates.

Behind a load balancer the path starts with the route of the instance that
made the link (``/<route>/<key>/<name>``); another instance checks the key
and answers 503, for the file is not in its cache.

Nothing in the URL ever becomes a file path: the key is checked (signature,
expiry), its link names cache entries, and the cache index says where
their files are. A path of any other shape is a 404; a key that does not
check out is a 403; the answer to a refusal is a short text, never a file.

While a body is being sent, every file in it is under a cache read lease
(shared by the downloads of that file in progress: ``shared_leases``), so
neither eviction nor the operator's purge (in any process) removes it; the
pins set when the link was made keep the files between downloads.
"""

from __future__ import annotations

import hashlib
import logging
import time
from contextlib import ExitStack
from urllib.parse import quote, unquote

from seproxy.byte_range import RangeNotSatisfiable, parse_range
from seproxy.cache import Cache, Entry
from seproxy.http_side.body import FileSlice, Piece, body_length, select
from seproxy.http_side.checksums import checksum_headers
from seproxy.http_side.links import Link, LinkStore
from seproxy.http_side.request import RequestHead
from seproxy.http_side.response import Refused, Response, http_date, plain
from seproxy.http_side.shared_leases import OutsideCache, SharedLeases
from seproxy.http_side.signing import Signer
from seproxy.http_side.tar_stream import tar_body

log = logging.getLogger("seproxy.http")

NOT_FOUND = "no such download"


class Downloads:
    """Turns a request head into a response; called from the server's threads."""

    def __init__(self, signer: Signer, links: LinkStore, cache: Cache, route: str = "") -> None:
        self._signer = signer
        self._links = links
        self._leases = SharedLeases(cache)
        self._route = route

    def close(self) -> None:
        self._leases.close()

    def answer(self, request: RequestHead) -> Response:
        # /<key>/<name>, or /<route>/<key>/<name> from an instance behind a load balancer.
        parts = request.path.split("/")
        if len(parts) not in (3, 4) or not all(parts[1:]):
            return plain(404, NOT_FOUND)
        route = parts[1] if len(parts) == 4 else ""
        key, name = parts[-2], unquote(parts[-1], errors="surrogateescape")
        try:
            signed = self._signer.check(key, name, time.time(), route)
        except Refused as refused:
            return plain(refused.status, str(refused))
        response = self._serve_link(request, signed.link_id, name) if route == self._route else _elsewhere(route)
        response.key = f"{signed.key_id}:{signed.link_id}"
        return response

    def _serve_link(self, request: RequestHead, link_id: str, name: str) -> Response:
        link = self._links.get(link_id)
        if link is None or link.name != name:
            return plain(404, NOT_FOUND)
        if link.single_use and link.used is not None:
            return plain(403, "this single-use link was already used")
        return self._serve(request, link)

    def _serve(self, request: RequestHead, link: Link) -> Response:
        with ExitStack() as leases:
            try:
                entries = [leases.enter_context(self._leases.hold(member.entry_id)) for member in link.members]
            except FileNotFoundError:
                return plain(404, "the file is no longer in the cache")
            except OutsideCache as exc:
                log.error("%s: not served", exc)
                return plain(404, NOT_FOUND)
            response = self._file_response(request, link, entries)
            if response.status < 400:
                response.release = leases.pop_all().close
            return response

    def _file_response(self, request: RequestHead, link: Link, entries: list[Entry]) -> Response:
        body: list[Piece]
        if link.archive:
            body = tar_body([(member.name, entry) for member, entry in zip(link.members, entries)])
            headers = {"ETag": _archive_etag(link, entries)}
        else:
            (entry,) = entries
            body = [FileSlice(entry.path, 0, entry.size)]
            headers = checksum_headers(entry)
        size = body_length(body)
        last_modified = http_date(max(entry.created for entry in entries))
        if_range = request.headers.get("if-range")
        wanted_range = request.headers.get("range") if if_range in (None, headers["ETag"], last_modified) else None
        try:
            wanted = parse_range(wanted_range, size)
        except RangeNotSatisfiable as exc:
            return plain(416, str(exc), extra=[("Content-Range", f"bytes */{size}")])
        if request.method == "GET" and link.single_use and not self._links.claim(link.id, time.time()):
            return plain(403, "this single-use link was already used")
        status, length = 200, size
        headers.update(
            {
                "Content-Type": "application/octet-stream",
                "Content-Disposition": _attachment(link.name),
                "Last-Modified": last_modified,
                "Accept-Ranges": "bytes",
            }
        )
        if wanted is not None:
            status, length = 206, wanted.length
            headers["Content-Range"] = wanted.content_range(size)
            body = select(body, wanted.start, wanted.length)
        headers["Content-Length"] = str(length)
        return Response(status, list(headers.items()), body)


def _elsewhere(route: str) -> Response:
    """A genuine URL of another instance: a balancer sends it here only when that instance is down."""
    return plain(
        503,
        f"this download is held by the instance {route!r}, which is not available now;"
        " call prepareFileForHTTP again for a new URL",
        extra=[("Retry-After", "10")],
    )


def _archive_etag(link: Link, entries: list[Entry]) -> str:
    """Changes whenever a member's name or content does (each member's xxh3 stands for its content)."""
    digest = hashlib.sha256()
    for member, entry in zip(link.members, entries):
        digest.update(f"{member.name}\0{entry.xxh3}\0".encode("utf-8", "surrogateescape"))
    return f'"tar-{digest.hexdigest()[:32]}"'


def _attachment(name: str) -> str:
    """``Content-Disposition`` with the name as plain ASCII and, exactly, as RFC 6266's ``filename*``."""
    fallback = "".join(c if " " <= c < "\x7f" and c not in '"\\%' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='', errors='surrogateescape')}"
