"""Installing plugin distributions for real in tests, and asking a fresh ``sbr`` about them.

Builds happen offline (``--no-index --no-build-isolation``) into private ``--target``
directories; the CLI runs in a new interpreter whose ``PYTHONPATH`` adds those directories, as
an admin's installation would look to it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.services import service_unavailable


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
    """``sbr plugins --json`` as a dict by plugin name; the command must succeed."""
    done = run_sbr(["plugins", "--json"], pythonpath=pythonpath, home=home)
    assert done.returncode == 0, done.stderr
    return {record["name"]: record for record in json.loads(done.stdout)}
