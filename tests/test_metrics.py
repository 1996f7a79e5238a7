"""Prometheus metrics of a real service after real traffic."""

import os

import pytest
import requests
from fixtures.service import base_config, free_port, start_service

from seproxy.transfer import RPCClient, returnValueOrRaise


@pytest.fixture()
def metered(pki, tmp_path):
    config = base_config(pki, tmp_path / "state")
    config["metrics"] = {"enabled": True, "host": "127.0.0.1", "port": free_port()}
    (tmp_path / "se").mkdir()
    config["storage_elements"] = {"LocalSE": {"plugin": "file", "base": str(tmp_path / "se"), "vos": ["lab"]}}
    config["registry"]["groups"]["lab_user"]["properties"] = ["NormalUser", "FileWrite"]
    running = start_service(tmp_path, config)
    yield running, config["metrics"]["port"]
    running.stop()


def scrape(port):
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_metrics_follow_the_traffic(metered, pki):
    service, port = metered
    client = RPCClient(service.url, proxy=str(pki.proxy), ca_dir=str(pki.ca_dir))
    data = os.urandom(100_000)
    returnValueOrRaise(client.streamFromClient("putFile/m.dat", "", len(data), data))
    returnValueOrRaise(client.uploadFile("LocalSE", "/m.dat"))
    returnValueOrRaise(client.prepareFile("LocalSE", "/m.dat"))
    assert client._post("streamToClient", ["getFile/m.dat", ""], raw=True).content == data
    assert client.noSuchMethod()["OK"] is False
    assert client.prepareFile("LocalSE", "/missing.dat")["OK"] is False
    values = scrape(port)
    assert values['seproxy_rpc_calls_total{method="uploadFile",outcome="ok"}'] == 1
    assert values['seproxy_rpc_calls_total{method="streamToClient",outcome="ok"}'] == 1
    assert values['seproxy_rpc_calls_total{method="prepareFile",outcome="error"}'] == 1
    assert values['seproxy_rpc_calls_total{method="unknown",outcome="refused"}'] == 1
    assert values['seproxy_rpc_call_duration_seconds_count{method="prepareFile"}'] == 2
    assert values['seproxy_bytes_sent_total{route="stream"}'] == len(data)
    assert values['seproxy_stagings_total{outcome="ok",se="LocalSE"}'] == 1
    assert values['seproxy_cache_bytes{area="staged"}'] == len(data)
    assert values["seproxy_cache_entries"] == 1
    assert values["process_resident_memory_bytes"] > 0
