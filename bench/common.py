"""What the benchmarks share: servers in processes of their own, their CPU and memory, percentiles, tables.

Each server runs in a subprocess so that its CPU time can be told apart from
the load generator's (on a small machine they share the cores, and a number
that hides which side was busy cannot be read). CPU and memory are read from
``/proc``, so the benchmarks are Linux-only, as the service's hosts are.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import tomli_w

from seproxy.config import available_cores

# What a server's start function returns, called inside the subprocess's
# running event loop: the port it listens on, and how to stop it.
Started = tuple[int, Callable[[], Awaitable[None]]]
StartFunction = Callable[..., Started]

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class ServerProcess:
    """A server started by ``start(*args)`` in a fresh Python process, until ``stop()``.

    Spawned, not forked: a fork would carry the benchmark's own event loop
    and threads into the server.

    The server's stdout and stderr go to ``log_path``, so that a service
    logging every call does not write into the benchmark's table; the log is
    what to read when the server fails to start.
    """

    def __init__(self, start: StartFunction, args: Sequence[Any], log_path: Path, timeout: float = 60) -> None:
        context = multiprocessing.get_context("spawn")
        receiver, sender = context.Pipe(duplex=False)
        self._process = context.Process(target=_serve, args=(sender, start, tuple(args), str(log_path)), daemon=True)
        self._process.start()
        sender.close()
        try:
            if not receiver.poll(timeout):
                raise RuntimeError(f"the server did not start within {timeout:g} s")
            self.port: int = receiver.recv()
        except (RuntimeError, EOFError) as exc:
            self.stop()
            log = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else "(no log)"
            raise RuntimeError(f"{str(exc) or 'the server exited while starting'}; its log:\n{log}") from None

    @property
    def pid(self) -> int:
        assert self._process.pid is not None
        return self._process.pid

    def cpu_seconds(self) -> float:
        """User plus system CPU time of all the server's threads so far."""
        return process_cpu_seconds(self.pid)

    def peak_rss_mib(self) -> float:
        """The server's peak resident memory (VmHWM) so far."""
        return process_peak_rss_mib(self.pid)

    def stop(self) -> None:
        """SIGTERM (the server closes its connections and exits), SIGKILL if that takes over 10 s."""
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


def _serve(sender: Any, start: StartFunction, args: tuple[Any, ...], log_path: str) -> None:
    """The subprocess: redirect output, start the server, report its port, run until SIGTERM."""
    with open(log_path, "ab", buffering=0) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)

    async def main() -> None:
        stopping = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
        port, stop = start(*args)
        sender.send(port)
        sender.close()
        await stopping.wait()
        await stop()

    asyncio.run(main())


NGINX = "/usr/sbin/nginx"

NGINX_CONF = """
worker_processes auto;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
    access_log {dir}/nginx-access.log;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 60s;
    keepalive_requests 1000000;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port}{listen_tls};
        root {root};{tls}
    }}
}}
"""


class Nginx:
    """The reference server: nginx in the foreground with a config of its own, serving ``root``.

    Configured as a site would run it (``sendfile on``, access log on);
    HTTPS when given ``tls`` (certificate, key). Its workers run as nobody,
    so ``root`` and the directories above it must be readable by all.
    """

    def __init__(self, directory: Path, root: Path, tls: tuple[Path, Path] | None = None) -> None:
        self.port = free_port()
        directory.mkdir(exist_ok=True)
        conf = directory / "nginx.conf"
        tls_lines = f"\n        ssl_certificate {tls[0]};\n        ssl_certificate_key {tls[1]};" if tls else ""
        conf.write_text(
            NGINX_CONF.format(dir=directory, port=self.port, root=root, listen_tls=" ssl" if tls else "", tls=tls_lines)
        )
        self.process = subprocess.Popen(
            [NGINX, "-p", str(directory), "-c", str(conf), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while not (directory / "nginx.pid").exists() or not self._workers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nginx did not start; {directory / 'nginx-error.log'} says why")
            time.sleep(0.05)

    def _workers(self) -> list[int]:
        return children(self.process.pid)

    def cpu_seconds(self) -> float:
        """CPU time of the master and its workers so far."""
        return sum(process_cpu_seconds(pid) for pid in [self.process.pid, *self._workers()])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (nginx's workers, seproxy's worker processes)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


@contextmanager
def nginx_scratch(prefix: str, *tools: str) -> Iterator[Path]:
    """A temporary folder that nginx's workers (user nobody) can read, once ``tools`` are known to be there."""
    for tool in (NGINX, *tools):
        if not os.access(tool, os.X_OK):
            raise SystemExit(f"{tool} is missing: install the Debian packages of scripts/bench-packages.txt")
    with tempfile.TemporaryDirectory(prefix=prefix) as temp:
        directory = Path(temp)
        directory.chmod(0o755)
        yield directory


def nginx_version() -> str:
    return subprocess.run([NGINX, "-v"], capture_output=True, text=True).stderr.strip()


def free_port() -> int:
    """A loopback port free right now, for a server that cannot be told to pick one itself."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all threads, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as stream:
        # The command name (field 2) may hold spaces; count from after its ")".
        fields = stream.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def machine_cpu_seconds() -> float:
    """CPU time all cores spent busy so far (not idle, not waiting for I/O), from /proc/stat.

    Minus the benchmark's own processes, it is what neighbours took: on a
    shared machine, the number that says whether a run can be trusted.
    """
    with open("/proc/stat") as stream:
        user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in stream.readline().split()[1:8])
    return (user + nice + system + irq + softirq) / _CLOCK_TICKS


def process_peak_rss_mib(pid: int) -> float:
    """VmHWM of a process from /proc/PID/status, in MiB."""
    return _status_mib(pid, "VmHWM")


def reset_peak_rss(pid: int) -> float:
    """Start a new peak for a running process; its RSS at that moment, in MiB.

    Writing 5 to /proc/PID/clear_refs sets VmHWM back to the current RSS, so
    that ``process_peak_rss_mib`` afterwards is the peak of what came since,
    not of the server's start or of an earlier measurement (Linux 4.0 on).
    """
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _status_mib(pid, "VmRSS")


def _status_mib(pid: int, field: str) -> float:
    with open(f"/proc/{pid}/status") as stream:
        for line in stream:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of already sorted values (``fraction`` 0.99 for p99)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, round(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def median(values: Sequence[float]) -> float:
    """The median, NaN for no values (a run that measured nothing still prints a row)."""
    return statistics.median(values) if values else float("nan")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Columns padded to their widest cell, numbers right-aligned, as a Markdown table.

    Markdown so that a run's output can be pasted into docs/benchmarks.md as it is.
    """
    cells = [[str(h) for h in headers]] + [[_cell(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(isinstance(row[i], (int, float)) for row in rows) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        padded = (cell.rjust(w) if right else cell.ljust(w) for cell, w, right in zip(row, widths, numeric))
        return "| " + " | ".join(padded) + " |"

    print(line(cells[0]))
    print("| " + " | ".join("-" * (w - 1) + (":" if right else "-") for w, right in zip(widths, numeric)) + " |")
    for row in cells[1:]:
        print(line(row))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


class ServiceTree:
    """``python -m seproxy serve --config FILE``: the supervisor and its workers (or the one process)."""

    def __init__(self, directory: Path, config: dict[str, Any]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.port = config["service"]["port"]
        path = directory / "seproxy.toml"
        path.write_text(tomli_w.dumps(config))
        path.chmod(0o600)
        self.log_path = directory / "service.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "seproxy", "serve", "--config", str(path)], stdout=log, stderr=subprocess.STDOUT
            )
        workers = available_cores() if config["service"]["workers"] == "auto" else config["service"]["workers"]
        ready = f"{workers} workers serving" if workers > 1 else "seproxy is serving"
        deadline = time.monotonic() + 120
        while ready not in self.log_path.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the service did not start; its log:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        return self.process.pid

    def _tree(self) -> list[int]:
        return [self.process.pid, *children(self.process.pid)]

    def cpu_seconds(self) -> float:
        """The supervisor's and its workers' (or the one process's)."""
        return sum(process_cpu_seconds(pid) for pid in self._tree())

    def peak_rss_mib(self) -> float:
        """The supervisor's and its workers' peaks, added: what the service as a whole may need."""
        return sum(process_peak_rss_mib(pid) for pid in self._tree())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
