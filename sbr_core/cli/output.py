"""Small output helpers shared by the CLI's commands."""

from __future__ import annotations

import os

from sbr_core.errors import UsageError


def size(value: float | None) -> str:
    """Bytes for people: ``512 B``, ``1.5 MiB``, up to TiB."""
    number = float(value or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(number) < 1024:
            return f"{number:.0f} {unit}" if unit == "B" else f"{number:.1f} {unit}"
        number /= 1024
    return f"{number:.1f} TiB"


def new_private_file(path: str | os.PathLike[str], option: str) -> int:
    """A descriptor on a new file at ``path`` that only its owner may read (for keys);
    never one written over an existing file. ``option`` names the argument in errors."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"{option}: {path} already exists; a key is never written over a "
                         "file (choose a new name)") from None
    except OSError as exc:
        raise UsageError(f"{option}: cannot create {path}: {exc.strerror}") from None
