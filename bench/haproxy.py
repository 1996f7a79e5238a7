"""HAProxy in front of seproxy instances on loopback, run from the shipped ``deploy/haproxy/seproxy.cfg``.

The scale-out test and the load benchmark both use this, so that what they
prove holds for the file operators copy: only addresses, ports, the log
target and the stats socket are rewritten, and a rewrite that finds nothing
to change fails (the shipped file and this code cannot drift apart quietly).
"""

from __future__ import annotations

import csv
import io
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

SHIPPED_CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "haproxy" / "seproxy.cfg"
RPC_PORT, HTTP_PORT = 8443, 9180


@dataclass(frozen=True)
class Instance:
    """One seproxy behind the balancer: its route (the server name) and its two ports on 127.0.0.1."""

    route: str
    rpc_port: int
    http_port: int


def render(template: str, instances: Sequence[Instance], *, rpc_port: int, http_port: int, stats_socket: Path) -> str:
    """The shipped config for ``instances`` on loopback, with the balancer on ``rpc_port`` and ``http_port``."""
    text = _replace(template, r"(?m)^(\s*log) /dev/log local0$", r"\1 stdout format raw local0")
    text = _replace(text, r"stats socket \S+", f"stats socket {stats_socket}")
    text = _replace(text, rf"bind :{RPC_PORT}\b", f"bind 127.0.0.1:{rpc_port}")
    text = _replace(text, rf"bind :{HTTP_PORT}\b", f"bind 127.0.0.1:{http_port}")
    servers = re.findall(r"(?m)^\s*server (\S+) \S+:(\d+)", text)
    shipped = {name for name, _ in servers}
    wanted = {instance.route for instance in instances}
    if not wanted <= shipped:
        raise ValueError(f"{SHIPPED_CONFIG} has servers {sorted(shipped)}; asked for {sorted(wanted)}")
    ports = {RPC_PORT: "rpc_port", HTTP_PORT: "http_port"}

    def server_line(match: re.Match[str]) -> str:
        indent, name, port = match.groups()
        instance = next((i for i in instances if i.route == name), None)
        if instance is None:  # fewer instances than the shipped file names
            return ""
        return f"{indent}server {name} 127.0.0.1:{getattr(instance, ports[int(port)])}"

    return re.sub(r"(?m)^(\s*)server (\S+) \S+:(\d+)$", server_line, text)


def _replace(text: str, pattern: str, replacement: str) -> str:
    changed, count = re.subn(pattern, replacement, text)
    if count == 0:
        raise ValueError(f"{SHIPPED_CONFIG} no longer has {pattern!r}: update {__file__}")
    return changed


class HAProxy:
    """A foreground ``haproxy`` serving the rendered shipped config, until ``stop()``."""

    def __init__(self, directory: Path, instances: Sequence[Instance], rpc_port: int, http_port: int) -> None:
        binary = shutil.which("haproxy")
        if binary is None:
            raise RuntimeError("haproxy is not installed: apt-get install haproxy (scripts/debian-packages.txt)")
        self.rpc_port, self.http_port = rpc_port, http_port
        self.stats_socket = directory / "haproxy.sock"
        config = directory / "haproxy.cfg"
        template = SHIPPED_CONFIG.read_text()
        config.write_text(render(template, instances, rpc_port=rpc_port, http_port=http_port, stats_socket=self.stats_socket))
        self.log_path = directory / "haproxy.log"
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
        self._wait_for(lambda: self.stats_socket.exists() and _listening(http_port) and _listening(rpc_port), "start")
        self.wait_for_status({instance.route: "UP" for instance in instances})

    @property
    def http_origin(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stats(self) -> list[dict[str, str]]:
        """HAProxy's ``show stat`` rows (one per frontend, server and backend) as dicts."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(self.stats_socket))
            sock.sendall(b"show stat\n")
            data = b"".join(iter(lambda: sock.recv(65536), b""))
        text = data.decode().lstrip("# ")
        return list(csv.DictReader(io.StringIO(text)))

    def servers(self, backend: str, rows: list[dict[str, str]] | None = None) -> dict[str, dict[str, str]]:
        """The rows of ``backend``'s servers, by server name (from ``rows``, or fresh stats)."""
        rows = self.stats() if rows is None else rows
        return {row["svname"]: row for row in rows if row["pxname"] == backend and row["svname"] not in ("FRONTEND", "BACKEND")}

    def wait_for_status(self, wanted: dict[str, str], timeout: float = 20) -> None:
        """Until the health checks see each server of both backends in the ``wanted`` state (UP, DOWN)."""

        def reached() -> bool:
            rows = self.stats()  # one query for both backends
            for backend in ("seproxy_rpc", "seproxy_http"):
                servers = self.servers(backend, rows)
                if any(not servers[name]["status"].startswith(status) for name, status in wanted.items()):
                    return False
            return True

        self._wait_for(reached, f"see servers {wanted}", timeout)

    def _wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"haproxy exited ({self._process.returncode}); its log:\n{self.log()}")
            try:
                if condition():
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"haproxy did not {what} within {timeout:g} s; its log:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
