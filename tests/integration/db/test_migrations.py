"""Schema migrations on SQLite and on a real MariaDB, in the same run."""

from __future__ import annotations

import ast
import datetime as dt
from pathlib import Path

import peewee as pw
import pytest

from sbr_core.db import close_database, open_database
from sbr_core.db import migrations as mig
from sbr_core.db.schema import ALL_MODELS
from sbr_core.errors import DatabaseError

MIGRATION_DIR = Path(mig.__file__).parent


def _columns(db: pw.Database, table: str) -> dict[str, bool]:
    return {c.name: c.null for c in db.get_columns(table)}


def test_upgrade_builds_exactly_the_schema_the_models_describe(database: pw.Database) -> None:
    assert mig.current_version(database) == mig.LATEST
    for model in ALL_MODELS:
        table = model._meta.table_name
        assert database.table_exists(table), table
        expected = {f.column_name: f.null for f in model._meta.sorted_fields}
        assert _columns(database, table) == expected, table
        unique_sets = {tuple(i.columns) for i in database.get_indexes(table) if i.unique}
        for field in model._meta.sorted_fields:
            if field.unique:
                assert (field.column_name,) in unique_sets, (table, field.name)
        for columns, unique in model._meta.indexes:
            if unique:
                names = tuple(model._meta.fields[c].column_name for c in columns)
                assert names in unique_sets, (table, names)


def _fill_version_1(db: pw.Database) -> dict[str, int]:
    now = dt.datetime(2026, 1, 2, 3, 4, 5)
    role_id = db.execute_sql("SELECT id FROM role WHERE name = 'operator'").fetchone()[0]
    for i in range(25):
        _insert(db, "user", {"username": f"user{i}", "password_hash": f"hash{i}",
                             "role_id": role_id, "active": True, "created_at": now})
        _insert(db, "audit_log", {"at": now, "username": f"user{i}", "action": "login",
                                  "target": "", "detail": f'{{"n": {i}}}',
                                  "remote_addr": "127.0.0.1"})
    return {table: _count(db, table)
            for table in ("role", "permission", "role_permission", "user", "audit_log")}


def _quoted(db: pw.Database, table: str) -> str:
    return f"{db.quote[0]}{table}{db.quote[1]}"


def _insert(db: pw.Database, table: str, row: dict[str, object]) -> None:
    """A raw insert: frozen at version 1, it must not go through the current models."""
    marks = ", ".join([db.param] * len(row))
    db.execute_sql(f"INSERT INTO {_quoted(db, table)} ({', '.join(row)}) VALUES ({marks})",
                   tuple(row.values()))


def _count(db: pw.Database, table: str) -> int:
    return int(db.execute_sql(f"SELECT COUNT(*) FROM {_quoted(db, table)}").fetchone()[0])


def test_database_at_first_version_filled_then_upgraded_keeps_every_row(
        database_url: str) -> None:
    db = open_database(database_url)
    try:
        mig.upgrade(db, target=1)
        assert mig.current_version(db) == 1
        assert not db.table_exists("instance")
        counts = _fill_version_1(db)
        users_before = db.execute_sql(
            "SELECT username, password_hash, role_id, created_at FROM "
            + _quoted(db, "user") + " ORDER BY username").fetchall()

        applied = mig.upgrade(db)

        assert [m.version for m in applied] == list(range(2, mig.LATEST + 1))
        assert mig.current_version(db) == mig.LATEST
        for table, count in counts.items():
            assert _count(db, table) == count, table
        users_after = db.execute_sql(
            "SELECT username, password_hash, role_id, created_at FROM "
            + _quoted(db, "user") + " ORDER BY username").fetchall()
        assert [tuple(r) for r in users_after] == [tuple(r) for r in users_before]
        from sbr_core.db.schema import AuditLog, User

        assert User.get(User.username == "user7").role.name == "operator"
        assert AuditLog.get(AuditLog.username == "user3").detail == {"n": 3}
    finally:
        close_database(db)


_INVENTORY_ROWS = (
    "INSERT INTO provider_connection (name, kind, plugin, settings, secrets, created_at, "
    "updated_at) VALUES ('kvm1', 'hypervisor', 'kvm', '{}', '', '2026-01-01 00:00:00', "
    "'2026-01-01 00:00:00')",
    "INSERT INTO instance (connection_id, external_id, name, kind, state, location, tags, "
    "attributes, present, first_seen_at, last_seen_at) SELECT id, 'uuid-1', 'vm1', 'vm', "
    "'running', '', '[]', '{}', 1, '2026-01-01 00:00:00', '2026-01-01 00:00:00' "
    "FROM provider_connection WHERE name = 'kvm1'",
)


@pytest.mark.parametrize("start", range(1, mig.LATEST))
def test_every_older_version_upgrades_to_the_newest_keeping_rows(
        database_url: str, start: int) -> None:
    db = open_database(database_url)
    try:
        mig.upgrade(db, target=start)
        _fill_version_1(db)
        if start >= 2:
            for statement in _INVENTORY_ROWS:
                db.execute_sql(statement)
        tables = [t for t in db.get_tables() if t != mig.MIGRATION_TABLE]
        before = {t: _count(db, t) for t in tables}

        mig.upgrade(db)

        assert {t: _count(db, t) for t in tables} == before
        assert mig.current_version(db) == mig.LATEST
    finally:
        close_database(db)


def test_upgrade_twice_applies_nothing_the_second_time(database: pw.Database) -> None:
    assert mig.upgrade(database) == []
    assert mig.applied_versions(database) == list(range(1, mig.LATEST + 1))


def test_a_database_newer_than_the_code_is_refused_untouched(database: pw.Database) -> None:
    database.execute_sql(
        f"INSERT INTO {mig.MIGRATION_TABLE} (version, title, applied_at) "
        "VALUES (999, 'from the future', '2030-01-01 00:00:00')")
    with pytest.raises(DatabaseError, match="newer than this SBR"):
        mig.upgrade(database)


def test_unknown_target_version_is_refused(database: pw.Database) -> None:
    with pytest.raises(DatabaseError, match="no schema version"):
        mig.upgrade(database, target=mig.LATEST + 5)


def test_sqlite_file_is_copied_aside_before_an_upgrade(tmp_path: Path) -> None:
    db = open_database(f"sqlite:///{tmp_path / 'sbr.db'}")
    try:
        mig.upgrade(db, target=1)
        mig.upgrade(db)
    finally:
        close_database(db)
    copy = tmp_path / "sbr.db.v1.bak"
    assert copy.exists()
    old = open_database(f"sqlite:///{copy}")
    try:
        assert mig.current_version(old) == 1
    finally:
        close_database(old)


_DESTRUCTIVE_CALLS = {"drop_table", "drop_tables", "drop_column", "drop_index",
                      "drop_not_null", "delete", "truncate_table", "rename_column"}


def test_no_migration_drops_or_deletes_data() -> None:
    for path in sorted(MIGRATION_DIR.glob("m*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                assert node.attr not in _DESTRUCTIVE_CALLS, f"{path.name}: {node.attr}"
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value.upper()
                for word in ("DROP ", "DELETE ", "TRUNCATE "):
                    assert word not in text, f"{path.name}: {node.value!r}"


def test_migration_versions_are_consecutive_from_one() -> None:
    assert [m.version for m in mig.MIGRATIONS] == list(range(1, len(mig.MIGRATIONS) + 1))
    modules = sorted(p.stem for p in MIGRATION_DIR.glob("m[0-9]*.py"))
    assert len(modules) == len(mig.MIGRATIONS), "a migration module is not registered"


def test_version_6_gives_each_task_its_workflows_priority(database_url: str) -> None:
    db = open_database(database_url)
    try:
        mig.upgrade(db, target=5)
        now = "'2026-01-01 00:00:00'"
        for workflow_id, priority in ((1, 90), (2, 10)):
            db.execute_sql(
                "INSERT INTO workflow (id, kind, state, requested_by, params, priority, error, "
                f"provider_name, location, created_at) VALUES ({workflow_id}, 'backup', "
                f"'pending', '', '{{}}', {priority}, '', '', '', {now})")
            db.execute_sql(
                "INSERT INTO task (workflow_id, step, seq, state, attempts, max_attempts, "
                "progress_done, progress_total, speed_bps, params, error, created_at) "
                f"VALUES ({workflow_id}, 'export', 0, 'queued', 0, 3, 0, 0, 0, '{{}}', '', "
                f"{now})")
        mig.upgrade(db)
        rows = db.execute_sql("SELECT workflow_id, priority FROM task ORDER BY workflow_id")
        assert [tuple(row) for row in rows.fetchall()] == [(1, 90), (2, 10)]
        assert "task_claim_order" in {index.name for index in db.get_indexes("task")}
    finally:
        close_database(db)
