"""``seproxy token``: a bearer token from the development issuer, to try the door and the RPC with curl.

Only the development issuer (whose key the embedded default keeps in the
state folder) signs here: a real site's tokens come from its identity
provider, never from this command.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import jwt

from seproxy.cli.client_options import UsageError
from seproxy.cli.settings import add_config_option, settings_from_args
from seproxy.config import parse_duration
from seproxy.security.devcreds import DEV_TOKEN_ISSUER, DEV_TOKEN_KEY
from seproxy.service import own_audiences

DEFAULT_SCOPE = "storage.read:/"
DESCRIPTION = (
    "Print a WLCG token (JWT) signed by the development token issuer of the embedded default, for the "
    'development user: curl -H "Authorization: Bearer $(seproxy token)" https://localhost:8443/lfn/... '
    "Refused when the config trusts no development issuer."
)


def register(commands: Any) -> None:
    parser = commands.add_parser("token", help="print a bearer token of the development issuer", description=DESCRIPTION)
    add_config_option(parser)
    parser.add_argument("--scope", action="append", metavar="SCOPE", help=f"a scope, repeatable (default: {DEFAULT_SCOPE})")
    parser.add_argument("--lifetime", default="1h", metavar="DURATION", help="how long the token is valid (default: 1h)")
    parser.set_defaults(run=run_token)


def run_token(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    try:
        lifetime = parse_duration(args.lifetime)
    except ValueError as exc:
        raise UsageError(f"--lifetime: {exc}") from None
    if lifetime <= 0:
        raise UsageError("--lifetime must be positive")
    if not any(spec.issuer == DEV_TOKEN_ISSUER for spec in settings.tokens.issuers.values()):
        raise UsageError(
            f"no development token issuer is configured ({settings.source} trusts no issuer {DEV_TOKEN_ISSUER}); "
            "tokens for this service come from its identity provider"
        )
    subjects = [s.subject for user in settings.registry.users.values() for s in user.token_subjects if s.issuer == DEV_TOKEN_ISSUER]
    if not subjects:
        raise UsageError(f"no user of {settings.source} has a token subject of the issuer {DEV_TOKEN_ISSUER}")
    key_path = settings.service.state_dir / "dev-credentials" / DEV_TOKEN_KEY
    try:
        key = key_path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the development issuer's key {key_path}: {exc.strerror or exc}") from None
    now = int(time.time())
    claims = {
        "iss": DEV_TOKEN_ISSUER,
        "sub": subjects[0],
        "aud": own_audiences(settings, settings.service.port),
        "iat": now,
        "nbf": now,
        "exp": now + int(lifetime),
        "scope": " ".join(args.scope or [DEFAULT_SCOPE]),
        "wlcg.ver": "1.0",
    }
    print(jwt.encode(claims, key, algorithm="ES256"))
    return 0
