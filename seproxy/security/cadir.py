"""The hashed CA directory (``/etc/grid-security/certificates`` layout).

OpenSSL finds an issuer in a ``capath`` by the hash of its subject name:
``<hash>.0`` for certificates and ``<hash>.r0`` for CRLs, the digit counting
up when two names share a hash. The hash is OpenSSL's own (SHA-1 of a
canonical re-encoding of the name, not of the DER in the certificate), so it
is re-implemented here rather than shelling out to ``openssl rehash``, which
may be missing or differ in version from the library the service links.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from seproxy.security import der
from seproxy.security.pki import write_file

# String types OpenSSL folds to lower-case, space-collapsed UTF-8; any other
# type (NumericString, for example) is hashed exactly as encoded.
_DECODERS = {
    der.UTF8_STRING: "utf-8",
    der.BMP_STRING: "utf-16-be",
    der.UNIVERSAL_STRING: "utf-32-be",
    # OpenSSL reads the single-byte types as Latin-1, T61String included.
    der.PRINTABLE_STRING: "latin-1",
    der.T61_STRING: "latin-1",
    der.IA5_STRING: "latin-1",
    der.VISIBLE_STRING: "latin-1",
}
_SPACE = b" \t\n\v\f\r"
_SPACE_RUN = re.compile(rb"[ \t\n\v\f\r]+")


def subject_hash(cert: x509.Certificate) -> str:
    """``openssl x509 -subject_hash``: the name of the certificate's file in a CA directory."""
    fields = _tbs_fields(cert.tbs_certificate_bytes)
    # TBSCertificate: [0] version, serial, signature, issuer, validity, subject, ...
    if fields[0][0] == 0xA0:
        fields = fields[1:]
    return _name_hash(fields[4][1])


def crl_issuer_hash(crl: x509.CertificateRevocationList) -> str:
    """``openssl crl -hash``: the name of the CRL's file in a CA directory."""
    fields = _tbs_fields(crl.tbs_certlist_bytes)
    # TBSCertList: version (optional INTEGER), signature, issuer, ...
    if fields[0][0] == der.INTEGER:
        fields = fields[1:]
    return _name_hash(fields[1][1])


def install_ca(ca_dir: Path, cert: x509.Certificate) -> Path:
    """Trust ``cert`` through ``ca_dir``; installing the same certificate again is a no-op."""
    pem = cert.public_bytes(Encoding.PEM)
    return _install(ca_dir, f"{subject_hash(cert)}.", pem, lambda found: x509.load_pem_x509_certificate(found) == cert)


def install_crl(ca_dir: Path, crl: x509.CertificateRevocationList) -> Path:
    """Put ``crl`` where OpenSSL looks for it, replacing an older CRL of the same issuer."""
    pem = crl.public_bytes(Encoding.PEM)
    path = _install(
        ca_dir, f"{crl_issuer_hash(crl)}.r", pem, lambda found: x509.load_pem_x509_crl(found).issuer == crl.issuer
    )
    if path.read_bytes() != pem:
        write_file(path, pem, 0o644)
    return path


def _install(ca_dir: Path, stem: str, pem: bytes, matches: Callable[[bytes], bool]) -> Path:
    """The first ``<stem>N`` whose content ``matches``, or a new one holding ``pem``."""
    ca_dir.mkdir(parents=True, exist_ok=True)
    index = 0
    while True:
        path = ca_dir / f"{stem}{index}"
        try:
            if matches(path.read_bytes()):
                return path
        except FileNotFoundError:
            try:
                # A hard link never replaces a file that a concurrent caller
                # has just put there; if one did, look at it again.
                write_file(path, pem, 0o644, replace=False)
                return path
            except FileExistsError:
                continue
        except ValueError:
            pass  # something unreadable holds this name: leave it, take the next
        index += 1


def _tbs_fields(tbs: bytes) -> list[tuple[int, bytes]]:
    """The fields of a to-be-signed structure, read from the raw bytes.

    ``cryptography`` refuses some names that real CAs issue (T61String with
    Latin-1 letters, for one), and OpenSSL hashes whatever is there.
    """
    return list(der.children(der.read_one(tbs, der.SEQUENCE)))


def _name_hash(name_content: bytes) -> str:
    """OpenSSL's X509_NAME_hash of a Name, given the content of its SEQUENCE."""
    canonical = b"".join(_canonical_rdn(rdn) for _tag, rdn in der.children(name_content))
    digest = hashlib.sha1(canonical).digest()
    return f"{int.from_bytes(digest[:4], 'little'):08x}"


def _canonical_rdn(rdn: bytes) -> bytes:
    attributes = []
    for _tag, attribute in der.children(rdn):
        (_, oid), (value_tag, value) = der.children(attribute)
        attributes.append(der.encode(der.SEQUENCE, der.encode(der.OID, oid) + _canonical_value(value_tag, value)))
    # A SET OF in DER lists its members sorted by their encoding.
    return der.encode(der.SET, b"".join(sorted(attributes)))


def _canonical_value(tag: int, value: bytes) -> bytes:
    if tag not in _DECODERS:
        return der.encode(tag, value)
    text = value.decode(_DECODERS[tag]).encode("utf-8").strip(_SPACE)
    # Only ASCII is folded: bytes of multi-byte UTF-8 characters are >= 0x80
    # and neither spaces nor capitals to bytes.lower().
    return der.encode(der.UTF8_STRING, _SPACE_RUN.sub(b" ", text).lower())
