"""What an operator sees and does through the running service: refreshConfiguration, and its log lines."""

from __future__ import annotations

import errno
import re
from pathlib import Path
from typing import Any

import pytest
import requests
from fixtures.proxy import wait_until
from fixtures.service import ServiceProcess, base_config, post_form, rpc_fields, start_service

from seproxy.defaults import embedded_settings
from seproxy.transfer import RPCClient, codec


@pytest.fixture
def admin_service(pki: Any, tmp_path: Path) -> Any:
    """A service whose group lab_admin (the test user's group proxy) holds CSAdministrator."""
    config = base_config(pki, tmp_path / "state")
    config["registry"]["groups"]["lab_admin"]["properties"].append("CSAdministrator")
    config["service"]["max_form_size"] = 4096
    running = start_service(tmp_path, config)
    yield running
    print(f"service log:\n{running.log()}")
    running.stop()


def rpc(service: ServiceProcess, pki: Any, **credential: str) -> RPCClient:
    return RPCClient(service.url, ca_dir=str(pki.ca_dir), **credential)


def test_refresh_configuration_reloads_the_registry_for_an_admin(admin_service: ServiceProcess, pki: Any) -> None:
    admin = rpc(admin_service, pki, proxy=str(pki.group_proxy))
    newcomer = rpc(admin_service, pki, cert=str(pki.unknown_cert), key=str(pki.unknown_key))
    assert newcomer.whoami()["Value"]["validDN"] is False
    admin_service.config["registry"]["users"]["newcomer"] = {"dn": [pki.unknown_dn], "groups": ["lab_user"]}
    admin_service.write_config()

    result = admin.refreshConfiguration(True)  # fromMaster is accepted; there is no master to ask
    assert result["OK"] is True and "reloaded the registry" in result["Value"], result
    assert str(admin_service.config_path) in result["Value"]
    assert newcomer.whoami()["Value"]["username"] == "newcomer"
    assert newcomer.echo("in")["OK"] is True

    admin_service.config_path.write_text("[service\n")  # a config that no longer loads: the running one stays
    broken = admin.refreshConfiguration(False)
    assert broken["OK"] is False and broken["Errno"] == errno.EINVAL, broken
    assert "reload failed, keeping the running configuration" in broken["Message"]
    assert str(admin_service.config_path) in broken["Message"]
    assert newcomer.whoami()["Value"]["username"] == "newcomer"


def test_refresh_configuration_is_refused_to_others(admin_service: ServiceProcess, pki: Any) -> None:
    reader = rpc(admin_service, pki, proxy=str(pki.proxy))  # group lab_user: NormalUser only
    result = reader.refreshConfiguration(False)
    assert result["OK"] is False and result["Errno"] == errno.EACCES, result
    assert "refreshConfiguration needs one of the properties CSAdministrator; group 'lab_user' has NormalUser" in (
        result["Message"]
    )
    anonymous = post_form(admin_service.url, rpc_fields("refreshConfiguration", False), pki)
    assert "refreshConfiguration needs a client certificate" in codec.decode(anonymous.content)["Message"]
    mistyped = rpc(admin_service, pki, proxy=str(pki.group_proxy)).refreshConfiguration("yes")
    assert mistyped["OK"] is False and "argument 1 must be a boolean, got a string" in mistyped["Message"]
    assert "reloaded" not in admin_service.log()


def test_admin_properties_come_from_the_config(pki: Any, tmp_path: Path) -> None:
    config = base_config(pki, tmp_path / "state")
    config["authorization"] = {"refreshConfiguration": ["NormalUser"]}
    running = start_service(tmp_path, config)
    try:
        assert rpc(running, pki, proxy=str(pki.proxy)).refreshConfiguration(False)["OK"] is True
    finally:
        running.stop()


def test_the_development_user_may_refresh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SEPROXY_STATE_DIR", str(tmp_path))
    settings = embedded_settings()
    (group,) = settings.registry.groups.values()
    assert "CSAdministrator" in group.properties


# -- log lines -------------------------------------------------------------------------------------


def lines_of(service: ServiceProcess, request_id: str) -> list[str]:
    """The lines of one request, once its access line is in (it is written just after the answer)."""

    def logged() -> list[str]:
        return [line for line in service.log().splitlines() if f"[{request_id}]" in line]

    wait_until(lambda: any("seproxy.access" in line for line in logged()), f"the log line of {request_id}")
    return logged()


def test_a_refusal_before_the_method_is_known_is_logged_with_the_caller(admin_service: ServiceProcess, pki: Any) -> None:
    response = post_form(admin_service.url, rpc_fields("echo", "x" * 8192), pki, cert=str(pki.proxy))
    assert response.status_code == 413
    (line,) = lines_of(admin_service, response.headers["X-Request-ID"])
    assert "user=tester" in line and pki.user_dn in line and "status=413" in line, line
    assert " INFO seproxy.access " in line


def test_an_error_is_logged_once_and_an_unknown_method_not_as_an_error(admin_service: ServiceProcess, pki: Any) -> None:
    for method, args in [("noSuchMethod", []), ("echo", [1, 2]), ("refreshConfiguration", [False])]:
        response = post_form(admin_service.url, rpc_fields(method, *args), pki, cert=str(pki.proxy))
        assert response.status_code == 200 and codec.decode(response.content)["OK"] is False
        (line,) = lines_of(admin_service, response.headers["X-Request-ID"])
        assert re.search(rf" INFO seproxy\.access \[\w+\] .* user=tester .* method={method} status=200 ", line), line
    unknown_route = requests.post(admin_service.url + "/../Nothing", verify=str(pki.ca_dir), timeout=30)
    assert unknown_route.status_code == 404
    wait_until(lambda: "status=404" in admin_service.log(), "the log line of the unknown route")
    log = admin_service.log()
    assert "tornado.access" not in log and " ERROR " not in log, log
    assert " INFO seproxy.access " in log.splitlines()[-1] and "status=404" in log.splitlines()[-1]
