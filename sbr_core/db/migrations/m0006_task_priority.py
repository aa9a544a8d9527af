"""Version 6: each task carries its workflow's priority, so that the claim's candidates
come from one index of the task table, already in claim order.

A claim reads the first few claimable tasks, highest priority first and then the oldest,
and locks one of them (see :mod:`sbr_core.engine.claims`). Ordered by the joined workflow's
priority, that read sorted every queued task each time.
"""

from __future__ import annotations

from typing import Any

import peewee as pw

from sbr_core.db.migrations.tables import add_column, frozen_model

VERSION = 6
TITLE = "task priority, for claims in index order"

INDEX = "task_claim_order"


def apply(db: pw.Database) -> None:
    """Add ``task.priority`` (filled from the workflow) and the claim's index."""
    add_column(db, "task", "priority", pw.IntegerField(default=50))
    task: Any = frozen_model(db, "task", {"priority": pw.IntegerField(),
                                     "workflow_id": pw.IntegerField()})
    workflow: Any = frozen_model(db, "workflow", {"priority": pw.IntegerField()})
    task.update(priority=workflow.select(workflow.priority)
                .where(workflow.id == task.workflow_id)).execute()
    if not any(index.name == INDEX for index in db.get_indexes("task")):
        # constant names: nothing here comes from outside
        quoted = f"{db.quote[0]}task{db.quote[1]}"
        db.execute_sql(f"CREATE INDEX {INDEX} ON {quoted} (state, priority DESC, id)")
