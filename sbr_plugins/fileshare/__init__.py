"""The ``fileshare`` storage provider: a directory tree on the node (a local path, or an
NFS/CIFS share mounted there), backed up with owners, modes, times, symlinks, hard links and
extended attributes, and restored to where it was, elsewhere, or a file at a time."""

from __future__ import annotations

from sbr_core import hookimpl


@hookimpl
def sbr_register_storage_providers() -> list[type]:
    """Contribute the file-share provider."""
    from sbr_plugins.fileshare.provider import FileShareProvider

    return [FileShareProvider]
