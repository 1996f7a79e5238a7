"""The distribution: a wheel that installs and imports in a clean venv, and the editable install."""

import subprocess
import sys
import zipfile
from pathlib import Path

import seproxy.cache
import seproxy.transfer

REPO = Path(__file__).resolve().parent.parent


def run(*command, **kwargs):
    return subprocess.run(command, check=True, capture_output=True, text=True, timeout=600, **kwargs)


def test_wheel_installs_and_imports_in_a_clean_venv(tmp_path):
    run(sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path / "dist"), str(REPO))
    (wheel,) = (tmp_path / "dist").glob("seproxy-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {"seproxy", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    assert "seproxy/transfer/codec.py" in names and "seproxy/cache/cache.py" in names
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", str(venv))
    python = venv / "bin" / "python"
    run(str(python), "-m", "pip", "install", "-q", str(wheel))
    probe = (
        "import seproxy.transfer, seproxy.cache, seproxy.service, seproxy.cli.main;"
        "from seproxy.transfer import S_OK, RPCClient;"
        "print(seproxy.transfer.__file__)"
    )
    location = run(str(python), "-c", probe, cwd=tmp_path).stdout.strip()
    assert str(venv) in location
    assert run(str(venv / "bin" / "seproxy"), "--version").stdout.startswith("seproxy ")


def test_editable_install_maps_the_top_level_folders():
    assert Path(seproxy.transfer.__file__).parent == REPO / "transfer"
    assert Path(seproxy.cache.__file__).parent == REPO / "cache"
