"""Example SBR plugin: a backup destination kept in one SQLite file.

This module is what the ``sbr`` entry point names, so SBR imports it at every start (server,
node, CLI). It therefore holds only the hook implementation; the destination class, and
whatever it imports, is loaded inside the hook, when the core first asks for destinations.
"""

from __future__ import annotations

from sbr_core import hookimpl


@hookimpl
def sbr_register_destinations() -> list[type]:
    """Contribute the SQLite-file destination."""
    from sbr_example_sqlite.destination import SqliteFileDestination

    return [SqliteFileDestination]
