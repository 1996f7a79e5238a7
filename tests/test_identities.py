"""Identities must not collide, and a limited proxy may only read.

Real certificates from the test CA against a real service: a subject whose
single CN is ``Carol/CN=Ops`` must not pass for the registered user whose DN
ends in ``/CN=Carol/CN=Ops``; a limited proxy of a writer reads, and every
write (streamed PUT, ``streamFromClient``, ``uploadFile``, ``createDirectory``)
is refused.
"""

import pytest
import requests
from cryptography import x509
from cryptography.x509.oid import NameOID
from fixtures.proxy import Credential, ProxyService, file_place, proxy_config
from fixtures.service import start_service

from seproxy.security.pki import Credential as PKICredential
from seproxy.security.pki import issue_proxy
from seproxy.security.x509 import dn_string, parse_dn
from seproxy.transfer import codec

CAROL_DN = "/DC=org/DC=seproxy-test/OU=people/CN=Carol/CN=Ops"
SE = "ID-SE"


def name(*cns: str) -> x509.Name:
    base = parse_dn("/DC=org/DC=seproxy-test/OU=people").rdns
    return x509.Name([*base, *(x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, cn)]) for cn in cns)])


@pytest.mark.parametrize("value", ["Carol/CN=Ops", "Carol+CN=Ops", "a/2.5.4.3=b", "#00ff"])
def test_a_value_that_reads_as_another_attribute_is_refused(value):
    with pytest.raises(ValueError, match="would read as another name"):
        dn_string(name(value))


def test_a_slash_that_starts_no_attribute_is_kept():
    assert dn_string(name("host/se.example.org")).endswith("/CN=host/se.example.org")
    assert dn_string(name("Carol", "Ops")) == CAROL_DN


@pytest.fixture(scope="module")
def identities(pki, tmp_path_factory):
    directory = tmp_path_factory.mktemp("identities")
    place = file_place(SE, tmp_path_factory.mktemp("id-se") / "se")
    config = proxy_config(pki, directory / "state", [place])
    config["registry"]["users"]["carol"] = {"dn": [CAROL_DN], "groups": ["lab_admin"]}
    running = ProxyService(start_service(directory, config), pki, {SE: place})
    yield running
    running.process.stop()


def whoami(service, pki, cert):
    response = requests.post(
        service.url, data={"method": "whoami", "args": codec.encode([])}, cert=cert, verify=str(pki.ca_dir), timeout=30
    )
    return response.status_code, codec.decode(response.content)


def test_a_single_cn_holding_a_slash_is_not_the_registered_user(identities, pki):
    carol = pki.issue_user(name("Carol", "Ops"))
    impostor = pki.issue_user(name("Carol/CN=Ops"))
    status, genuine = whoami(identities, pki, tuple(map(str, carol)))
    assert status == 200 and genuine["Value"]["username"] == "carol" and "Admin" in genuine["Value"]["properties"]
    status, refused = whoami(identities, pki, tuple(map(str, impostor)))
    # An RPC refusal is a 200 carrying the S_ERROR (seproxy.errors.rpc_status), as DIRAC's services answer.
    assert status == 200 and refused["OK"] is False and "would read as another name" in refused["Message"], refused


@pytest.fixture(scope="module")
def limited_writer(pki, tmp_path_factory):
    """tester's limited proxy in the group lab_admin (FileWrite): a full one of it may write."""
    user = PKICredential.read(pki.user_cert, pki.user_key)
    path = tmp_path_factory.mktemp("limited") / "limited-writer.pem"
    issue_proxy(user, limited=True, dirac_group="lab_admin").write(path)
    return Credential(str(path))


def test_a_limited_proxy_reads_but_never_writes(identities, limited_writer):
    (identities.places[SE].root / "in.dat").write_bytes(b"readable")
    assert identities.fetch(SE, "/in.dat", who=limited_writer) == b"readable"
    for route in ("stream", "form"):
        status, result = identities.try_send("putFile/lim.dat", b"data", route, who=limited_writer)
        assert result["OK"] is False and "limited proxy" in result["Message"], (route, status, result)
    assert "limited proxy" in identities.call("uploadFile", SE, "/lim.dat", who=limited_writer)["Message"]
    made = identities.operation(SE, "createDirectory", "/made", who=limited_writer)
    assert made["OK"] is False and "limited proxy" in made["Message"]
    assert not (identities.places[SE].root / "made").exists()
    # the same user with a full proxy of that group writes
    assert identities.operation(SE, "createDirectory", "/made")["OK"]
