"""The head every answer starts from, with its Date made once a second.

Tornado's ``RequestHandler.clear`` formats the ``Date`` header for every
answer (``email.utils.formatdate``: about 2 us, more than a tenth of
seproxy's own work on a small call); an HTTP date changes once a second,
and nginx formats it once a second too.
"""

from __future__ import annotations

import functools
import time

import tornado
import tornado.httputil
import tornado.web

SERVER = f"TornadoServer/{tornado.version}"


@functools.lru_cache(maxsize=1)
def _http_date(second: int) -> str:
    return tornado.httputil.format_timestamp(second)


class DefaultHead(tornado.web.RequestHandler):
    """Mixin: Tornado's ``clear`` (its default headers, no body, status 200) with a Date of this second."""

    def clear(self) -> None:
        # Filled item by item: from a dict, they would go through MutableMapping.update and its isinstance checks.
        headers = self._headers = tornado.httputil.HTTPHeaders()
        headers["Server"] = SERVER
        headers["Content-Type"] = "text/html; charset=UTF-8"
        headers["Date"] = _http_date(int(time.time()))
        self.set_default_headers()
        self._write_buffer: list[bytes] = []
        self._status_code = 200
        self._reason = "OK"
