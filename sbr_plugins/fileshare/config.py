"""Settings of the file-share provider, and its exclude patterns."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Any

import attrs

from sbr_core.settings import setting

#: What one connection's instances are: its path, or each directory directly below it.
LAYOUTS = ("path", "subdirectories")


def _absolute(_: Any, __: attrs.Attribute[Path], value: Path) -> None:
    if not value.is_absolute():
        raise ValueError(f"{str(value)!r} is not an absolute path")


def _patterns(_: Any, __: attrs.Attribute[str], value: str) -> None:
    Excludes(value)


@attrs.frozen
class FileShareConfig:
    """Settings of a file-share connection."""

    path: Path = setting(
        label="Path",
        help="Directory to protect, on the node: a local directory, or where an NFS/CIFS share "
        "is mounted.",
        validator=_absolute,
    )
    instances: str = setting(
        label="Instances",
        help="'path': the whole directory is one instance. 'subdirectories': each directory "
        "directly below it is an instance of its own (home or project directories), with its "
        "own backups and policy; new ones appear at the next inventory.",
        choices=LAYOUTS,
        default="path",
    )
    require_mount: bool = setting(
        label="Must be a mount point",
        help="Refuse to back up or restore unless the path is a mount point, so that an "
        "unmounted share is never backed up as an empty directory nor restored onto the "
        "local disk.",
        default=False,
    )
    exclude: str = setting(
        label="Exclude",
        help="Patterns of what not to back up, one per line or separated by commas. A pattern "
        "without '/' matches a name at any depth ('*.tmp', '.snapshot'); one with '/' "
        "matches the path from the instance's top ('/scratch', 'build/*.o', where '*' also "
        "matches '/'); a trailing '/' matches directories only ('cache/'). Everything below "
        "an excluded directory is left out. Write a literal comma as '[,]'.",
        default="",
        validator=_patterns,
    )


class Excludes:
    """Exclude patterns, compiled; called as ``exclude(relative path, is_directory)``."""

    def __init__(self, text: str) -> None:
        groups: dict[tuple[bool, bool], list[str]] = {}  # (anchored, directories only)
        for raw in re.split(r"[\n,]", text):
            pattern = raw.strip()
            if not pattern:
                continue
            dir_only = pattern.endswith("/")
            anchored = "/" in pattern.rstrip("/")
            body = pattern.strip("/")
            if not body:
                raise ValueError(f"exclude pattern {pattern!r} names nothing")
            groups.setdefault((anchored, dir_only), []).append(fnmatch.translate(body))
        self._groups = [(anchored, dir_only, re.compile("|".join(parts)))
                        for (anchored, dir_only), parts in groups.items()]

    def __bool__(self) -> bool:
        return bool(self._groups)

    def __call__(self, relative: str, is_dir: bool) -> bool:
        name = relative.rsplit("/", 1)[-1]
        for anchored, dir_only, regex in self._groups:
            if dir_only and not is_dir:
                continue
            if regex.match(relative if anchored else name):
                return True
        return False
