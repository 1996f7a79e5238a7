"""The TOML config: defaults, checks, and messages that name file and key."""

import dataclasses
from pathlib import Path

import pytest

from seproxy import config
from seproxy.config import ConfigError, load_settings, parse_duration, parse_size, settings_from_dict

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path, text):
    path = tmp_path / "seproxy.toml"
    path.write_text(text)
    return path


def test_example_config_loads_and_shows_every_option():
    settings = load_settings(REPO / "deploy" / "seproxy.example.toml")
    assert settings.service.port == 8443
    assert "ExampleSE" in settings.storage_elements
    text = (REPO / "deploy" / "seproxy.example.toml").read_text()
    for section, cls in [
        ("service", config.ServiceSettings),
        ("tls", config.TLSSettings),
        ("cache", config.CacheSettings),
        ("tokens", config.TokenSettings),
        ("metrics", config.MetricsSettings),
        ("tokens.issuers", config.TokenIssuerSettings),
        ("http", config.HTTPSettings),
    ]:
        for spec in dataclasses.fields(cls):
            documented = (f"\n{spec.name} =", f"\n# {spec.name} =", f"[{section}.{spec.name}.")
            assert any(form in text for form in documented), f"[{section}] {spec.name} undocumented"
    for spec in dataclasses.fields(config.StorageElementSettings):
        assert f"\n{spec.name} =" in text or f"\n# {spec.name} =" in text, f"storage element {spec.name} undocumented"


def test_defaults():
    settings = settings_from_dict({})
    assert settings.service.port == 8443
    assert settings.http.enabled is False and settings.http.port == 9180 and settings.http.url_lifetime == 1800
    assert settings.http.staging_concurrency == 4 and settings.http.answer_when == "staged"
    assert settings.route == "/DataManagement/StorageElementProxy"
    assert settings.tls.min_version == "TLSv1.2"


@pytest.mark.parametrize(
    "text, message",
    [
        ("[service]\nport = 'x'", "seproxy.toml: service.port: expected an integer, got a string"),
        ("[service]\nport = 70000", "service.port: must be a port number"),
        ("[service]\nprot = 1", "service.prot: unknown key"),
        ("[service]\ncall_timeout = '5 fortnights'", "service.call_timeout: '5 fortnights' is not a duration"),
        ("[service]\nmax_form_size = -1", "service.max_form_size: must be greater than 0"),
        ("[service]\nsystem = '../x'", "service.system: must be letters"),
        ("[tls]\nhost_cert = '/a'", "tls.host_cert: host_cert and host_key must be set together"),
        ("[tls]\nhost_cert = '/a'\nhost_key = '/b'", "tls.ca_dir: required"),
        ("[tls]\nmin_version = 'SSLv3'", "tls.min_version: must be one of"),
        ("[registry.users.a]\ndn = ['/CN=a']\ngroups = ['g']", "registry.users.a.groups: group 'g' is not defined"),
        ("[registry.users.a]\ndn = ['/CN=a']", "registry.users.a.groups: required key is missing"),
        (
            "[registry.groups.g]\nvo='v'\n[registry.users.a]\ndn=['/CN=a']\ngroups=['g']\n"
            "[registry.users.b]\ndn=['/CN=a']\ngroups=['g']",
            "registry.users.b.dn: DN '/CN=a' is already given to user 'a'",
        ),
        ("[storage_elements.X]\nplugin = 'ftp'\nbase = '/'", "storage_elements.X.plugin: must be one of"),
        ("[storage_elements.X]\nplugin = 'file'", "storage_elements.X.base: required key is missing"),
        ("[storage_elements.'a/b']\nplugin = 'file'\nbase = '/'", "storage_elements.a/b: a storage element name"),
        ("[http]\nkey_id = 'a.b'", "http.key_id: must be 1 to 32 letters"),
        ("[http]\nniceness = 20", "http.niceness: must be from 0"),
        ("[http]\nroute = 's/1'", "http.route: must be 1 to 32 letters"),
        ("[http]\nsecret = 'short'", "http.secret: must be at least 32 characters"),
        ("[http]\nsecret = '" + "s" * 32 + "'\nsecret_file = '/s'", "http.secret: set secret or secret_file, not both"),
        ("[http]\nhost_cert = '/a'", "http.host_cert: host_cert and host_key must be set together"),
        ("[http]\nurl_lifetime = 0", "http.url_lifetime: must be greater than 0"),
        ("[http]\nstaging_concurrency = 0", "http.staging_concurrency: must be from 1 to 64, got 0"),
        ("[http]\nstaging_concurrency = 65", "http.staging_concurrency: must be from 1 to 64, got 65"),
        ("[http]\nstaging_concurrency = 'many'", "http.staging_concurrency: expected an integer, got a string"),
        ("[http]\nanswer_when = 'soon'", "http.answer_when: must be one of 'staged', 'started', got 'soon'"),
        ("[http]\nlfn_storage_elements = ['X']", "http.lfn_storage_elements: 'X' is not in [storage_elements]"),
        ("[storage_elements.X]\nplugin = 'file'\nbase = '/'\nlfn_path = '/data'", "storage_elements.X.lfn_path: must contain {lfn}"),
        ("[storage_elements.X]\nplugin = 'file'\nbase = '/'\nlfn_path = '{lfn}{x}'", "storage_elements.X.lfn_path: must contain {lfn} once"),
        ("service = 3", "service: expected a table"),
        ("[service\n", "not valid TOML"),
    ],
)
def test_errors_name_file_and_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    assert message in str(info.value)
    assert str(tmp_path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "nope.toml")


def test_units():
    assert parse_size("512M") == 512 * 1024**2
    assert parse_size("1.5G") == int(1.5 * 1024**3)
    assert parse_size("10GiB") == 10 * 1024**3
    assert parse_duration("2h") == 7200
    assert parse_duration("90") == 90
    for bad in ("", "G", "-1M", "1X"):
        with pytest.raises(ValueError):
            parse_size(bad)
    with pytest.raises(ValueError):
        parse_duration("1y")
    settings = settings_from_dict({"service": {"call_timeout": "15m", "max_form_size": "1G"}})
    assert settings.service.call_timeout == 900
    assert settings.service.max_form_size == 1024**3


def test_paths_expand_user(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = settings_from_dict({"service": {"state_dir": "~/state"}})
    assert settings.service.state_dir == tmp_path / "state"
