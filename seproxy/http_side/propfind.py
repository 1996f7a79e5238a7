"""``PROPFIND`` (RFC 4918 §9.1): the request body read safely, the multistatus written.

``gfal-stat``, ``gfal-ls`` and ``davix-ls`` learn size, modification time
and checksum this way, as from dCache and XRootD. A side-server URL is one
resource, never a collection, so every ``Depth`` answers the same single
response (``Depth: 1`` on a tar bundle's URL lists the bundle itself); the
storage door lists a directory as a collection followed by its entries.

The body comes from the network: it is bounded in size by the server, and
parsed with expat refusing any document type declaration, so no entity is
ever declared, let alone expanded (no "billion laughs", no external
entities); nesting is bounded too. A body that is not such XML is a 400.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from xml.parsers import expat
from xml.sax.saxutils import escape

DAV = "DAV:"
DCACHE = "http://www.dcache.org/2013/webdav"
MULTISTATUS_TYPE = "application/xml; charset=utf-8"
DEPTHS = ("0", "1", "infinity")
_MAX_NESTING = 16

# (namespace, local name) of a property.
PropertyName = tuple[str, str]


class BadPropfind(ValueError):
    """A PROPFIND body that is not a propfind document we can read."""


def finite_depth_error(message: str) -> bytes:
    """The body of the 403 that refuses ``Depth: infinity`` on a collection (RFC 4918 §9.1): the
    ``propfind-finite-depth`` precondition, and ``message`` for a person reading it."""
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<d:error xmlns:d="DAV:"><d:propfind-finite-depth/><d:responsedescription>{escape(message)}'
        "</d:responsedescription></d:error>\n"
    ).encode()


@dataclass(frozen=True)
class Asked:
    """What the body asks: every property (``allprop``, or no body), their names only, or a list."""

    names_only: bool = False
    properties: tuple[PropertyName, ...] | None = None  # None: all


def read_request(body: bytes) -> Asked:
    """What a PROPFIND body asks for; ``BadPropfind`` names what is wrong with it."""
    if not body.strip():
        return Asked()
    reader = _Reader()
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = _no_doctype
    parser.EntityDeclHandler = _no_doctype
    parser.StartElementHandler = reader.start
    parser.EndElementHandler = reader.end
    try:
        parser.Parse(body, True)
    except expat.ExpatError as exc:
        raise BadPropfind(f"the PROPFIND body is not well-formed XML ({expat.errors.messages[exc.code]})") from None
    return reader.asked()


def _no_doctype(*_: object) -> None:
    raise BadPropfind("a PROPFIND body must not declare a document type or entities")


class _Reader:
    """Follows ``<propfind>`` and the one child that says what is asked."""

    def __init__(self) -> None:
        self.path: list[PropertyName] = []
        self.kind: str | None = None
        self.properties: list[PropertyName] = []

    def start(self, tag: str, _attributes: object) -> None:
        name = _split(tag)
        if len(self.path) >= _MAX_NESTING:
            raise BadPropfind(f"the PROPFIND body nests deeper than {_MAX_NESTING} elements")
        if not self.path and name != (DAV, "propfind"):
            raise BadPropfind("the PROPFIND body must be a DAV: propfind element")
        if len(self.path) == 1 and name[0] == DAV and name[1] in ("allprop", "propname", "prop"):
            if self.kind is not None:
                raise BadPropfind("a propfind holds one of allprop, propname and prop")
            self.kind = name[1]
        if len(self.path) == 2 and self.path[1] == (DAV, "prop") and len(self.properties) < 64:
            self.properties.append(name)
        self.path.append(name)

    def end(self, _tag: str) -> None:
        self.path.pop()

    def asked(self) -> Asked:
        if self.kind is None:
            raise BadPropfind("the propfind element names none of allprop, propname and prop")
        if self.kind == "prop":
            return Asked(properties=tuple(self.properties))
        return Asked(names_only=self.kind == "propname")


def _split(tag: str) -> PropertyName:
    namespace, _, local = tag.rpartition(" ")
    return namespace, local


@dataclass(frozen=True)
class FileProperties:
    """The live properties of one served file (values computed only when asked)."""

    size: int
    last_modified: str  # HTTP date
    created: str  # RFC 3339
    etag: str
    content_type: str
    display_name: str
    checksums: Callable[[], str] | None  # "adler32=...,md5=..." as dCache writes it
    collection: bool = False  # a directory of a storage element (the door lists them)


def multistatus(resources: list[tuple[str, FileProperties]], asked: Asked) -> bytes:
    """The 207 body: one response per (href, already percent-encoded; properties), with what was asked."""
    names: list[PropertyName] = [*_VALUES, (DCACHE, "Checksums")]
    wanted = names if asked.properties is None else list(dict.fromkeys(asked.properties))
    prefixes: dict[str, str] = {DAV: "d", DCACHE: "dc"}
    for namespace, _ in wanted:
        prefixes.setdefault(namespace, f"n{len(prefixes)}")
    declarations = " ".join(f'xmlns:{p}="{escape(ns, {chr(34): "&quot;"})}"' for ns, p in prefixes.items() if ns)
    responses = "".join(_response(href, properties, asked, wanted, prefixes) for href, properties in resources)
    return f'<?xml version="1.0" encoding="utf-8"?>\n<d:multistatus {declarations}>{responses}</d:multistatus>\n'.encode()


_VALUES: dict[PropertyName, Callable[[FileProperties], str]] = {
    (DAV, "getcontentlength"): lambda p: str(p.size),
    (DAV, "getlastmodified"): lambda p: p.last_modified,
    (DAV, "creationdate"): lambda p: p.created,
    (DAV, "getetag"): lambda p: p.etag,
    (DAV, "getcontenttype"): lambda p: p.content_type,
    (DAV, "displayname"): lambda p: p.display_name,
    (DAV, "resourcetype"): lambda p: "",
}
_COLLECTION = "<d:resourcetype><d:collection/></d:resourcetype>"


def _response(href: str, properties: FileProperties, asked: Asked, wanted: list[PropertyName], prefixes: dict[str, str]) -> str:
    values: dict[PropertyName, Callable[[], str]] = {name: functools.partial(v, properties) for name, v in _VALUES.items()}
    if properties.checksums is not None:
        values[(DCACHE, "Checksums")] = properties.checksums
    found = [name for name in wanted if name in values]
    missing = [name for name in wanted if name not in values]

    def element(name: PropertyName, value: str) -> str:
        if name == (DAV, "resourcetype") and properties.collection and value == "":
            return _COLLECTION
        tag = f"{prefixes[name[0]]}:{name[1]}" if name[0] else name[1]
        return f"<{tag}>{escape(value)}</{tag}>" if value else f"<{tag}/>"

    def propstat(names: list[PropertyName], status: str, filled: bool) -> str:
        inner = "".join(element(n, values[n]() if filled else "") for n in names)
        return f"<d:propstat><d:prop>{inner}</d:prop><d:status>HTTP/1.1 {status}</d:status></d:propstat>"

    parts = [propstat(found, "200 OK", not asked.names_only)] if found else []
    if missing:
        parts.append(propstat(missing, "404 Not Found", False))
    return f"<d:response><d:href>{escape(href)}</d:href>{''.join(parts)}</d:response>"
