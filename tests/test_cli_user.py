"""The user CLI end to end: ``python -m seproxy ...`` in a subprocess against the real service.

Credentials and the service come from the environment, as after
``eval "$(seproxy env)"``. Output is checked as a script sees it (not a
terminal: plain lines, parseable ``--json``) and, once, on a terminal.
"""

import json
import os
import pty
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from fixtures.proxy import wait_until
from fixtures.service import ServiceProcess
from fixtures.transfer_service import SE_NAME

MiB = 1024 * 1024


@pytest.fixture()
def user_env(se_service, pki):
    """The environment of a grid user of ``se_service``: URL, proxy and CA directory, no other grid variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("X509_", "SEPROXY_", "BEARER_TOKEN"))}
    env.update(SEPROXY_URL=se_service.url, X509_USER_PROXY=str(pki.proxy), X509_CERT_DIR=str(pki.ca_dir))
    return env


@pytest.fixture()
def seproxy(user_env, tmp_path):
    """``seproxy(*args, code=0)``: run the CLI, check its exit code, return the completed process."""

    def run(*args, code=0, env=None, **options):
        options = {"capture_output": True, "text": True, "timeout": 120, "cwd": tmp_path, **options}
        result = subprocess.run([sys.executable, "-m", "seproxy", *map(str, args)], env=env or user_env, **options)
        assert result.returncode == code, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
        return result

    return run


def test_put_then_get_a_file(seproxy, se_service, tmp_path):
    source = tmp_path / "data.bin"
    source.write_bytes(os.urandom(3 * MiB + 1))
    put = seproxy("put", source, SE_NAME, "/cli/data.bin")
    (line,) = put.stdout.splitlines()  # plain output: one final line per file
    assert line.startswith("file://") and "/cli/data.bin  3.0 MiB" in line and "adler32 " in line
    assert (se_service.se_root / "cli" / "data.bin").read_bytes() == source.read_bytes()

    (tmp_path / "in").mkdir()
    got = seproxy("get", SE_NAME, "/cli/data.bin", "in")
    (line,) = got.stdout.splitlines()
    assert line.startswith(f"/cli/data.bin -> {tmp_path / 'in' / 'data.bin'}  3.0 MiB")
    assert (tmp_path / "in" / "data.bin").read_bytes() == source.read_bytes()
    for output in (put.stdout + put.stderr, got.stdout + got.stderr):
        assert "\r" not in output and "\x1b" not in output  # no progress drawing off a terminal

    again = seproxy("get", SE_NAME, "/cli/data.bin", "in", code=1)
    assert "File exists" in again.stderr
    seproxy("get", "-f", SE_NAME, "/cli/data.bin", "in")
    seproxy("put", source, SE_NAME, "/cli/data.bin", code=1)
    seproxy("put", "--force", source, SE_NAME, "/cli/data.bin")


def test_get_to_standard_output(seproxy, se_service):
    data = os.urandom(MiB)
    (se_service.se_root / "stdout.bin").write_bytes(data)
    result = seproxy("get", SE_NAME, "/stdout.bin", "-", text=False)
    assert result.stdout == data and b"/stdout.bin -> -" in result.stderr


def test_a_missing_file_fails_with_exit_code_1(seproxy, tmp_path):
    result = seproxy("get", SE_NAME, "/cli/no-such-file", "here.bin", code=1)
    # The path once, the reason once: not DIRAC's "<reason> ( <errno> : <path>: <reason>)" under the path again.
    assert result.stderr == f"seproxy get: {SE_NAME}: /cli/no-such-file: No such file or directory\n"
    assert not (tmp_path / "here.bin").exists()


@pytest.mark.parametrize(
    "args, words",
    [
        (["get", SE_NAME], "the following arguments are required"),
        (["get", SE_NAME, "/a", "/b", "not-a-directory"], "several PFNs go into a directory"),
        (["get", "--json", SE_NAME, "/a", "-"], "takes one PFN, and no --json"),
        (["rm", "--no-such-option", SE_NAME, "/a"], "unrecognized arguments"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_usage_exits_with_2(seproxy, args, words):
    assert words in seproxy(*args, code=2).stderr


def test_missing_url_or_credentials_are_usage_errors(seproxy, user_env, tmp_path):
    no_url = {k: v for k, v in user_env.items() if k != "SEPROXY_URL"}
    assert "no service URL: give --url or set SEPROXY_URL" in seproxy("ping", code=2, env=no_url).stderr
    missing = seproxy("whoami", "--proxy", tmp_path / "absent.pem", code=2).stderr
    assert f"{tmp_path / 'absent.pem'} (from proxy argument) does not exist" in missing


def test_json_output_parses(seproxy, se_service, tmp_path):
    (se_service.se_root / "json").mkdir(exist_ok=True)
    (se_service.se_root / "json" / "a.txt").write_bytes(b"a" * 10)
    listing = json.loads(seproxy("ls", "--json", SE_NAME, "/json").stdout)
    assert listing["OK"] is True and list(listing["Value"]["Files"]) == ["/json/a.txt"]
    stat = json.loads(seproxy("stat", "--json", SE_NAME, "/json/a.txt", "/json/nope", code=1).stdout)
    assert stat["Value"]["Successful"]["/json/a.txt"]["Size"] == 10 and "/json/nope" in stat["Value"]["Failed"]
    got = json.loads(seproxy("get", "--json", SE_NAME, "/json/a.txt", tmp_path / "a.txt").stdout)
    assert got["Value"]["Successful"]["/json/a.txt"]["Path"] == str(tmp_path / "a.txt")
    who = json.loads(seproxy("whoami", "--json").stdout)
    assert who["Value"]["username"] == "tester"
    failed = json.loads(seproxy("ls", "--json", SE_NAME, "/json/nope", code=1).stdout)
    assert failed["OK"] is False and "No such file" in failed["Message"]


def test_ls_stat_and_rm(seproxy, se_service):
    directory = se_service.se_root / "tree"
    (directory / "sub").mkdir(parents=True, exist_ok=True)
    (directory / "file.txt").write_bytes(b"12345")
    (directory / "sub" / "inner.txt").write_bytes(b"x")
    assert seproxy("ls", SE_NAME, "/tree").stdout.splitlines() == ["file.txt", "sub/"]
    long = seproxy("ls", "-l", SE_NAME, "/tree").stdout.splitlines()
    assert long[0].startswith("-") and long[0].split()[1] == "5" and long[0].endswith("  file.txt")
    assert long[1].startswith("d") and long[1].endswith("  sub/")
    assert seproxy("ls", SE_NAME, "/tree/file.txt").stdout.splitlines() == ["file.txt"]
    stat = seproxy("stat", SE_NAME, "/tree/file.txt").stdout
    assert "type      file" in stat and "size      5 (5 B)" in stat

    refused = seproxy("rm", SE_NAME, "/tree/sub", "/tree/missing", code=1).stderr
    assert "/tree/sub: is a directory (remove it with -r)" in refused and "/tree/missing: " in refused
    assert seproxy("rm", SE_NAME, "/tree/file.txt").stdout.splitlines() == ["removed /tree/file.txt"]
    assert seproxy("rm", "-r", SE_NAME, "/tree/sub").stdout.splitlines() == ["removed /tree/sub (1 file, 1 B)"]
    assert seproxy("ls", SE_NAME, "/tree").stdout == ""
    assert not (directory / "sub").exists()


def test_whoami_and_ping(seproxy, pki):
    who = seproxy("whoami").stdout
    assert pki.user_dn in who and re.search(r"^username\s+tester$", who, re.MULTILINE)
    assert re.search(rf"^credentials\s+proxy {re.escape(str(pki.proxy))} \(from X509_USER_PROXY\)$", who, re.MULTILINE)
    assert "DataManagement/StorageElementProxy at https://localhost:" in seproxy("ping").stdout


def test_url_prints_a_link_that_serves_the_file(seproxy, se_service):
    data = os.urandom(100_000)
    (se_service.se_root / "lfn").mkdir(exist_ok=True)
    (se_service.se_root / "lfn" / "linked.bin").write_bytes(data)
    (url,) = seproxy("url", "/lfn/linked.bin").stdout.splitlines()
    assert url.startswith("http://")
    assert requests.get(url, timeout=30).content == data
    assert "/lfn/absent" in seproxy("url", "/lfn/absent", code=1).stderr


def test_progress_is_drawn_on_a_terminal(user_env, se_service, tmp_path):
    (se_service.se_root / "tty.bin").write_bytes(os.urandom(30 * MiB))
    controller, terminal = pty.openpty()
    command = [sys.executable, "-m", "seproxy", "get", SE_NAME, "/tty.bin", tmp_path / "tty.bin"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=terminal, env=user_env, text=True)
    os.close(terminal)  # once the command exits too, reading the terminal ends (EIO) after its last byte
    drawn = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:
            break
        if not chunk:
            break
        drawn += chunk
    os.close(controller)
    stdout, _ = process.communicate(timeout=120)
    assert process.returncode == 0
    assert b"\r\x1b[K/tty.bin  100%  30.0 MiB / 30.0 MiB" in drawn and b"MiB/s" in drawn
    assert drawn.endswith(b"\r\x1b[K")  # erased before the final line is printed
    assert stdout.startswith(f"/tty.bin -> {tmp_path / 'tty.bin'}")


def test_a_destination_ending_with_a_slash_is_a_directory_made_if_missing(seproxy, se_service, tmp_path):
    (se_service.se_root / "slash").mkdir(exist_ok=True)
    for name in ("one.txt", "two.txt"):
        (se_service.se_root / "slash" / name).write_bytes(name.encode())
    seproxy("get", SE_NAME, "/slash/one.txt", "new/inputs/")
    assert (tmp_path / "new" / "inputs" / "one.txt").read_bytes() == b"one.txt"
    seproxy("get", SE_NAME, "/slash/one.txt", "/slash/two.txt", "several/")
    assert sorted(p.name for p in (tmp_path / "several").iterdir()) == ["one.txt", "two.txt"]
    seproxy("get", SE_NAME, "/slash/one.txt", "plain")  # no slash: the file itself
    assert (tmp_path / "plain").read_bytes() == b"one.txt"
    (tmp_path / "taken").write_bytes(b"a file")
    refused = seproxy("get", SE_NAME, "/slash/one.txt", "taken/", code=1)
    assert "taken/" in refused.stderr and "File exists" in refused.stderr


def test_a_reader_gone_away_ends_every_printing_command_quietly(user_env, se_service, tmp_path):
    many = se_service.se_root / "many"
    many.mkdir(exist_ok=True)
    for number in range(1500):
        (many / f"file-{number:05d}.dat").write_bytes(b"")
    (se_service.se_root / "piped.bin").write_bytes(os.urandom(8 * MiB))
    seproxy_command = f"{sys.executable} -m seproxy"
    for command in (f"ls --json -l {SE_NAME} /many", f"ls -l {SE_NAME} /many", f"stat {SE_NAME} " + " ".join(
            f"/many/file-{number:05d}.dat" for number in range(1500)), f"get {SE_NAME} /piped.bin -"):
        script = f'{seproxy_command} {command} 2>stderr.txt | head -c 10 >/dev/null; echo "${{PIPESTATUS[0]}}"'
        done = subprocess.run(["bash", "-c", script], env=user_env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=120)
        assert done.stdout.strip() == "141", f"{command}: exit {done.stdout}{done.stderr}"
        assert (tmp_path / "stderr.txt").read_text() == "", command


def test_ctrl_c_exits_130_without_a_traceback(user_env):
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never answers: the call hangs in the handshake
    port = silent.getsockname()[1]
    command = [sys.executable, "-m", "seproxy", "ping", "--url", f"https://127.0.0.1:{port}/DataManagement/X"]
    process = subprocess.Popen(command, env=user_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        silent.settimeout(60)
        connection, _ = silent.accept()
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
        silent.close()
    connection.close()
    assert process.returncode == 130 and stdout == "" and stderr == ""


def test_standard_output_on_a_full_disk_says_so(seproxy, se_service):
    (se_service.se_root / "full.bin").write_bytes(os.urandom(2 * MiB))
    with open("/dev/full", "wb") as full:
        result = seproxy("get", SE_NAME, "/full.bin", "-", code=1, stdout=full, capture_output=False,
                         stderr=subprocess.PIPE)
    assert "No space left on device" in result.stderr and "Invalid argument" not in result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr


def test_ping_and_json_times_read_as_people_expect(seproxy, se_service):
    ping = seproxy("ping").stdout.splitlines()
    assert re.search(r"answered in \d+\.\d ms$", ping[0]) or re.search(r"answered in \d+\.\d s$", ping[0])
    # cpu and elapsed times with their unit, never raw seconds with all their digits
    assert re.search(r"elapsed real time (\d+\.\d (ms|s)|\d+[dhms]( \d+[hms])?)(,|$)", ping[1]), ping[1]
    assert not re.search(r"\d+\.\d{3,}", ping[1])
    (se_service.se_root / "lfn").mkdir(exist_ok=True)
    (se_service.se_root / "lfn" / "timed.bin").write_bytes(b"t")
    expires = json.loads(seproxy("url", "--json", "/lfn/timed.bin").stdout)["Value"]["Expires"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", expires)


def test_env_says_when_it_makes_credentials_and_puts_seproxy_on_path(tmp_path):
    venv_bin = Path(sys.executable).parent
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != venv_bin)
    env = {**os.environ, "SEPROXY_STATE_DIR": str(tmp_path / "state"), "PATH": path}
    env.pop("SEPROXY_CONFIG", None)
    first = subprocess.run([venv_bin / "seproxy", "env"], env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0
    assert first.stderr == (f"seproxy env: made new development credentials in {tmp_path / 'state' / 'dev-credentials'}:"
                            " CA, host certificate, user certificate, proxy\n")
    again = subprocess.run([venv_bin / "seproxy", "env"], env=env, capture_output=True, text=True, timeout=60)
    assert again.stderr == "" and again.stdout == first.stdout
    found = subprocess.run(["bash", "-c", f'eval "$({venv_bin / "seproxy"} env)"; command -v seproxy python'],
                           env=env, capture_output=True, text=True, timeout=60)
    assert found.stdout.splitlines() == [str(venv_bin / "seproxy"), str(venv_bin / "python")]


def test_the_banner_prints_the_exact_env_line(tmp_path):
    config = {"service": {"host": "127.0.0.1", "port": 0, "state_dir": str(tmp_path / "state")},
              "metrics": {"enabled": False}}
    service = ServiceProcess(tmp_path, config).start()
    try:
        line = wait_until(lambda: re.search(r"^  (eval .*)$", service.log(), re.MULTILINE), "the banner")[1]
        assert f"env --config {service.config_path}" in line
        venv_bin = Path(sys.executable).parent
        path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != venv_bin)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("X509_", "SEPROXY_"))}
        done = subprocess.run(["bash", "-c", f"{line} && seproxy whoami --json"], env={**env, "PATH": path},
                              cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["Value"]["DN"].endswith("CN=Development User")
    finally:
        service.stop()
