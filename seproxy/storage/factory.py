"""Make a storage element from its settings: the one place that knows every plugin."""

from __future__ import annotations

from pathlib import Path

from seproxy.config import StorageElementSettings
from seproxy.storage.base import StorageElement
from seproxy.storage.local import LocalStorage
from seproxy.storage.webdav import WebDavStorage
from seproxy.storage.xroot import XRootStorage

# xroot.py imports the XRootD bindings only when an element is built, so listing it here is free.
PLUGINS: dict[str, type[StorageElement]] = {
    plugin.plugin: plugin for plugin in (LocalStorage, WebDavStorage, XRootStorage)
}


def make_storage_element(
    name: str, settings: StorageElementSettings, *, default_ca_dir: Path | None = None
) -> StorageElement:
    """The element for ``settings.plugin``; ``default_ca_dir`` (tls.ca_dir) applies when the element sets none."""
    try:
        plugin = PLUGINS[settings.plugin]
    except KeyError:
        known = ", ".join(PLUGINS)
        raise ValueError(f"storage element {name}: unknown plugin {settings.plugin!r} (known: {known})") from None
    return plugin(name, settings, default_ca_dir=default_ca_dir)
