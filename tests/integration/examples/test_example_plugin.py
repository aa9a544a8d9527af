"""The example third-party plugin, examples/sbr-example-sqlite, installed and used for real.

The first tests pip-install the example as its own distribution into a private directory and
ask a fresh ``sbr plugins --json`` process what it sees, exactly as an admin who installed it
would. The rest exercise its SqliteFileDestination against real SQLite files.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import shutil
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from sbr_core.errors import (
    DestinationError,
    DestinationFull,
    DestinationReadOnly,
    DestinationUnavailable,
    ObjectNotFound,
    UsageError,
)
from sbr_core.providers.base import ProviderContext
from sbr_core.settings import settings_of
from tests.destination_contract import DestinationContract
from tests.plugin_installs import pip_install, plugins_json, require_build_tools, run_sbr

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "examples" / "sbr-example-sqlite"
PLUGIN = "example-sqlite"


# --- installing ----------------------------------------------------------------------------


def normalized(project: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", project).lower()


@pytest.fixture(scope="module")
def example_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plugin pip-installed into a private directory, once for this module."""
    require_build_tools()
    root = tmp_path_factory.mktemp("example-install")
    # Build from a copy: setuptools writes build/ and *.egg-info into the tree it builds.
    source = shutil.copytree(EXAMPLE, root / "src", ignore=shutil.ignore_patterns(
        "build", "*.egg-info", "__pycache__"))
    site = root / "site"
    pip_install([source], site)
    return site


def test_example_installs_as_its_own_distribution(example_site: Path) -> None:
    assert (example_site / "sbr_example_sqlite" / "destination.py").is_file()
    assert list(example_site.glob("sbr_example_sqlite-0.1.0.dist-info"))


def test_installed_example_is_listed_available_beside_filesystem(
    example_site: Path, tmp_path: Path
) -> None:
    records = plugins_json(pythonpath=[example_site], home=tmp_path)

    example = records[PLUGIN]
    assert example["status"] == "available", example["reason"]
    assert example["kinds"] == ["destination"]
    assert normalized(example["distribution"]) == "sbr-example-sqlite"
    assert example["version"] == "0.1.0"
    assert [(p["kind"], p["name"]) for p in example["providers"]] == [
        ("destination", "sqlite-file")]
    assert records["filesystem"]["status"] == "available"


def test_example_is_absent_until_installed(tmp_path: Path) -> None:
    records = plugins_json(pythonpath=[], home=tmp_path)

    assert PLUGIN not in records
    assert "filesystem" in records


def test_installed_example_shows_its_settings(example_site: Path, tmp_path: Path) -> None:
    done = run_sbr(["plugins", PLUGIN, "--json"], pythonpath=[example_site], home=tmp_path)

    assert done.returncode == 0, done.stderr
    fields = json.loads(done.stdout)["settings"]["destination/sqlite-file"]
    by_name = {field["name"]: field for field in fields}
    assert list(by_name) == ["path", "journal", "max_size_mb"]
    assert by_name["path"]["required"] is True
    assert by_name["journal"]["choices"] == ["wal", "delete"]


# --- the destination itself ------------------------------------------------------------------


@pytest.fixture(scope="module")
def example() -> Iterator[ModuleType]:
    """The example's destination module, imported from the source tree."""
    sys.path.insert(0, str(EXAMPLE))
    try:
        yield importlib.import_module("sbr_example_sqlite.destination")
    finally:
        sys.path.remove(str(EXAMPLE))


def open_destination(example: ModuleType, path: Path, **settings: Any) -> Any:
    """A SqliteFileDestination on ``path`` named "sqlite-test"."""
    config = example.SqliteFileConfig(path=path, **settings)
    return example.SqliteFileDestination(config, context=ProviderContext("sqlite-test"))


@pytest.fixture
def destination(example: ModuleType, tmp_path: Path) -> Iterator[Any]:
    """A destination on a fresh database file, closed afterwards."""
    dest = open_destination(example, tmp_path / "repo.db")
    yield dest
    dest.close()


def test_negative_range_is_refused(destination: Any) -> None:
    destination.put("data", b"abc")

    with pytest.raises(UsageError):
        destination.get("data", offset=-1)
    with pytest.raises(UsageError):
        destination.get("data", length=-1)


def test_list_pages_through_batches_while_the_caller_deletes(
    example: ModuleType, destination: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(example, "_LIST_BATCH", 2)
    keys = [f"chunks/{n:02d}" for n in range(7)]
    for key in keys:
        destination.put(key, b"x")

    seen = []
    for info in destination.list("chunks/"):
        seen.append(info.key)
        destination.delete(info.key)  # garbage collection deletes what it lists

    assert sorted(seen) == keys
    assert list(destination.list()) == []


def test_missing_directory_makes_the_destination_unavailable(
    example: ModuleType, tmp_path: Path
) -> None:
    dest = open_destination(example, tmp_path / "not-mounted" / "repo.db")

    with pytest.raises(DestinationUnavailable, match="not-mounted"):
        dest.put("a", b"x")
    with pytest.raises(DestinationUnavailable):
        dest.test_connection()
    assert not (tmp_path / "not-mounted").exists()


def test_a_directory_in_place_of_the_file_is_unavailable(
    example: ModuleType, tmp_path: Path
) -> None:
    (tmp_path / "repo.db").mkdir()

    with pytest.raises(DestinationUnavailable, match="is a directory"):
        open_destination(example, tmp_path / "repo.db").get("a")


def test_a_file_that_is_not_a_database_is_reported(example: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "repo.db").write_bytes(b"this is not an SQLite database, just text" * 100)

    with pytest.raises(DestinationError, match="not an SQLite database"):
        open_destination(example, tmp_path / "repo.db").put("a", b"x")


def test_full_database_refuses_the_write_and_stores_nothing(
    example: ModuleType, tmp_path: Path
) -> None:
    dest = open_destination(example, tmp_path / "repo.db", max_size_mb=1)
    try:
        with pytest.raises(DestinationFull, match="full"):
            dest.put("too/big", b"\xff" * (2 << 20))
        with pytest.raises(ObjectNotFound):
            dest.stat("too/big")
        dest.put("still/fits", b"small")  # a failed put leaves the destination usable
        assert dest.get("still/fits") == b"small"
    finally:
        dest.close()


def test_read_only_database_error_becomes_destination_read_only(
    example: ModuleType, destination: Any, tmp_path: Path
) -> None:
    destination.put("a", b"x")
    # A real SQLITE_READONLY, as a database on a read-only mount gives.
    reader = sqlite3.connect(f"file:{tmp_path / 'repo.db'}?mode=ro", uri=True)
    try:
        with pytest.raises(sqlite3.Error) as caught:
            reader.execute("DELETE FROM objects")
    finally:
        reader.close()

    error = example.translate_error(caught.value, where="destination 'x'",
                                    path=tmp_path / "repo.db")
    assert isinstance(error, DestinationReadOnly)
    assert "read-only" in str(error)


def test_objects_survive_closing_and_reopening(example: ModuleType, tmp_path: Path) -> None:
    first = open_destination(example, tmp_path / "repo.db", journal="delete")
    first.put("kept", b"durable")
    first.close()

    second = open_destination(example, tmp_path / "repo.db", journal="delete")
    try:
        assert second.get("kept") == b"durable"
    finally:
        second.close()


def test_two_writers_on_one_file_see_each_others_objects(
    example: ModuleType, destination: Any, tmp_path: Path
) -> None:
    other = open_destination(example, tmp_path / "repo.db")
    try:
        destination.put("from/one", b"1")
        other.put("from/two", b"2")
        assert destination.get("from/two") == b"2"
        assert other.get("from/one") == b"1"
    finally:
        other.close()


def test_test_connection_creates_the_file_and_leaves_no_probe(
    destination: Any, tmp_path: Path
) -> None:
    destination.test_connection()

    assert (tmp_path / "repo.db").is_file()
    assert list(destination.list()) == []


def test_config_declares_its_settings_for_the_ui(example: ModuleType) -> None:
    infos = {info.name: info for info in settings_of(example.SqliteFileConfig)}

    assert infos["path"].type_name == "Path"
    assert infos["path"].label and infos["path"].help
    assert infos["journal"].choices == ("wal", "delete")
    assert infos["max_size_mb"].default == 0
    with pytest.raises(ValueError):
        example.SqliteFileConfig(path=Path("x.db"), journal="memory")
    with pytest.raises(ValueError):
        example.SqliteFileConfig(path=Path("x.db"), max_size_mb=-1)


class TestSqliteFileDestinationContract(DestinationContract):
    """The behaviour every destination owes the repository, on one SQLite file."""
