"""How the handler base runs methods: time limits, bugs, coroutines, raw answers, stop.

The service runs in a thread of the test process with a handler class made
for these tests; the TLS, HTTP and RPC layers are the real ones.
"""

import email.utils
import errno
import gc
import logging
import socket
import threading
import time
import weakref

import pytest
import requests
from fixtures.service import ServiceThread, base_config, post_form, rpc_fields

from seproxy.rpc.executor import CallCancelled, check_cancelled
from seproxy.rpc.handler import RPCHandler
from seproxy.transfer import S_ERROR, S_OK, codec

stopped_work = threading.Event()
# Every handler made, weakly: a test checks that a finished call's handler is freed without the cyclic collector.
made_handlers: list[weakref.ref] = []


class ExerciseHandler(RPCHandler):
    auth_slow = auth_crash = auth_bogus = auth_later = auth_raw = ("all",)
    types_slow = (float,)

    def initialize(self, service):
        super().initialize(service)
        made_handlers.append(weakref.ref(self))

    def export_slow(self, seconds):
        stopped_work.clear()
        end = time.monotonic() + seconds
        try:
            while time.monotonic() < end:
                check_cancelled()
                time.sleep(0.02)
        except CallCancelled:
            stopped_work.set()
            raise
        return S_OK(seconds)

    def export_crash(self):
        raise RuntimeError("secret internal detail")

    def export_bogus(self):
        return {"not": "a result"}

    async def export_later(self, value):
        return S_OK([value, threading.current_thread() is threading.main_thread()])

    def export_raw(self, found):
        return S_OK(b"\x00raw bytes") if found else S_ERROR(errno.ENOENT, "no such file id")


@pytest.fixture()
def exercise(pki, tmp_path):
    config = base_config(pki, tmp_path / "state")
    config["service"]["call_timeout"] = 1
    runner = ServiceThread(config, ExerciseHandler)
    with runner as service:
        yield service


def call(service, pki, method, *args, **fields):
    response = post_form(service.url, rpc_fields(method, *args, **fields), pki, cert=str(pki.proxy))
    return response


def test_call_over_the_limit_answers_and_stops_its_work(exercise, pki):
    started = time.monotonic()
    result = codec.decode(call(exercise, pki, "slow", 30).content)
    assert time.monotonic() - started < 5
    assert result["OK"] is False and result["Errno"] == errno.ETIMEDOUT
    assert "1 s" in result["Message"]
    assert stopped_work.wait(5), "the timed-out call kept running"


def test_call_within_the_limit(exercise, pki):
    assert codec.decode(call(exercise, pki, "slow", 0.1).content) == S_OK(0.1)


def test_a_bug_answers_a_generic_error_and_is_logged(exercise, pki, caplog):
    with caplog.at_level(logging.ERROR, logger="seproxy.rpc"):
        response = call(exercise, pki, "crash")
    result = codec.decode(response.content)
    assert result["OK"] is False and "internal error in crash" in result["Message"]
    assert response.headers["X-Request-ID"] in result["Message"]
    assert "secret internal detail" not in response.text and "Traceback" not in response.text
    assert "secret internal detail" in caplog.text and "Traceback" in caplog.text


def test_a_malformed_result_is_an_error(exercise, pki):
    result = codec.decode(call(exercise, pki, "bogus").content)
    assert result["OK"] is False and "internal error" in result["Message"]


def test_coroutine_methods_run_on_the_event_loop(exercise, pki):
    result = codec.decode(call(exercise, pki, "later", "v").content)
    assert result["OK"] and result["Value"][0] == "v"


def test_raw_content(exercise, pki):
    ok = call(exercise, pki, "raw", True, rawContent="True")
    assert ok.status_code == 200 and ok.headers["Content-Type"] == "application/octet-stream"
    assert ok.content == b"\x00raw bytes"
    missing = call(exercise, pki, "raw", False, rawContent="True")
    assert missing.status_code == 400  # not 404: DIRAC's client would drop the message (errors.rpc_status)
    assert missing.headers["Content-Type"] == "application/json"
    assert codec.decode(missing.content)["Errno"] == errno.ENOENT


def test_stop_lets_running_calls_finish(pki, tmp_path):
    config = base_config(pki, tmp_path / "state")
    runner = ServiceThread(config, ExerciseHandler)
    answers = []
    with runner as service:
        worker = threading.Thread(target=lambda: answers.append(call(service, pki, "slow", 1.0)))
        worker.start()
        time.sleep(0.3)
    worker.join(10)
    assert answers and codec.decode(answers[0].content) == S_OK(1.0)


def test_a_finished_call_is_freed_without_the_cyclic_collector(exercise, pki):
    """A handler in a reference cycle (with its request, connection, headers, form) lives until the
    cyclic collector runs: at thousands of calls a second that collector cost a twentieth of the CPU."""
    call(exercise, pki, "ping")  # a first call, so that whatever is made once per service is made
    made_handlers.clear()
    gc.disable()
    try:
        for method, args in (("ping", ()), ("echo", ("x",)), ("later", ("v",)), ("slow", (0.01,)), ("nosuchmethod", ())):
            assert call(exercise, pki, method, *args).status_code == 200
        deadline = time.monotonic() + 5
        while any(ref() is not None for ref in made_handlers) and time.monotonic() < deadline:
            time.sleep(0.05)
        alive = [type(ref()).__name__ for ref in made_handlers if ref() is not None]
    finally:
        gc.enable()
    assert len(made_handlers) == 5 and not alive, f"{len(alive)} of {len(made_handlers)} handlers still alive"


def test_answers_are_dated_with_their_second(exercise, pki):
    """The Date header is made once a second (``DefaultHead``): it still moves with the clock."""
    first = call(exercise, pki, "ping")
    time.sleep(1.1)
    second = call(exercise, pki, "ping")
    dates = [email.utils.parsedate_to_datetime(response.headers["Date"]).timestamp() for response in (first, second)]
    assert abs(dates[1] - time.time()) <= 2
    assert dates[1] - dates[0] >= 1
    assert second.headers["Server"].startswith("TornadoServer/")


def test_a_connection_keeps_nodelay_and_reads_a_tls_record_at_a_time(exercise, pki):
    """Tornado turns TCP_NODELAY off after each answer and reads into a new 64 KiB buffer each time;
    the RPC server keeps it on (no two system calls per call) and reads one TLS record's worth."""
    with requests.Session() as session:
        for method in ("ping", "echo"):
            response = session.post(
                exercise.url, data=rpc_fields(method, *(["x"] if method == "echo" else [])),
                cert=str(pki.proxy), verify=str(pki.ca_dir), timeout=30,
            )  # fmt: skip
            assert response.status_code == 200 and codec.decode(response.content)["OK"]
        streams = [stream for stream in exercise._server._clients if not stream.closed()]
        assert len(streams) == 1
        assert streams[0].socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert streams[0].read_chunk_size == 16 * 1024
