"""Who is on the other end of a TLS connection, in DIRAC's terms.

Grid clients authenticate with RFC 3820 proxy certificates, signed by their
own user certificate rather than by a CA. OpenSSL verifies such a chain when
asked to; what it leaves to us is to see through the proxies to the user
behind them, because registries, ownership and audit logs all speak of the
user's DN, never of a short-lived proxy's.
"""

from __future__ import annotations

import _ssl
import datetime
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID, ObjectIdentifier

from seproxy.security import der

# The short names OpenSSL prints in its one-line form, which is what DIRAC
# registries and grid-mapfiles hold; anything else is written as its OID.
_SHORT_NAMES = {
    "DC": NameOID.DOMAIN_COMPONENT,
    "C": NameOID.COUNTRY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "L": NameOID.LOCALITY_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "CN": NameOID.COMMON_NAME,
    "emailAddress": NameOID.EMAIL_ADDRESS,
    "UID": NameOID.USER_ID,
    "serialNumber": NameOID.SERIAL_NUMBER,
}
_NAMES_BY_OID = {oid: name for name, oid in _SHORT_NAMES.items()}
# Slash-form values may themselves hold "/" or "+" ("CN=host/se.example.org"),
# so a separator counts only where an attribute name and "=" follow it.
_NEXT_ATTRIBUTE = "(?=(?:" + "|".join(_SHORT_NAMES) + r"|\d+(?:\.\d+)+)=)"
_RDN_SEPARATOR = re.compile("/" + _NEXT_ATTRIBUTE)
_VALUE_SEPARATOR = re.compile(r"\+" + _NEXT_ATTRIBUTE)

# Only RFC 3820 proxies count: OpenSSL refuses the older Globus forms (a "CN=proxy"
# certificate without this extension, or the draft's OID) at the handshake, and
# reading a CA-issued certificate named like one as a proxy would make its issuer,
# a CA, the caller.
PROXY_CERT_INFO = ObjectIdentifier("1.3.6.1.5.5.7.1.14")
INHERIT_ALL_POLICY = "1.3.6.1.5.5.7.21.1"
LIMITED_POLICY = "1.3.6.1.4.1.3536.1.1.1.9"
DIRAC_GROUP = ObjectIdentifier("1.2.42.42")
_LIMITED_POLICY_DER = der.encode_oid(LIMITED_POLICY)
_GROUP_STRING_TAGS = (der.IA5_STRING, der.UTF8_STRING, der.PRINTABLE_STRING, der.VISIBLE_STRING)


@dataclass(frozen=True)
class PeerIdentity:
    """The caller as DIRAC sees it: the user's DN, whatever proxy they sent."""

    dn: str  # the end-entity certificate's subject: whom registries know
    subject: str  # the leaf's, a proxy's when one was sent
    issuer: str
    is_proxy: bool
    is_limited_proxy: bool
    dirac_group: str | None
    not_after: datetime.datetime  # the earliest among the proxies and the end-entity certificate

    def seconds_left(self, now: datetime.datetime | None = None) -> int:
        """How long the credential still holds, never below zero."""
        now = now or datetime.datetime.now(datetime.UTC)
        return max(0, int((self.not_after - now).total_seconds()))


def dn_string(name: x509.Name) -> str:
    """``/DC=org/DC=example/CN=Alice``: the form in which DIRAC compares DNs.

    The slash form does not escape, so a value that holds what reads as the
    start of another attribute (``CN=Carol/CN=Ops`` as one value) would give
    the same string as a different name (``CN=Carol``, then ``CN=Ops``): such
    a name is refused (``ValueError``) rather than taken for someone else.
    A ``/`` that starts no attribute (``CN=host/se.example.org``) is kept.
    """
    return "".join("/" + "+".join(_attribute_string(attribute) for attribute in rdn) for rdn in name.rdns)


def parse_dn(text: str) -> x509.Name:
    """The inverse of :func:`dn_string`, for DNs written in configuration."""
    pieces = _RDN_SEPARATOR.split(text)
    if len(pieces) < 2 or pieces[0]:
        raise ValueError(f"{text!r} is not a DN in slash form, such as /DC=org/DC=example/CN=Name")
    rdns = []
    for piece in pieces[1:]:
        attributes = []
        for assignment in _VALUE_SEPARATOR.split(piece):
            key, _, value = assignment.partition("=")
            if not value:
                raise ValueError(f"DN {text!r}: {key} has an empty value")
            try:
                oid = _SHORT_NAMES.get(key) or ObjectIdentifier(key)
                attributes.append(x509.NameAttribute(oid, value))
            except ValueError as exc:
                raise ValueError(f"DN {text!r}: {key}={value!r}: {exc}") from exc
        rdns.append(x509.RelativeDistinguishedName(attributes))
    return x509.Name(rdns)


def identity_from_chain(chain_der: Sequence[bytes]) -> PeerIdentity:
    """The identity behind a verified chain (leaf first, as OpenSSL reports it).

    Only the proxies and the end-entity certificate are read: the CAs above
    them were vetted by OpenSSL, and some real CA names are more than
    ``cryptography`` will parse.
    """
    if not chain_der:
        raise ValueError("empty certificate chain: the peer sent no certificate")
    index = 0
    try:
        certs = []
        for index, data in enumerate(chain_der):  # noqa: B007 (the except below names the certificate)
            certs.append(x509.load_der_x509_certificate(data))
        proxies: list[tuple[x509.Certificate, bool]] = []  # (proxy, is limited), leaf first
        group = None  # from the leaf-most proxy that names one
        for index, cert in enumerate(certs):
            limited = _proxy_limitation(cert)
            if limited is None:
                break
            if index + 1 == len(certs) or certs[index + 1].subject != cert.issuer:
                raise ValueError("a proxy certificate, but the chain does not go on to its issuer")
            proxies.append((cert, limited))
            if group is None:
                group = _dirac_group(cert)
        end_entity = certs[len(proxies)]
        return PeerIdentity(
            dn=dn_string(end_entity.subject),
            subject=dn_string(certs[0].subject),
            issuer=dn_string(certs[0].issuer),
            is_proxy=bool(proxies),
            is_limited_proxy=any(limited for _, limited in proxies),
            dirac_group=group,
            not_after=min(cert.not_valid_after_utc for cert in certs[: len(proxies) + 1]),
        )
    except ValueError as exc:
        raise ValueError(f"certificate {index} of the chain: {exc}") from exc


def peer_chain_der(ssl_sock: Any) -> list[bytes]:
    """The peer's verified chain (leaf first) of an ``SSLSocket`` or ``SSLObject``; [] without one."""
    public = getattr(ssl_sock, "get_verified_chain", None)
    if public is not None:  # Python 3.13 and later: DER bytes
        return [bytes(cert) for cert in public() or ()]
    # Python 3.11 and 3.12 have it only on the C object behind the wrapper.
    chain = ssl_sock._sslobj.get_verified_chain()
    return [cert.public_bytes(_ssl.ENCODING_DER) for cert in chain or ()]


def _attribute_string(attribute: x509.NameAttribute[str | bytes]) -> str:
    name = _NAMES_BY_OID.get(attribute.oid, attribute.oid.dotted_string)
    if not isinstance(attribute.value, str):
        return f"{name}=#{attribute.value.hex()}"
    value = attribute.value
    if _RDN_SEPARATOR.search(value) or _VALUE_SEPARATOR.search(value) or value.startswith("#"):
        raise ValueError(
            f"the name's {name} value {value[:200]!r} would read as another name in slash form "
            "(it holds '/' or '+' followed by an attribute and '=', or starts with '#')"
        )
    return f"{name}={value}"


def _proxy_limitation(cert: x509.Certificate) -> bool | None:
    """None for a certificate that is no proxy, else whether the proxy is limited."""
    proxy_cert_info = _extension_der(cert, PROXY_CERT_INFO)
    if proxy_cert_info is None:
        return None
    return _policy_language(proxy_cert_info) == _LIMITED_POLICY_DER


def _policy_language(proxy_cert_info: bytes) -> bytes:
    """The DER of the proxy policy language OID in a ProxyCertInfo value."""
    # ProxyCertInfo ::= SEQUENCE { pCPathLenConstraint INTEGER OPTIONAL, proxyPolicy SEQUENCE }
    for tag, content in der.children(der.read_one(proxy_cert_info, der.SEQUENCE)):
        if tag == der.SEQUENCE:
            language_tag, _, end = der.read(content)
            if language_tag != der.OID:
                raise ValueError("ProxyCertInfo: the policy language is not an OID")
            return content[:end]
    raise ValueError("ProxyCertInfo without a proxy policy")


def _dirac_group(cert: x509.Certificate) -> str | None:
    value = _extension_der(cert, DIRAC_GROUP)
    if value is None:
        return None
    tag, content, end = der.read(value)
    if tag not in _GROUP_STRING_TAGS or end != len(value):
        raise ValueError(f"the DIRAC group extension ({DIRAC_GROUP.dotted_string}) is not a string")
    return content.decode("utf-8")


def _extension_der(cert: x509.Certificate, oid: ObjectIdentifier) -> bytes | None:
    """The raw value of the extension ``oid`` (one unknown to ``cryptography``), if present."""
    for extension in cert.extensions:
        if extension.oid == oid:
            der: bytes = extension.value.public_bytes()
            return der
    return None
