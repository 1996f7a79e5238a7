"""Form parsing, argument checks and authorization rules, without a server."""

import datetime

import pytest

from seproxy.registry import Caller
from seproxy.rpc.arguments import check_arguments
from seproxy.rpc.authorization import authorize
from seproxy.rpc.call import BadRequest, parse_call

FORM = "application/x-www-form-urlencoded"


def test_parse_dirac_form():
    body = b"method=prepareFile&args=%5B%22SE%22%2C+%22%2Fa%22%5D&clientVO=lab&clientSetup=None&rawContent=False"
    call = parse_call(FORM + "; charset=utf-8", body)
    assert call.method == "prepareFile"
    assert call.args == ["SE", "/a"]
    assert call.client_vo == "lab" and call.client_setup == "None"
    assert call.raw_content is False


def test_ignores_fields_it_does_not_know():
    assert parse_call(FORM, b"method=ping&args=%5B%5D&clientVersion=9").method == "ping"


def export_prepare(se, pfn, extra=None):
    return se, pfn, extra


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["SE"], "expected at least 2 arguments|wrong number of arguments"),
        (["SE", "/a", 1, 2], "wrong number of arguments"),
        (["SE", 5], "argument 2 must be a string, got an integer"),
        ([True, "/a"], "argument 1 must be a string, got a boolean"),
    ],
)
def test_argument_checks(args, fragment):
    with pytest.raises(BadRequest, match=fragment):
        check_arguments("prepareFile", export_prepare, [str, str], args)


def test_argument_alternatives_and_numbers():
    check_arguments("f", export_prepare, [(str, list), float], [["a"], 3])
    with pytest.raises(BadRequest, match="must be a string or a list"):
        check_arguments("f", export_prepare, [(str, list), float], [{}, 3])
    with pytest.raises(BadRequest, match="must be an integer"):
        check_arguments("f", export_prepare, [int, int], [True, 3])


LATER = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
EARLIER = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
USER = Caller(authenticated_by="x509", dn="/CN=u", username="u", group="g", properties=("NormalUser",), valid_dn=True, valid_group=True, not_after=LATER)


@pytest.mark.parametrize(
    "rule, caller, status",
    [
        (["all"], Caller(), 200),
        (["authenticated"], Caller(), 401),
        (["authenticated"], USER, 200),
        (["NormalUser"], USER, 200),
        (["Admin"], USER, 403),
        (["Admin", "NormalUser"], USER, 200),
        ([], USER, 403),
        (["authenticated"], Caller(authenticated_by="x509", dn="/CN=x", not_after=LATER), 403),
        (["authenticated"], Caller(authenticated_by="x509", dn="/CN=u", username="u", group="other", valid_dn=True, not_after=LATER), 403),
        (["authenticated"], Caller(authenticated_by="token", dn="/CN=u", username="u", valid_dn=True, valid_group=True, not_after=EARLIER), 401),
        (["ALL"], Caller(), 200),
    ],
)
def test_authorization_matrix(rule, caller, status):
    decision = authorize(rule, caller, "m")
    assert decision.status == status
    assert decision.allowed == (status == 200)
    assert decision.allowed or decision.reason
