"""WLCG storage scopes: a token carrying them is allowed what they grant, where they grant it, and no more.

Unit checks of the scope model, then a real service with a file storage
element, called with tokens signed by a test issuer whose base path is
``/vo``: the token's ``storage.read:/data`` covers ``/vo/data`` on the element.
"""

import errno
import time

import jwt
import pytest
import requests
from fixtures.proxy import file_place
from fixtures.service import post_form, rpc_fields, start_service
from fixtures.tokens import issuer_keys, token_service_config

from seproxy.security.scopes import Access, ScopeRefused, parse_scopes
from seproxy.security.tokens import WLCG_ANY_AUDIENCE, TokenRefused, TokenVerifier, TrustedIssuer
from seproxy.transfer import codec

ISSUER = "https://iam.scopes.example/"
SUBJECT = "scoped-tester"
SE = "SCOPED-SE"


# -- the scope model -------------------------------------------------------------


def test_paths_match_whole_components_under_the_base():
    scopes = parse_scopes("openid storage.read:/foo/bar storage.create:/up", "/vo")
    assert scopes is not None
    assert scopes.allows(Access.READ, "/vo/foo/bar") and scopes.allows(Access.READ, "/vo/foo/bar/x.dat")
    assert not scopes.allows(Access.READ, "/vo/foo/bargain")
    assert not scopes.allows(Access.READ, "/foo/bar")  # outside the issuer's base
    assert not scopes.allows(Access.READ, "/vo/foo")
    assert scopes.allows(Access.CREATE, "/vo/up/new") and not scopes.allows(Access.MODIFY, "/vo/up/new")
    assert not scopes.allows(Access.STAGE, "/vo/foo/bar")  # stage is its own scope


def test_modify_grants_create_and_no_storage_scope_is_none():
    scopes = parse_scopes("storage.modify:/", "/")
    assert scopes is not None and scopes.allows(Access.CREATE, "/anything")
    assert parse_scopes("openid offline_access", "/") is None
    assert parse_scopes(None, "/") is None


@pytest.mark.parametrize(
    "claim, reason",
    [
        ("storage.read", "needs a path"),
        ("storage.read:", "needs a path"),
        ("storage.write:/", "unknown storage scope"),
        ("storage.read:/foo/../..", "'..'"),
        ("storage.read:foo", "absolute"),
        (["storage.read:/"], "string"),
    ],
)
def test_malformed_storage_scopes_are_refused(claim, reason):
    with pytest.raises(ScopeRefused, match=reason):
        parse_scopes(claim, "/")


# -- audiences and the verifier ---------------------------------------------------


@pytest.fixture(scope="module")
def issuer_key(tmp_path_factory):
    return issuer_keys(tmp_path_factory.mktemp("scope-keys"))


def signed(key, scope=None, audience=WLCG_ANY_AUDIENCE, subject=SUBJECT):
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": subject, "aud": audience, "iat": now, "exp": now + 600}
    if scope is not None:
        claims["scope"] = scope
    return jwt.encode(claims, key, algorithm="RS256")


def test_a_token_with_a_pathless_storage_scope_is_refused(issuer_key):
    key, pem = issuer_key
    verifier = TokenVerifier([TrustedIssuer.from_files(ISSUER, [pem], ["RS256"], "/vo")], [])
    with pytest.raises(TokenRefused, match="needs a path"):
        verifier.verify(signed(key, "storage.read"))
    identity = verifier.verify(signed(key, "storage.read:/data"))
    assert identity.scopes is not None and identity.scopes.allows(Access.READ, "/vo/data/f")


# -- a real service ----------------------------------------------------------------


@pytest.fixture(scope="module")
def scoped(pki, issuer_key, tmp_path_factory):
    _, pem = issuer_key
    directory = tmp_path_factory.mktemp("scoped-service")
    place = file_place(SE, tmp_path_factory.mktemp("scoped-se") / "se")
    config = token_service_config(pki, directory / "state", place, issuer=ISSUER, pem=pem, subject=SUBJECT, base_path="/vo")
    config["http"] = {"public_name": "balancer.example", "public_port": 8443}
    # In the group lab_admin, with FileWrite: group properties that must not widen a token's scopes.
    config["registry"]["users"]["tester"]["groups"] = ["lab_admin", "lab_user"]
    running = start_service(directory, config)
    (place.root / "vo" / "data").mkdir(parents=True)
    (place.root / "vo" / "data" / "existing.dat").write_bytes(b"old bytes")
    (place.root / "vo" / "foo" / "bargain").mkdir(parents=True)
    (place.root / "vo" / "foo" / "bargain" / "secret.dat").write_bytes(b"not yours")
    yield running, place
    running.stop()


def call(service, pki, bearer, method, *args):
    response = post_form(service.url, rpc_fields(method, *args), pki, headers={"Authorization": f"Bearer {bearer}"})
    return response.status_code, codec.decode(response.content)


def stream_put(service, pki, bearer, name, data):
    response = requests.put(
        f"{service.url}/stream/putFile/{name}", data=data, headers={"Authorization": f"Bearer {bearer}"},
        verify=str(pki.ca_dir), timeout=60,
    )  # fmt: skip
    return response.status_code, codec.decode(response.content)


def refused(answer):
    _status, result = answer
    assert result["OK"] is False, result
    return result["Message"]


def test_a_read_only_token_reads_but_cannot_write(scoped, pki, issuer_key):
    service, place = scoped
    reader = signed(issuer_key[0], "storage.read:/data")
    _status, prepared = call(service, pki, reader, "prepareFile", SE, "/vo/data/existing.dat")
    assert prepared["OK"], prepared
    assert "storage.create" in refused(stream_put(service, pki, reader, "r.dat", b"data"))
    assert "storage.create" in refused(call(service, pki, reader, "streamFromClient", "putFile/r.dat", "", 4, b"data"))
    assert "storage.create" in refused(call(service, pki, reader, "uploadFile", SE, "/vo/data/r.dat"))
    assert "storage.create" in refused(call(service, pki, reader, "callProxyMethod", SE, "createDirectory", ["/vo/data/made"], {}))
    assert not (place.root / "vo" / "data" / "made").exists() and not (place.root / "vo" / "data" / "r.dat").exists()


def test_create_uploads_new_files_but_cannot_overwrite_or_delete(scoped, pki, issuer_key):
    service, place = scoped
    creator = signed(issuer_key[0], "storage.create:/data")
    status, sent = stream_put(service, pki, creator, "fresh.dat", b"fresh")
    assert status == 200, sent
    _, uploaded = call(service, pki, creator, "uploadFile", SE, "/vo/data/fresh.dat")
    assert uploaded["OK"], uploaded
    assert (place.root / "vo" / "data" / "fresh.dat").read_bytes() == b"fresh"
    assert stream_put(service, pki, creator, "existing.dat", b"new bytes")[0] == 200
    assert "storage.modify" in refused(call(service, pki, creator, "uploadFile", SE, "/vo/data/existing.dat"))
    assert (place.root / "vo" / "data" / "existing.dat").read_bytes() == b"old bytes"
    removal = call(service, pki, creator, "callProxyMethod", SE, "removeFile", ["/vo/data/fresh.dat"], {})[1]
    assert "storage.modify" in removal["Value"]["Failed"]["/vo/data/fresh.dat"]
    made = call(service, pki, creator, "callProxyMethod", SE, "createDirectory", ["/vo/data/sub"], {})[1]
    assert made["Value"]["Successful"] == {"/vo/data/sub": True}
    # storage.create alone does not read
    assert "storage.read" in refused(call(service, pki, creator, "prepareFile", SE, "/vo/data/fresh.dat"))


def test_modify_overwrites_and_removes(scoped, pki, issuer_key):
    service, place = scoped
    modifier = signed(issuer_key[0], "storage.modify:/data")
    (place.root / "vo" / "data" / "replace.dat").write_bytes(b"before")
    assert stream_put(service, pki, modifier, "replace.dat", b"after")[0] == 200
    assert call(service, pki, modifier, "uploadFile", SE, "/vo/data/replace.dat")[1]["OK"]
    assert (place.root / "vo" / "data" / "replace.dat").read_bytes() == b"after"
    removal = call(service, pki, modifier, "callProxyMethod", SE, "removeFile", ["/vo/data/replace.dat"], {})[1]
    assert removal["Value"]["Successful"] == {"/vo/data/replace.dat": True}


def test_paths_cannot_escape_the_scope(scoped, pki, issuer_key):
    service, _ = scoped
    reader = signed(issuer_key[0], "storage.read:/foo/bar storage.stage:/data")
    assert "storage.read" in refused(call(service, pki, reader, "prepareFile", SE, "/vo/foo/bargain/secret.dat"))
    assert "'..'" in refused(call(service, pki, reader, "prepareFile", SE, "/vo/foo/bar/../bargain/secret.dat"))
    listing = call(service, pki, reader, "callProxyMethod", SE, "listDirectory", ["/vo/foo"], {})[1]
    assert "/vo/foo" in listing["Value"]["Failed"]
    # outside the issuer's base path: the token's /data is /vo/data, never /data
    assert "storage.read" in refused(call(service, pki, reader, "prepareFile", SE, "/data/existing.dat"))
    # storage.stage stages (prepareFile) but does not read metadata
    assert call(service, pki, reader, "prepareFile", SE, "/vo/data/existing.dat")[1]["OK"]
    metadata = call(service, pki, reader, "callProxyMethod", SE, "getFileMetadata", ["/vo/data/existing.dat"], {})[1]
    assert "/vo/data/existing.dat" in metadata["Value"]["Failed"]


def test_a_storage_scope_without_a_path_is_refused(scoped, pki, issuer_key):
    service, _ = scoped
    status, result = call(service, pki, signed(issuer_key[0], "storage.read"), "whoami")
    assert status == 200 and result["Errno"] == errno.EACCES and "needs a path" in result["Message"]  # as DIRAC answers


def test_without_storage_scopes_the_group_decides(scoped, pki, issuer_key):
    service, place = scoped
    grouped = signed(issuer_key[0], "openid wlcg.groups:/lab")
    assert stream_put(service, pki, grouped, "group.dat", b"by group")[0] == 200
    assert call(service, pki, grouped, "uploadFile", SE, "/elsewhere/group.dat")[1]["OK"]
    assert (place.root / "elsewhere" / "group.dat").read_bytes() == b"by group"


@pytest.mark.parametrize(
    "audience, accepted",
    [
        ("https://localhost", True),
        ("PORT", True),
        ("https://balancer.example", True),
        ("https://balancer.example:8443", True),
        (WLCG_ANY_AUDIENCE, True),
        ("https://localhost/", False),
        ("https://elsewhere.example", False),
        ("https://localhost:1", False),
    ],
)
def test_audiences(scoped, pki, issuer_key, audience, accepted):
    service, _ = scoped
    audience = f"https://localhost:{service.port}" if audience == "PORT" else audience
    status, result = call(service, pki, signed(issuer_key[0], "storage.read:/", audience=audience), "whoami")
    if accepted:
        assert status == 200 and result["Value"]["authenticatedBy"] == "token", result
    else:
        assert status == 200 and result["Errno"] == errno.EACCES and "audience" in result["Message"]

