"""The hook contract: every hook is prefixed, documented in docs/hooks.md with its signature,
and exercised by a test; every provider method says what it does.

When a test here fails after a change to sbr_core/hookspecs.py, run
``python scripts/gen_hooks_doc.py`` and write a test that uses the new hook.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

from sbr_core import hookspecs, providers, steps
from sbr_core.hookspecs import PROJECT

ROOT = Path(__file__).resolve().parents[2]
HOOKS_DOC = ROOT / "docs" / "hooks.md"
GENERATOR = ROOT / "scripts" / "gen_hooks_doc.py"


def _hookspecs() -> list[tuple[str, object]]:
    return [(name, fn) for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
            if hasattr(fn, f"{PROJECT}_spec")]


HOOKS = _hookspecs()
HOOK_IDS = [name for name, _ in HOOKS]


def _signature_line(name: str, fn: object) -> str:
    """The signature as written: annotations are strings under ``from __future__``."""
    text = str(inspect.signature(fn))  # type: ignore[arg-type]
    return name + re.sub(r"'([^']*)'", r"\1", text)


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_hooks_doc", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # attrs resolves the module of its classes by name
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


@pytest.fixture(scope="module")
def hooks_doc() -> str:
    return HOOKS_DOC.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def other_tests_text() -> str:
    this = Path(__file__).resolve()
    return "\n".join(path.read_text(encoding="utf-8")
                     for path in sorted((ROOT / "tests").rglob("*.py"))
                     if path.resolve() != this)


def test_hookspecs_are_found() -> None:
    # Guards the tests below against passing vacuously.
    assert {"sbr_register_destinations", "sbr_run_step", "sbr_task_finished"} <= set(HOOK_IDS)


@pytest.mark.parametrize(("name", "fn"), HOOKS, ids=HOOK_IDS)
def test_hook_is_prefixed_sbr(name: str, fn: object) -> None:
    assert name.startswith("sbr_")


@pytest.mark.parametrize(("name", "fn"), HOOKS, ids=HOOK_IDS)
def test_hook_docstring_says_who_calls_it(name: str, fn: object) -> None:
    doc = inspect.getdoc(fn) or ""
    assert "Called by:" in doc, f"{name}: the docstring must say 'Called by:'"


@pytest.mark.parametrize(("name", "fn"), HOOKS, ids=HOOK_IDS)
def test_hook_is_documented_with_its_exact_signature(
    name: str, fn: object, hooks_doc: str
) -> None:
    assert f"\n### {name}\n" in hooks_doc, f"docs/hooks.md has no section for {name}"
    lines = hooks_doc.splitlines()
    assert _signature_line(name, fn) in lines, f"docs/hooks.md: signature of {name} differs"


@pytest.mark.parametrize(("name", "fn"), HOOKS, ids=HOOK_IDS)
def test_hook_is_named_in_a_test(name: str, fn: object, other_tests_text: str) -> None:
    assert re.search(rf"\b{name}\b", other_tests_text), f"no test under tests/ uses {name}"


def test_every_sbr_function_in_hookspecs_is_a_hookspec() -> None:
    # A forgotten @hookspec would leave a hook pluggy does not know, and these tests blind.
    functions = [name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction)
                 if name.startswith("sbr_")]
    assert functions == sorted(HOOK_IDS)


def test_hooks_doc_is_what_the_generator_writes(hooks_doc: str) -> None:
    assert hooks_doc == _load_generator().render(), (
        "docs/hooks.md is out of date: run python scripts/gen_hooks_doc.py")


def test_generator_puts_each_hook_under_its_group() -> None:
    generator = _load_generator()
    groups = {g.name: [h.name for h in g.hooks]
              for g in generator.read_groups(Path(hookspecs.__file__).read_text("utf-8"))}

    assert list(groups) == ["registration", "surface", "steps", "events"]
    assert sorted(h for hooks in groups.values() for h in hooks) == sorted(HOOK_IDS)
    assert "sbr_register_destinations" in groups["registration"]
    assert groups["steps"] == ["sbr_run_step"]


# --- provider kinds ----------------------------------------------------------------------


def _provider_abcs() -> list[type]:
    """The provider base classes of sbr_core.providers, and the workflow step base."""
    found = {cls for _, module in inspect.getmembers(providers, inspect.ismodule)
             for _, cls in inspect.getmembers(module, inspect.isclass)
             if issubclass(cls, providers.Provider) and cls.__module__.startswith(
                 "sbr_core.providers")}
    return sorted(found | {steps.WorkflowStep}, key=lambda c: c.__qualname__)


def _public_methods(cls: type) -> list[tuple[str, object]]:
    out = []
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, (classmethod, staticmethod)):
            value = value.__func__
        if inspect.isfunction(value) or isinstance(value, property):
            out.append((name, value))
    return out


METHODS = [(cls, name, fn) for cls in _provider_abcs() for name, fn in _public_methods(cls)]


def test_provider_abcs_are_found() -> None:
    names = {cls.__name__ for cls, _, _ in METHODS}
    assert {"Provider", "Destination", "Hypervisor", "ItemProvider", "WorkflowStep"} <= names


@pytest.mark.parametrize(("cls", "name", "fn"), METHODS,
                         ids=[f"{cls.__name__}.{name}" for cls, name, _ in METHODS])
def test_every_provider_abc_method_has_a_docstring(cls: type, name: str, fn: object) -> None:
    assert (fn.__doc__ or "").strip(), f"{cls.__name__}.{name} has no docstring"
