"""Generate docs/hooks.md from sbr_core/hookspecs.py, the one source of every hook.

    python scripts/gen_hooks_doc.py          # rewrite docs/hooks.md
    python scripts/gen_hooks_doc.py --check  # exit 1 when docs/hooks.md is out of date

The hook module is read as source (``ast``), not imported, so the page shows the signatures as
written, with their annotations, and the group sections follow the ``# --- group ---`` comments.
tests/unit/test_hooks_contract.py fails when the committed page differs from :func:`render`.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

import attrs

ROOT = Path(__file__).resolve().parent.parent
HOOKSPECS = ROOT / "sbr_core" / "hookspecs.py"
OUTPUT = ROOT / "docs" / "hooks.md"

_GROUP_COMMENT = re.compile(r"^# --- (?P<name>[\w ]+?) -+\s*$")
_GROUP_BULLET = re.compile(r"^\* (?P<name>[\w ]+?) — (?P<text>.*)$")
_ROLE = re.compile(r":[a-z]+:`~?(?P<target>[^`]+)`")


@attrs.frozen
class Hook:
    """One hook specification as the page shows it."""

    name: str
    signature: str
    doc: str
    firstresult: bool


@attrs.frozen
class Group:
    """A section of hookspecs.py: its name, what the module docstring says of it, its hooks."""

    name: str
    summary: str
    hooks: tuple[Hook, ...]


def signature_of(func: ast.FunctionDef) -> str:
    """``name(args) -> returns``, exactly as written in the source."""
    returns = f" -> {ast.unparse(func.returns)}" if func.returns else ""
    return f"{func.name}({ast.unparse(func.args)}){returns}"


def _hookspec_options(func: ast.FunctionDef) -> dict[str, object] | None:
    """The keyword options of a ``@hookspec`` decorator, or None when it has none."""
    for deco in func.decorator_list:
        if isinstance(deco, ast.Name) and deco.id == "hookspec":
            return {}
        if (isinstance(deco, ast.Call) and isinstance(deco.func, ast.Name)
                and deco.func.id == "hookspec"):
            return {kw.arg: ast.literal_eval(kw.value) for kw in deco.keywords if kw.arg}
    return None


def _markdown(text: str) -> str:
    """reStructuredText inline markup of the docstrings, as Markdown."""
    text = _ROLE.sub(lambda m: f"`{m.group('target')}`", text)
    return text.replace("``", "`")


def _group_summaries(module_doc: str) -> dict[str, str]:
    """The ``* name — text`` list of the module docstring, continuation lines joined."""
    summaries: dict[str, str] = {}
    current = ""
    for line in module_doc.splitlines():
        match = _GROUP_BULLET.match(line)
        if match:
            current = match.group("name")
            summaries[current] = match.group("text").strip()
        elif current and line.startswith("  ") and line.strip():
            summaries[current] += " " + line.strip()
        else:
            current = ""
    return {name: text.rstrip(";.") + "." for name, text in summaries.items()}


def read_groups(source: str) -> list[Group]:
    """The hook groups of hookspecs.py, in source order."""
    tree = ast.parse(source)
    summaries = _group_summaries(ast.get_docstring(tree) or "")
    starts = [(number, m.group("name"))
              for number, line in enumerate(source.splitlines(), start=1)
              if (m := _GROUP_COMMENT.match(line))]
    grouped: dict[str, list[Hook]] = {name: [] for _, name in starts}
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef):
            continue
        options = _hookspec_options(node)
        if options is None:
            continue
        first_line = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        group = next((name for number, name in reversed(starts) if number < first_line), None)
        if group is None:
            raise SystemExit(f"{node.name}: hookspec outside any '# --- group ---' section")
        grouped[group].append(Hook(
            name=node.name,
            signature=signature_of(node),
            doc=ast.get_docstring(node) or "",
            firstresult=bool(options.get("firstresult")),
        ))
    return [Group(name, summaries.get(name, ""), tuple(hooks))
            for name, hooks in grouped.items() if hooks]


def read_type_sources(source: str) -> list[tuple[str, tuple[str, ...]]]:
    """(module, names) of the ``if TYPE_CHECKING:`` imports that signatures refer to."""
    out = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for sub in node.body:
                if isinstance(sub, ast.ImportFrom) and sub.module:
                    out.append((sub.module, tuple(alias.name for alias in sub.names)))
                elif isinstance(sub, ast.Import):
                    out.extend((alias.name, ()) for alias in sub.names)
    return out


def _types_paragraph(source: str) -> str:
    lines = []
    for module, names in read_type_sources(source):
        listed = ", ".join(f"`{name}`" for name in names)
        lines.append(f"- {listed} from `{module}`" if names else f"- `{module}`")
    if not lines:
        return ""
    return "\nTypes named in the signatures come from:\n\n" + "\n".join(lines) + "\n"


_INTRO = """\
# Hooks

<!-- Generated by scripts/gen_hooks_doc.py from sbr_core/hookspecs.py; do not edit. -->

Everything a plugin adds to SBR, it adds through one of these hooks. A plugin is a module (or
any object) whose functions are marked with `@sbr_core.hookimpl` and named like the hook they
implement. SBR finds installed plugins through the Python entry point group `sbr`:

```toml
# pyproject.toml of your plugin distribution
[project.entry-points.sbr]
myplugin = "sbr_myplugin"
```

```python
# sbr_myplugin/__init__.py: keep imports light; import heavy libraries inside the hooks.
from sbr_core import hookimpl


@hookimpl
def sbr_register_destinations():
    from sbr_myplugin.destination import MyDestination

    return [MyDestination]
```

Rules every hook follows:

- Hook names start with `sbr_`; arguments are passed by keyword, and an implementation may
  accept any subset of them, by name.
- The core calls registration and event hooks one implementation at a time: a plugin whose hook
  raises is listed as *unavailable* with the reason (`sbr plugins`), and the others go on.
- Events are told in the past tense, after the fact; their return values are ignored.
- Cross-cutting step logic (pre/post commands, timing, audit) wraps `sbr_run_step` with
  `@hookimpl(wrapper=True)`.
"""


def render(source: str | None = None) -> str:
    """The whole of docs/hooks.md for the given hookspecs source (default: the real one)."""
    if source is None:
        source = HOOKSPECS.read_text(encoding="utf-8")
    parts = [_INTRO, _types_paragraph(source)]
    for group in read_groups(source):
        parts.append(f"\n## {group.name.capitalize()}\n")
        if group.summary:
            parts.append(f"\n{group.summary[0].upper()}{group.summary[1:]}\n")
        for hook in group.hooks:
            parts.append(f"\n### {hook.name}\n\n```python\n{hook.signature}\n```\n")
            if hook.firstresult:
                parts.append("\n*firstresult*: the first implementation to return a value "
                             "other than `None` ends the call.\n")
            parts.append(f"\n{_markdown(hook.doc)}\n")
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Write docs/hooks.md, or with ``--check`` report whether it is up to date."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if docs/hooks.md differs from the output")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT.relative_to(ROOT)} is out of date: run {Path(__file__).name}",
                  file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
