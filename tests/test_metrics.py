"""Prometheus metrics of a real service after real traffic."""

import os

import pytest
import requests
from fixtures.proxy import wait_until
from fixtures.service import base_config, free_port, start_service

from seproxy.transfer import RPCClient, returnValueOrRaise


@pytest.fixture()
def metered(pki, tmp_path):
    config = base_config(pki, tmp_path / "state")
    config["metrics"] = {"enabled": True, "host": "127.0.0.1", "port": free_port()}
    config["http"] = {"enabled": True, "host": "127.0.0.1", "port": 0}
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
    url = returnValueOrRaise(client.prepareFileForHTTP("/m.dat"))["HttpURL"]
    assert requests.get(url, timeout=30).content == data
    assert requests.get(url, headers={"Range": "bytes=10-19"}, timeout=30).content == data[10:20]
    assert requests.get(url + "x", timeout=30).status_code == 403  # refusals are not file bytes
    # The side server counts a download once its last byte is out, just after the client has it.
    http_bytes = 'seproxy_bytes_sent_total{route="http"}'
    values = wait_until(lambda: (v := scrape(port)).get(http_bytes) == len(data) + 10 and v, "HTTP bytes counted")
    assert values['seproxy_active_transfers{kind="http"}'] == 0
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
