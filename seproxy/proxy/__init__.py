"""The StorageElementProxy application, built on the framework (``rpc``, ``http_side``, ``cache``, ``storage``).

- ``handler``: the RPC methods, one short ``export_*`` each;
- ``resources``: what all requests share (cache, storage elements, side server), opened once;
- ``staging``: which element a caller may use, and one staging per file for all callers;
- ``rights``: who may read from or write to an element; ``operations``: the ``callProxyMethod`` table;
- ``file_ids``, ``describe``: how clients name cached files and what they learn about them;
- ``lfns``: ``prepareFileForHTTP``, from logical file names to a signed URL;
- ``downloads``, ``uploads``: the bytes of ``streamToClient`` and the streamed ``PUT`` route.
"""

from seproxy.proxy.handler import StorageElementProxyHandler
from seproxy.proxy.resources import ProxyResources

__all__ = ["ProxyResources", "StorageElementProxyHandler"]
