"""Turning a DEST argument into a destination: a directory path, or a URL whose scheme names
a destination plugin that can be configured from a URL (``s3://bucket/prefix?…``)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from sbr_core.config import structure_config
from sbr_core.errors import UsageError
from sbr_core.plugins import PluginHost
from sbr_core.providers.base import ProviderContext
from sbr_core.providers.destination import Destination


def open_destination(dest: str, host: PluginHost, *, create: bool = False) -> Destination:
    """The destination DEST names; ``create`` makes a missing local directory."""
    if "://" in dest:
        scheme = urlsplit(dest).scheme
        if scheme == "file":
            return _directory(urlsplit(dest).path, host, create=create)
        cls = host.destinations().get(scheme)
        from_url = getattr(cls, "config_from_url", None)
        if cls is None or from_url is None:
            known = sorted(name for name, c in host.destinations().items()
                           if getattr(c, "config_from_url", None) is not None)
            raise UsageError(f"no destination plugin takes {scheme}:// URLs (these do: "
                             f"{', '.join(known) or 'none'}; a plain path is a directory)")
        values = from_url(dest)
        config = structure_config(cls.Config, values, subject=f"destination {dest!r}")
        return cls(config, context=ProviderContext(name=_redacted(dest)))
    return _directory(dest, host, create=create)


def _directory(path: str, host: PluginHost, *, create: bool) -> Destination:
    cls = host.destinations().get("filesystem")
    if cls is None:
        raise UsageError("the filesystem destination plugin is not available "
                         "(see `sbr plugins filesystem`)")
    directory = Path(path).expanduser()
    if create and not directory.exists():
        try:
            directory.mkdir(parents=True)
        except OSError as exc:
            raise UsageError(f"cannot create {directory}: {exc.strerror}") from None
    config = structure_config(cls.Config, {"path": str(directory.absolute())},
                              subject=f"destination {path!r}")
    return cls(config, context=ProviderContext(name=str(directory)))


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"
