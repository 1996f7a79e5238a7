"""Freshness: what asking the source costs each prepareFile of a cached file (cache.revalidate_after).

The data behind the default of ``cache.revalidate_after``: two services
on the same storage, one comparing every cached copy with its source before
it serves it (``revalidate_after = 0``, what seproxy did before issue 15),
one serving copies younger than ten minutes without asking (the default).
Each is timed on ``prepareFile`` of a file already in its cache, on three
elements:

- **WebDAV** (wsgidav over HTTPS, in a process of its own, answering
  ``Want-Digest: adler32`` as dCache does): a comparison is a PROPFIND
  and a HEAD, two round trips that a wide-area link makes tens of
  milliseconds each (here: loopback, the least it can cost);
- **file, writable**: a ``stat`` and the ADLER32 recorded in the file's
  extended attributes;
- **file, read-only**: nothing may be recorded there, so every comparison
  reads the whole file to compute its ADLER32.

The median over the calls counts; each call is one RPC over a kept TLS
connection, so the difference between the two services is the comparison.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.common import ServerProcess, median, print_table
from bench.rpc_ping import seproxy_config, start_seproxy
from bench.storage_proxy import start_webdav, write_durably
from bench.transfer_client import Plan
from seproxy.security.devcreds import ensure_dev_credentials
from seproxy.transfer import StorageElementProxyClient, returnValueOrRaise

MiB = 1024 * 1024
FILE_NAME = "fresh.bin"
# Element name -> what the table calls it.
ELEMENTS = {"DAV": "WebDAV (PROPFIND + HEAD)", "FILE-RW": "file, ADLER32 recorded", "FILE-RO": "file, read-only"}
# Service name -> cache.revalidate_after.
SERVICES = {"compare every time (0)": 0, "default (10 min)": 600}


# Rounds: prepareFile calls per service and element.
FULL = Plan(size=256 * MiB, rounds=30)
QUICK = Plan(size=16 * MiB, rounds=5)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Stage the file once per service and element, then time ``rounds`` prepareFile of the cached copy."""
    plan = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="seproxy-bench-freshness-") as temp, ExitStack() as servers:
        directory = Path(temp)
        roots = {name: directory / name.lower() for name in ELEMENTS}
        for root in roots.values():
            root.mkdir()
        digest = write_durably(roots["DAV"] / FILE_NAME, plan.size)
        for name in ("FILE-RW", "FILE-RO"):
            shutil.copyfile(roots["DAV"] / FILE_NAME, roots[name] / FILE_NAME)
        developer = ensure_dev_credentials(directory / "credentials")
        webdav = ServerProcess(
            start_webdav, [str(roots["DAV"]), {f"/{FILE_NAME}": digest}, str(developer.host_cert), str(developer.host_key)],
            directory / "webdav.log",
        )  # fmt: skip
        servers.callback(webdav.stop)
        print(f"freshness: {plan.size // MiB} MiB file, {plan.rounds} calls each, {os.cpu_count()} cores", flush=True)
        medians: dict[tuple[str, str], float] = {}
        for service_name, revalidate_after in SERVICES.items():
            config = seproxy_config(developer, directory / f"state-{revalidate_after}")
            config["cache"] = {"revalidate_after": revalidate_after}
            config["storage_elements"] = {
                "DAV": {"plugin": "webdav", "base": f"https://127.0.0.1:{webdav.port}/", "ca_dir": str(developer.ca_dir)},
                "FILE-RW": {"plugin": "file", "base": str(roots["FILE-RW"])},
                "FILE-RO": {"plugin": "file", "base": str(roots["FILE-RO"]), "read_only": True},
            }
            service = ServerProcess(start_seproxy, [config], directory / f"seproxy-{revalidate_after}.log")
            url = f"https://127.0.0.1:{service.port}/DataManagement/StorageElementProxy"
            with StorageElementProxyClient(url, proxy=str(developer.proxy), ca_dir=str(developer.ca_dir)) as client:
                for element in ELEMENTS:
                    returnValueOrRaise(client.prepareFile(element, FILE_NAME))  # staged: from now on a hit
                    medians[service_name, element] = median([_timed(client, element) for _ in range(plan.rounds)])
            service.stop()
    rows = [[ELEMENTS[element], *(medians[service, element] * 1000 for service in SERVICES)] for element in ELEMENTS]
    print_table(["prepareFile of a cached file, median ms", *SERVICES], rows)
    return {"medians_ms": {f"{service} / {element}": value * 1000 for (service, element), value in medians.items()}}


def _timed(client: StorageElementProxyClient, element: str) -> float:
    start = time.perf_counter()
    returnValueOrRaise(client.prepareFile(element, FILE_NAME))
    return time.perf_counter() - start
