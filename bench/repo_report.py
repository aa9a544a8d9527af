"""Results of bench/repository.py: rows, the issue's targets, the terminal and markdown tables."""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

START = "<!-- bench:repository:start -->"
END = "<!-- bench:repository:end -->"
MB = 1_000_000
RSS_LIMIT = 150 * MB
COLUMNS = ("tool", "step", "wall s", "CPU s", "peak RSS MB", "repo MB", "growth MB", "check")


@dataclass
class Row:
    """One measured step of one tool on one dataset."""

    dataset: str  # "image", "tree", "image-big"
    tool: str
    step: str  # "full", "incr", "restore", "verify"
    status: str  # "ok", "MISMATCH", "failed", "skipped"
    detail: str = ""  # why it failed or was skipped, what mismatched
    wall: float | None = None
    cpu: float | None = None
    peak_rss: int | None = None
    repo_bytes: int | None = None
    growth: int | None = None  # repository growth of an incremental step
    own: float | None = None  # sbr: the backup's own time (its --json "seconds")
    runs: list[float] | None = None  # every run's wall time when the step was repeated

    @property
    def check(self) -> str:
        """The check column: ok, MISMATCH: …, failed: …, skipped: …"""
        return f"{self.status}: {self.detail}" if self.detail else self.status


def _num(value: float | None, scale: float = 1.0) -> str:
    """Seconds with 2 decimals below 10, else 1; MB (scale=MB) with 1 decimal."""
    if value is None:
        return "-"
    v = value / scale
    return f"{v:.2f}" if scale == 1.0 and abs(v) < 10 else f"{v:.1f}"


def cells(row: Row) -> list[str]:
    """A row's table cells, in COLUMNS order."""
    check = row.check
    if row.runs:
        check += f" (median of {', '.join(_num(w) for w in sorted(row.runs))} s)"
    return [row.tool, row.step, _num(row.wall), _num(row.cpu), _num(row.peak_rss, MB),
            _num(row.repo_bytes, MB), _num(row.growth, MB), check]


@dataclass(frozen=True)
class Target:
    """One of the issue's targets, as measured in this run."""

    name: str
    measured: str
    result: str  # "PASS", "FAIL", "n/a"


class _Rows:
    def __init__(self, rows: list[Row]) -> None:
        self._by = {(r.dataset, r.tool, r.step): r for r in rows}

    def get(self, dataset: str, tool: str, step: str) -> Row | None:
        return self._by.get((dataset, tool, step))

    def why_missing(self, *keys: tuple[str, str, str]) -> str | None:
        """None when every row ran and checked ok, else a short reason."""
        for key in keys:
            row = self._by.get(key)
            if row is None:
                return f"{key[1]} {key[0]} {key[2]} not run"
            if row.status != "ok":
                return f"{key[1]} {key[0]} {key[2]}: {row.check}"
        return None


def _ratio_target(rows: _Rows, name: str, num: tuple[str, str, str], den: tuple[str, str, str],
                  attr: str, passes, unit: str = "s") -> Target:
    missing = rows.why_missing(num, den)
    if missing:
        # A wrong restore is a failure of sbr, not a missing measurement.
        mismatch = any((r := rows.get(*k)) and r.status == "MISMATCH" and k[1] == "sbr"
                       for k in (num, den))
        return Target(name, missing, "FAIL" if mismatch else "n/a")
    a, b = getattr(rows.get(*num), attr), getattr(rows.get(*den), attr)
    scale = MB if unit == "MB" else 1
    ratio = a / b if b else float("inf")
    text = f"{num[1]} {_num(a, scale)} {unit} / {den[1]} {_num(b, scale)} {unit} = {ratio:.2f}"
    return Target(name, text, "PASS" if passes(ratio) else "FAIL")


def targets(rows_list: list[Row], image_label: str, big_label: str | None) -> list[Target]:
    """The issue's targets, computed from this run's rows."""
    rows = _Rows(rows_list)
    img, tree = "image", "tree"
    out = [
        _ratio_target(rows, f"full image backup ≥ 2x faster than borg ({image_label})",
                      (img, "borg", "full"), (img, "sbr", "full"), "wall", lambda r: r >= 2),
        _ratio_target(rows, "incremental with changed extents < 10 % of the full's time",
                      (img, "sbr", "incr"), (img, "sbr", "full"), "wall", lambda r: r < 0.10),
        _ratio_target(rows, "the same, sbr's own time: from the opened repository to the "
                      "commit (--json `seconds`), without the command's start-up",
                      (img, "sbr", "incr"), (img, "sbr", "full"), "own", lambda r: r < 0.10),
        _ratio_target(rows, "repository growth for the 2 % change ≤ ½ of restic's",
                      (img, "sbr", "incr"), (img, "restic", "incr"), "growth",
                      lambda r: r <= 0.5, unit="MB"),
        _ratio_target(rows, "image restore ≥ 1.5x faster than restic",
                      (img, "restic", "restore"), (img, "sbr", "restore"), "wall",
                      lambda r: r >= 1.5),
        _ratio_target(rows, "file-tree full backup no slower than restic",
                      (tree, "sbr", "full"), (tree, "restic", "full"), "wall",
                      lambda r: r <= 1.0),
        _ratio_target(rows, "file-tree incremental backup no slower than restic",
                      (tree, "sbr", "incr"), (tree, "restic", "incr"), "wall",
                      lambda r: r <= 1.0),
        _ratio_target(rows, "file-tree restore no slower than restic",
                      (tree, "sbr", "restore"), (tree, "restic", "restore"), "wall",
                      lambda r: r <= 1.0),
        _rss_target(rows_list, img, f"peak RSS < 150 MB on every {image_label} image step"),
    ]
    if big_label:
        out.append(_rss_target(rows_list, "image-big",
                               f"peak RSS < 150 MB on the {big_label} image"))
    else:
        out.append(Target("peak RSS < 150 MB on a 20 GiB image", "not run (use --big)", "n/a"))
    return out


def _rss_target(rows: list[Row], dataset: str, name: str) -> Target:
    mine = [r for r in rows if r.dataset == dataset and r.tool == "sbr" and r.peak_rss]
    ran = [r for r in rows if r.dataset == dataset and r.tool == "sbr"]
    if not ran:
        return Target(name, "sbr not run", "n/a")
    if not mine or any(r.status in ("failed", "skipped") for r in ran):
        bad = next((r for r in ran if r.status in ("failed", "skipped")), ran[0])
        return Target(name, f"sbr {bad.step}: {bad.check}", "n/a")
    worst = max(mine, key=lambda r: r.peak_rss or 0)
    peak = worst.peak_rss or 0
    return Target(name, f"max {_num(peak, MB)} MB ({worst.step})",
                  "PASS" if peak < RSS_LIMIT else "FAIL")


# ------------------------------------------------------------------------------ output


def machine() -> str:
    """nproc, RAM, CPU model and kernel, in one line."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = "? GiB"
    try:
        m = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
        if m:
            ram = f"{int(m.group(1)) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return (f"{os.cpu_count()} CPUs ({model}), {ram} RAM, Linux {platform.release()}, "
            f"Python {platform.python_version()}")


def print_tables(sections: list[tuple[str, list[Row]]], target_list: list[Target]) -> None:
    """The tables on the terminal."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.width = max(console.width, 150)  # a pipe gets 80 columns, too few for the rows
    for title, rows in sections:
        table = Table(title=title)
        for col in COLUMNS:
            table.add_column(col, justify="left" if col in ("tool", "step", "check") else "right")
        for row in rows:
            style = None if row.status == "ok" else "red"
            text = cells(row)
            text[-1] = text[-1] if len(text[-1]) <= 60 else text[-1][:57] + "..."
            table.add_row(*text, style=style)
        console.print(table)
    table = Table(title="Targets (ratios within this run)")
    for col in ("target", "measured", "result"):
        table.add_column(col)
    for t in target_list:
        colour = {"PASS": "green", "FAIL": "red"}.get(t.result, "yellow")
        table.add_row(t.name, t.measured, f"[{colour}]{t.result}[/]")
    console.print(table)


def md_table(header: tuple[str, ...], rows: list[list[str]]) -> str:
    def esc(cell: str) -> str:
        return cell.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(intro: list[str], sections: list[tuple[str, list[Row]]],
             target_list: list[Target]) -> str:
    """The benchmark's section of docs/performance.md, markers included."""
    parts = [START, "## Repository benchmark: sbr repo, restic and borg on the same data", ""]
    parts += intro
    for title, rows in sections:
        parts += ["", f"### {title}", "", md_table(COLUMNS, [cells(r) for r in rows])]
    parts += ["", "### Targets", "",
              "Ratios between tools measured in this same run, so the machine cancels out.", "",
              md_table(("target", "measured", "result"),
                        [[t.name, t.measured, f"**{t.result}**"] for t in target_list]),
              "", END]
    return "\n".join(parts) + "\n"


def write_section(path: Path, section: str, *, start: str = START, end: str = END) -> None:
    """Replace a benchmark's section of path (between its markers), or append it."""
    old = path.read_text() if path.exists() else "# Performance\n"
    first, last = old.find(start), old.find(end)
    if first != -1 and last > first:
        new = old[:first] + section.rstrip("\n") + old[last + len(end):]
    else:
        new = old.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(new)
    tmp.replace(path)
