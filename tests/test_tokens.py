"""Bearer tokens: the verifier, and the service accepting them beside X.509 (and SIGHUP reload)."""

import json
import signal
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fixtures.service import base_config, start_service

from seproxy.security.tokens import WLCG_ANY_AUDIENCE, TokenRefused, TokenVerifier, TrustedIssuer
from seproxy.transfer import RPCClient, returnValueOrRaise

ISSUER = "https://iam.test.example/"
AUDIENCE = "https://seproxy.test.example"
SUBJECT = "5f1e-aa-tester"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """An RSA key as a PEM file and an EC key in a JWKS file; one foreign key nobody trusts."""
    directory = tmp_path_factory.mktemp("token-keys")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    pem = directory / "issuer.pem"
    pem.write_bytes(rsa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key()))
    jwks = directory / "issuer.jwks"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "ec-1"}]}))
    return {"rsa": rsa_key, "ec": ec_key, "foreign": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "pem": pem, "jwks": jwks}


def token(key, *, issuer=ISSUER, subject=SUBJECT, audience=AUDIENCE, lifetime=600, kid=None, algorithm="RS256"):
    now = int(time.time())
    claims = {"iss": issuer, "sub": subject, "aud": audience, "iat": now, "exp": now + lifetime}
    return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": kid} if kid else None)


@pytest.fixture(scope="module")
def verifier(keys):
    issuer = TrustedIssuer.from_files(ISSUER, [keys["pem"], keys["jwks"]], ["RS256", "ES256"])
    return TokenVerifier([issuer], [AUDIENCE])


def test_valid_tokens(verifier, keys):
    identity = verifier.verify(token(keys["rsa"]))
    assert (identity.issuer, identity.subject) == (ISSUER, SUBJECT)
    assert verifier.verify(token(keys["ec"], kid="ec-1", algorithm="ES256")).subject == SUBJECT
    assert verifier.verify(token(keys["rsa"], audience=WLCG_ANY_AUDIENCE)).subject == SUBJECT


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda k: token(k["rsa"], lifetime=-3600), "expired"),
        (lambda k: token(k["rsa"], issuer="https://evil.example/"), "is not trusted"),
        (lambda k: token(k["rsa"], audience="https://other.example"), "audience"),
        (lambda k: token(k["foreign"]), "does not verify"),
        (lambda k: token(k["ec"], kid="nope", algorithm="ES256"), "no key 'nope'"),
        (lambda k: token(k["rsa"], algorithm="RS384"), "does not verify"),
        (lambda k: jwt.encode({"iss": ISSUER, "sub": "x", "aud": AUDIENCE, "exp": time.time() + 60}, None, algorithm="none"), "does not verify"),
        (lambda k: "not.a.jwt", "not a signed JWT"),
        (lambda k: "x" * 20000, "longer than"),
    ],
)
def test_refused_tokens(verifier, keys, make, reason):
    with pytest.raises(TokenRefused, match=reason):
        verifier.verify(make(keys))


@pytest.fixture(scope="module")
def token_service(pki, keys, tmp_path_factory):
    directory = tmp_path_factory.mktemp("token-service")
    config = base_config(pki, directory / "state")
    config["tokens"] = {"audiences": [AUDIENCE], "issuers": {"iam": {"issuer": ISSUER, "keys": [str(keys["pem"])]}}}
    config["registry"]["users"]["tester"]["token_subjects"] = [{"issuer": ISSUER, "subject": SUBJECT}]
    config["authorization"] = {"echo": ["authenticated"]}
    running = start_service(directory, config)
    yield running
    running.stop()


def client(service, pki, bearer, monkeypatch):
    monkeypatch.delenv("X509_USER_PROXY", raising=False)
    monkeypatch.setenv("BEARER_TOKEN", bearer)
    monkeypatch.setenv("HOME", "/nonexistent")  # no ~/.globus certificate either: the token alone
    return RPCClient(service.url, ca_dir=str(pki.ca_dir), use_certificates=True)


def test_token_alone_identifies_the_user(token_service, pki, keys, monkeypatch):
    who = returnValueOrRaise(client(token_service, pki, token(keys["rsa"]), monkeypatch).whoami())
    assert who["username"] == "tester" and who["DN"] == pki.user_dn and who["authenticatedBy"] == "token"
    assert who["group"] == "lab_user" and who["validGroup"] is True and 0 < who["secondsLeft"] <= 600
    assert returnValueOrRaise(client(token_service, pki, token(keys["rsa"]), monkeypatch).echo("hi")) == "hi"


def test_unknown_subject_is_not_a_user(token_service, pki, keys, monkeypatch):
    rpc = client(token_service, pki, token(keys["rsa"], subject="stranger"), monkeypatch)
    assert returnValueOrRaise(rpc.whoami())["validDN"] is False
    refused = rpc.echo("hi")
    assert refused["OK"] is False and "stranger" in refused["Message"]


@pytest.mark.parametrize("lifetime, issuer", [(-3600, ISSUER), (600, "https://evil.example/")])
def test_bad_tokens_get_401_and_no_fallback(token_service, pki, keys, monkeypatch, lifetime, issuer):
    rpc = client(token_service, pki, token(keys["rsa"], lifetime=lifetime, issuer=issuer), monkeypatch)
    result = rpc.whoami()  # even a method open to all: the caller asked to be the token's subject
    assert result["OK"] is False and "bearer token refused" in result["Message"]


def test_sighup_reloads_the_registry(pki, keys, tmp_path):
    config = base_config(pki, tmp_path / "state")
    config["tokens"] = {"audiences": [AUDIENCE], "issuers": {"iam": {"issuer": ISSUER, "keys": [str(keys["pem"])]}}}
    running = start_service(tmp_path, config)
    try:
        rpc = RPCClient(running.url, cert=str(pki.unknown_cert), key=str(pki.unknown_key), ca_dir=str(pki.ca_dir))
        assert returnValueOrRaise(rpc.whoami())["validDN"] is False
        config["registry"]["users"]["newcomer"] = {"dn": [pki.unknown_dn], "groups": ["lab_user"]}
        running.write_config()
        running.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not returnValueOrRaise(rpc.whoami())["validDN"]:
            assert time.monotonic() < deadline, running.log()
            time.sleep(0.1)
        assert returnValueOrRaise(rpc.whoami())["username"] == "newcomer"
        assert "reloaded the registry" in running.log()
        running.config_path.write_text("[service\n")  # a broken config is refused, the running one kept
        running.process.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert returnValueOrRaise(rpc.whoami())["username"] == "newcomer"
        assert "reload failed" in running.log()
    finally:
        running.stop()
