"""Honest numbers (issue 15): bytes by storage element, sent from the cache (hit), fetched into it (miss)
and sent while being staged (stream-through), in ``/metrics`` and in ``seproxy cache du``.

A real service with two file elements: ``RPC-SE`` is reached through
``prepareFile``/``streamToClient``, ``LFN-SE`` (where LFNs live) through a
signed side-server URL and through the door. Each file is read once cold
(a miss: fetched, then sent) and once warm (a hit), so every count is
known to the byte. ``cache du`` runs as a process of its own and reads the
counts the service's heartbeat stored; stopping the service stores the last.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from fixtures.proxy import ProxyService, file_place, ok, proxy_config, wait_until
from fixtures.service import free_port, start_service
from test_metrics import scrape

RPC_SE, LFN_SE = "RPC-SE", "LFN-SE"
KINDS = ("hit", "miss", "stream-through")


@dataclass
class Metered:
    proxy: ProxyService
    metrics_port: int


@pytest.fixture
def metered(pki: Any, tmp_path: Path) -> Iterator[Metered]:
    places = [file_place(RPC_SE, tmp_path / "rpc-se"), file_place(LFN_SE, tmp_path / "lfn-se")]
    config = proxy_config(pki, tmp_path / "state", places)
    port = free_port()
    config["metrics"] = {"enabled": True, "host": "127.0.0.1", "port": port}
    config["http"] = {"enabled": True, "host": "127.0.0.1", "port": 0, "lfn_storage_elements": [LFN_SE]}
    proxy = ProxyService(start_service(tmp_path, config), pki, {place.name: place for place in places})
    yield Metered(proxy, port)
    proxy.close_clients()
    proxy.process.stop()


def se_bytes(values: dict[str, float], se: str) -> dict[str, int]:
    return {kind: int(values.get(f'seproxy_se_bytes_total{{kind="{kind}",se="{se}"}}', 0)) for kind in KINDS}


def served(counts: dict[str, int]) -> dict[str, int]:
    """Bytes sent (from the cache whole, or while staged) and fetched."""
    return {"served": counts["hit"] + counts["stream-through"], "miss": counts["miss"]}


def cache_du(proxy: ProxyService) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "seproxy", "cache", "du", "--json", "--config", str(proxy.process.config_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    traffic: dict[str, Any] = json.loads(done.stdout)["traffic"]
    return traffic


def test_hits_misses_and_their_ratio_by_storage_element(metered: Metered, pki: Any) -> None:
    proxy = metered.proxy
    rpc_data, side_data, door_data = os.urandom(300_001), os.urandom(200_003), os.urandom(2 * 1024 * 1024 + 5)
    (proxy.place(RPC_SE).root / "rpc.dat").write_bytes(rpc_data)
    (proxy.place(LFN_SE).root / "side.dat").write_bytes(side_data)
    (proxy.place(LFN_SE).root / "door.dat").write_bytes(door_data)

    # RPC: prepareFile (fetched) then streamToClient, twice; the second prepareFile fetches nothing.
    for _ in range(2):
        file_id = ok(proxy.call("prepareFile", RPC_SE, "/rpc.dat"))["FileId"]
        assert proxy.download(file_id).content == rpc_data
    # and once more in a bulk (an uncompressed tar archive)
    bulk = proxy.post("bulkToClient", file_id, "", "", rawContent="True")
    assert bulk.status_code == 200 and rpc_data in bulk.content
    # The side server: a signed URL, read whole twice, and one range of it.
    for _ in range(2):
        url = ok(proxy.call("prepareFileForHTTP", "/side.dat"))["HttpURL"]
        assert requests.get(url, timeout=30).content == side_data
    assert requests.get(url, headers={"Range": "bytes=10-19"}, timeout=30).content == side_data[10:20]
    # The door: a cold GET (staged on demand), a warm one, and a HEAD (no body, nothing counted).
    door_url = proxy.url.split("/DataManagement/")[0] + "/lfn/door.dat"
    for method in ("GET", "GET", "HEAD"):
        answer = requests.request(method, door_url, cert=str(pki.group_proxy), verify=str(pki.ca_dir), timeout=60)
        assert answer.status_code == 200 and answer.content == (door_data if method == "GET" else b"")

    # Sent (hit or stream-through: the cold door GET streams what arrived before its staging ended) and fetched.
    expected = {
        RPC_SE: {"served": 3 * len(rpc_data), "miss": len(rpc_data)},
        LFN_SE: {"served": 2 * len(side_data) + 10 + 2 * len(door_data), "miss": len(side_data) + len(door_data)},
    }
    # The side server counts an answer once its last byte is out, just after the client has it.
    values = wait_until(lambda: (v := scrape(metered.metrics_port)) and served(se_bytes(v, LFN_SE)) == expected[LFN_SE] and v,
                        "the side server's bytes counted")  # fmt: skip
    assert served(se_bytes(values, RPC_SE)) == expected[RPC_SE]
    assert se_bytes(values, RPC_SE)["stream-through"] == 0, "RPC files are whole before they are sent"
    assert se_bytes(values, LFN_SE)["stream-through"] <= len(door_data), "only the cold door GET streams"

    # Stopping the service stores what its heartbeat had not yet; `cache du` reads it.
    proxy.close_clients()
    assert proxy.process.stop() == 0
    traffic = cache_du(proxy)
    assert sorted(traffic) == [LFN_SE, RPC_SE]
    for se, counts in expected.items():
        assert served({kind: traffic[se][kind.replace("-", "_")] for kind in KINDS}) == counts, traffic[se]
        assert traffic[se]["hit_ratio"] == pytest.approx(1 - counts["miss"] / counts["served"])
    assert traffic[RPC_SE]["hit_ratio"] == pytest.approx(2 / 3)


def test_counts_add_up_over_restarts_and_show_in_du_text(metered: Metered) -> None:
    """The index adds each process's counts to what earlier ones stored: counts outlive a restart."""
    proxy = metered.proxy
    data = os.urandom(50_000)
    (proxy.place(RPC_SE).root / "again.dat").write_bytes(data)
    for run in range(2):
        file_id = ok(proxy.call("prepareFile", RPC_SE, "/again.dat"))["FileId"]
        assert proxy.download(file_id).content == data
        proxy.close_clients()
        assert proxy.process.stop() == 0
        if not run:
            proxy.restart()
    traffic = cache_du(proxy)
    assert traffic == {RPC_SE: {"hit": 2 * len(data), "miss": len(data), "stream_through": 0, "hit_ratio": 0.5}}
    done = subprocess.run(
        [sys.executable, "-m", "seproxy", "cache", "du", "--config", str(proxy.process.config_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    lines = done.stdout.splitlines()
    title = lines.index("traffic by storage element (hit: sent from the cache, miss: fetched, stream-through: sent while staged):")
    assert lines[title + 1].split() == [RPC_SE, "hit", "97.7", "KiB,", "miss", "48.8", "KiB,", "stream-through", "0", "B;",
                                        "hit", "ratio", "50%"], done.stdout  # fmt: skip
