"""What CLI commands share: the plugin host and the opened database, made once per process."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from sbr_core.plugins import PluginHost
from sbr_core.runtime import Runtime, runtime_from_env

if TYPE_CHECKING:  # peewee (and the MySQL driver it loads) only when a command needs it
    import peewee as pw


@functools.cache
def runtime() -> Runtime:
    """The process's runtime settings."""
    return runtime_from_env()


@functools.cache
def plugin_host() -> PluginHost:
    """The process's plugin host, built on first use."""
    return PluginHost.discover(disabled=runtime().disabled_plugins)


def database(*, upgrade: bool = False, check: bool = True) -> pw.Database:
    """Open the configured database; with ``upgrade``, bring its schema up to date first;
    with ``check``, refuse a schema that is not the newest."""
    from sbr_core.db import open_database
    from sbr_core.db.migrations import upgrade as run_upgrade
    from sbr_core.db.schema_check import require_current

    rt = runtime()
    if rt.database_url.dialect == "sqlite":
        rt.ensure_data_dir()
    db: pw.Database = open_database(rt.database_url)
    if upgrade:
        run_upgrade(db)
    elif check:
        require_current(db)
    return db
