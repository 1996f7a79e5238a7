"""The HTTP side server: plain downloads, by signed URL, of files staged with ``prepareFileForHTTP``."""

from seproxy.http_side.side import HTTPSide, Published

__all__ = ["HTTPSide", "Published"]
