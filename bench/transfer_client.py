"""TransferClient: peak memory of receiveFile and sendFile of a 2 GiB file, and receiveFile's speed next to curl.

Targets (issue 5): each of ``receiveFile`` and ``sendFile`` moves a 2 GiB
file with a peak RSS under 64 MiB (the whole client process: interpreter,
requests, seproxy.transfer and the transfer), and ``receiveFile`` reaches at
least 0.8 of the throughput of curl fetching the same file from the same
service in the same run. curl posts the same DIRAC form
(``method=streamToClient``, ``rawContent=True``) with ``--cert`` (the
development proxy) and ``--capath``, and writes where receiveFile writes.

Each client transfer runs in a fresh process, so that its peak RSS is its
own; the service runs in another (``bench.common.ServerProcess``). Downloads
land on tmpfs when there is room, so that the disk's write-back, which no
client controls, does not decide the numbers. receiveFile and curl take
turns, several rounds; the median round counts. sendFile is timed next to
``curl -T`` to the same streamed upload route, for information.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TARGET_RSS_MIB = 64
TARGET_RATIO = 0.8
MiB = 1024 * 1024
SE = "BenchSE"
FILE_NAME = "bench.bin"
TMPFS = Path("/dev/shm")


@dataclass(frozen=True)
class Plan:
    size: int
    rounds: int


FULL = Plan(size=2048 * MiB, rounds=5)
QUICK = Plan(size=256 * MiB, rounds=1)


@dataclass(frozen=True)
class Transfer:
    """One client run: what moved, how fast, and the client process's peak RSS (None for curl)."""

    client: str
    seconds: float
    size: int
    cpu_seconds: float  # user + system, of the client process
    peak_rss_mib: float | None

    @property
    def mib_per_second(self) -> float:
        return self.size / MiB / self.seconds

    @property
    def cpu_per_gib(self) -> float:
        return self.cpu_seconds / (self.size / 1024 / MiB)


# -- the seproxy clients, each in a fresh process ----------------------------------


def _client_process(conn: Any, action: str, url: str, credentials: dict[str, str], local: str, file_id: str) -> None:
    """In the child: one receiveFile or sendFile; send back (seconds, result), then wait to be measured."""
    from seproxy.transfer import TransferClient

    client = TransferClient(url, **credentials)
    conn.send(None)  # ready: the parent reads the peak RSS of an idle client
    conn.recv()
    started = time.perf_counter()
    result = getattr(client, action)(local, file_id)
    conn.send((time.perf_counter() - started, result))
    conn.recv()  # stay alive until the parent has read the peak RSS


def seproxy_transfer(action: str, url: str, credentials: dict[str, str], local: Path, file_id: str) -> tuple[Transfer, float]:
    """Run ``action`` in a fresh (spawned) process; the transfer, and the process's peak RSS before it.

    The parent reads the child's VmHWM from /proc: ``getrusage`` in the
    child would report the parent's peak too, which Linux carries across exec.
    """
    from bench.common import process_cpu_seconds, process_peak_rss_mib

    context = multiprocessing.get_context("spawn")
    conn, child_conn = context.Pipe()
    process = context.Process(target=_client_process, args=(child_conn, action, url, credentials, str(local), file_id))
    process.start()
    child_conn.close()
    conn.recv()
    before, cpu = process_peak_rss_mib(process.pid), process_cpu_seconds(process.pid)
    conn.send("go")
    seconds, result = conn.recv()
    peak, cpu = process_peak_rss_mib(process.pid), process_cpu_seconds(process.pid) - cpu
    conn.send("done")
    process.join()
    if not result["OK"]:
        raise RuntimeError(f"{action} failed: {result['Message']}")
    return Transfer(action, seconds, result["Value"]["Size"], cpu, peak), before


# -- curl ----------------------------------------------------------------------------


def curl(arguments: list[str], credentials: dict[str, str]) -> tuple[float, int, bytes]:
    """curl with the proxy and CA directory; (seconds, bytes moved, CPU seconds, body) as curl measured them."""
    command = [
        "curl", "--silent", "--show-error", "--fail-with-body", "--cert", credentials["proxy"],
        "--capath", credentials["ca_dir"], "--write-out", "\n%{time_total} %{size_download} %{size_upload}", *arguments,
    ]  # fmt: skip
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    output = subprocess.run(command, capture_output=True, check=True, timeout=3600).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    body, _, numbers = output.rpartition(b"\n")
    seconds, downloaded, uploaded = numbers.split()
    return float(seconds), max(int(float(downloaded)), int(float(uploaded))), cpu, body


def curl_download(url: str, credentials: dict[str, str], destination: Path, file_id: str) -> Transfer:
    """The DIRAC form that receiveFile sends, posted by curl."""
    form = {"method": "streamToClient", "args": json.dumps([file_id, ""]), "rawContent": "True",
            "clientVO": "unknown", "clientSetup": "None"}  # fmt: skip
    fields = [argument for name, value in form.items() for argument in ("--data-urlencode", f"{name}={value}")]
    seconds, size, cpu, _ = curl([*fields, "--output", str(destination), url], credentials)
    return Transfer("curl", seconds, size, cpu, None)


def curl_upload(url: str, credentials: dict[str, str], source: Path, file_id: str) -> Transfer:
    """``curl -T`` to the streamed upload route that sendFile uses."""
    seconds, size, cpu, body = curl(
        ["--upload-file", str(source), "--header", "Content-Type: application/octet-stream", f"{url}/stream/{file_id}"],
        credentials,
    )
    if not json.loads(body)["OK"]:
        raise RuntimeError(f"curl upload failed: {body[:300]!r}")
    return Transfer("curl -T", seconds, size, cpu, None)


# -- the run -------------------------------------------------------------------------


def write_random(path: Path, size: int) -> None:
    with open(path, "wb") as stream:
        for start in range(0, size, 16 * MiB):
            stream.write(os.urandom(min(16 * MiB, size - start)))


def download_directory(temp: Path, size: int) -> Path:
    """Where downloads land: tmpfs if it has room for two copies, else the benchmark's directory."""
    if TMPFS.is_dir() and shutil.disk_usage(TMPFS).free > 3 * size:
        return Path(tempfile.mkdtemp(prefix="seproxy-bench-", dir=TMPFS))
    return temp


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the service, stage the file, time both clients in turns, print the tables and the verdict."""
    from bench.common import ServerProcess
    from bench.rpc_ping import seproxy_config, start_seproxy
    from seproxy.security.devcreds import ensure_dev_credentials
    from seproxy.transfer import StorageElementProxyClient, returnValueOrRaise

    plan = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="seproxy-bench-transfer-") as temp:
        directory = Path(temp)
        storage = directory / "storage"
        storage.mkdir()
        write_random(storage / FILE_NAME, plan.size)
        developer = ensure_dev_credentials(directory / "credentials")
        credentials = {"proxy": str(developer.proxy), "ca_dir": str(developer.ca_dir)}
        config = seproxy_config(developer, directory / "state")
        config["storage_elements"] = {SE: {"plugin": "file", "base": str(storage)}}
        server = ServerProcess(start_seproxy, [config], directory / "seproxy.log")
        downloads = download_directory(directory, plan.size)
        try:
            url = f"https://localhost:{server.port}/DataManagement/StorageElementProxy"
            with StorageElementProxyClient(url, **credentials) as client:
                file_id = returnValueOrRaise(client.prepareFile(SE, f"/{FILE_NAME}"))["FileId"]
            print(
                f"transfer_client: {plan.size // MiB} MiB, {plan.rounds} round(s), {os.cpu_count()} cores, "
                f"load average {os.getloadavg()[0]:.2f}, downloads to {downloads}, service pid {server.pid}",
                flush=True,
            )
            received, curled, baselines = [], [], []
            for round_number in range(plan.rounds):
                destination = downloads / "received.bin"
                transfer, baseline = seproxy_transfer("receiveFile", url, credentials, destination, file_id)
                destination.unlink()
                received.append(transfer)
                baselines.append(baseline)
                curled.append(curl_download(url, credentials, destination, file_id))
                destination.unlink()
                print(
                    f"  round {round_number + 1}: receiveFile {received[-1].mib_per_second:4.0f} MiB/s "
                    f"{received[-1].cpu_per_gib:.2f} CPU s/GiB (peak RSS {received[-1].peak_rss_mib:.1f} MiB), "
                    f"curl {curled[-1].mib_per_second:4.0f} MiB/s {curled[-1].cpu_per_gib:.2f} CPU s/GiB",
                    flush=True,
                )
            sent, baseline = seproxy_transfer("sendFile", url, credentials, storage / FILE_NAME, "putFile/sent.bin")
            baselines.append(baseline)
            uploaded = curl_upload(url, credentials, storage / FILE_NAME, "putFile/curl.bin")
            print(f"  sendFile {sent.mib_per_second:6.0f} MiB/s (peak RSS {sent.peak_rss_mib:.1f} MiB), "
                  f"curl -T {uploaded.mib_per_second:6.0f} MiB/s", flush=True)  # fmt: skip
        finally:
            server.stop()
            if downloads != directory:
                shutil.rmtree(downloads, ignore_errors=True)
    return report(received, curled, sent, uploaded, max(baselines))


def report(
    received: list[Transfer], curled: list[Transfer], sent: Transfer, uploaded: Transfer, baseline_mib: float
) -> dict[str, Any]:
    """The table of medians, the verdicts; ``passed`` when both RSS targets and the ratio are met."""
    from bench.common import median, print_table

    receive_rate = median([t.mib_per_second for t in received])
    curl_rate = median([t.mib_per_second for t in curled])
    receive_rss = max(t.peak_rss_mib or 0.0 for t in received)
    send_rss = sent.peak_rss_mib or 0.0
    ratio = receive_rate / curl_rate
    print()
    def row(name: str, transfers: list[Transfer], rss: float | str) -> list[Any]:
        rates = [t.mib_per_second for t in transfers]
        cpu = median([t.cpu_per_gib for t in transfers])
        return [name, median(rates), " ".join(f"{rate:.0f}" for rate in rates), cpu, rss]

    print_table(
        ["client", "MiB/s (median)", "rounds MiB/s", "client CPU s/GiB", "peak RSS MiB"],
        [
            row("receiveFile", received, receive_rss),
            row("curl (download)", curled, "-"),
            row("sendFile", [sent], send_rss),
            row("curl -T (upload)", [uploaded], "-"),
        ],
    )
    print()
    checks = [
        ["receiveFile / curl", ratio, f">= {TARGET_RATIO}", ratio >= TARGET_RATIO],
        ["receiveFile peak RSS MiB", receive_rss, f"< {TARGET_RSS_MIB}", receive_rss < TARGET_RSS_MIB],
        ["sendFile peak RSS MiB", send_rss, f"< {TARGET_RSS_MIB}", send_rss < TARGET_RSS_MIB],
    ]
    print_table(["measure", "value", "target", "verdict"], [[*row[:3], "PASS" if row[3] else "FAIL"] for row in checks])
    print(f"\nthe client process before its transfer (interpreter, requests, seproxy.transfer): {baseline_mib:.1f} MiB")
    return {
        "receive_mib_per_second": receive_rate,
        "curl_mib_per_second": curl_rate,
        "ratio": ratio,
        "receive_peak_rss_mib": receive_rss,
        "send_peak_rss_mib": send_rss,
        "passed": all(row[3] for row in checks),
    }
