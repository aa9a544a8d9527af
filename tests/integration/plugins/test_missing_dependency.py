"""A plugin whose dependency is missing, or whose module fails at import, is listed as
unavailable with the reason, and never breaks ``sbr plugins``.

Nothing is faked: the test writes three tiny distributions — a library ``sbrtestdep``, a
plugin ``sbr-test-needs-dep`` that imports it, and a plugin ``sbr-test-broken-import`` that
raises at import — pip-installs them into private directories, and asks a fresh
``sbr plugins --json`` process what it sees, before and after "uninstalling" the library the
way pip does (its package directory and its .dist-info go away).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.services import service_unavailable

NEEDS_DEP = "needs-dep"
BROKEN = "broken-import"

_PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "{project}"
version = "0.1.0"
dependencies = {dependencies}

[tool.setuptools]
packages = ["{package}"]
{entry_points}"""

_NEEDS_DEP_INIT = '''\
"""Test plugin whose provider needs the library sbrtestdep."""

from sbr_core import hookimpl


@hookimpl
def sbr_register_destinations():
    from sbr_test_needs_dep.destination import NeedsDepDestination

    return [NeedsDepDestination]
'''

_NEEDS_DEP_DESTINATION = '''\
"""A destination module that imports its platform library at top level, as many do."""

import attrs
import sbrtestdep

from sbr_core.providers.destination import Destination
from sbr_core.settings import setting


@attrs.frozen
class NeedsDepConfig:
    greeting: str = setting(label="Greeting", default=sbrtestdep.GREETING)


class NeedsDepDestination(Destination):
    name = "needs-dep"
    label = "Needs sbrtestdep"
    Config = NeedsDepConfig

    def put(self, key, data):
        raise NotImplementedError

    def get(self, key, offset=0, length=None):
        raise NotImplementedError

    def list(self, prefix=""):
        return iter(())

    def delete(self, key):
        raise NotImplementedError

    def stat(self, key):
        raise NotImplementedError
'''

_BROKEN_INIT = '''\
"""Test plugin whose entry module fails at import."""

raise RuntimeError("sbr-test-broken-import fails at import on purpose")
'''


# --- writing, installing and uninstalling distributions --------------------------------------


def write_distribution(root: Path, project: str, package: str, modules: dict[str, str], *,
                       dependencies: tuple[str, ...] = (), entry_point: str = "") -> Path:
    """A source tree for one setuptools distribution; ``entry_point`` names its sbr plugin."""
    entry_points = (f'\n[project.entry-points.sbr]\n{entry_point} = "{package}"\n'
                    if entry_point else "")
    tree = root / project
    (tree / package).mkdir(parents=True)
    (tree / "pyproject.toml").write_text(_PYPROJECT.format(
        project=project, package=package, dependencies=json.dumps(list(dependencies)),
        entry_points=entry_points))
    for module, text in modules.items():
        (tree / package / module).write_text(text)
    return tree


def require_build_tools() -> None:
    """pip --no-build-isolation builds with what is installed: setuptools, and before
    setuptools 70.1 also the ``wheel`` package."""
    if importlib.util.find_spec("setuptools") is None:
        service_unavailable("setuptools is not installed, so pip cannot build a plugin")
    has_bdist_wheel = (importlib.util.find_spec("wheel") is not None
                       or importlib.util.find_spec("setuptools.command.bdist_wheel") is not None)
    if not has_bdist_wheel:
        service_unavailable("pip cannot build wheels offline: install 'wheel' or "
                            "setuptools>=70.1")


def pip_install(sources: list[Path], target: Path) -> None:
    """Install source trees into ``target`` offline, as ``pip install --target`` does."""
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
               "--no-index", "--disable-pip-version-check", "--quiet",
               "--target", str(target), *map(str, sources)]
    env = {**os.environ, "PIP_ROOT_USER_ACTION": "ignore", "PIP_NO_INPUT": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300,
                          check=False)
    if done.returncode != 0:
        pytest.fail(f"pip install failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def uninstall(site: Path, project: str, package: str) -> None:
    """Remove a distribution from a --target directory as pip uninstall would: the package
    and its metadata, so neither the import nor importlib.metadata finds it any more."""
    metadata_dirs = list(site.glob(f"{project}-*.dist-info"))
    assert metadata_dirs, f"{project} is not installed in {site}"
    for path in [site / package, *metadata_dirs]:
        shutil.rmtree(path)


@attrs.frozen
class Sites:
    """Where the library and the plugins were installed, separately."""

    dependency: Path
    plugins: Path


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Sites:
    """The three distributions built and installed once for this module."""
    require_build_tools()
    root = tmp_path_factory.mktemp("plugin-deps")
    src = root / "src"
    library = write_distribution(src, "sbrtestdep", "sbrtestdep",
                                 {"__init__.py": 'GREETING = "hello"\n'})
    needs_dep = write_distribution(
        src, "sbr-test-needs-dep", "sbr_test_needs_dep",
        {"__init__.py": _NEEDS_DEP_INIT, "destination.py": _NEEDS_DEP_DESTINATION},
        dependencies=("sbr", "sbrtestdep"), entry_point=NEEDS_DEP)
    broken = write_distribution(src, "sbr-test-broken-import", "sbr_test_broken_import",
                                {"__init__.py": _BROKEN_INIT}, dependencies=("sbr",),
                                entry_point=BROKEN)
    result = Sites(dependency=root / "dep-site", plugins=root / "plugin-site")
    pip_install([library], result.dependency)
    pip_install([needs_dep, broken], result.plugins)
    return result


# --- asking the CLI --------------------------------------------------------------------------


def run_sbr(
    args: list[str], *, pythonpath: list[Path], home: Path
) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a fresh interpreter that also sees the given install directories."""
    env = {**os.environ, "SBR_DATA_DIR": str(home / "sbr-data"),
           "SBR_DATABASE_URL": f"sqlite:///{home / 'sbr-data' / 'sbr.db'}"}
    env.pop("SBR_DISABLE_PLUGINS", None)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(p) for p in pythonpath] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    # cwd=home: nothing from the repository's working tree leaks onto the path.
    return subprocess.run([sys.executable, "-c", "from sbr_core.cli import main; main()", *args],
                          capture_output=True, text=True, env=env, cwd=home, timeout=120,
                          check=False)


def plugins_json(*, pythonpath: list[Path], home: Path) -> dict[str, dict[str, Any]]:
    """``sbr plugins --json`` as a dict by plugin name; the command must exit 0."""
    done = run_sbr(["plugins", "--json"], pythonpath=pythonpath, home=home)
    assert done.returncode == 0, done.stderr
    return {record["name"]: record for record in json.loads(done.stdout)}


# --- the behaviour ---------------------------------------------------------------------------


def test_plugin_is_available_while_its_dependency_is_installed(
    sites: Sites, tmp_path: Path
) -> None:
    records = plugins_json(pythonpath=[sites.plugins, sites.dependency], home=tmp_path)

    plugin = records[NEEDS_DEP]
    assert plugin["status"] == "available", plugin["reason"]
    assert plugin["kinds"] == ["destination"]
    assert [(p["kind"], p["name"]) for p in plugin["providers"]] == [("destination", "needs-dep")]


def test_uninstalling_a_dependency_turns_only_its_plugin_unavailable(
    sites: Sites, tmp_path: Path
) -> None:
    # Uninstall from a copy, so the module's shared install stays whole for other tests.
    dependency = shutil.copytree(sites.dependency, tmp_path / "dep-site")
    path = [sites.plugins, dependency]
    assert plugins_json(pythonpath=path, home=tmp_path)[NEEDS_DEP]["status"] == "available"

    uninstall(dependency, "sbrtestdep", "sbrtestdep")
    records = plugins_json(pythonpath=path, home=tmp_path)

    plugin = records[NEEDS_DEP]
    assert plugin["status"] == "unavailable"
    assert "sbrtestdep" in plugin["reason"]
    assert plugin["providers"] == []
    assert records["filesystem"]["status"] == "available"
    assert records["filesystem"]["providers"]


def test_plugin_failing_at_import_is_listed_unavailable_with_the_reason(
    sites: Sites, tmp_path: Path
) -> None:
    records = plugins_json(pythonpath=[sites.plugins, sites.dependency], home=tmp_path)

    broken = records[BROKEN]
    assert broken["status"] == "unavailable"
    assert "fails at import on purpose" in broken["reason"]
    assert broken["version"] == "0.1.0"
    assert broken["providers"] == []
    # The other plugins of the same install directory and the bundled ones are unharmed.
    assert records[NEEDS_DEP]["status"] == "available"
    assert records["filesystem"]["status"] == "available"


def test_table_listing_survives_broken_plugins(sites: Sites, tmp_path: Path) -> None:
    done = run_sbr(["plugins"], pythonpath=[sites.plugins], home=tmp_path)

    assert done.returncode == 0, done.stderr
    assert BROKEN in done.stdout and NEEDS_DEP in done.stdout
    assert "unavailable" in done.stdout
    assert "filesystem" in done.stdout
