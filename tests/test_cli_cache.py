"""``seproxy cache``: the operator CLI on a real cache, run as a subprocess."""

import json
import os
import re
import subprocess
import sys
import textwrap
import time

import pytest
import tomli_w

from seproxy.cache.configured import open_cache
from seproxy.cli.human import display_width
from seproxy.config import load_settings


@pytest.fixture()
def config(tmp_path):
    path = tmp_path / "seproxy.toml"
    path.write_text(tomli_w.dumps({"service": {"state_dir": str(tmp_path / "state")}, "cache": {"quota": "1G"}}))
    return path


@pytest.fixture()
def cache(config):
    with open_cache(load_settings(config)) as opened:
        yield opened


def put(cache, se, path, data, *, age=0.0):
    def fetch(writer):
        writer.expect(len(data), {})
        writer.write(data)

    entry = cache.stage(se, path, fetch, owner="tester")
    if age:
        cache._index.touch(entry.id, time.time() - age)  # backdate the last access for the test
    return entry


def seproxy(config, *args, check_code=0):
    result = subprocess.run(
        [sys.executable, "-m", "seproxy", "cache", *args, "--config", str(config)],
        capture_output=True, text=True, timeout=60,
    )
    assert check_code is None or result.returncode == check_code, result.stdout + result.stderr
    return result


def test_ls_and_du(config, cache):
    put(cache, "SE1", "/a", b"a" * 1000)
    put(cache, "SE2", "/b", b"b" * 3000)
    listed = json.loads(seproxy(config, "ls", "--json").stdout)
    assert sorted((e["se"], e["source_path"], e["size"]) for e in listed) == [("SE1", "/a", 1000), ("SE2", "/b", 3000)]
    only = json.loads(seproxy(config, "ls", "--json", "--se", "SE2").stdout)
    assert [e["source_path"] for e in only] == ["/b"]
    table = seproxy(config, "ls").stdout
    assert "SE1" in table and "2.9 KiB" in table and "2 entries" in table
    usage = json.loads(seproxy(config, "du", "--json").stdout)
    assert usage["total"] == 4000 and usage["by_se"] == {"SE1": 1000, "SE2": 3000}
    assert usage["quota"] == 1024**3
    assert "quota 1.0 GiB" in seproxy(config, "du").stdout


def test_purge_rules_and_dry_run(config, cache):
    old = put(cache, "SE1", "/old", b"o" * 100, age=3 * 86400)
    recent = put(cache, "SE1", "/recent", b"r" * 100)
    other = put(cache, "SE2", "/other", b"x" * 100, age=3 * 86400)
    dry = json.loads(seproxy(config, "purge", "--unused-for", "1d", "--dry-run", "--json").stdout)
    assert sorted(e["id"] for e in dry["removed"]) == sorted([old.id, other.id]) and dry["dry_run"]
    assert cache.get(old.id) is not None
    seproxy(config, "purge", "--unused-for", "1d", "--se", "SE1")
    assert cache.get(old.id) is None and cache.get(other.id) is not None and cache.get(recent.id) is not None
    seproxy(config, "purge", "--to-size", "100")
    assert len(cache.entries()) == 1 and cache.get(recent.id) is not None
    seproxy(config, "purge", "--all")
    assert cache.entries() == []


def test_purge_spares_pins_and_pending_uploads_unless_forced(config, cache):
    pinned = put(cache, "SE1", "/pinned", b"p")
    cache.pin(pinned.id, time.time() + 3600)
    with cache.receive_upload("tester", "putFile/u", expected_size=1) as writer:
        writer.write(b"u")
    kept = json.loads(seproxy(config, "purge", "--all", "--json", check_code=1).stdout)["kept"]
    assert len(kept) == 2
    seproxy(config, "purge", "--all", "--force")
    assert cache.entries() == []


def test_purge_never_removes_a_file_another_process_reads(config, cache, tmp_path):
    entry = put(cache, "SE1", "/busy", b"busy")
    ready = tmp_path / "ready"
    reader = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import pathlib, time
        from seproxy.config import load_settings
        from seproxy.cache.configured import open_cache
        with open_cache(load_settings({str(config)!r})) as cache, cache.open_read({entry.id!r}):
            pathlib.Path({str(ready)!r}).touch()
            time.sleep(30)
    """)])
    try:
        deadline = time.monotonic() + 20
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), "reader did not start"
        seproxy(config, "purge", "--all", "--force", check_code=1)
        assert cache.get(entry.id) is not None
    finally:
        reader.kill()
        reader.wait()


def test_verify_finds_and_removes_damage(config, cache):
    good = put(cache, "SE1", "/good", os.urandom(10000))
    bad = put(cache, "SE1", "/bad", os.urandom(10000))
    with open(bad.path, "r+b") as stream:
        stream.seek(5000)
        stream.write(b"\x00\xff")
    report = json.loads(seproxy(config, "verify", "--json", check_code=1).stdout)
    assert report["checked"] == 2
    assert [d["id"] for d in report["damaged"]] == [bad.id] and "xxh3" in report["damaged"][0]["problem"]
    seproxy(config, "verify", "--remove", check_code=1)
    assert cache.get(bad.id) is None and cache.get(good.id) is not None
    assert "0 damaged" in seproxy(config, "verify").stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["purge"], "a purge needs a condition"),
        (["purge", "--older-than", "5 fortnights"], "is not a duration"),
        (["purge", "--to-size", "lots"], "is not a size"),
        (["ls", "--area", "attic"], "invalid choice"),
    ],
)
def test_bad_flags(config, args, message):
    result = seproxy(config, *args, check_code=2)
    assert message in result.stderr


def test_config_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[cache]\nquota = 'huge'\n")
    result = subprocess.run([sys.executable, "-m", "seproxy", "cache", "du", "--config", str(bad)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "cache.quota" in result.stderr


def test_a_dry_run_says_what_the_purge_then_does_and_why_entries_stay(config, cache):
    free = put(cache, "SE1", "/free", b"f")
    pinned = put(cache, "SE1", "/pinned", b"p")
    cache.pin(pinned.id, time.time() + 3600)
    with cache.receive_upload("tester", "putFile/owed", expected_size=1) as writer:
        writer.write(b"o")
    owed = writer.entry
    dry = seproxy(config, "purge", "--all", "--dry-run", check_code=1).stdout.splitlines()
    assert f"would keep {pinned.id[:12]} (pinned)" in dry and f"would keep {owed.id[:12]} (owed to a storage element)" in dry
    assert dry[-1] == "would remove 1 entry, 1 B; would keep 2"
    dry_json = json.loads(seproxy(config, "purge", "--all", "--dry-run", "--json", check_code=1).stdout)
    real = json.loads(seproxy(config, "purge", "--all", "--json", check_code=1).stdout)
    assert [e["id"] for e in dry_json["removed"]] == [e["id"] for e in real["removed"]] == [free.id]
    assert {e["id"]: e["reason"] for e in dry_json["kept"]} == {e["id"]: e["reason"] for e in real["kept"]} == {
        pinned.id: "pinned", owed.id: "owed to a storage element"}
    with cache.open_read(pinned.id):
        busy = seproxy(config, "purge", "--all", "--force", "--dry-run", check_code=1).stdout
    assert f"would keep {pinned.id[:12]} (in use)" in busy
    assert seproxy(config, "purge", "--all", "--force").stdout.splitlines()[-1] == "removed 2 entries, 2 B; kept 0"


def test_inspecting_a_missing_cache_creates_nothing(tmp_path):
    config = tmp_path / "elsewhere.toml"
    config.write_text(tomli_w.dumps({"service": {"state_dir": str(tmp_path / "never")}}))
    for action in (["ls"], ["du"], ["verify"], ["purge", "--all"], ["purge", "--all", "--dry-run"]):
        result = seproxy(config, *action, check_code=1)
        assert f"seproxy cache: the cache {tmp_path / 'never' / 'cache'} does not exist" in result.stderr
    assert not (tmp_path / "never").exists()


def test_wording(config, cache):
    entry = put(cache, "SE1", "/one", b"1")
    assert seproxy(config, "ls").stdout.splitlines()[-1] == "1 entry, 1 B"
    assert "in 1 entry, 0 writes in progress" in seproxy(config, "du").stdout
    assert seproxy(config, "verify").stdout.splitlines()[-1] == "checked 1 entry: 0 damaged; 0 files without entry"
    refused = seproxy(config, "purge", check_code=2).stderr
    assert "--all" in refused and "everything" not in refused
    for action, words in (("ls", "least recently used first"), ("du", "how full the cache is")):
        assert words in seproxy(config, action, "--help").stdout
    listed = json.loads(seproxy(config, "ls", "--json").stdout)[0]
    assert listed["id"] == entry.id and listed["pinned_until"] is None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00", listed["created"])


def test_wide_names_keep_the_columns_aligned(config, cache):
    put(cache, "SE1", "/数据/运行一.root", b"w")
    put(cache, "SE1", "/ascii/run1.root", b"a")
    rows = seproxy(config, "ls").stdout.splitlines()[:3]
    owner_columns = {display_width(row[: row.index("tester" if "tester" in row else "OWNER")]) for row in rows}
    assert len(owner_columns) == 1, rows


def test_a_reader_gone_away_ends_the_listing_quietly(config, cache, tmp_path):
    for number in range(400):  # long names: either listing is larger than a pipe's buffer (64 KiB)
        put(cache, "SE1", f"/piped/{'long-name-' * 20}{number}", b"p")
    for listing in ("ls --json", "ls"):
        script = (f"{sys.executable} -m seproxy cache {listing} --config {config} 2>stderr.txt | head -c 10 >/dev/null; "
                  'echo "${PIPESTATUS[0]}"')
        done = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert done.stdout.strip() == "141" and (tmp_path / "stderr.txt").read_text() == "", listing


# Stages a file, says so half-way, and waits to be killed.
STAGE_AND_HANG = """
import sys, time
from seproxy.cache.configured import open_cache
from seproxy.config import load_settings

def fetch(writer):
    writer.write(b"half")
    print("writing", flush=True)
    time.sleep(60)

open_cache(load_settings(sys.argv[1])).stage("SE1", "/hanging", fetch)
"""


def test_read_only_commands_do_not_recover(config, cache):
    put(cache, "SE1", "/a", b"a" * 10)
    with subprocess.Popen([sys.executable, "-c", STAGE_AND_HANG, str(config)], stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout.readline() == "writing\n"
        child.kill()
    root = cache.layout.root
    files = lambda: sorted(str(p.relative_to(root)) for p in root.rglob("*") if "sqlite3-" not in p.name)  # noqa: E731
    index = root / "index.sqlite3"
    before, index_before = files(), index.read_bytes()
    assert any(name.startswith("tmp/") for name in before)  # the killed staging's partial file

    assert len(json.loads(seproxy(config, "ls", "--json").stdout)) == 1
    assert json.loads(seproxy(config, "du", "--json").stdout)["staging"] == 1  # the dead writer's lease, not reaped
    seproxy(config, "purge", "--all", "--dry-run")
    assert files() == before and index.read_bytes() == index_before

    seproxy(config, "purge", "--older-than", "1d")  # a writing command recovers
    assert not any(name.startswith("tmp/") and name != "tmp" for name in files())


def test_ls_streams_the_least_recently_used_first(config, cache):
    entries = [put(cache, "SE1", f"/f{i}", b"x" * 10, age=1000 - i) for i in range(30)]
    limited = json.loads(seproxy(config, "ls", "--json", "--limit", "4").stdout)
    assert [e["id"] for e in limited] == [e.id for e in entries[:4]]
    assert json.loads(seproxy(config, "ls", "--json", "--limit", "0").stdout) == []
    assert "3 entries, 30 B" in seproxy(config, "ls", "--limit", "3").stdout
    with subprocess.Popen(
        [sys.executable, "-m", "seproxy", "cache", "ls", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as listing:  # `seproxy cache ls | head -n 2`
        head = [listing.stdout.readline() for _ in range(2)]
        listing.stdout.close()
        # 0 if all was written before the reader left, else 141 (as a command killed by SIGPIPE); quiet either way.
        assert listing.wait(timeout=60) in (0, 141) and listing.stderr.read() == ""
    assert head[0].startswith("ID") and head[1].startswith(entries[0].id[:12])


def test_verify_samples_and_finds_files_without_entry(config, cache):
    entries = [put(cache, "SE1", f"/f{i}", os.urandom(100)) for i in range(20)]
    entries[7].path.write_bytes(b"short")
    sampled = json.loads(seproxy(config, "verify", "--json", "--sample", "5", check_code=None).stdout)
    assert sampled["checked"] == 5 and sampled["orphans"] == []
    everything = json.loads(seproxy(config, "verify", "--json", "--sample", "1000", check_code=1).stdout)
    assert everything["checked"] == 20 and [d["id"] for d in everything["damaged"]] == [entries[7].id]

    orphan = cache.layout.entry_path("ee" * 16)
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"no row")
    report = json.loads(seproxy(config, "verify", "--json", check_code=1).stdout)
    assert report["orphans"] == [str(orphan)] and report["complete"] and report["checked"] == 20
    seproxy(config, "verify", "--remove", check_code=1)
    assert not orphan.exists() and cache.get(entries[7].id) is None
    assert "0 damaged; 0 files without entry" in seproxy(config, "verify").stdout
    assert "--sample picks from the whole cache" in seproxy(config, "verify", "--sample", "3", "--se", "SE1", check_code=2).stderr
