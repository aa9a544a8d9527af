"""``SBR_DATABASE_URL``: one setting that chooses SQLite (embedded) or MariaDB (pymysql).

* ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``
* ``mysql://user:password@host:3306/dbname`` (``mariadb://`` works too), or with
  ``?unix_socket=/run/mysqld/mysqld.sock``
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import attrs

from sbr_core.errors import ConfigError

_MYSQL_SCHEMES = ("mysql", "mariadb", "mysql+pymysql")
_MYSQL_OPTIONS = {"unix_socket", "charset", "connect_timeout"}


@attrs.frozen
class DatabaseURL:
    """A parsed database URL. ``password`` never appears in ``repr`` or :meth:`safe`."""

    dialect: str  # "sqlite" or "mysql"
    path: Path | None = None
    host: str = ""
    port: int = 3306
    user: str = ""
    password: str = attrs.field(default="", repr=False)
    database: str = ""
    options: dict[str, str] = attrs.field(factory=dict)

    def safe(self) -> str:
        """The URL as it may be shown: without the password."""
        if self.dialect == "sqlite":
            return f"sqlite:///{self.path}"
        where = self.options.get("unix_socket") or f"{self.host}:{self.port}"
        return f"mysql://{self.user}@{where}/{self.database}"


def parse_database_url(url: str) -> DatabaseURL:
    """Parse ``url``; a malformed one raises ConfigError naming what is wrong."""
    def bad(message: str) -> ConfigError:
        return ConfigError("SBR_DATABASE_URL", {"url": message})

    if not url or "://" not in url:
        raise bad("expected sqlite:///PATH or mysql://USER:PASSWORD@HOST/DATABASE")
    scheme = url.split("://", 1)[0].lower()
    if scheme == "sqlite":
        raw = url[len("sqlite:///"):] if url.lower().startswith("sqlite:///") else ""
        if not raw:
            raise bad("sqlite URL has no file path (sqlite:///relative.db or "
                      "sqlite:////absolute/path.db)")
        return DatabaseURL("sqlite", path=Path(unquote(raw)))
    if scheme not in _MYSQL_SCHEMES:
        raise bad(f"unknown database type {scheme!r} (use sqlite or mysql)")
    try:
        parts = urlsplit(url)
        port = parts.port or 3306
    except ValueError as exc:
        raise bad(f"malformed mysql URL: {exc}") from None
    database = parts.path.lstrip("/")
    if not database or "/" in database:
        raise bad("mysql URL must name one database: mysql://USER:PASSWORD@HOST/DATABASE")
    options = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    unknown = sorted(set(options) - _MYSQL_OPTIONS)
    if unknown:
        raise bad(f"unknown option(s) {', '.join(unknown)} "
                  f"(known: {', '.join(sorted(_MYSQL_OPTIONS))})")
    if not parts.hostname and "unix_socket" not in options:
        raise bad("mysql URL has no host (or ?unix_socket=PATH)")
    return DatabaseURL(
        "mysql",
        host=parts.hostname or "localhost",
        port=port,
        user=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        database=database,
        options=options,
    )
