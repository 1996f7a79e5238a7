"""S_OK / S_ERROR and the bridges to exceptions."""

import errno

import pytest

from seproxy.transfer import (
    S_ERROR,
    S_OK,
    SErrorException,
    convertToReturnValue,
    isReturnStructure,
    returnValueOrRaise,
)


def test_shapes():
    assert S_OK(3) == {"OK": True, "Value": 3}
    assert S_OK() == {"OK": True, "Value": None}
    assert S_ERROR("boom") == {"OK": False, "Message": "boom", "Errno": 0}
    result = S_ERROR(errno.ENOENT, "/vo/a.dat")
    assert result["Errno"] == errno.ENOENT
    assert result["Message"] == "No such file or directory ( 2 : /vo/a.dat)"


def test_is_return_structure():
    assert isReturnStructure(S_OK(1)) and isReturnStructure(S_ERROR("x"))
    for bad in ({"OK": True}, {"OK": False}, {"OK": 1, "Value": 1}, [], None, {"Value": 1}):
        assert not isReturnStructure(bad)


def test_return_value_or_raise():
    assert returnValueOrRaise(S_OK([1])) == [1]
    with pytest.raises(SErrorException) as info:
        returnValueOrRaise(S_ERROR(errno.EACCES, "no"))
    assert info.value.errno == errno.EACCES
    with pytest.raises(SErrorException) as info:
        returnValueOrRaise(S_ERROR("plain"), errorCode=errno.EIO)
    assert info.value.errno == errno.EIO
    with pytest.raises(TypeError):
        returnValueOrRaise({"not": "a result"})


def test_convert_to_return_value():
    @convertToReturnValue
    def work(kind):
        if kind == "ok":
            return 42
        if kind == "serror":
            raise SErrorException("told you", errno=errno.EPERM)
        if kind == "oserror":
            raise FileNotFoundError(errno.ENOENT, "gone")
        raise RuntimeError("a bug")

    assert work("ok") == S_OK(42)
    assert work("serror")["Errno"] == errno.EPERM
    assert work("oserror") == S_ERROR(errno.ENOENT, "gone")
    with pytest.raises(RuntimeError):
        work("bug")
