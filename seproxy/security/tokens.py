"""Bearer tokens (JWT, as WLCG token issuers such as INDIGO IAM hand out) checked by the service.

A token is accepted when its issuer is one the config names, its signature
verifies with one of that issuer's configured public keys (PEM files or a
JWKS file, chosen by ``kid``), it has not expired, and its audience names
this service (or the WLCG "any" audience). Keys come from files, not from
the issuer's URL at request time: the service must not depend on reaching
an identity provider to answer, and an operator decides which keys it trusts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization

from seproxy.security.scopes import ScopeRefused, StorageScopes, parse_scopes

WLCG_ANY_AUDIENCE = "https://wlcg.cern.ch/jwt/v1/any"
ALLOWED_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "EdDSA")
LEEWAY_SECONDS = 60
MAX_TOKEN_LENGTH = 16384


class TokenRefused(ValueError):
    """The token cannot be accepted; the message says why, without echoing the token."""


@dataclass(frozen=True)
class TokenIdentity:
    issuer: str
    subject: str
    expires: float
    claims: Mapping[str, Any]
    # The token's storage.* scopes under its issuer's base path; None: it carries none (groups decide).
    scopes: StorageScopes | None = None


@dataclass(frozen=True)
class TrustedIssuer:
    """One issuer: its ``iss`` value, the keys that sign its tokens, by key id ("" when the file has none)."""

    issuer: str
    keys: Mapping[str, Any]
    algorithms: tuple[str, ...]
    # Where the paths of its storage scopes start in the storage elements' namespace.
    base_path: str = "/"

    @classmethod
    def from_files(
        cls, issuer: str, key_files: Sequence[Path], algorithms: Sequence[str], base_path: str = "/"
    ) -> TrustedIssuer:
        keys: dict[str, Any] = {}
        for path in key_files:
            keys.update(_load_keys(path))
        unknown = sorted(set(algorithms) - set(ALLOWED_ALGORITHMS))
        if unknown:
            raise ValueError(f"issuer {issuer}: algorithm {unknown[0]!r} is not accepted ({', '.join(ALLOWED_ALGORITHMS)})")
        return cls(issuer, keys, tuple(algorithms), base_path)


def _load_keys(path: Path) -> dict[str, Any]:
    """Public keys from a PEM file (key id "") or a JWKS file (by ``kid``)."""
    data = path.read_bytes()
    if data.lstrip().startswith(b"{"):
        try:
            keys = json.loads(data)["keys"]
            return {key.get("kid", ""): jwt.PyJWK.from_dict(key).key for key in keys}
        except (ValueError, KeyError, TypeError, jwt.PyJWKError) as exc:
            raise ValueError(f"{path}: not a JWKS file ({exc})") from None
    try:
        return {"": serialization.load_pem_public_key(data)}
    except ValueError as exc:
        raise ValueError(f"{path}: not a PEM public key ({exc})") from None


class TokenVerifier:
    """Checks tokens against the configured issuers and this service's audiences."""

    def __init__(self, issuers: Sequence[TrustedIssuer], audiences: Sequence[str]) -> None:
        self._issuers = {issuer.issuer: issuer for issuer in issuers}
        self._audiences = [*audiences, WLCG_ANY_AUDIENCE]

    def verify(self, token: str) -> TokenIdentity:
        if len(token) > MAX_TOKEN_LENGTH:
            raise TokenRefused(f"token longer than {MAX_TOKEN_LENGTH} characters")
        try:
            header = jwt.get_unverified_header(token)
            claimed = jwt.decode(token, options={"verify_signature": False}).get("iss")
        except jwt.PyJWTError:
            raise TokenRefused("not a signed JWT") from None
        trusted = self._issuers.get(claimed) if isinstance(claimed, str) else None
        if trusted is None:
            raise TokenRefused(f"issuer {str(claimed)[:200]!r} is not trusted by this service")
        key = trusted.keys.get(header.get("kid", "")) or (trusted.keys.get("") if len(trusted.keys) == 1 else None)
        if key is None:
            raise TokenRefused(f"no key {str(header.get('kid'))[:64]!r} configured for issuer {trusted.issuer}")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=list(trusted.algorithms),
                audience=self._audiences,
                issuer=trusted.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "sub", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRefused("the token has expired") from None
        except jwt.InvalidAudienceError:
            raise TokenRefused("the token's audience does not name this service") from None
        except jwt.PyJWTError as exc:
            raise TokenRefused(f"the token does not verify: {exc}") from None
        try:
            scopes = parse_scopes(claims.get("scope"), trusted.base_path)
        except ScopeRefused as exc:
            raise TokenRefused(str(exc)) from None
        return TokenIdentity(trusted.issuer, str(claims["sub"]), float(claims["exp"]), claims, scopes)
