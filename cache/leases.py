"""Who holds a lease, whether that process still lives, and keeping leases fresh.

Leases live in the index so that another process (the operator CLI) sees
what is in use. A lease names its holder by pid and by the process start time:
after a crash and a reboot or a container restart the same pid comes back,
and only the start time tells the new process from the dead one. A lease also
carries an expiry, renewed by a heartbeat while its holder runs, so a holder
that cannot be checked (another pid namespace) still loses its leases when
it stops renewing them.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of ``pid``, None where /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields start after the last ")".
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


@dataclass(frozen=True)
class Holder:
    pid: int
    start: int | None

    @classmethod
    def current(cls) -> Holder:
        stat = _proc_stat(os.getpid())
        return cls(os.getpid(), stat[1] if stat else None)

    def is_alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # it exists, under another user
        stat = _proc_stat(self.pid)
        if stat is None or self.start is None:
            return True
        state, start = stat
        # A zombie is dead for our purposes; another start time means a reused pid.
        return state not in ("Z", "X") and start == self.start


class Heartbeat:
    """Calls ``beat`` every ``interval`` seconds on a daemon thread until stopped."""

    def __init__(self, interval: float, beat: Callable[[], None]) -> None:
        self._interval = interval
        self._beat = beat
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cache-lease-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                self._beat()
            except Exception:
                # A busy index now and then must not end the heartbeat for good.
                log.exception("renewing cache leases failed")

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()
