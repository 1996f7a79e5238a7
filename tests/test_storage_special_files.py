"""Storage elements serve regular files only: a FIFO, a socket or a device is refused, never opened.

A FIFO planted in a ``file`` element used to hang every worker thread that
staged it (an ``open`` for reading waits for a writer), and a 0-byte file was
cached as good once someone wrote to it. Here the plugins refuse such entries
from their type, before any blocking open, with an error that names them.
"""

import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from fixtures.proxy import ProxyService, file_place, proxy_config
from fixtures.service import start_service
from fixtures.storage_servers import MemorySink, StorageTarget

SE = "FIFO-SE"
CALLERS = 16  # as many as the service's worker threads


def plant_fifo(path):
    os.mkfifo(path)
    os.chmod(path, 0o666)


@pytest.mark.parametrize("plugin", ["file", "xroot"])
def test_a_fifo_is_refused_without_opening_it(plugin, request):
    target: StorageTarget = request.getfixturevalue(f"{plugin}_target")
    plant_fifo(target.root / "pipe")
    element = target.element()
    assert element.stat("/pipe").special
    assert element.stat("/pipe").as_metadata()["File"] is False
    with pytest.raises(PermissionError, match="not a regular file"):
        element.download("/pipe", MemorySink())


def test_the_open_itself_refuses_a_fifo_swapped_in_after_the_check(file_target):
    """Between the type check and the open a file can be replaced: the open must not block either."""
    plant_fifo(file_target.root / "swapped")
    element = file_target.element()
    done = threading.Event()

    def open_it():
        try:
            with element._open_read("/swapped"):
                pass
        except PermissionError as exc:
            assert "a FIFO, not a regular file" in str(exc)
            done.set()

    opener = threading.Thread(target=open_it, daemon=True)
    opener.start()
    opener.join(30)
    if opener.is_alive():  # unblock the thread: open a writer end
        os.close(os.open(file_target.root / "swapped", os.O_WRONLY | os.O_NONBLOCK))
    assert done.is_set(), "the open blocked on the FIFO"


@pytest.fixture(scope="module")
def fifo_service(pki, tmp_path_factory):
    directory = tmp_path_factory.mktemp("fifo-service")
    place = file_place(SE, tmp_path_factory.mktemp("fifo-se") / "se")
    plant_fifo(place.root / "pipe")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(place.root / "sock"))
    (place.root / "plain.dat").write_bytes(b"plain")
    running = ProxyService(start_service(directory, proxy_config(pki, directory / "state", [place])), pki, {SE: place})
    yield running
    running.close_clients()
    running.process.stop()


def test_sixteen_stagings_of_a_fifo_get_a_clear_error_and_the_service_answers(fifo_service):
    def prepare(_):
        client = fifo_service.new_client(fifo_service.reader)
        try:
            return client.executeRPC("prepareFile", SE, "/pipe")
        finally:
            client.close()

    with ThreadPoolExecutor(CALLERS) as pool:
        results = list(pool.map(prepare, range(CALLERS)))
    for result in results:
        assert result["OK"] is False and "is a FIFO, not a regular file" in result["Message"], result
    assert fifo_service.call("ping", who=fifo_service.reader)["OK"]
    assert fifo_service.fetch(SE, "/plain.dat", who=fifo_service.reader) == b"plain"
    assert [entry.source_path for entry in fifo_service.cache_entries()] == ["/plain.dat"]  # nothing for the FIFO


def test_a_socket_is_refused_and_listed_as_no_file(fifo_service):
    refused = fifo_service.call("prepareFile", SE, "/sock", who=fifo_service.reader)
    assert refused["OK"] is False and "is a socket, not a regular file" in refused["Message"]
    listing = fifo_service.bulk(SE, "listDirectory", "/")["Successful"]["/"]
    assert "/sock" not in listing["SubDirs"] and listing["Files"]["/sock"]["File"] is False
