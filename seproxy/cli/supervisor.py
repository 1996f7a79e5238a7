"""Worker processes: one instance on every core of its host, and the process that keeps them running.

One Python process serves from one core at a time (the GIL), so
``service.workers`` processes serve the same ports. The supervisor checks
the configuration, the credentials and the ports before any worker starts,
so that a mistake is one line and a non-zero exit before anything listens.
It holds each port with a bound socket that does not listen (``SO_REUSEPORT``,
see ``seproxy.http_side.listen``); the workers listen on the same ports with
sockets of their own and the kernel spreads connections evenly over them.
The supervisor resolves port 0 once, so every worker serves the same port.

Workers are fresh interpreters (``seproxy serve --worker``), not forks:
nothing is inherited but the environment, so Prometheus's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``, which must be set before metrics are made) and
per-process state such as SQLite connections and threads start clean.
Whatever must be unique across workers is decided through the cache's
SQLite and file locks (see ``seproxy.cache.locks``).

The supervisor restarts a worker that dies, waiting longer after each
quick death (a worker that dies at once would otherwise spin); it passes
SIGHUP (reload) and SIGTERM (graceful stop) to all of them.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import multiprocess

from seproxy.config import ConfigError, Settings, Workers
from seproxy.http_side.listen import listening_sockets
from seproxy.service import server_tls

log = logging.getLogger("seproxy.supervisor")

# The environment variable prometheus_client reads for its multiprocess mode.
METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# Time the workers get to start, and to stop gracefully after SIGTERM, before they are killed.
START_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# A worker that ran less than this before dying died "quickly": the next restart waits longer.
QUICK_DEATH = 10.0
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0


@dataclass(frozen=True)
class WorkerSpec:
    """What ``seproxy serve --worker`` is told: its number among ``count``, the ports the
    supervisor reserved, the pipe that tells it the worker listens."""

    index: int
    count: int
    port: int
    http_port: int
    ready_fd: int

    def argument(self) -> str:
        return f"{self.index}:{self.count}:{self.port}:{self.http_port}:{self.ready_fd}"

    @classmethod
    def parse(cls, text: str) -> WorkerSpec:
        index, count, port, http_port, ready_fd = (int(part) for part in text.split(":"))
        return cls(index, count, port, http_port, ready_fd)

    def apply(self, settings: Settings) -> None:
        """Serve the reserved ports; only worker 0 serves the metrics port (for all of them)."""
        settings.service.workers = Workers(self.count)  # the command line may have overridden the config
        settings.service.port = self.port
        settings.http.port = self.http_port
        settings.metrics.enabled = settings.metrics.enabled and self.index == 0

    def follow_supervisor(self) -> None:
        """Get SIGTERM when the supervisor dies, however it died: a worker never serves on alone
        (a SIGKILLed supervisor can forward nothing)."""
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
            log.warning("worker %d will not stop with its supervisor: prctl: %s", self.index, os.strerror(ctypes.get_errno()))
        if os.getppid() == 1:  # the supervisor died before the request
            os.kill(os.getpid(), signal.SIGTERM)

    def ready(self) -> None:
        """Tell the supervisor this worker listens; ``start_worker`` waits for it."""
        os.write(self.ready_fd, bytes([self.index % 256]))
        os.close(self.ready_fd)


def metrics_dir(settings: Settings) -> Path:
    return settings.service.state_dir / "metrics"


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    quick_deaths: int = 0
    restart_at: float | None = None


class Supervisor:
    """Starts ``settings.service.workers`` workers running ``command`` and keeps them running."""

    def __init__(self, settings: Settings, command: Sequence[str]) -> None:
        self.settings = settings
        self.command = list(command)
        self.workers = [_Worker(i) for i in range(settings.service.workers)]
        self._reserved: list[socket.socket] = []
        self._signals: set[int] = set()
        self._ready_read, self._ready_write = os.pipe()
        self._stopping = False

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; the exit status (non-zero: the workers could not start)."""
        try:
            self._check()
            self._prepare_metrics()
            self._catch_signals()
            for worker in self.workers:
                self._spawn(worker)
            if not self._wait_until_started():
                self._stop_all()
                return 1
            log.info("%d workers serving port %d", len(self.workers), self.settings.service.port)
            self._keep_running()
            self._stop_all()
            return 0
        finally:
            for sock in self._reserved:
                sock.close()

    # --- before any worker

    def _check(self) -> None:
        """Credentials and ports, checked once here so that a mistake is one line before anything listens."""
        settings = self.settings
        server_tls(settings)  # generates development credentials once, not in every worker at once
        service = settings.service
        service.port = self._reserve("service.port", service.host, service.port)
        if settings.http.enabled:
            settings.http.port = self._reserve("http.port", settings.http.host or service.host, settings.http.port)
        if settings.metrics.enabled:
            # Worker 0 alone serves it, without SO_REUSEPORT: only check that it is free.
            for sock in self._bind("metrics.port", settings.metrics.host, settings.metrics.port, reuse_port=False):
                sock.close()

    def _reserve(self, key: str, host: str, port: int) -> int:
        sockets = self._bind(key, host, port, reuse_port=True)
        self._reserved += sockets
        port_number: int = sockets[0].getsockname()[1]
        return port_number

    def _bind(self, key: str, host: str, port: int, *, reuse_port: bool) -> list[socket.socket]:
        try:
            return listening_sockets(host or None, port, reuse_port=reuse_port, listen=False)
        except OSError as exc:
            where = f"{host or '*'}:{port}"
            raise ConfigError(f"{self.settings.source}: {key}: cannot listen on {where}: {exc.strerror or exc}") from None

    def _prepare_metrics(self) -> None:
        """An empty folder for the workers' metric files: counts of an earlier run would add up otherwise."""
        directory = metrics_dir(self.settings)
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        os.environ[METRICS_DIR_VARIABLE] = str(directory)

    def _catch_signals(self) -> None:
        # Handlers only note the signal; the loop acts on it, woken through the wakeup fd.
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_write, False)
        signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
        self._wake = wake_read
        for signum in (signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda number, _frame: self._signals.add(number))

    # --- workers

    def _spawn(self, worker: _Worker) -> None:
        spec = WorkerSpec(worker.index, len(self.workers), self.settings.service.port, self.settings.http.port, self._ready_write)
        worker.process = subprocess.Popen([*self.command, "--worker", spec.argument()], pass_fds=(self._ready_write,))
        worker.started = time.monotonic()
        worker.restart_at = None
        log.info("worker %d started (pid %d)", worker.index, worker.process.pid)

    def _wait_until_started(self) -> bool:
        waiting = {worker.index for worker in self.workers}
        deadline = time.monotonic() + START_TIMEOUT
        while waiting:
            if time.monotonic() > deadline:
                log.error("workers %s did not start within %.0f s", sorted(waiting), START_TIMEOUT)
                return False
            readable = self._wait(1.0)
            if self._ready_read in readable:
                waiting -= set(os.read(self._ready_read, 4096))
            if self._take(signal.SIGTERM) or self._take(signal.SIGINT):
                return False
            for worker in self.workers:
                status = worker.process.poll() if worker.process else None
                if status is not None:
                    print(f"seproxy: worker {worker.index} exited with status {status} while starting", file=sys.stderr)
                    return False
        return True

    def _keep_running(self) -> None:
        while True:
            deadlines = [w.restart_at for w in self.workers if w.restart_at is not None]
            readable = self._wait(max(0.0, min(deadlines) - time.monotonic()) if deadlines else 60.0)
            if self._ready_read in readable:
                os.read(self._ready_read, 4096)  # restarted workers report too; nothing waits for them
            if self._take(signal.SIGTERM) or self._take(signal.SIGINT):
                log.info("stopping %d workers", len(self.workers))
                return
            if self._take(signal.SIGHUP):
                self._send_all(signal.SIGHUP)
            self._take(signal.SIGCHLD)  # every worker is looked at below anyway
            now = time.monotonic()
            for worker in self.workers:
                self._reap(worker, now)
                if worker.restart_at is not None and worker.restart_at <= now:
                    self._spawn(worker)

    def _reap(self, worker: _Worker, now: float) -> None:
        if worker.process is None or worker.restart_at is not None:
            return
        status = worker.process.poll()
        if status is None:
            return
        multiprocess.mark_process_dead(worker.process.pid, str(metrics_dir(self.settings)))  # type: ignore[no-untyped-call]
        ran = now - worker.started
        worker.quick_deaths = worker.quick_deaths + 1 if ran < QUICK_DEATH else 0
        delay = 0.0 if not worker.quick_deaths else min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (worker.quick_deaths - 1))
        worker.restart_at = now + delay
        log.error("worker %d (pid %d) exited with status %d after %.0f s; restarting in %.1f s",
                  worker.index, worker.process.pid, status, ran, delay)  # fmt: skip

    def _send_all(self, signum: int) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.poll() is None:
                worker.process.send_signal(signum)

    def _stop_all(self) -> None:
        """SIGTERM to every worker, and SIGKILL to those still running after ``STOP_TIMEOUT``."""
        self._send_all(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for worker in self.workers:
            if worker.process is None:
                continue
            try:
                worker.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d did not stop in time: killed", worker.index)
                worker.process.kill()
                worker.process.wait()

    # --- signals

    def _wait(self, timeout: float) -> list[int]:
        readable, _, _ = select.select([self._wake, self._ready_read], [], [], timeout)
        if self._wake in readable:
            os.read(self._wake, 4096)
        return readable

    def _take(self, signum: int) -> bool:
        """Whether ``signum`` arrived since the last look (forgetting it)."""
        if signum not in self._signals:
            return False
        self._signals.discard(signum)
        return True
