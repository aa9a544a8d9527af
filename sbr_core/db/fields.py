"""Column types shared by the models and the migrations."""

from __future__ import annotations

import json
from typing import Any

import peewee


class JsonField(peewee.TextField):
    """JSON stored as text: portable across SQLite and MariaDB."""

    def db_value(self, value: Any) -> str | None:
        return None if value is None else json.dumps(value, sort_keys=True)

    def python_value(self, value: Any) -> Any:
        return None if value is None else json.loads(value)


class LongTextField(peewee.TextField):
    """Text that may outgrow 64 KiB on MariaDB (task logs, VM configurations)."""

    field_type = "LONGTEXT"

    def get_modifiers(self) -> None:
        return None
