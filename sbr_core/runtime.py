"""Where the server keeps its state, read from the environment once, in one place.

``SBR_DATA_DIR`` (default ``/var/lib/sbr`` for root, else ``~/.local/share/sbr``) holds the
SQLite database, the server key file and the initial admin password.
``SBR_DATABASE_URL`` overrides the database (default ``sqlite:///<data dir>/sbr.db``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import attrs

from sbr_core.db.url import DatabaseURL, parse_database_url
from sbr_core.errors import ConfigError


@attrs.frozen
class Runtime:
    """The server's locations and database choice."""

    data_dir: Path
    database_url: DatabaseURL
    disabled_plugins: tuple[str, ...] = ()

    @property
    def key_file(self) -> Path:
        """The key that encrypts secrets at rest."""
        return self.data_dir / "secret.key"

    @property
    def initial_password_file(self) -> Path:
        """Where the first start writes the generated admin password."""
        return self.data_dir / "initial-admin-password"

    def ensure_data_dir(self) -> None:
        """Create the data directory (0700) if it is missing."""
        try:
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError("SBR_DATA_DIR", {
                "path": f"cannot create {self.data_dir}: {exc.strerror}"}) from None


def _default_data_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/sbr")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "sbr"


def runtime_from_env(env: Mapping[str, str] | None = None) -> Runtime:
    """Read SBR_DATA_DIR, SBR_DATABASE_URL and SBR_DISABLE_PLUGINS."""
    env = os.environ if env is None else env
    data_dir = Path(env["SBR_DATA_DIR"]) if env.get("SBR_DATA_DIR") else _default_data_dir()
    url_text = env.get("SBR_DATABASE_URL") or f"sqlite:///{data_dir / 'sbr.db'}"
    disabled = tuple(p.strip() for p in env.get("SBR_DISABLE_PLUGINS", "").split(",")
                     if p.strip())
    return Runtime(data_dir.absolute(), parse_database_url(url_text), disabled)
