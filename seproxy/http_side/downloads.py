"""The side server's only route: ``/<key>/<name>``, the file or archive a link designates.

``GET`` and ``HEAD`` serve it as grid storage does (checksums on request,
validators, conditional and multi-range requests: ``representation``);
``PROPFIND`` describes it as a WebDAV server would (``propfind``), and
``OPTIONS`` tells what is served, on any path.

Behind a load balancer the path starts with the route of the instance that
made the link (``/<route>/<key>/<name>``), so that the balancer sends it
where the file is cached. Any instance checks the key; one that holds no
link for it stages the files its grant names and serves them
(``on_demand``). A URL it cannot serve so (a single-use one, or one whose
key carries no grant) is answered 503 naming the instance that holds it.

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

import functools
import hashlib
import logging
import time
from concurrent.futures import Future
from contextlib import ExitStack
from datetime import UTC, datetime
from urllib.parse import quote, unquote

from seproxy.cache import Cache, Entry
from seproxy.http_side.body import FileSlice, Piece, body_length
from seproxy.http_side.conditional import Validators
from seproxy.http_side.digests import ALGORITHMS, DigestOf, checksum_values, file_digest
from seproxy.http_side.links import Link, LinkStore
from seproxy.http_side.on_demand import OnDemand
from seproxy.http_side.propfind import DEPTHS, MULTISTATUS_TYPE, BadPropfind, FileProperties, multistatus, read_request
from seproxy.http_side.representation import Plan, Representation, framed, plan
from seproxy.http_side.request import ALLOW, RequestHead
from seproxy.http_side.response import Refused, Response, plain
from seproxy.http_side.shared_leases import OutsideCache, SharedLeases
from seproxy.http_side.signing import SignedKey, Signer
from seproxy.http_side.tar_stream import tar_body
from seproxy.transfer.checksum_headers import XXH3_HEADER

log = logging.getLogger("seproxy.http")

NOT_FOUND = "no such download"


class Downloads:
    """Turns a request head into a response; called from the server's threads."""

    def __init__(self, signer: Signer, links: LinkStore, cache: Cache, route: str = "") -> None:
        self._signer = signer
        self._links = links
        self._cache = cache
        self._leases = SharedLeases(cache)
        self._route = route
        # Set by the application that can stage files (HTTPSide.serve_on_demand); None: it cannot.
        self.on_demand: OnDemand | None = None

    def close(self) -> None:
        if self.on_demand is not None:
            self.on_demand.close()
        self._leases.close()

    def answer(self, request: RequestHead) -> Response | Future[Response]:
        """The response, or (for a URL whose files are staged on demand) its future."""
        if request.method == "OPTIONS":
            return Response(200, [("DAV", "1"), ("Allow", ALLOW), ("Accept-Ranges", "bytes"), ("Content-Length", "0")])
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
        response = self._serve_key(request, signed, route, name)
        key = f"{signed.key_id}:{signed.link_id}"  # for the access log: never the signature nor the grant
        if isinstance(response, Future):
            response.add_done_callback(functools.partial(_name_key, key))
        else:
            response.key = key
        return response

    def _serve_key(self, request: RequestHead, signed: SignedKey, route: str, name: str) -> Response | Future[Response]:
        link = self._links.get(signed.link_id)
        if link is not None:
            return self._serve_link(request, link, name)
        grant = signed.grant
        if grant is None or grant.single_use or self.on_demand is None:
            return plain(404, NOT_FOUND) if route == self._route else _elsewhere(route)
        return self.on_demand.start(signed, grant, lambda adopted: self._serve(request, adopted))

    def _serve_link(self, request: RequestHead, link: Link, name: str) -> Response:
        if link.name != name:
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
        extra = {}
        if link.archive:
            body = tar_body([(member.name, entry) for member, entry in zip(link.members, entries)])
            validators = Validators(_archive_etag(link, entries), max(entry.modified for entry in entries))
            representation = Representation(body_length(body), validators)
        else:
            (entry,) = entries
            body = [FileSlice(entry.path, 0, entry.size)]
            representation = entry_representation(self._cache, entry)
            extra[XXH3_HEADER] = entry.xxh3
        if request.method == "PROPFIND":
            return propfind_answer(request, [(request.path, file_properties(representation, entries, link.name))])
        chosen = plan(request.method, request.headers, representation)
        refused = refusal(chosen)
        if refused is not None:
            return refused
        if request.method == "GET" and link.single_use and not self._links.claim(link.id, time.time()):
            return plain(403, "this single-use link was already used")
        pieces = framed(chosen, body, representation)
        headers = {**chosen.headers, **extra, "Content-Disposition": _attachment(link.name)}
        return Response(chosen.status, list(headers.items()), pieces)


def entry_representation(cache: Cache, entry: Entry) -> Representation:
    """One cached file as served, wherever it is served from (the side server, the door)."""
    return Representation(entry.size, Validators(f'"{entry.xxh3}"', entry.modified), recorded_digests(cache, entry))


def recorded_digests(cache: Cache, entry: Entry) -> DigestOf:
    """The checksums of ``entry``: as the index keeps them, else computed now and kept from then on."""

    def digest_of(algorithm: str) -> str:
        value: str | None = getattr(entry, algorithm)
        if not value:  # md5, sha256 until first asked; adler32 of entries older than its column
            value = file_digest(entry.path, algorithm)
            cache.record_digest(entry.id, algorithm, value)
        return value

    return digest_of


def refusal(chosen: Plan) -> Response | None:
    """The answer to a plan that sends no body (304, 412, 416), or None."""
    if chosen.status in (412, 416):
        return plain(chosen.status, chosen.message, extra=list(chosen.headers.items()))
    if chosen.status == 304:
        return Response(304, list(chosen.headers.items()))
    return None


def file_properties(representation: Representation, entries: list[Entry], name: str) -> FileProperties:
    """What ``PROPFIND`` tells of cached files served as one representation named ``name``."""
    digest_of = representation.digest_of
    known = tuple(a for a in ALGORITHMS if a == "adler32" or getattr(entries[0], a))
    created = datetime.fromtimestamp(min(entry.created for entry in entries), UTC)
    return FileProperties(
        size=representation.size,
        last_modified=representation.validators.last_modified,
        created=created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        etag=representation.validators.etag,
        content_type=representation.content_type,
        display_name=name,
        checksums=None if digest_of is None else lambda: checksum_values(digest_of, known),
    )


def propfind_answer(request: RequestHead, resources: list[tuple[str, FileProperties]]) -> Response:
    """The 207 describing ``resources`` (href, properties), or the 400 a bad ``Depth`` or body gets."""
    if request.headers.get("depth", "infinity").strip(" \t").lower() not in DEPTHS:
        return plain(400, "the Depth header must be 0, 1 or infinity")
    try:
        asked = read_request(request.body)
    except BadPropfind as exc:
        return plain(400, str(exc))
    answer = multistatus(resources, asked)
    return Response(207, [("Content-Type", MULTISTATUS_TYPE), ("Content-Length", str(len(answer)))], [answer])


def _elsewhere(route: str) -> Response:
    """A genuine URL of another instance: a balancer sends it here only when that instance is down."""
    return plain(
        503,
        f"this download is held by the instance {route!r}, which is not available now; call prepareFileForHTTP again for a new URL",
        extra=[("Retry-After", "10")],
    )


def _name_key(key: str, done: Future[Response]) -> None:
    if not done.cancelled() and done.exception() is None:
        done.result().key = key


def _archive_etag(link: Link, entries: list[Entry]) -> str:
    """Changes whenever a member's name, content or time in its header does (each member's xxh3
    stands for its content), so that ``If-Range`` never resumes an archive laid out otherwise (that
    of another instance, whose copy of a file without a source time has another time)."""
    digest = hashlib.sha256()
    for member, entry in zip(link.members, entries):
        digest.update(f"{member.name}\0{entry.xxh3}\0{int(entry.modified)}\0".encode("utf-8", "surrogateescape"))
    return f'"tar-{digest.hexdigest()[:32]}"'


def _attachment(name: str) -> str:
    """``Content-Disposition`` with the name as plain ASCII and, exactly, as RFC 6266's ``filename*``."""
    fallback = "".join(c if " " <= c < "\x7f" and c not in '"\\%' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='', errors='surrogateescape')}"
