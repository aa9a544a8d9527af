"""SBR core: hook specifications, plugin host, models, configuration, database and CLI."""

from sbr_core.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["__version__", "hookimpl"]
