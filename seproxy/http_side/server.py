"""The HTTP side server: a few threads, many non-blocking connections, file bodies by ``sendfile``.

Threading model: ``threads`` workers, each an epoll loop that owns the
connections it accepted. They share the listening sockets, registered with
``EPOLLEXCLUSIVE`` so that a new connection wakes one worker, not all. A
connection is a small state machine (TLS handshake, reading a request head,
writing an answer) that never blocks: an idle keep-alive connection costs a
socket and a few objects, and a slow or stalled client holds only its own
connection, never a thread. Python parses request heads and makes system
calls; file bytes go from the page cache to the socket inside the kernel
(``os.sendfile``), and every system call releases the GIL, so the workers'
copying overlaps on all cores.

Limits: at most ``max_connections`` connections over all workers, and
``max_per_address`` from one client address (one more is answered 503 and
closed; when the server is full, the accepting worker first closes one of
its idle connections to make room); a new connection must send its first
request head within ``handshake_timeout``; a connection that makes no
progress for ``idle_timeout`` seconds is closed, and a request head must be
complete within ``idle_timeout`` of the connection becoming idle, however
slowly it trickles in. A connection sends at most ``TURN`` bytes before the others of
its worker get their turn.

An answer that takes long to make (files staged on demand) comes as a
``Future``: the connection then waits, watched for nothing (its next
request stays unread), for at most ``wait_limit`` seconds, while its worker
serves the others; the thread completing the future hands the connection
back to its worker, which starts the answer. A client that leaves while
its answer is made is closed, and the answer, once made, released.

TLS: Python's ``ssl`` module cannot hand a file to kernel TLS, so over HTTPS
file bodies are read in ``TLS_CHUNK`` pieces and written through OpenSSL:
one copy through Python per chunk, and throughput bound by encryption.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import select
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path

from seproxy import logs, metrics
from seproxy.http_side.body import FileSlice, GrowingSlice, Piece, piece_length
from seproxy.http_side.listen import listening_sockets
from seproxy.http_side.request import ALLOW, RequestHead, head_end, parse_head, whole_head
from seproxy.http_side.response import Refused, Response, plain
from seproxy.security.connection_limits import FULL, ConnectionLimits

log = logging.getLogger("seproxy.http")

RECV_SIZE = 65536
TLS_CHUNK = 256 * 1024
TURN = 8 * 1024 * 1024
# Linux sends at most this much per sendfile call anyway.
SENDFILE_MAX = 0x7FFFF000
# File slices up to this size are sent with the bytes around them (see _send_gathered): copying 64 KiB
# costs about what a sendfile and Python's work per piece cost (measured with 64-range reads).
GATHER_SLICE = 64 * 1024
# At most this much and this many buffers per gathered send (the kernel takes 1024 buffers at most).
GATHER_BYTES = 1024 * 1024
GATHER_COUNT = 256
ACCEPT_BATCH = 64
# After refusing a request, how long to read (and drop) what the client still sends before closing.
LINGER = 2.0
SWEEP_INTERVAL = 1.0
# How often a connection that has sent all the bytes of a growing file looks for more.
STARVED_INTERVAL = 0.01
# The epoll events of a connection waiting for a growing file: none but hang-up and error
# (which epoll reports anyway), so that a writable socket does not wake its worker in vain.
STARVED = 0

# Where ``_Connection.step`` may stop, answering PAUSED: the connections one epoll wait found ready
# go through three passes, each over all of them before the next: requests read and answers made, then
# sent, then finished (released, logged). The Python of each pass stays in the processor's caches from
# one connection to the next, where whole answers one after the other have the kernel's work of each
# sendfile evict it in between.
BEFORE_SEND = 1
BEFORE_FINISH = 2
PASSES = (BEFORE_SEND, BEFORE_FINISH, 0)
PAUSED = -1

Answer = Callable[[RequestHead], Response | Future[Response]]

_BYTES_SENT = metrics.BYTES_SENT.labels("http")
_DOWNLOADS = metrics.ACTIVE_TRANSFERS.labels("http")


class _Tally:
    """A worker's changes to the download metrics, written once per turn of its loop: in a service
    with worker processes each metric write is a write to a shared file, and a turn under load
    answers many requests. Nothing is late: the turn ends before the loop waits again."""

    def __init__(self) -> None:
        self.downloads = 0  # started minus ended
        self.bytes = 0
        # File bytes sent, by the function that counts them (``Response.served``), then by (SE, still staged).
        # (Dicts, not Counters: a Counter's ``__delitem__`` sends every ``counts[key] = ...`` through Python.)
        self.served: dict[Callable[[Mapping[tuple[str | None, bool], int]], None], dict[tuple[str | None, bool], int]] = {}

    def add_served(self, response: Response, sent: Mapping[tuple[str | None, bool], int]) -> None:
        if sent:
            counts = self.served.get(response.served)
            if counts is None:  # (not setdefault: it would make a dict per answer)
                counts = self.served[response.served] = {}
            for key, count in sent.items():
                counts[key] = counts.get(key, 0) + count

    def write(self) -> None:
        if self.downloads:
            _DOWNLOADS.inc(self.downloads)
            self.downloads = 0
        if self.bytes:
            _BYTES_SENT.inc(self.bytes)
            self.bytes = 0
        served, self.served = self.served, {}
        for count, sent in served.items():
            count(sent)


@dataclass(slots=True)
class _OpenFile:
    """A cache file open for the answers sending it. Found by the id of its ``path``, not the path:
    the answers of one prepared body share one ``Path`` object, and hashing a ``Path`` is a call into
    Python's code, an ``id`` is not. Kept here, the path keeps its id from going to another object;
    another ``Path`` of the same file (a body prepared again) only opens the file once more."""

    descriptor: int
    path: Path
    users: int = 0


class _ShortFile(Exception):
    """A cache file ended before the length its index gives: the answer can only be cut short."""


class _Starved(Exception):
    """All that has arrived of a growing file is sent; the rest is still on its way."""


class SideServer:
    """Serves ``answer(request)`` over HTTP/1.1 (or HTTPS with ``tls``) from worker threads."""

    def __init__(
        self,
        answer: Answer,
        *,
        host: str,
        port: int,
        threads: int,
        max_connections: int,
        max_per_address: int,
        idle_timeout: float,
        handshake_timeout: float,
        tls: ssl.SSLContext | None = None,
        niceness: int = 0,
        reuse_port: bool = False,
    ) -> None:
        self.answer = answer
        self.reuse_port = reuse_port  # worker processes share the port
        self.niceness = niceness
        self.host = host
        self.port = port
        self.limits = ConnectionLimits(max_connections, max_per_address, slack=threads)
        self.idle_timeout = idle_timeout
        # A new connection's time to send its request head (and complete TLS).
        self.first_request_timeout = min(idle_timeout, handshake_timeout)
        # Seconds a connection waits for an answer that comes as a future.
        self.wait_limit = idle_timeout
        self.tls = tls
        self.stopping = False
        self.forced = False
        self._listeners: list[socket.socket] = []
        self._workers = [_Worker(self, number) for number in range(threads)]

    def start(self) -> None:
        """Bind, listen and start the workers (port 0: any free port, then ``self.port`` tells which)."""
        self._listeners = listening_sockets(self.host or None, self.port, reuse_port=self.reuse_port)
        self.port = self._listeners[0].getsockname()[1]
        for worker in self._workers:
            worker.start(self._listeners)
        scheme = "https" if self.tls else "http"
        log.info("HTTP side server on %s://%s:%d, %d threads", scheme, self.host or "*", self.port, len(self._workers))

    def stop(self, grace: float) -> None:
        """Stop accepting, let answers in progress finish for ``grace`` seconds, then cut the rest."""
        self.stopping = True
        for worker in self._workers:
            worker.wake()
        deadline = time.monotonic() + grace
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        self.forced = True
        for worker in self._workers:
            worker.wake()
            worker.join(None)
            worker.close()
        for listener in self._listeners:
            listener.close()

    def evict_elsewhere(self, asker: _Worker) -> bool:
        """Ask the thread holding the most connections (not ``asker``) to close an idle one; False if none holds any.

        Connections belong to the thread that accepted them, so the one that
        needs room cannot close another's: it admits its new connection a
        little over the limit (``ConnectionLimits.admit(over=True)``) while
        the other thread makes the room back.
        """
        others = [worker for worker in self._workers if worker is not asker and worker.connections]
        if not others:
            return False
        max(others, key=lambda worker: len(worker.connections)).request_eviction()
        return True


class _Worker:
    """One thread's epoll loop and the connections it owns."""

    def __init__(self, server: SideServer, number: int) -> None:
        self.server = server
        self.connections: dict[int, _Connection] = {}
        # Connections waiting for more of a growing file: looked at every STARVED_INTERVAL.
        self._starved: set[_Connection] = set()
        self._listeners: dict[int, socket.socket] = {}
        self._epoll = select.epoll()
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name=f"http-side-{number}", daemon=True)
        # Idle connections other threads asked this one to close (to make room for theirs).
        self._evictions_asked = 0
        # Connections whose answers other threads have made (``Future``s done), to start sending;
        # None once the worker is closed (an answer made later is released at once).
        self._answered: list[tuple[_Connection, Future[Response]]] | None = []
        self._evictions_lock = threading.Lock()
        self.tally = _Tally()
        # The files this thread's connections are sending, by the id of their path: a file that several
        # answers send at once (a popular one; the answers of one turn) is opened once.
        self._files: dict[int, _OpenFile] = {}

    def start(self, listeners: list[socket.socket]) -> None:
        self._listeners = {listener.fileno(): listener for listener in listeners}
        for fd in self._listeners:
            self._epoll.register(fd, select.EPOLLIN | select.EPOLLEXCLUSIVE)
        self._epoll.register(self._wake_read, select.EPOLLIN)
        self._thread.start()

    def wake(self) -> None:
        try:
            os.write(self._wake_write, b"x")
        except BlockingIOError:
            pass  # already woken

    def request_eviction(self) -> None:
        with self._evictions_lock:
            self._evictions_asked += 1
        self.wake()

    def _evict_as_asked(self) -> None:
        with self._evictions_lock:
            asked, self._evictions_asked = self._evictions_asked, 0
        for _ in range(asked):
            if not self._evict_idle():
                return

    def answered(self, connection: _Connection, future: Future[Response]) -> None:
        """Called by the thread that completed ``future``: the worker starts the answer."""
        with self._evictions_lock:
            if self._answered is not None:
                self._answered.append((connection, future))
                self.wake()  # under the lock: ``close`` cannot close the pipe meanwhile
                return
        _release(future)  # the server has stopped

    def _send_answered(self, now: float) -> None:
        with self._evictions_lock:
            answered, self._answered = self._answered or [], []
        for connection, future in answered:
            if self.connections.get(connection.fd) is connection and connection.waiting is future:
                connection.answer_ready(now)
                self._advance(connection, now)
            else:
                _release(future)  # its client is gone

    def join(self, timeout: float | None) -> None:
        self._thread.join(timeout)

    def close(self) -> None:
        """Release the wake-up pipe, once the thread has ended."""
        with self._evictions_lock:
            answered, self._answered = self._answered or [], None
            os.close(self._wake_read)
            os.close(self._wake_write)
        for _, future in answered:
            _release(future)

    def _run(self) -> None:
        if self.server.niceness:
            # Linux schedules threads one by one: bulk downloads yield the CPU (and so the GIL) to RPC calls.
            thread = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + self.server.niceness)
        next_sweep = time.monotonic() + SWEEP_INTERVAL
        try:
            while True:
                events = self._epoll.poll(STARVED_INTERVAL if self._starved else SWEEP_INTERVAL)
                now = time.monotonic()
                ready: list[_Connection] = []
                for fd, flags in events:
                    if fd in self._listeners:
                        self._accept(self._listeners[fd], now)
                    elif fd == self._wake_read:
                        os.read(self._wake_read, 4096)
                        self._evict_as_asked()
                        self._send_answered(now)
                    elif (connection := self.connections.get(fd)) is None:
                        continue
                    elif connection in self._starved and flags & (select.EPOLLHUP | select.EPOLLERR):
                        self._close(connection)  # the client left while the file was growing
                    else:
                        ready.append(connection)
                for pause in PASSES:
                    ready = [connection for connection in ready if self._advance(connection, now, pause)]
                for connection in list(self._starved):
                    self._advance(connection, now)
                if self.server.stopping and self._wind_down():
                    return
                if now >= next_sweep:
                    next_sweep = now + SWEEP_INTERVAL
                    for connection in [c for c in self.connections.values() if c.deadline < now]:
                        connection.log_timeout()
                        self._close(connection)
                self.tally.write()
        finally:
            for connection in list(self.connections.values()):
                self._close(connection)
            self.tally.write()
            self._epoll.close()

    def _wind_down(self) -> bool:
        """Stop accepting, close idle connections (all when forced); True once none is left."""
        for fd in list(self._listeners):
            self._epoll.unregister(fd)
            del self._listeners[fd]
        for connection in list(self.connections.values()):
            if self.server.forced or not connection.busy:
                self._close(connection)
        return not self.connections

    def _accept(self, listener: socket.socket, now: float) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, address = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # out of file descriptors, or the client gave up already
                log.warning("accepting a connection failed: %s", exc)
                return
            limits = self.server.limits
            refusal = limits.admit(address[0])
            if refusal == FULL and self._evict_idle():
                refusal = limits.admit(address[0])
            elif refusal == FULL and self.server.evict_elsewhere(self):
                refusal = limits.admit(address[0], over=True)
            if refusal is not None:
                log.warning("connection from %s refused: %s (%d open)", address[0], refusal, limits.open)
                _refuse_busy(sock)
                continue
            try:
                connection = _Connection(sock, address, self, now)
            except OSError:
                limits.release(address[0])
                sock.close()
                continue
            self.connections[connection.fd] = connection
            self._epoll.register(connection.fd, select.EPOLLIN)
            self._advance(connection, now)

    def _evict_idle(self) -> bool:
        """Close one of this thread's idle connections (first one that never sent a request); False if none."""
        idle = [c for c in self.connections.values() if not c.busy and not c.lingering]
        if not idle:
            return False
        victim = min(idle, key=lambda c: (c.request is not None, c.deadline))
        log.info("%s: connection closed to make room for a new one", victim.client)
        self._close(victim)
        return True

    def _advance(self, connection: _Connection, now: float, pause: int = 0) -> bool:
        """Step ``connection`` on (to ``pause``); True if it paused there."""
        try:
            wanted = connection.step(now, pause)
        except Exception:
            log.exception("%s: connection failed", connection.client)
            wanted = None
        if wanted == PAUSED:
            return True
        if wanted is None:
            self._close(connection)
            return False
        if wanted == STARVED and connection.waiting is None:  # (one waiting for its answer is watched for nothing too)
            self._starved.add(connection)
        elif self._starved:
            self._starved.discard(connection)
        if wanted != connection.events:
            connection.events = wanted
            self._epoll.modify(connection.fd, wanted)
        return False

    def open_file(self, path: Path) -> int:
        """A descriptor of the cache file at ``path``, for one answer's use until ``close_file``.

        Shared by the answers in progress that send the same file: they all hold a
        read lease on it, and a cache path never names another file (entry ids are
        never reused), so each would open the very same file.
        """
        held = self._files.get(id(path))
        if held is None:
            held = self._files[id(path)] = _OpenFile(os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW), path)
        held.users += 1
        return held.descriptor

    def close_file(self, path: Path) -> None:
        held = self._files[id(path)]
        held.users -= 1
        if not held.users:
            del self._files[id(path)]
            os.close(held.descriptor)

    def _close(self, connection: _Connection) -> None:
        if self.connections.pop(connection.fd, None) is None:
            return
        self._starved.discard(connection)
        self._epoll.unregister(connection.fd)
        connection.close()
        self.server.limits.release(connection.client)


def _gathered(piece: FileSlice) -> bool:
    """Whether a file slice goes out read, with the pieces around it, rather than by itself."""
    return piece.length <= GATHER_SLICE and not isinstance(piece, GrowingSlice)


def _release(future: Future[Response]) -> None:
    """Drop what an answer nobody will send holds (its cache read leases)."""
    if not future.cancelled() and future.exception() is None:
        future.result().release()


def _refuse_busy(sock: socket.socket) -> None:
    """Tell a client over the connection limit to come back later, if its socket takes it at once."""
    try:
        sock.setblocking(False)
        refusal = plain(503, "too many connections, try again later", close=True)
        sock.send(refusal.head(False) + b"".join(piece for piece in refusal.body if isinstance(piece, bytes)))
    except OSError:
        pass
    finally:
        sock.close()


class _Connection:
    """One client connection: the TLS handshake, then requests and answers, one at a time."""

    def __init__(self, sock: socket.socket, address: tuple[str, int], worker: _Worker, now: float) -> None:
        server = worker.server
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if server.tls is not None:
            sock = server.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        self.sock = sock
        self.fd = sock.fileno()
        self.client = address[0]
        self.server = server
        self.worker = worker
        self.events = select.EPOLLIN
        self.handshaking = server.tls is not None
        self.lingering = False
        self.buffer = bytearray()
        self.deadline = now + server.first_request_timeout
        self.pending: deque[Piece | memoryview] = deque()
        self.response: Response | None = None
        self.request: RequestHead | None = None
        self.incoming: RequestHead | None = None  # a head read, its body still arriving
        self.waiting: Future[Response] | None = None  # the answer to ``request``, being made elsewhere
        self.keep_alive = False
        self.started = 0.0
        self.head_length = 0
        self.sent = 0
        self.file: tuple[int, Path] | None = None  # (descriptor, path) of the file being sent
        self.mapped: memoryview | None = None  # that file mapped, once a second small slice of it is sent
        self.slice_read = False  # a small slice of that file was read (the next ones are mapped)
        # File bytes of the answer by (storage element, still being staged); through TLS, counted as read.
        # (A dict, not a Counter: emptied for every answer, a Counter would call its __missing__ each time.)
        self.file_bytes: dict[tuple[str | None, bool], int] = {}

    @property
    def busy(self) -> bool:
        """Whether a request is being read or answered (a graceful stop waits for these)."""
        return self.response is not None or self.waiting is not None or self.incoming is not None or bool(self.buffer)

    def step(self, now: float, pause: int = 0) -> int | None:
        """Go as far as the socket allows, or to ``pause``; return the epoll events to wait for, None to
        close, or PAUSED."""
        if self.waiting is not None:
            return None  # watched for nothing, so woken only by a hang-up or an error: the client is gone
        try:
            if self.lingering:
                return self._drain()
            if self.handshaking:
                self.sock.do_handshake()  # type: ignore[attr-defined]
                self.handshaking = False
            while True:
                if self.response is None and not self._read_request(now):
                    return select.EPOLLIN
                if self.waiting is not None:
                    return 0
                if pause == BEFORE_SEND:
                    return PAUSED
                if not self._send(now):
                    return select.EPOLLOUT
                if pause == BEFORE_FINISH:
                    return PAUSED
                refused = self.response is not None and self.response.close
                if not self._finish(now):
                    return self._linger(now) if refused else None
                if not self.buffer and self.server.tls is None:
                    # A client sends its next request once it has read this answer, so a read now
                    # would nearly always find nothing: epoll says when it comes. (Through TLS, OpenSSL
                    # may hold bytes already read from the socket, which epoll cannot see.)
                    return select.EPOLLIN
        except ssl.SSLWantReadError:
            return select.EPOLLIN
        except ssl.SSLWantWriteError:
            return select.EPOLLOUT
        except _Starved:
            return STARVED
        except _ShortFile as exc:
            log.error("%s: cutting the connection: %s", self.client, exc)
            return None
        except OSError as exc:  # reset, broken pipe, TLS failure: the client is gone
            log.debug("%s: connection ended: %s", self.client, exc)
            return None

    def _linger(self, now: float) -> int | None:
        """Close for writing, then drop what the client still sends for a moment.

        Closing at once with unread bytes would make the kernel reset the
        connection, and a reset can destroy the refusal before the client
        has read it (a client still sending a body reads only afterwards).
        """
        self.sock.shutdown(socket.SHUT_WR)
        self.lingering = True
        self.deadline = now + LINGER
        return self._drain()

    def _drain(self) -> int | None:
        try:
            for _ in range(16):  # then the other connections get their turn
                if not self.sock.recv(RECV_SIZE):
                    return None
        except BlockingIOError:
            pass
        return select.EPOLLIN

    def _read_request(self, now: float) -> bool:
        """Read until a whole request (head, and body if any) is there and its answer is ready to send;
        False to wait."""
        while True:
            try:
                if self.buffer and self.incoming is None and (length := head_end(self.buffer)) is not None:
                    head = bytes(self.buffer[:length])
                    del self.buffer[:length]
                    self.incoming = parse_head(head)
                if self.incoming is not None and len(self.buffer) >= self.incoming.body_length:
                    request, self.incoming = self.incoming, None
                    if request.body_length:
                        request = replace(request, body=bytes(self.buffer[: request.body_length]))
                        del self.buffer[: request.body_length]
                    self._respond(request, now)
                    return True
                data = self.sock.recv(RECV_SIZE)
                if not data:
                    raise ConnectionResetError(errno.ECONNRESET, "closed by the client")
                if not self.buffer and self.incoming is None and (whole := whole_head(data)) is not None:
                    # A head alone, as a keep-alive client sends its next request: parsed as it came,
                    # not copied into the buffer and out again.
                    self.incoming = whole
                else:
                    self.buffer += data
            except BlockingIOError:
                return False
            except Refused as refused:
                self._respond_refusal(refused, now)
                return True

    def _respond(self, request: RequestHead, now: float) -> None:
        self.request = request
        response = self._made(self.server.answer, request)
        if isinstance(response, Future):
            self.waiting = response
            self.started = now
            self.deadline = now + self.server.wait_limit
            response.add_done_callback(lambda done: self.worker.answered(self, done))
            return
        self._start(response, request.keep_alive, now, with_body=request.method != "HEAD")

    def answer_ready(self, now: float) -> None:
        """The answer that was being made elsewhere is done: start sending it."""
        assert self.waiting is not None and self.request is not None
        future, self.waiting = self.waiting, None
        response = self._made(lambda _request: future.result(), self.request)
        assert isinstance(response, Response)
        self._start(response, self.request.keep_alive, now, with_body=self.request.method != "HEAD")

    def _made(self, make: Answer, request: RequestHead) -> Response | Future[Response]:
        """What ``make`` answers to ``request``; a 500 (its traceback logged) if it fails."""
        try:
            return make(request)
        except Exception:
            # Not the path: it holds the URL's signature, which must not land in logs.
            method = self.request.method if self.request else "-"
            log.exception("%s: answering %s failed", self.client, method)
            return plain(500, "internal error; the service log has details", close=True)

    def _respond_refusal(self, refused: Refused, now: float) -> None:
        self.request = None
        extra = [("Allow", ALLOW)] if refused.status == 405 else None
        self._start(plain(refused.status, str(refused), close=True, extra=extra), False, now, with_body=True)

    def _start(self, response: Response, keep_alive: bool, now: float, *, with_body: bool) -> None:
        self.response = response
        if response.status < 400:
            self.worker.tally.downloads += 1
        self.keep_alive = keep_alive and not response.close and not self.server.stopping
        head = response.head(self.keep_alive)
        self.head_length = len(head)
        self.sent = 0
        self.file_bytes.clear()
        self.started = now
        self.deadline = now + self.server.idle_timeout
        # Empty pieces would leave the head waiting behind MSG_MORE for a write that never comes.
        self.pending = deque([piece for piece in response.body if piece_length(piece)] if with_body else ())
        self.pending.appendleft(head)

    def _send(self, now: float) -> bool:
        """Write what is pending; True when all is out, False when the socket is full or the turn is over.

        A short write means the socket buffer is full: trying again at once
        would only fail (EAGAIN), so the connection waits for epoll instead.
        """
        budget = TURN
        while self.pending:
            try:
                sent, whole = self._send_piece(self.pending[0])
            except BlockingIOError:
                return False
            self.sent += sent
            self.deadline = now + self.server.idle_timeout
            budget -= sent
            if not whole or (budget <= 0 and self.pending):
                return False
        return True

    def _send_piece(self, piece: Piece | memoryview) -> tuple[int, bool]:
        """Send (part of) the first pending pieces and drop what went out: (bytes sent, all that was offered)."""
        while True:
            if isinstance(piece, GrowingSlice):
                piece = self._arrived(piece)
            if not isinstance(piece, FileSlice) or _gathered(piece):
                return self._send_gathered()
            if self.server.tls is not None:
                # No sendfile through TLS: the chunk read here goes out as a bytes piece.
                piece = self._read_chunk(piece)
                self.pending.appendleft(piece)
                continue
            offered = piece.length if piece.length < SENDFILE_MAX else SENDFILE_MAX  # (min() parses arguments)
            sent = os.sendfile(self.fd, self._descriptor(piece), piece.offset, offered)
            if sent == 0:
                raise _ShortFile(f"{piece.path} ended {piece.length} bytes early")
            self._advance_slice(piece, sent)
            return sent, sent == offered

    def _send_gathered(self) -> tuple[int, bool]:
        """Send the run of bytes and small file slices at the head of ``pending`` in one system call.

        A vectored read's answer alternates part heads of a hundred bytes
        with ranges of a few KiB. Over plain HTTP, handing the heads and the
        ranges (views of the mapped file, see ``_slice_bytes``) to one
        ``sendmsg`` costs no more than a ``send`` and a ``sendfile`` per
        range (one copy in the kernel against two system calls and their
        Python; measured at 64 KiB); through TLS, which has no ``sendmsg``,
        one ``send`` makes full TLS records instead of one tiny record per
        part head. Pieces the socket did not take stay pending as they were,
        so a stalled client holds no more than one small slice's bytes in
        memory. A slice the file no longer has ends the run: what comes
        before it goes out, then the answer is cut there.
        """
        buffers: list[bytes | memoryview] = []
        offered = 0
        limit = GATHER_BYTES if self.server.tls is None else TLS_CHUNK
        for piece in self.pending:
            if len(buffers) == GATHER_COUNT or offered >= limit:
                break
            if isinstance(piece, FileSlice):
                if not _gathered(piece):
                    break
                try:
                    piece = self._slice_bytes(piece)
                except _ShortFile:
                    if not buffers:
                        raise
                    break  # what comes before the missing bytes goes out first
            buffers.append(piece)
            offered += len(piece)
        if self.server.tls is not None:
            sent = self.sock.send(b"".join(buffers) if len(buffers) > 1 else buffers[0])
        else:
            following = self.pending[len(buffers)] if len(buffers) < len(self.pending) else None
            # No MSG_MORE before a growing file: the kernel would hold these bytes while it waits.
            more = socket.MSG_MORE if following is not None and not isinstance(following, GrowingSlice) else 0
            # One buffer (an answer's head before its file, say): a plain send costs less than a vector.
            sent = self.sock.sendmsg(buffers, (), more) if len(buffers) > 1 else self.sock.send(buffers[0], more)
        left = sent
        for buffer in buffers:
            if not left:
                break
            piece = self.pending[0]
            if isinstance(piece, FileSlice):
                self._count_file_bytes(piece, len(buffer))
            if left < len(buffer):
                self.pending[0] = memoryview(buffer)[left:]
                break
            self.pending.popleft()
            left -= len(buffer)
        return sent, sent == offered

    def _advance_slice(self, piece: FileSlice, count: int) -> None:
        self._count_file_bytes(piece, count)
        if count < piece.length:
            self.pending[0] = replace(piece, offset=piece.offset + count, length=piece.length - count)
        else:
            self.pending.popleft()

    def _count_file_bytes(self, piece: FileSlice, count: int) -> None:
        key = (piece.se, piece.growing)
        self.file_bytes[key] = self.file_bytes.get(key, 0) + count

    def _arrived(self, piece: GrowingSlice) -> Piece:
        """What can be sent now of a growing slice at the head of ``pending``, put there in its place.

        An exact slice comes back limited to the bytes that have arrived
        (the rest stays pending behind it); a chunked one becomes a chunk
        (its size line, the bytes, its end) before the rest, or the last
        chunk once the file is whole. ``_Starved`` when nothing has arrived
        beyond what was sent; ``_ShortFile`` when nothing more ever will.
        """
        growth = piece.growth
        try:
            available = min(growth.readable() - piece.offset, piece.length)
        except OSError as exc:  # the staging failed: the client must not take the part for the whole
            raise _ShortFile(str(exc)) from None
        if available <= 0:
            if piece.chunked and growth.done:
                self.pending[0] = last = b"0\r\n\r\n"
                return last
            if growth.done:
                raise _ShortFile(f"{piece.path} ended {piece.length} bytes early")
            raise _Starved
        now = replace(piece, length=available, chunked=False)
        self.pending.popleft()
        if piece.chunked:
            size_line = f"{available:x}\r\n".encode("ascii")
            self.pending.extendleft([replace(piece, offset=piece.offset + available), b"\r\n", now, size_line])
            return size_line
        if available < piece.length:
            self.pending.appendleft(replace(piece, offset=piece.offset + available, length=piece.length - available))
        self.pending.appendleft(now)
        return now

    def _read_chunk(self, piece: FileSlice) -> bytes:
        """The next chunk of a file slice, read for a TLS socket (which cannot sendfile)."""
        chunk = self._read(piece, min(piece.length, TLS_CHUNK))
        self._advance_slice(piece, len(chunk))
        return chunk

    def _read(self, piece: FileSlice, count: int) -> bytes:
        """The first ``count`` bytes of a file slice; ``_ShortFile`` if the file has fewer."""
        data = os.pread(self._descriptor(piece), count, piece.offset)
        if len(data) < count:
            raise _ShortFile(f"{piece.path} ended {piece.length - len(data)} bytes early")
        return data

    def _slice_bytes(self, piece: FileSlice) -> bytes | memoryview:
        """A small slice's bytes for a gathered send: read, or a view of its file mapped for this answer.

        The first small slice of a file is read (mapping costs more than
        reading one). From the second on, as in a vectored read's answer,
        the file is mapped and the slices go to ``sendmsg`` as views: no
        copy through Python, and nothing read is thrown away when the socket
        takes only part of a gathered send (reading did, up to half of the
        bytes, measured). Plain HTTP only: there the kernel alone touches
        the mapped pages, and a file cut short fails the send (EFAULT) where
        Python touching them would die of SIGBUS; through TLS, Python's
        OpenSSL would read them.
        """
        fd = self._descriptor(piece)  # first: a slice of another file closes (and unmaps) this one
        if self.server.tls is not None or (self.mapped is None and not self.slice_read):
            self.slice_read = True
            return self._read(piece, piece.length)
        if self.mapped is None:
            try:
                self.mapped = memoryview(mmap.mmap(fd, 0, access=mmap.ACCESS_READ))
            except ValueError:  # an empty file cannot be mapped
                raise _ShortFile(f"{piece.path} is empty, {piece.length} bytes were expected") from None
        end = piece.offset + piece.length
        if end > len(self.mapped):
            raise _ShortFile(f"{piece.path} ended {end - len(self.mapped)} bytes early")
        return self.mapped[piece.offset : end]

    def _descriptor(self, piece: FileSlice) -> int:
        """The file of a slice: the growing file's own descriptor, or the cache file opened by path."""
        if isinstance(piece, GrowingSlice):
            return piece.growth.fileno()
        file = self.file
        if file is not None:
            if file[1] is piece.path or file[1] == piece.path:
                return file[0]
            self._close_file()
        self.file = file = (self.worker.open_file(piece.path), piece.path)
        return file[0]

    def _close_file(self) -> None:
        if self.file is not None:
            self.worker.close_file(self.file[1])
            self.file = None
        # Unmapped once the last view of it (a part still pending in a cut connection) is dropped.
        self.mapped = None
        self.slice_read = False

    def _finish(self, now: float) -> bool:
        """The answer is out: log it, release its files; True if the connection stays open."""
        self._end_response("")
        self.deadline = now + self.server.idle_timeout
        return self.keep_alive

    def _end_response(self, note: str) -> None:
        response, self.response = self.response, None
        if response is None:
            return
        self._close_file()
        try:
            response.release()
        except Exception:
            log.exception("%s: releasing the files of an answer failed", self.client)
        method = self.request.method if self.request else "-"
        body = self.sent - self.head_length if self.sent > self.head_length else 0
        if response.status < 400:
            self.worker.tally.downloads -= 1
            self.worker.tally.bytes += body
            self.worker.tally.add_served(response, self.file_bytes)
        elapsed = (time.monotonic() - self.started) * 1000
        logs.log_info(log, f"{self.client} key={response.key} {method} status={response.status} bytes={body} {elapsed:.1f}ms{note}")

    def log_timeout(self) -> None:
        if self.response is not None:
            log.info("%s: no progress for %.0f s, closing", self.client, self.server.idle_timeout)
        elif self.waiting is not None:
            log.info("%s: no answer made within %.0f s, closing", self.client, self.server.wait_limit)

    def close(self) -> None:
        self._end_response(" (cut)")
        try:
            self.sock.close()
        except OSError:
            pass
