"""A plugin whose dependency is missing, or whose module fails at import, is listed as
unavailable with the reason, and never breaks ``sbr plugins``.

Nothing is faked: the test writes three tiny distributions — a library ``sbrtestdep``, a
plugin ``sbr-test-needs-dep`` that imports it, and a plugin ``sbr-test-broken-import`` that
raises at import — pip-installs them into private directories, and asks a fresh
``sbr plugins --json`` process what it sees, before and after "uninstalling" the library the
way pip does (its package directory and its .dist-info go away).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import attrs
import pytest

from tests.plugin_installs import pip_install, plugins_json, require_build_tools, run_sbr

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
