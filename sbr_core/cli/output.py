"""Small formatting shared by the CLI's commands."""

from __future__ import annotations


def size(value: float | None) -> str:
    """Bytes for people: ``512 B``, ``1.5 MiB``, up to TiB."""
    number = float(value or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(number) < 1024:
            return f"{number:.0f} {unit}" if unit == "B" else f"{number:.1f} {unit}"
        number /= 1024
    return f"{number:.1f} TiB"
