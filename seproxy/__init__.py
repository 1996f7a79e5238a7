"""seproxy: a storage element proxy speaking DIRAC's HTTPS RPC protocol."""

__version__ = "0.1.0"
