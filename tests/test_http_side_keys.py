"""The URL signing secret: replaced without breaking URLs already handed out, and kept from other users."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures.http_side import SECRET, curl, status_of
from fixtures.service import free_port

from seproxy.config import ConfigError, load_settings
from seproxy.http_side.side import _retired_secrets


def test_a_retired_secret_keeps_its_urls_valid_until_it_is_removed(start_http_service, tmp_path: Path) -> None:
    service = start_http_service(key_id="k1", port=free_port())  # URLs name the port: keep it over restarts
    old_url = service.url("/lab/keys/old.dat", b"signed with k1")

    old_secret = tmp_path / "http-secret.k1"
    old_secret.write_text(SECRET)
    old_secret.chmod(0o600)
    process = service.process
    process.stop()
    http = process.config["http"]
    http.update(key_id="k2", secret="rotated-" + SECRET[::-1], retired_keys={"k1": str(old_secret)})
    process.start()
    assert curl("--fail", old_url).stdout == b"signed with k1"
    new_url = service.url("/lab/keys/new.dat", b"signed with k2")
    assert "/k2." in new_url and curl("--fail", new_url).stdout == b"signed with k2"

    process.stop()
    del http["retired_keys"]
    process.start()
    answer = curl("-i", old_url).stdout
    assert status_of(answer) == 403 and b"signed with another key" in answer
    assert curl("--fail", new_url).stdout == b"signed with k2"


def test_a_retired_key_must_name_an_existing_private_secret(tmp_path: Path) -> None:
    config = tmp_path / "seproxy.toml"
    config.write_text(f'[http]\nenabled = true\nretired_keys = {{ k0 = "{tmp_path / "missing"}" }}\n')
    with pytest.raises(ConfigError, match=r"http.retired_keys.k0: .*missing"):
        _retired_secrets(load_settings(config))
    config.write_text('[http]\nkey_id = "k1"\nretired_keys = { k1 = "/etc/seproxy/old" }\n')
    with pytest.raises(ConfigError, match=r"http\.retired_keys\.k1: .*other than key_id 'k1'"):
        load_settings(config)


@pytest.mark.parametrize("mode, refused", [(0o600, False), (0o640, False), (0o644, True), (0o606, True)])
def test_an_inline_secret_needs_a_config_file_others_cannot_read(tmp_path: Path, mode: int, refused: bool) -> None:
    config = tmp_path / "seproxy.toml"
    config.write_text(f'[http]\nsecret = "{SECRET}"\n')
    config.chmod(mode)
    if refused:
        with pytest.raises(ConfigError, match=r"http\.secret: .*must not be accessible to other users"):
            load_settings(config)
    else:
        settings = load_settings(config)
        assert settings.http.secret == SECRET and SECRET not in repr(settings)
