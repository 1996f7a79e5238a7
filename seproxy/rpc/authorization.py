"""Who may call a method: DIRAC's ``auth_<method>`` rules.

A rule is a list of words: ``all`` (anyone, even without a certificate),
``authenticated`` (a registered user acting in a valid group), or property
names, any one of which the caller's group must hold.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from seproxy.registry import Caller

ALL = "all"
AUTHENTICATED = "authenticated"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    status: int = 200  # 401: no usable credentials, 403: credentials without the right
    reason: str = ""


ALLOWED = Decision(True)


@functools.lru_cache(maxsize=256)
def _words(rule: tuple[str, ...]) -> frozenset[str]:
    """A rule's words, "all" and "authenticated" in any case (rules are few: the handler's and the config's)."""
    return frozenset(word.lower() if word.lower() in (ALL, AUTHENTICATED) else word for word in rule)


def authorize(rule: Sequence[str], caller: Caller, method: str) -> Decision:
    """Decide whether ``caller`` may call ``method`` under ``rule``."""
    words = _words(tuple(rule))
    if ALL in words:
        return ALLOWED
    if caller.anonymous:
        return Decision(False, 401, f"{method} needs a client certificate")
    if caller.seconds_left() == 0:
        return Decision(False, 401, f"the caller's credential expired ({caller.dn or caller.subject})")
    if not caller.valid_dn:
        if caller.authenticated_by == "token":
            return Decision(False, 403, f"token subject {caller.subject!r} of {caller.issuer} is not registered with this service")
        return Decision(False, 403, f"DN {caller.dn!r} is not registered with this service")
    if not caller.valid_group:
        return Decision(False, 403, f"user {caller.username!r} is not a member of group {caller.group!r}")
    if AUTHENTICATED in words:
        return ALLOWED
    needed = sorted(words)
    if words.intersection(caller.properties):
        return ALLOWED
    if not needed:
        return Decision(False, 403, f"{method} is not open to any caller")
    return Decision(
        False,
        403,
        f"{method} needs one of the properties {', '.join(needed)}; group {caller.group!r} has "
        f"{', '.join(caller.properties) or 'none'}",
    )
