"""The ``filesystem`` backup destination: a local directory, or an NFS/CIFS share mounted there."""

from __future__ import annotations

from sbr_core import hookimpl


@hookimpl
def sbr_register_destinations() -> list[type]:
    """Contribute the file-system destination."""
    from sbr_plugins.filesystem.destination import FilesystemDestination

    return [FilesystemDestination]
