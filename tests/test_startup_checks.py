"""Start-up checks everything before it listens: one clear line, exit 2, no port left listening.

Each case runs ``seproxy serve --config FILE`` as an operator would and looks
at the exit code, at stderr (one line naming the config file, the key and the
problem; no traceback), and at the ports the config names.
"""

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import tomli_w
from fixtures.service import base_config, free_port

REPO = Path(__file__).resolve().parent.parent


def serve(config_path, cwd, watched_port, timeout=60):
    """Run the service to its exit, trying to connect to ``watched_port`` all along: (result, ever listened)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "seproxy", "serve", "--config", str(config_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
    )  # fmt: skip
    connected = []

    def watch():
        while process.poll() is None and not connected:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", watched_port)) == 0:
                    connected.append(True)
            time.sleep(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        process.kill()
    watcher.join(5)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), bool(connected)


def write(tmp_path, config):
    path = tmp_path / "seproxy.toml"
    path.write_text(tomli_w.dumps(config))
    return path


def refused(result, config_path, key, problem):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(config_path) in lines[0] and key in lines[0] and problem in lines[0], lines[0]


@pytest.fixture
def config(pki, tmp_path):
    config = base_config(pki, tmp_path / "state", port=free_port())
    config["service"]["log_level"] = "WARNING"
    return config


def test_a_cache_root_that_is_a_file(config, tmp_path):
    (tmp_path / "not-a-dir").write_text("a file")
    config["cache"] = {"root": str(tmp_path / "not-a-dir")}
    path = write(tmp_path, config)
    result, listened = serve(path, tmp_path, config["service"]["port"])
    refused(result, path, "cache.root", "not a directory")
    assert not listened


@pytest.mark.parametrize("damage, problem", [("missing", "No such file"), ("not a key", "not an unencrypted PEM private key"), ("unreadable", "Is a directory")])
def test_a_bad_host_key(config, tmp_path, damage, problem):
    key = tmp_path / "hostkey.pem"
    if damage == "not a key":
        key.write_text("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
    elif damage == "unreadable":
        key.mkdir()  # the tests run as root, whom no file mode stops from reading
    config["tls"]["host_key"] = str(key)
    path = write(tmp_path, config)
    result, listened = serve(path, tmp_path, config["service"]["port"])
    refused(result, path, "tls.host_key", problem)
    assert not listened


@pytest.mark.parametrize("key", ["metrics.port", "http.port"])
def test_a_busy_metrics_or_side_port(config, tmp_path, key):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        port = busy.getsockname()[1]
        if key == "metrics.port":
            config["metrics"] = {"enabled": True, "host": "127.0.0.1", "port": port}
        else:
            config["http"] = {"enabled": True, "host": "127.0.0.1", "port": port}
        path = write(tmp_path, config)
        result, listened = serve(path, tmp_path, config["service"]["port"])
        refused(result, path, key, "Address already in use")
        assert not listened
    finally:
        busy.close()


@pytest.mark.parametrize(
    "http, key, problem",
    [
        ({"staging_concurrency": 0}, "http.staging_concurrency", "must be from 1 to 64, got 0"),
        ({"answer_when": "early"}, "http.answer_when", "must be one of 'staged', 'started', got 'early'"),
    ],
)
def test_a_bad_prepare_option(config, tmp_path, http, key, problem):
    config["http"] = {"enabled": True, "host": "127.0.0.1", "port": free_port(), **http}
    path = write(tmp_path, config)
    result, listened = serve(path, tmp_path, config["service"]["port"])
    refused(result, path, key, problem)
    assert not listened


def test_the_example_config_as_it_is(tmp_path):
    assert not Path("/etc/grid-security/certificates").exists(), "this case needs a host without the grid CA directory"
    example = REPO / "deploy" / "seproxy.example.toml"
    result, listened = serve(example, tmp_path, 8443)
    refused(result, example, "tls.ca_dir", "/etc/grid-security/certificates")
    assert not listened
