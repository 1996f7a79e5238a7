"""Downloads while the same file is being staged again, and callers that share one staging.

The source is a real WebDAV server; the file is large enough that its
staging takes a while. Every download must end with exactly one version of
the file, complete, or with an error curl reports: never a short or mixed
file that looks whole.
"""

import os
import subprocess
import threading
import time
from pathlib import Path

from fixtures.http_side import curl, sha256, tool

from seproxy.transfer import RPCClient, returnValueOrRaise

SIZE = 64 * 1024 * 1024


def test_downloads_while_the_file_is_staged_again(pki, start_http_service, webdav_target, tmp_path):
    def add_webdav(config):
        config["storage_elements"]["DAV"] = {"plugin": "webdav", "base": webdav_target.base, "ca_dir": str(webdav_target.ca_dir)}
        config["cache"] = {"revalidate_after": 0}  # the source changes behind the service's back: compare at once

    service = start_http_service(config=add_webdav, lfn_storage_elements=["DAV"])
    source = webdav_target.root / "lab" / "big.dat"
    source.parent.mkdir()
    first = os.urandom(SIZE)
    source.write_bytes(first)
    old_url = service.prepare("/lab/big.dat")["HttpURL"]

    second = os.urandom(SIZE + 4096)  # another size: the cached copy is stale
    source.write_bytes(second)
    staging_area = Path(service.process.config["service"]["state_dir"]) / "cache" / "tmp"
    prepared: list[dict] = []
    errors: list[BaseException] = []

    def prepare_again() -> None:
        try:
            with RPCClient(service.process.url, proxy=str(pki.proxy), ca_dir=str(pki.ca_dir)) as client:
                prepared.append(returnValueOrRaise(client.prepareFileForHTTP("/lab/big.dat")))
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    stagers = [threading.Thread(target=prepare_again) for _ in range(3)]
    stagers[0].start()
    deadline = time.monotonic() + 30
    while not any(staging_area.iterdir()):
        assert time.monotonic() < deadline, "the second staging never started"
        time.sleep(0.005)
    for stager in stagers[1:]:
        stager.start()  # these join the staging in progress
    downloads = [
        subprocess.Popen([tool("curl"), "-sS", "--fail", "-o", str(tmp_path / f"old{n}"), old_url], stderr=subprocess.PIPE)
        for n in range(6)
    ]
    for download in downloads:
        download.wait(120)
    for stager in stagers:
        stager.join(120)
    assert not errors, errors
    for n, download in enumerate(downloads):
        assert download.returncode == 0, download.stderr.read()
        assert sha256((tmp_path / f"old{n}").read_bytes()) == sha256(first)

    assert len(prepared) == 3
    staged = {value["Files"]["/lab/big.dat"]["xxh3"] for value in prepared}
    assert len(staged) == 1, "the three callers shared one staging"
    for n, value in enumerate(prepared):
        curl("--fail", "-o", str(tmp_path / f"new{n}"), value["HttpURL"])
        assert sha256((tmp_path / f"new{n}").read_bytes()) == sha256(second)
    assert sha256(curl("--fail", old_url).stdout) == sha256(first), "the old URL still serves the old copy"
