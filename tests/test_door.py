"""The storage door (``/lfn/<LFN>`` on the service port) as grid jobs use it.

Real clients from Debian (gfal2 with its HTTP plugin and CLI, davix, xrdcp
with XrdClHttp, curl) against a real service with a file storage element,
authenticated with the test PKI's proxies (``X509_USER_PROXY``,
``X509_CERT_DIR``) or with bearer tokens signed by a test issuer the
service trusts. A missing client fails the test (``tool``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jwt
import pytest
import requests
from fixtures.http_side import tool
from fixtures.proxy import file_place
from fixtures.service import free_port, start_service
from fixtures.tokens import issuer_keys, token_service_config

MiB = 1024 * 1024
ISSUER = "https://iam.door.example/"
SUBJECT = "door-tester"
SE = "DOOR-SE"


def adler32(data: bytes) -> str:
    return f"{zlib.adler32(data):08x}"


def signed(key, scope: str, *, issuer: str = ISSUER, audience: str = "https://wlcg.cern.ch/jwt/v1/any", lifetime: int = 600) -> str:
    now = int(time.time())
    claims = {"iss": issuer, "sub": SUBJECT, "aud": audience, "iat": now - 10, "exp": now + lifetime, "scope": scope}
    return jwt.encode(claims, key, algorithm="RS256")


@pytest.fixture(scope="module")
def issuer_key(tmp_path_factory):
    return issuer_keys(tmp_path_factory.mktemp("door-keys"))


@pytest.fixture(scope="module")
def door(pki, issuer_key, tmp_path_factory):
    """(service, storage root, metrics port): the door at /lfn, tokens of ISSUER mapped to tester."""
    _, pem = issuer_key
    directory = tmp_path_factory.mktemp("door-service")
    place = file_place(SE, tmp_path_factory.mktemp("door-se") / "se")
    config = token_service_config(pki, directory / "state", place, issuer=ISSUER, pem=pem, subject=SUBJECT)
    metrics_port = free_port()
    config["metrics"] = {"enabled": True, "host": "127.0.0.1", "port": metrics_port}
    running = start_service(directory, config)
    yield running, place.root, metrics_port
    running.stop()


def lfn_url(service, lfn: str, scheme: str = "https") -> str:
    base = service.url.split("/DataManagement/")[0]
    return base.replace("https://", f"{scheme}://", 1) + "/lfn" + lfn


def grid_env(pki) -> dict[str, str]:
    return {
        "X509_USER_PROXY": str(pki.group_proxy),
        "X509_CERT_DIR": str(pki.ca_dir),
        "GFAL_PYTHONBIN": "/usr/bin/python3",
        "PYTHONPATH": "",
    }


def client(pki, *command: str, expect_ok: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [tool(command[0]), *command[1:]], capture_output=True, text=True, timeout=timeout, env={**os.environ, **grid_env(pki)}
    )
    if expect_ok:
        assert done.returncode == 0, f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


def stagings(metrics_port: int) -> float:
    text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    prefix = f'seproxy_stagings_total{{outcome="ok",se="{SE}"}} '
    return next((float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix)), 0.0)


def put_source(root: Path, lfn: str, data: bytes) -> None:
    path = root / lfn.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


# -- gfal, davix, xrdcp with a proxy -------------------------------------------------------


def test_gfal_copy_of_a_cold_file_stages_it_once_for_twenty_copies(door, pki, tmp_path):
    service, root, metrics_port = door
    data = os.urandom(3 * MiB + 777)
    put_source(root, "/vo/cold/twenty.dat", data)
    before = stagings(metrics_port)
    url = lfn_url(service, "/vo/cold/twenty.dat", "davs")

    def copy(number: int) -> bytes:
        target = tmp_path / f"copy{number}.dat"
        client(pki, "gfal-copy", url, f"file://{target}")
        return target.read_bytes()

    with ThreadPoolExecutor(20) as pool:
        copies = list(pool.map(copy, range(20)))
    assert all(copy == data for copy in copies)
    assert stagings(metrics_port) - before == 1


def test_gfal_copy_checks_adler32_and_gfal_sum(door, pki, tmp_path):
    service, root, _ = door
    data = os.urandom(MiB + 5)
    put_source(root, "/vo/cold/summed.dat", data)
    url = lfn_url(service, "/vo/cold/summed.dat", "davs")
    client(pki, "gfal-copy", "-K", "ADLER32", url, f"file://{tmp_path / 'summed.dat'}")
    assert (tmp_path / "summed.dat").read_bytes() == data
    assert client(pki, "gfal-sum", url, "ADLER32").stdout.split() == [url, adler32(data)]


def test_gfal_copy_up_lands_on_the_element_and_a_second_copy_is_refused(door, pki, tmp_path):
    service, root, _ = door
    data = os.urandom(2 * MiB + 3)
    (tmp_path / "up.dat").write_bytes(data)
    (root / "vo" / "up").mkdir(parents=True, exist_ok=True)
    url = lfn_url(service, "/vo/up/new.dat", "davs")
    client(pki, "gfal-copy", "-K", "ADLER32", f"file://{tmp_path / 'up.dat'}", url)
    assert (root / "vo" / "up" / "new.dat").read_bytes() == data
    again = client(pki, "gfal-copy", f"file://{tmp_path / 'up.dat'}", url, expect_ok=False)
    assert again.returncode != 0 and "exists" in (again.stdout + again.stderr).lower()
    # Overwritten with -f, the next read gets the new bytes, not the cached ones.
    client(pki, "gfal-copy", url, f"file://{tmp_path / 'first.dat'}")
    newer = os.urandom(MiB)
    (tmp_path / "newer.dat").write_bytes(newer)
    client(pki, "gfal-copy", "-f", f"file://{tmp_path / 'newer.dat'}", url)
    client(pki, "gfal-copy", url, f"file://{tmp_path / 'second.dat'}")
    assert (tmp_path / "second.dat").read_bytes() == newer


def test_gfal_mkdir_ls_stat_rm(door, pki):
    service, root, _ = door
    put_source(root, "/vo/listed/a.dat", b"a" * 10)
    put_source(root, "/vo/listed/b.dat", b"b" * 20)
    client(pki, "gfal-mkdir", lfn_url(service, "/vo/listed/sub", "davs"))
    assert (root / "vo" / "listed" / "sub").is_dir()
    assert sorted(client(pki, "gfal-ls", lfn_url(service, "/vo/listed", "davs")).stdout.split()) == ["a.dat", "b.dat", "sub"]
    stat = client(pki, "gfal-stat", lfn_url(service, "/vo/listed/b.dat", "davs")).stdout
    assert "Size: 20" in stat and "regular file" in stat
    client(pki, "gfal-rm", lfn_url(service, "/vo/listed/a.dat", "davs"))
    assert not (root / "vo" / "listed" / "a.dat").exists()
    missing = client(pki, "gfal-stat", lfn_url(service, "/vo/listed/a.dat", "davs"), expect_ok=False)
    assert missing.returncode != 0


def test_davix_get_put_and_xrdcp_with_a_proxy(door, pki, tmp_path):
    service, root, _ = door
    data = os.urandom(MiB + 11)
    put_source(root, "/vo/davix/in.dat", data)
    proxy = ["--cert", str(pki.group_proxy), "--capath", str(pki.ca_dir)]
    client(pki, "davix-get", *proxy, lfn_url(service, "/vo/davix/in.dat"), str(tmp_path / "got.dat"))
    assert (tmp_path / "got.dat").read_bytes() == data
    client(pki, "davix-put", *proxy, str(tmp_path / "got.dat"), lfn_url(service, "/vo/davix/out.dat"))
    assert (root / "vo" / "davix" / "out.dat").read_bytes() == data
    client(pki, "xrdcp", "--nopbar", "--allow-http", "-f", lfn_url(service, "/vo/davix/in.dat"), str(tmp_path / "xrd.dat"))
    assert (tmp_path / "xrd.dat").read_bytes() == data


# -- tokens ---------------------------------------------------------------------------------


def call(service, pki, method: str, lfn: str, token: str, data: bytes | None = None) -> requests.Response:
    return requests.request(
        method, lfn_url(service, lfn), data=data, headers={"Authorization": f"Bearer {token}"}, verify=str(pki.ca_dir), timeout=60
    )


def test_tokens_read_create_modify(door, pki, issuer_key):
    service, root, _ = door
    key, _ = issuer_key
    put_source(root, "/vo/tok/existing.dat", b"old bytes")
    (root / "x").mkdir(exist_ok=True)
    put_source(root, "/x/existing.dat", b"old bytes")
    reader = signed(key, "storage.read:/")
    got = call(service, pki, "GET", "/vo/tok/existing.dat", reader)
    assert got.status_code == 200 and got.content == b"old bytes"
    refused = call(service, pki, "PUT", "/vo/tok/new.dat", reader, b"new")
    assert refused.status_code == 403 and "storage.create" in refused.text
    creator = signed(key, "storage.create:/x")
    assert call(service, pki, "PUT", "/x/new.dat", creator, b"new").status_code == 201
    assert (root / "x" / "new.dat").read_bytes() == b"new"
    outside = call(service, pki, "PUT", "/vo/tok/new.dat", creator, b"new")
    assert outside.status_code == 403 and not (root / "vo" / "tok" / "new.dat").exists()
    overwrite = call(service, pki, "PUT", "/x/existing.dat", creator, b"newer")
    assert overwrite.status_code == 409 and "storage.modify" in overwrite.text
    modifier = signed(key, "storage.modify:/x")
    assert call(service, pki, "PUT", "/x/existing.dat", modifier, b"newer").status_code == 204
    assert (root / "x" / "existing.dat").read_bytes() == b"newer"
    assert call(service, pki, "DELETE", "/x/existing.dat", creator).status_code == 403
    assert call(service, pki, "DELETE", "/x/existing.dat", modifier).status_code == 204
    assert not (root / "x" / "existing.dat").exists()


@pytest.mark.parametrize("change", [{"lifetime": -60}, {"issuer": "https://foreign.example/"}, {"audience": "https://elsewhere.example"}])
def test_bad_tokens_are_refused_with_www_authenticate(door, pki, issuer_key, change):
    service, root, _ = door
    key, _ = issuer_key
    put_source(root, "/vo/tok/guarded.dat", b"guarded")
    answer = call(service, pki, "GET", "/vo/tok/guarded.dat", signed(key, "storage.read:/", **change))
    assert answer.status_code == 401 and "bearer token refused" in answer.text
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")


# -- bad input --------------------------------------------------------------------------------


def curl_status(pki, url: str, *options: str) -> tuple[int, str]:
    done = client(pki, "curl", "-s", "--path-as-is", "-o", "-", "-w", "\n%{http_code}", "--capath", str(pki.ca_dir),
                  "--cert", str(pki.group_proxy), *options, url)  # fmt: skip
    body, _, status = done.stdout.rpartition("\n")
    return int(status), body


def test_bad_paths_are_refused_with_a_reason(door, pki):
    service, root, _ = door
    put_source(root, "/vo/safe.dat", b"safe")
    status, body = curl_status(pki, lfn_url(service, "/vo/../../etc/passwd"))
    assert status == 400 and "'..'" in body
    status, body = curl_status(pki, lfn_url(service, "/vo/%2e%2e/%2e%2e/etc/passwd"))
    assert status == 400 and "'..'" in body
    status, body = curl_status(pki, lfn_url(service, "/vo/bad%01name"))
    assert status == 400 and "not an LFN" in body
    status, body = curl_status(pki, lfn_url(service, "/vo/nowhere.dat"))
    assert status == 404 and "/vo/nowhere.dat" in body and "Traceback" not in body
    anonymous = requests.get(lfn_url(service, "/vo/safe.dat"), verify=str(pki.ca_dir), timeout=30)
    assert anonymous.status_code == 401 and "WWW-Authenticate" in anonymous.headers


def test_mkcol_of_an_existing_directory_and_under_a_missing_parent(door, pki):
    service, root, _ = door
    (root / "vo" / "dirs").mkdir(parents=True, exist_ok=True)
    assert curl_status(pki, lfn_url(service, "/vo/dirs"), "-X", "MKCOL")[0] == 405
    assert curl_status(pki, lfn_url(service, "/vo/nodir/sub"), "-X", "MKCOL")[0] == 409


# -- the side server's representation, shared ---------------------------------------------------


def test_ranges_digests_and_validators_as_the_side_server_answers(door, pki, issuer_key):
    service, root, _ = door
    key, _ = issuer_key
    data = os.urandom(MiB + 99)
    put_source(root, "/vo/repr/file.dat", data)
    auth = {"Authorization": f"Bearer {signed(key, 'storage.read:/')}"}
    url, ca = lfn_url(service, "/vo/repr/file.dat"), str(pki.ca_dir)
    # Read whole once: while it is staged the file has no validators yet (see test_door_streaming.py).
    assert requests.get(url, headers=auth, verify=ca, timeout=30).content == data
    head = requests.head(url, headers={**auth, "Want-Digest": "ADLER32"}, verify=ca, timeout=30)
    assert head.status_code == 200 and head.headers["Digest"] == f"adler32={adler32(data)}"
    assert head.headers["Content-Length"] == str(len(data)) and head.headers["Accept-Ranges"] == "bytes"
    etag = head.headers["ETag"]
    part = requests.get(url, headers={**auth, "Range": "bytes=10-19"}, verify=ca, timeout=30)
    assert part.status_code == 206 and part.content == data[10:20]
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    several = requests.get(url, headers={**auth, "Range": "bytes=0-1,100-101"}, verify=ca, timeout=30)
    assert several.status_code == 206 and several.headers["Content-Type"].startswith("multipart/byteranges")
    assert data[100:102] in several.content
    assert requests.get(url, headers={**auth, "If-None-Match": etag}, verify=ca, timeout=30).status_code == 304
    stat = requests.request("PROPFIND", url, headers={**auth, "Depth": "0"}, verify=ca, timeout=30)
    assert stat.status_code == 207 and f"<d:getetag>{etag}</d:getetag>".replace('"', "&quot;") in stat.text.replace('"', "&quot;")
    assert f"adler32={adler32(data)}" in stat.text


def test_seproxy_token_needs_the_development_issuer(door):
    service, _, _ = door
    done = subprocess.run(
        [sys.executable, "-m", "seproxy", "token", "--config", str(service.config_path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and done.stdout == ""
    assert "no development token issuer is configured" in done.stderr and "Traceback" not in done.stderr


def test_a_token_is_never_taken_over_plain_http(door, issuer_key):
    """The door is on the HTTPS service port only: plain HTTP gets no answer from it, let alone a file."""
    service, root, _ = door
    put_source(root, "/vo/plain.dat", b"not over http")
    plain_url = lfn_url(service, "/vo/plain.dat").replace("https://", "http://", 1)
    try:
        answer = requests.get(plain_url, headers={"Authorization": f"Bearer {signed(issuer_key[0], 'storage.read:/')}"}, timeout=30)
    except requests.ConnectionError:
        return
    assert answer.status_code >= 400 and b"not over http" not in answer.content
