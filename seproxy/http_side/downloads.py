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

A URL asked again is answered from what its first request resolved
(``known``): no key check, link lookup, representation or plain header
made again, only the lease, the request's own conditions and ranges.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from concurrent.futures import Future
from datetime import UTC, datetime
from urllib.parse import quote, unquote

from seproxy import metrics
from seproxy.cache import Cache, Entry, Growing
from seproxy.http_side.body import FileSlice, GrowingSlice, Piece, body_length
from seproxy.http_side.conditional import Validators
from seproxy.http_side.digests import ALGORITHMS, DigestOf, checksum_values, file_digest
from seproxy.http_side.growing import GrowingFile
from seproxy.http_side.known import DIGEST_COMBINATIONS, Known, KnownUrls, Prepared, digests_asked
from seproxy.http_side.links import Link, LinkStore
from seproxy.http_side.on_demand import OnDemand
from seproxy.http_side.propfind import DEPTHS, MULTISTATUS_TYPE, BadPropfind, FileProperties, multistatus, read_request
from seproxy.http_side.representation import Plan, Representation, framed, plan
from seproxy.http_side.request import ALLOW, RequestHead
from seproxy.http_side.response import Refused, Response, encode_headers, plain
from seproxy.http_side.shared_leases import OutsideCache, SharedLeases
from seproxy.http_side.signing import CLOCK_SKEW, SignedKey, Signer
from seproxy.http_side.tar_stream import tar_body
from seproxy.transfer.checksum_headers import XXH3_HEADER

log = logging.getLogger("seproxy.http")

NOT_FOUND = "no such download"
GONE = "the file is no longer in the cache (removed, or its staging failed); call prepareFileForHTTP again"
# The length of a growing slice whose size is not known yet: the file's end, wherever it is.
UNKNOWN_LENGTH = 1 << 62


class Downloads:
    """Turns a request head into a response; called from the server's threads."""

    def __init__(self, signer: Signer, links: LinkStore, cache: Cache, route: str = "") -> None:
        self._signer = signer
        self._links = links
        self._cache = cache
        self._leases = SharedLeases(cache)
        self._known = KnownUrls()
        self._route = route
        # One function for every answer: the server adds up what answers sent before counting it.
        self._count_served = functools.partial(metrics.count_served, cache)
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
        known = self._known.get(request.path, time.time())
        if known is not None:  # the answer of the slow way below, with its key, link and checks as remembered
            answer = self._serve(request, known.link, known)
            answer.key = known.key
            return answer
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
            return self._serve_link(request, link, name, signed)
        grant = signed.grant
        if grant is None or grant.single_use or self.on_demand is None:
            return plain(404, NOT_FOUND) if route == self._route else _elsewhere(route)
        return self.on_demand.start(signed, grant, lambda adopted: self._serve(request, adopted))

    def _serve_link(self, request: RequestHead, link: Link, name: str, signed: SignedKey) -> Response:
        if link.name != name:
            return plain(404, NOT_FOUND)
        if link.single_use:
            if link.used is not None:
                return plain(403, "this single-use link was already used")
            return self._serve(request, link)
        known = Known(f"{signed.key_id}:{signed.link_id}", signed.expires + CLOCK_SKEW, link)
        self._known.add(request.path, known)
        return self._serve(request, link, known)

    def _serve(self, request: RequestHead, link: Link, known: Known | None = None, *, growing: bool = True) -> Response:
        try:
            entries, release = self._leases.hold(link.entry_ids)
        except FileNotFoundError:
            if growing:
                return self._not_committed(request, link)
            return plain(404, GONE)
        except OutsideCache as exc:
            log.error("%s: not served", exc)
            return plain(404, NOT_FOUND)
        try:
            response = self._file_response(request, link, entries, known)
        except BaseException:
            release()
            raise
        if response.status < 400:
            response.release = release
            response.served = self._count_served
        else:
            release()
        return response

    def _not_committed(self, request: RequestHead, link: Link) -> Response:
        """The answer for a link whose file is not (or no longer) a cache entry: still being
        staged (served as it grows), or gone (a staging that failed, an eviction)."""
        entry_id = link.members[0].entry_id
        growing = None if link.archive else self._cache.growing_entry(entry_id)
        if growing is None:
            if not link.archive and self._cache.get(entry_id) is not None:
                return self._serve(request, link, growing=False)  # it was committed a moment ago
            return plain(404, GONE)
        try:
            growth = GrowingFile(growing, self._cache, self._leases)
        except OSError as exc:
            log.warning("link %s: %s", link.id, exc)
            return plain(502, "the staging of the file from its storage element failed; call prepareFileForHTTP again")
        response = self._growing_response(request, link, growth)
        if response.body and response.status < 400:
            response.release = growth.close
        else:
            growth.close()
        return response

    def _growing_response(self, request: RequestHead, link: Link, growth: GrowingFile) -> Response:
        """A file still being staged, served as its bytes arrive: with the size the source announced
        as ``Content-Length`` (ranges too), else chunked, whole; checksums only as announced."""
        growing = growth.growing
        representation = growing_representation(growing)
        if request.method == "PROPFIND":
            if growing.size is None:
                return plain(503, "the file is being staged and its size is not known yet", extra=[("Retry-After", "5")])
            properties = file_properties(representation, [], link.name, created=growing.started)
            return propfind_answer(request, [(request.path, properties)])
        if growing.size is None:
            headers = {**request.headers}
            headers.pop("range", None)
            chosen = plan(request.method, headers, representation)
            chosen.headers.pop("Content-Length", None)
            chosen.headers.update({"Accept-Ranges": "none", "Transfer-Encoding": "chunked"})
        else:
            chosen = plan(request.method, request.headers, representation)
        whole = GrowingSlice(
            growing.tmp_path, 0, growing.size or UNKNOWN_LENGTH, se=growing.se, growing=True, growth=growth, chunked=growing.size is None
        )
        return self._planned(request, link, chosen, [whole], None if growing.size is None else representation)

    def _file_response(self, request: RequestHead, link: Link, entries: list[Entry], known: Known | None) -> Response:
        prepared = known.prepared if known is not None else None
        if prepared is None or not prepared.holds(entries):
            prepared = self._prepare(link, entries)
            if known is not None:
                known.prepared = prepared
        representation = prepared.representation
        if request.method == "PROPFIND":
            return propfind_answer(request, [(request.path, file_properties(representation, entries, link.name))])
        asked = digests_asked(request.headers)
        encoded = prepared.whole.get(asked) if asked is not None else None
        if encoded is not None:
            return Response(200, [], list(prepared.body), encoded=encoded)
        chosen = plan(request.method, request.headers, representation)
        response = self._planned(request, link, chosen, prepared.body, representation, prepared.extra)
        if asked is not None and known is not None and response.status == 200 and len(prepared.whole) < DIGEST_COMBINATIONS:
            prepared.whole[asked] = encode_headers(response.headers)
        return response

    def _prepare(self, link: Link, entries: list[Entry]) -> Prepared:
        body: list[Piece]
        extra = staleness(entries)
        if link.archive:
            body = tar_body([(member.name, entry) for member, entry in zip(link.members, entries)])
            validators = Validators(_archive_etag(link, entries), max(entry.modified for entry in entries))
            representation = Representation(body_length(body), validators)
        else:
            (entry,) = entries
            body = [FileSlice(entry.path, 0, entry.size, se=entry.se)]
            representation = entry_representation(self._cache, entry)
            extra[XXH3_HEADER] = entry.xxh3
        return Prepared(entries, representation, body, extra)

    def _planned(
        self,
        request: RequestHead,
        link: Link,
        chosen: Plan,
        body: list[Piece],
        representation: Representation | None,
        extra: dict[str, str] | None = None,
    ) -> Response:
        """The answer ``chosen`` for ``body``: a refusal, or the body (framed for ``representation``
        when given, else as it is), claiming a single-use link."""
        refused = refusal(chosen)
        if refused is not None:
            return refused
        if request.method == "GET" and link.single_use and not self._links.claim(link.id, time.time()):
            return plain(403, "this single-use link was already used")
        pieces = body if representation is None else framed(chosen, body, representation)
        headers = {**chosen.headers, **(extra or {}), "Content-Disposition": _attachment(link.name)}
        return Response(chosen.status, list(headers.items()), pieces)


def growing_representation(growing: Growing) -> Representation:
    """A file still being staged, as served: its size and checksum as its source announced them
    (a size of 0 while it is unknown), validators that hold for this staging only."""
    modified = growing.source_mtime if growing.source_mtime is not None else growing.started
    validators = Validators(f'"staging-{growing.entry_id}"', modified)
    adler32 = growing.adler32
    if adler32 is None:
        return Representation(growing.size or 0, validators, algorithms=())
    return Representation(growing.size or 0, validators, lambda _algorithm: adler32, algorithms=("adler32",))


def entry_representation(cache: Cache, entry: Entry) -> Representation:
    """One cached file as served, wherever it is served from (the side server, the door)."""
    return Representation(entry.size, Validators(f'"{entry.xxh3}"', entry.modified), recorded_digests(cache, entry))


def staleness(entries: list[Entry]) -> dict[str, str]:
    """The header that tells a client its copy could not be revalidated (the source was unreachable
    when last asked), as RFC 7234 caches say it; none for copies known current."""
    return {"Warning": '111 - "Revalidation Failed"'} if any(entry.unverified for entry in entries) else {}


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


def file_properties(representation: Representation, entries: list[Entry], name: str, *, created: float | None = None) -> FileProperties:
    """What ``PROPFIND`` tells of cached files served as one representation named ``name``
    (no entries: a file being staged since ``created``, with what its source announced)."""
    digest_of = representation.digest_of
    if entries:
        known = tuple(a for a in ALGORITHMS if a == "adler32" or getattr(entries[0], a))
        created = min(entry.created for entry in entries)
    else:
        known = representation.algorithms
    assert created is not None, "a file being staged has a start"
    return FileProperties(
        size=representation.size,
        last_modified=representation.validators.last_modified,
        created=datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        etag=representation.validators.etag,
        content_type=representation.content_type,
        display_name=name,
        checksums=None if digest_of is None or not known else lambda: checksum_values(digest_of, known),
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


@functools.lru_cache(maxsize=4096)
def _attachment(name: str) -> str:
    """``Content-Disposition`` with the name as plain ASCII and, exactly, as RFC 6266's ``filename*``;
    remembered, for a URL's name is answered again and again and escaping it costs more than the rest
    of its headers."""
    fallback = "".join(c if " " <= c < "\x7f" and c not in '"\\%' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='', errors='surrogateescape')}"
