"""The README, literally: its shell and Python blocks run in order, as written, against a real service.

A newcomer follows the README on a fresh clone; so does this test, in a
shell whose PATH does not hold the venv (only ``eval "$(.venv/bin/seproxy
env)"`` puts it there), from an empty folder beside the venv, against a
service like the embedded default (development credentials, ``LocalSE``)
on free ports with its state in a temporary folder. A block that only an
operator can run (root, the Makefile targets that start all this) is left
out only when the README marks it, directly before the block, with
``<!-- readme-test: skip (why) -->``; such marks must stay rare.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from fixtures.service import ServiceProcess, free_port

from seproxy.defaults import embedded_config

README = Path(__file__).parent.parent / "README.md"
RUN = {"sh", "python"}
FENCE = re.compile(r"^```(?P<language>[\w-]*)[ \t]*\n(?P<code>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
MARK = re.compile(r"<!--\s*readme-test:\s*skip\s*\((?P<why>[^)]*)\)\s*-->")
MARK_LAST = re.compile(MARK.pattern + r"\Z")


@dataclass(frozen=True)
class Block:
    line: int
    language: str
    code: str
    skip: str | None  # the reason the README gives for leaving it out


def blocks(text: str) -> list[Block]:
    """The fenced blocks of ``text`` in order, each with the skip mark that directly precedes it."""
    found = []
    for fence in FENCE.finditer(text):
        mark = MARK_LAST.search(text[: fence.start()].rstrip())
        skip = mark["why"].strip() if mark else None
        line = text.count("\n", 0, fence.start()) + 1
        found.append(Block(line, fence["language"], fence["code"], skip))
    return found


def test_only_marked_blocks_are_left_out_and_marks_are_rare():
    text = README.read_text()
    every = blocks(text)
    skipped = [block for block in every if block.skip is not None]
    assert all(block.skip for block in skipped), "a skip mark needs its reason: <!-- readme-test: skip (why) -->"
    assert len(MARK.findall(text)) == len(skipped), "a skip mark stands directly before the block it leaves out"
    unrunnable = [block.line for block in every if block.language not in RUN and block.skip is None]
    assert not unrunnable, f"README lines {unrunnable}: blocks in a language the test cannot run need a skip mark"
    assert len(skipped) * 3 <= len(every), f"{len(skipped)} of {len(every)} blocks skipped: skipping is for the rare operator-only block"
    assert sum(block.language == "python" for block in every if block.skip is None) >= 1
    assert sum(block.language == "sh" for block in every if block.skip is None) >= 2


def test_the_mark_is_read_only_directly_before_its_block():
    text = "<!-- readme-test: skip (far) -->\n\ntext\n\n```sh\nrun\n```\n\n<!-- readme-test: skip (near) -->\n```sh\nno\n```\n"
    assert [(block.code, block.skip) for block in blocks(text)] == [("run\n", None), ("no\n", "near")]


def embedded_like_config(state: Path) -> dict:
    """The embedded default (development credentials and token issuer, LocalSE, the HTTP side server) on free ports."""
    config = embedded_config(state)
    config["http"]["port"] = free_port()
    config["metrics"] = {"enabled": False}
    return config


def test_the_readme_runs_as_written(tmp_path):
    state = tmp_path / "state"
    (state / "storage" / "LocalSE").mkdir(parents=True)
    service = ServiceProcess(tmp_path, embedded_like_config(state)).start()
    try:
        clone = tmp_path / "clone"
        clone.mkdir()
        venv = Path(sys.executable).parent.parent
        (clone / ".venv").symlink_to(venv)
        lines = ["set -eo pipefail -x"]
        for block in blocks(README.read_text()):
            if block.skip is not None:
                continue
            if block.language == "python":
                script = tmp_path / f"readme-line-{block.line}.py"
                script.write_text(block.code)
                lines.append(f"python {script}")
            else:
                lines.append(block.code)
        outside = [p for p in os.environ["PATH"].split(os.pathsep) if Path(p).resolve() != (venv / "bin").resolve()]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("X509_", "SEPROXY_", "BEARER_TOKEN"))}
        env.update(PATH=os.pathsep.join(outside), HOME=str(tmp_path / "home"), SEPROXY_CONFIG=str(service.config_path))
        done = subprocess.run(["bash", "-c", "\n".join(lines)], cwd=clone, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"the README failed:\n{done.stdout}\n{done.stderr}"
        assert (clone / "inputs" / "other.root").read_bytes() == (clone / "other.root").read_bytes()
        assert (clone / "inputs" / "cli" / "results.root").read_bytes() == (clone / "results.root").read_bytes()
        assert (clone / "a.dat").read_bytes() == (clone / "results.root").read_bytes()  # curl -O of the URL
    finally:
        service.stop()
