"""DIRAC 9.1's own HTTPS client against seproxy: every error reaches its user with the service's reason.

DIRAC's ``TornadoBaseClient._request`` drops the body of a 401, 403, 404
or 501 answer, so the service answers a JSON call's errors with status 200
and the ``S_ERROR`` inside, and a raw call's (``receiveFile``) with a
status whose body DIRAC passes on. The client runs in ``.venv-dirac``
(``scripts/setup test``) as a subprocess, with the test's proxy and CAs.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from fixtures.proxy import ProxyService, file_place

ROOT = Path(__file__).resolve().parents[1]
DIRAC_PYTHON = ROOT / ".venv-dirac" / "bin" / "python"
CALLS = Path(__file__).parent / "fixtures" / "dirac_calls.py"


def dirac(service: ProxyService, proxy: Path, *calls: tuple[str, list[Any]]) -> list[dict[str, Any]]:
    """What DIRAC's client returns for each call, made with the proxy file ``proxy``."""
    assert DIRAC_PYTHON.exists(), f"DIRAC's client is not installed: run scripts/setup test ({DIRAC_PYTHON} is missing)"
    ca_dir = str(service.pki.ca_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("X509_", "DIRAC"))}
    # DIRAC 9.1 with urllib3 2.x trusts only the CAs it finds through SSL_CERT_DIR.
    env.update(X509_USER_PROXY=str(proxy), X509_CERT_DIR=ca_dir, SSL_CERT_DIR=ca_dir, HOME=str(proxy.parent))
    done = subprocess.run(
        [str(DIRAC_PYTHON), str(CALLS), service.url, json.dumps(calls)],
        capture_output=True, text=True, env=env, timeout=120, cwd=proxy.parent,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    results: list[dict[str, Any]] = json.loads(done.stdout.splitlines()[-1])
    return results


@pytest.fixture
def dirac_service(start_proxy: Any, tmp_path: Path) -> ProxyService:
    return start_proxy([file_place("FILE-SE", tmp_path / "file-se")])


@pytest.fixture
def stranger(dirac_service: ProxyService, tmp_path: Path) -> Path:
    """A proxy-like PEM (certificate and key) of a DN the service does not know."""
    pki = dirac_service.pki
    cert, key = pki.issue_user("/DC=org/DC=test/CN=Stranger")
    path = tmp_path / "stranger.pem"
    path.write_bytes(Path(cert).read_bytes() + Path(key).read_bytes())
    path.chmod(0o600)
    return path


def test_dirac_client_works_and_reads_every_error(dirac_service: ProxyService, stranger: Path, tmp_path: Path):
    reader = Path(dirac_service.pki.proxy)
    data = b"read by DIRAC\n" * 100
    (tmp_path / "file-se" / "here.dat").write_bytes(data)
    never, fetched = tmp_path / "never.dat", tmp_path / "fetched.dat"
    (
        whoami, prepared, received, unknown, mistyped, missing_argument, refused, not_prepared, storage
    ) = dirac(
        dirac_service,
        reader,
        ("whoami", []),
        ("prepareFile", ["FILE-SE", "/here.dat"]),
        ("receiveFile", [str(fetched), "getFile/here.dat", ""]),
        ("noSuchMethod", []),
        ("prepareFile", ["FILE-SE", 5]),
        ("prepareFile", ["FILE-SE"]),
        ("refreshConfiguration", [False]),
        ("receiveFile", [str(never), "getFile/never-prepared.dat", ""]),
        ("prepareFile", ["FILE-SE", "/not/there.dat"]),
    )  # fmt: skip
    assert whoami["OK"] and whoami["Value"]["username"] == "tester", whoami
    assert prepared["OK"] and prepared["Value"]["FileId"] == "getFile/here.dat", prepared
    assert received["OK"] and fetched.read_bytes() == data, received

    assert not unknown["OK"] and "unknown method 'noSuchMethod'" in unknown["Message"], unknown
    assert unknown["Errno"] == 38  # ENOSYS, as DIRAC's own 501 mapping would say
    assert not mistyped["OK"] and "argument 2 must be a string, got an integer" in mistyped["Message"], mistyped
    assert not missing_argument["OK"] and "wrong number of arguments (1 given)" in missing_argument["Message"]
    assert not refused["OK"] and "refreshConfiguration needs one of the properties CSAdministrator" in refused["Message"]
    assert refused["Errno"] == 13  # EACCES
    # A raw call: DIRAC shows "400 Client Error: ... for url: ...: <the service's S_ERROR>" and writes no file.
    assert not not_prepared["OK"] and "call prepareFile first" in not_prepared["Message"], not_prepared
    assert not never.exists()
    assert not storage["OK"] and "/not/there.dat" in storage["Message"], storage
    assert "is not found" not in storage["Message"] and "No access" not in storage["Message"]


def test_dirac_client_of_an_unknown_user_reads_why(dirac_service: ProxyService, stranger: Path, tmp_path: Path):
    destination = tmp_path / "refused.dat"
    echo, prepare, receive = dirac(
        dirac_service,
        stranger,
        ("echo", ["hello"]),
        ("prepareFile", ["FILE-SE", "/here.dat"]),
        ("receiveFile", [str(destination), "getFile/here.dat", ""]),
    )
    assert echo["OK"] and echo["Value"] == "hello", echo  # echo is open to all
    for result in (prepare, receive):
        assert not result["OK"] and "CN=Stranger' is not registered with this service" in result["Message"], result
        assert "No access to" not in result["Message"]
    assert prepare["Errno"] == 13
    assert not destination.exists()
