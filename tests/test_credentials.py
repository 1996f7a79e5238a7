"""Credential discovery in the order grid users expect, on real files."""

import os

import pytest

from seproxy.security import pki
from seproxy.transfer import credentials
from seproxy.transfer.credentials import find_credentials

GRID_VARIABLES = ("X509_USER_PROXY", "X509_USER_CERT", "X509_USER_KEY", "X509_CERT_DIR")


@pytest.fixture(scope="module")
def user():
    return pki.issue_user(pki.make_ca("/DC=org/CN=Discovery CA"), "/DC=org/CN=Discovery User")


@pytest.fixture(autouse=True)
def grid_home(monkeypatch, tmp_path):
    """No grid variable set, and every default location inside ``tmp_path``."""
    for name in GRID_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(credentials, "PROXY_DIR", str(tmp_path / "tmp"))
    monkeypatch.setattr(credentials, "GRID_CA_DIR", str(tmp_path / "grid-security" / "certificates"))
    for directory in ("home/.globus", "tmp", "files"):
        (tmp_path / directory).mkdir(parents=True)
    return tmp_path


def write_proxy(user, path):
    pki.issue_proxy(user).write(path)
    return str(path)


def write_pair(user, directory, cert_name="usercert.pem", key_name="userkey.pem"):
    user.write(directory / cert_name, directory / key_name)
    return str(directory / cert_name), str(directory / key_name)


def test_nothing_found_is_anonymous():
    found = find_credentials()
    assert (found.kind, found.cert_file, found.key_file, found.ca_dir) == ("none", None, None, None)


def test_each_step_wins_over_the_ones_after_it(grid_home, user, monkeypatch, tmp_path):
    files = tmp_path / "files"
    env_proxy = write_proxy(user, files / "envproxy.pem")
    monkeypatch.setenv("X509_USER_PROXY", env_proxy)
    default_proxy = write_proxy(user, tmp_path / "tmp" / f"x509up_u{os.getuid()}")
    env_cert, env_key = write_pair(user, files, "envcert.pem", "envkey.pem")
    monkeypatch.setenv("X509_USER_CERT", env_cert)
    monkeypatch.setenv("X509_USER_KEY", env_key)
    globus_cert, globus_key = write_pair(user, grid_home / "home" / ".globus")

    def found(**arguments):
        creds = find_credentials(**arguments)
        return creds.kind, creds.cert_file, creds.key_file, creds.source

    arg_cert, arg_key = write_pair(user, files, "argcert.pem", "argkey.pem")
    assert found(cert=arg_cert, key=arg_key) == ("certificate", arg_cert, arg_key, "cert/key arguments")
    assert found() == ("proxy", env_proxy, env_proxy, "X509_USER_PROXY")
    monkeypatch.delenv("X509_USER_PROXY")
    assert found() == ("proxy", default_proxy, default_proxy, "default proxy location")
    os.unlink(default_proxy)
    assert found() == ("certificate", env_cert, env_key, "X509_USER_CERT/X509_USER_KEY")
    monkeypatch.delenv("X509_USER_CERT")
    monkeypatch.delenv("X509_USER_KEY")
    assert found() == ("certificate", globus_cert, globus_key, "~/.globus")


def test_explicit_proxy_comes_first(user, monkeypatch, tmp_path):
    files = tmp_path / "files"
    monkeypatch.setenv("X509_USER_PROXY", write_proxy(user, files / "env.pem"))
    cert, key = write_pair(user, files)
    mine = write_proxy(user, files / "mine.pem")
    found = find_credentials(proxy=mine, cert=cert, key=key)
    assert (found.kind, found.cert_file, found.key_file, found.source) == ("proxy", mine, mine, "proxy argument")


def test_use_certificates_skips_every_proxy(user, monkeypatch, tmp_path):
    files = tmp_path / "files"
    monkeypatch.setenv("X509_USER_PROXY", write_proxy(user, files / "env.pem"))
    write_proxy(user, tmp_path / "tmp" / f"x509up_u{os.getuid()}")
    globus_cert, _ = write_pair(user, tmp_path / "home" / ".globus")
    found = find_credentials(use_certificates=True)
    assert (found.kind, found.cert_file) == ("certificate", globus_cert)
    with pytest.raises(ValueError, match="use_certificates"):
        find_credentials(proxy=str(files / "env.pem"), use_certificates=True)


@pytest.mark.parametrize(
    ("arguments", "environment"),
    [
        ({"proxy": "MISSING"}, {}),
        ({"cert": "MISSING", "key": "KEY"}, {}),
        ({"cert": "CERT", "key": "MISSING"}, {}),
        ({}, {"X509_USER_PROXY": "MISSING"}),
        ({}, {"X509_USER_CERT": "MISSING", "X509_USER_KEY": "KEY"}),
        ({}, {"X509_USER_CERT": "CERT", "X509_USER_KEY": "MISSING"}),
    ],
)
def test_a_named_file_that_is_missing_is_an_error_naming_it(arguments, environment, user, monkeypatch, tmp_path):
    cert, key = write_pair(user, tmp_path / "files")
    paths = {"CERT": cert, "KEY": key, "MISSING": str(tmp_path / "files" / "missing.pem")}
    for name, placeholder in environment.items():
        monkeypatch.setenv(name, paths[placeholder])
    # A usable identity further down must not hide the mistake.
    write_pair(user, tmp_path / "home" / ".globus")
    with pytest.raises(ValueError, match=f"{paths['MISSING']} .*does not exist"):
        find_credentials(**{name: paths[placeholder] for name, placeholder in arguments.items()})


def test_a_named_file_that_cannot_be_read_is_an_error(tmp_path, monkeypatch):
    # A directory cannot be opened as a file even by root, unlike chmod 000.
    monkeypatch.setenv("X509_USER_PROXY", str(tmp_path / "files"))
    with pytest.raises(ValueError, match=r"files \(from X509_USER_PROXY\) cannot be read"):
        find_credentials()


def test_half_a_certificate_pair_is_an_error(user, monkeypatch, tmp_path):
    cert, _ = write_pair(user, tmp_path / "files")
    monkeypatch.setenv("X509_USER_CERT", cert)
    with pytest.raises(ValueError, match="X509_USER_CERT is set but X509_USER_KEY is not"):
        find_credentials()
    with pytest.raises(ValueError, match="key is set but cert is not"):
        find_credentials(key=cert)


def test_default_locations_that_do_not_exist_are_skipped(user, tmp_path):
    # A certificate without its key in ~/.globus is not an identity.
    user.write(tmp_path / "home" / ".globus" / "usercert.pem", tmp_path / "files" / "elsewhere.pem")
    assert find_credentials().kind == "none"


def test_ca_dir_order(monkeypatch, tmp_path):
    explicit, env_dir, grid_default = (tmp_path / name for name in ("explicit", "env", "grid-security/certificates"))
    for directory in (explicit, env_dir, grid_default):
        directory.mkdir(parents=True)
    monkeypatch.setenv("X509_CERT_DIR", str(env_dir))
    assert find_credentials(ca_dir=str(explicit)).ca_dir == str(explicit)
    assert find_credentials().ca_dir == str(env_dir)
    monkeypatch.delenv("X509_CERT_DIR")
    assert find_credentials().ca_dir == str(grid_default)
    grid_default.rmdir()
    assert find_credentials().ca_dir is None  # the system trust store


@pytest.mark.parametrize("how", ["argument", "X509_CERT_DIR"])
def test_a_named_ca_dir_that_is_missing_is_an_error(how, monkeypatch, tmp_path):
    missing = str(tmp_path / "no-such-dir")
    kwargs = {"ca_dir": missing} if how == "argument" else {}
    if how == "X509_CERT_DIR":
        monkeypatch.setenv("X509_CERT_DIR", missing)
    with pytest.raises(ValueError, match=f"{missing} .*is not a directory"):
        find_credentials(**kwargs)
