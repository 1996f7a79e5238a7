"""Prometheus metrics of a real service after real traffic."""

import json
import os
import re
from pathlib import Path

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


DASHBOARD = Path(__file__).parent.parent / "deploy" / "grafana" / "seproxy-dashboard.json"
# PromQL words that may stand where a metric name could: aggregations, keywords, set operators.
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile",
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool",
}


def metric_names(expr):
    """The metric names a PromQL expression reads.

    String literals, grouping label lists (``by (le, method)``) and Grafana
    variables go first; a name is then an identifier followed by ``{``,
    ``[``, ``)``, white space or the end, that is no PromQL word (a function
    is followed by ``(`` and so never counts).
    """
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\$\{?\w+\}?", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", "[]", expr)
    found = re.findall(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?=\s*[{\[)]|\s|$)", expr)
    return {name for name in found if name not in PROMQL_WORDS}


def exposed_names(text):
    """Every sample name ``/metrics`` shows or announces (a labelled counter shows no sample before its first count)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            name = name.removesuffix("_total") if kind == "counter" else name  # announced either way
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(kind, [""])
            names.update(name + suffix for suffix in suffixes)
        elif line and not line.startswith("#"):
            names.add(re.match(r"[\w:]+", line).group())
    return names


def test_metric_names_are_read_from_promql():
    expr = ('histogram_quantile(0.95, sum by (le, method) (rate(a_bucket{instance=~"$instance", x="y z"}'
            "[$__rate_interval]))) / ignoring(x) b_total + on (y) group_left c offset 5m - d)")
    assert metric_names(expr) == {"a_bucket", "b_total", "c", "d"}


def test_the_dashboard_reads_only_metrics_the_service_has(metered, pki):
    service, port = metered
    client = RPCClient(service.url, proxy=str(pki.proxy), ca_dir=str(pki.ca_dir))
    assert client.ping()["OK"] is True
    exposed = exposed_names(requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)
    panels = json.loads(DASHBOARD.read_text())["panels"]
    wanted = {"calls", "errors", "latency", "bytes", "fill", "hit ratio", "stagings", "active transfers"}
    titles = " ".join(panel["title"].lower() for panel in panels)
    assert all(word in titles for word in wanted), titles
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, f"{panel['title']}: no metric in {target['expr']}"
            assert names <= exposed, f"{panel['title']}: {sorted(names - exposed)} not in /metrics"


def test_cache_hits_and_misses_are_counted(metered, pki):
    service, port = metered
    client = RPCClient(service.url, proxy=str(pki.proxy), ca_dir=str(pki.ca_dir))
    (service.directory / "se" / "hit.dat").write_bytes(b"hit me")
    for _ in range(3):
        returnValueOrRaise(client.prepareFile("LocalSE", "/hit.dat"))
    values = scrape(port)
    assert values['seproxy_cache_lookups_total{result="miss"}'] == 1
    assert values['seproxy_cache_lookups_total{result="hit"}'] == 2
