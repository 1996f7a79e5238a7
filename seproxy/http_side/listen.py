"""Listening sockets for a host name and a port, on every address the name has.

``localhost`` is both 127.0.0.1 and ::1, and no host at all means every
interface of both families: a server listens on each, on one port (with
port 0, the port the first socket got). IPv6 sockets are IPv6-only so that
the IPv4 socket beside them can bind the same port.

Worker processes share a port through ``SO_REUSEPORT``: each binds and
listens on its own sockets and the kernel spreads new connections over
them. Their supervisor holds the port with ``reserve`` sockets (bound with
``SO_REUSEPORT`` but not listening, so they are given no connections).
"""

from __future__ import annotations

import errno
import socket


def listening_sockets(
    host: str | None, port: int, backlog: int = 1024, *, reuse_port: bool = False, listen: bool = True
) -> list[socket.socket]:
    """Non-blocking sockets listening on ``port`` of every address of ``host`` (all interfaces when None).

    ``reuse_port``: other processes of this user may listen on the port too.
    ``listen=False``: only bound, to reserve the port for such processes.
    """
    found = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    bound: set[tuple[int, object]] = set()
    try:
        for family, kind, protocol, _, address in found:
            if (family, address[0]) in bound:
                continue  # getaddrinfo can name one address twice
            sock = socket.socket(family, kind, protocol)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.setblocking(False)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno != errno.EADDRNOTAVAIL or family != socket.AF_INET6 or len(found) == 1:
                    raise
                sockets.pop().close()  # "localhost" names ::1, but IPv6 is off here: IPv4 serves it
                continue
            if listen:
                sock.listen(backlog)
            bound.add((family, address[0]))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets
