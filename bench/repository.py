"""Benchmark `sbr repo` against restic and borg on the same seeded data, in one run.

    python bench/repository.py                       # 2 GiB image, 1 GiB tree, all tools
    python bench/repository.py --image-size 256M --tree-size 64M --tree-files 2000 \\
        --tools restic,borg --output /tmp/perf-test.md  # a quick check of the harness
    python bench/repository.py --big                 # also sbr on a 20 GiB image

For each dataset (a disk image of mixed content, a tree of many files) and each tool: full
backup, a seeded 2 % change, incremental backup, restore (checked against the source),
verify. Each step is a child process measured with wait4 (wall, CPU, peak RSS); the
repository's size is taken after each step. The results and the issue's targets (ratios
within the run) go to the terminal and to a marked section of --output.

Generated data is cached in --workdir by seed and size; repositories, working copies and
restores there are recreated on every run.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import repo_report as report
import repo_tree
import repo_workload as workload
from repo_tools import (
    Borg,
    Command,
    Job,
    Measured,
    Restic,
    Sbr,
    StepSkipped,
    Tool,
    compile_sbr,
    run_measured,
    sbr_command,
)

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("restic", "borg", "sbr")
STEPS = ("full", "incr", "restore", "verify")
DATASETS = ("image", "tree")


def log(message: str) -> None:
    """Progress on stderr, so stdout keeps only the tables."""
    print(message, file=sys.stderr, flush=True)


def _csv(choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [s.strip() for s in text.split(",") if s.strip()]
        bad = [s for s in items if s not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {','.join(choices)}")
        return [c for c in choices if c in items]  # keep the canonical order

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=1, help="seed of all generated data (1)")
    p.add_argument("--workdir", type=Path, default=Path("/var/tmp/sbr-bench"),  # noqa: S108
                   help="data cache, repositories, restores (/var/tmp/sbr-bench)")
    p.add_argument("--image-size", type=workload.parse_size, default=2 * workload.GiB,
                   help="disk image size, e.g. 256M, 2G (2G)")
    p.add_argument("--tree-size", type=workload.parse_size, default=1 * workload.GiB,
                   help="total size of the file tree (1G)")
    p.add_argument("--tree-files", type=int, default=20_000, help="files in the tree (20000)")
    p.add_argument("--tools", type=_csv(TOOLS), default=list(TOOLS),
                   help="comma-separated subset of restic,borg,sbr")
    p.add_argument("--steps", type=_csv(STEPS), default=list(STEPS),
                   help="comma-separated subset of full,incr,restore,verify")
    p.add_argument("--datasets", type=_csv(DATASETS), default=list(DATASETS),
                   help="comma-separated subset of image,tree")
    p.add_argument("--big", action="store_true",
                   help="also back up and restore a --big-size image with sbr only (peak RSS)")
    p.add_argument("--big-size", type=workload.parse_size, default=20 * workload.GiB,
                   help="size of the --big image (20G)")
    p.add_argument("--output", default=str(ROOT / "docs" / "performance.md"),
                   help="markdown file whose benchmark section is replaced; '-' writes none")
    p.add_argument("--sbr", help="command that runs sbr (default: the sbr beside this Python)")
    p.add_argument("--sbr-image-chunk-size", type=workload.parse_size,
                   help="passed to `sbr repo init --image-chunk-size`")
    p.add_argument("--sbr-compression-level", type=int,
                   help="passed to `sbr repo init --compression-level`")
    p.add_argument("--borg-encryption", default="repokey-blake2", help="(repokey-blake2)")
    p.add_argument("--borg-compression", default="zstd,3", help="(zstd,3)")
    p.add_argument("--keep-repos", action="store_true", help="keep repositories after the run")
    p.add_argument("--restore-runs", type=int, default=3,
                   help="run each restore this many times and report the median (3)")
    args = p.parse_args(argv)
    args.workdir = args.workdir.resolve()
    return args


def repo_size(path: Path) -> int:
    """Apparent bytes of the files in a repository directory."""
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:  # a lock file removed while we walk
                pass
    return total


def warm_up(path: Path) -> None:
    """Read the data once (cat > /dev/null), so every tool starts with it in the page cache."""
    files = [path] if path.is_file() else [
        Path(d, f) for d, _, names in os.walk(path) for f in names]
    for f in files:
        with f.open("rb") as src:
            while src.read(8 * workload.MiB):
                pass


@dataclass
class Dataset:
    """One dataset as the runner sees it: how to prepare, change and check it."""

    key: str  # row dataset: "image", "tree", "image-big"
    job: Job
    steps: list[str]
    prepare: Callable[[], None]  # make a fresh working copy
    change: Callable[[], None]  # apply the 2 % change to the working copy
    check: Callable[[Path, bool], str | None]  # restored path, changed? -> None or a mismatch


class Runner:
    """Runs every step of every tool on a dataset and collects the rows."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rows: list[report.Row] = []

    def run(self, tool: Tool, data: Dataset) -> None:
        """All steps of one tool on one dataset, each timed, the repository measured after."""
        wd = self.args.workdir
        repo = wd / "repos" / f"{tool.name}-{data.key}"
        target = wd / "restore" / f"{tool.name}-{data.key}"
        logs = wd / "logs" / f"{tool.name}-{data.key}"
        shutil.rmtree(repo, ignore_errors=True)
        repo.parent.mkdir(parents=True, exist_ok=True)
        data.prepare()
        init = run_measured(tool.init(repo), tool.env(), logs.with_name(logs.name + "-init"))
        broken = f"init failed: {init.error}" if init.error else None
        full_size: int | None = None
        changed = False
        for step in data.steps:
            row = report.Row(data.key, tool.name, step, "ok")
            self.rows.append(row)
            if broken:
                row.status, row.detail = ("failed", broken) if init.error else ("skipped", broken)
                continue
            try:
                if step == "incr":
                    data.change()
                    changed = True
                if step in ("full", "incr"):
                    command = tool.backup(repo, data.job, incremental=step == "incr")
                elif step == "restore":
                    self._fresh(target, data)
                    command = tool.restore(repo, data.job, target)
                else:
                    command = tool.verify(repo)
            except StepSkipped as exc:
                row.status, row.detail = "skipped", str(exc)
                broken = f"{step} skipped"
                continue
            measured = self._measure(tool, command, row, repo,
                                     logs.with_name(f"{logs.name}-{step}"))
            if step == "restore" and row.status == "ok" and self.args.restore_runs > 1:
                measured = self._median_restore(tool, data, repo, target, row, measured,
                                                logs.with_name(f"{logs.name}-{step}"))
            if row.status != "ok":
                broken = f"{step} failed"
                continue
            if step in ("full", "incr"):
                row.own = tool.own_seconds(measured)
                try:
                    tool.backed_up(data.job, step == "incr", measured)
                except StepSkipped as exc:
                    row.status, row.detail = "failed", str(exc)
                    broken = f"{step} failed"
                    continue
                if step == "full":
                    full_size = row.repo_bytes
                elif full_size is not None and row.repo_bytes is not None:
                    row.growth = row.repo_bytes - full_size
            elif step == "restore":
                problem = data.check(tool.restored(data.job, target), changed)
                if problem:
                    row.status, row.detail = "MISMATCH", problem
                self._clear(target, data)
        if not self.args.keep_repos:
            shutil.rmtree(repo, ignore_errors=True)

    def _median_restore(self, tool: Tool, data: Dataset, repo: Path, target: Path,
                        row: report.Row, first: Measured, log_stem: Path) -> Measured:
        """Run the restore again (into fresh targets) and keep the run of median wall
        time: single restores here varied by up to 2x from run to run, for every tool."""
        runs = [first]
        for attempt in range(2, self.args.restore_runs + 1):
            self._fresh(target, data)
            runs.append(self._measure(tool, tool.restore(repo, data.job, target), row, repo,
                                      log_stem.with_name(f"{log_stem.name}-{attempt}")))
            if row.status != "ok":
                return runs[-1]
        median = sorted(runs, key=lambda m: m.wall)[len(runs) // 2]
        row.wall, row.cpu, row.peak_rss = median.wall, median.cpu, median.peak_rss
        row.runs = [m.wall for m in runs]
        return median

    def _fresh(self, target: Path, data: Dataset) -> None:
        """An empty restore target; the previous one is cleared out of the way."""
        self._clear(target, data)
        target.mkdir(parents=True)

    def _clear(self, target: Path, data: Dataset) -> None:
        if data.key == "tree":
            set_aside(target, self.args.workdir)
        else:  # one big file: deleting it did not slow the next restore, keeping it fills
            shutil.rmtree(target, ignore_errors=True)  # the disk (3 runs x 3 tools x 2 GiB)

    def _measure(self, tool: Tool, command: Command, row: report.Row, repo: Path,
                 log_stem: Path) -> Measured:
        os.sync()  # earlier writes are flushed now, not inside this step's time
        m = run_measured(command, tool.env(), log_stem)
        row.wall, row.cpu, row.peak_rss = m.wall, m.cpu, m.peak_rss
        row.repo_bytes = repo_size(repo)
        if m.error:
            row.status, row.detail = "failed", m.error
        log(f"  {tool.name:6} {row.dataset:9} {row.step:7} {m.wall:8.2f} s wall "
            f"{m.cpu:8.2f} s CPU {m.peak_rss / report.MB:7.0f} MB RSS "
            f"repo {row.repo_bytes / report.MB:9.1f} MB  {row.check}")
        return m


def set_aside(path: Path, workdir: Path) -> None:
    """Move a restore or working copy into the run's trash, emptied when the run ends.

    On a journal-less ext4 (this machine's), ext4's inode allocator skips every inode
    deleted in the last minute (six while its table block is dirty), so creating 20,000
    files right after deleting 20,000 took 6-12 s instead of 3 s. Deleting one tool's tree
    would bill the next tool's restore.
    """
    if path.exists():
        trash = workdir / "trash"
        trash.mkdir(parents=True, exist_ok=True)
        path.rename(trash / f"{path.name}-{os.urandom(4).hex()}")


SETTLE_SECONDS = 6 * 60 + 10


def empty_trash(workdir: Path) -> None:
    """Delete what the run set aside, and note when (see settle)."""
    trash = workdir / "trash"
    if trash.exists():
        shutil.rmtree(trash, ignore_errors=True)
        (workdir / "trash-emptied").write_text(f"{time.time()}\n")


def settle(workdir: Path) -> None:
    """Wait until ext4 no longer skips the inodes the last emptied trash freed, so the
    first tool of this run is not billed for the previous run's clean-up."""
    try:
        emptied = float((workdir / "trash-emptied").read_text())
    except (OSError, ValueError):
        return
    wait = emptied + SETTLE_SECONDS - time.time()
    if wait > 0:
        log(f"waiting {wait:.0f} s: the last run deleted many files, and this file system "
            "creates files slowly for minutes after that")
        time.sleep(wait)


def build_tools(args: argparse.Namespace) -> list[Tool]:
    cache = args.workdir / "cache"
    made: dict[str, Tool] = {
        "restic": Restic(cache / "restic"),
        "borg": Borg(cache / "borg", args.borg_encryption, args.borg_compression),
        "sbr": Sbr(cache / "sbr", sbr_command(args.sbr), args.sbr_image_chunk_size,
                   args.sbr_compression_level),
    }
    tools = [made[name] for name in args.tools]
    if "sbr" in args.tools and not args.sbr:
        compile_sbr()
    for tool in tools:  # no state carried over from an earlier run
        shutil.rmtree(tool.cache, ignore_errors=True)
        tool.cache.mkdir(parents=True)
    return tools


def image_dataset(args: argparse.Namespace, img: workload.ImageData) -> Dataset:
    """The image: every tool backs up the same path, changed in place before the incremental."""
    work = args.workdir / "run" / "image"
    job = Job("image", "image", cwd=work, rel="disk.img", extents=img.extents)

    def prepare() -> None:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        shutil.copyfile(img.v1, job.path)
        os.sync()
        warm_up(job.path)

    def change() -> None:
        if img.v2 is None or img.extents is None:
            raise StepSkipped("the image was generated without its change")
        workload.apply_change(job.path, img.v2, img.extents)

    def check(restored: Path, changed: bool) -> str | None:
        if not restored.is_file():
            return f"no restored file at {restored}"
        want = img.sha_v2 if changed else img.sha_v1
        return None if workload.sha256_file(restored) == want else "sha256 differs"

    return Dataset("image", job, args.steps, prepare, change, check)


def tree_dataset(args: argparse.Namespace, tree: repo_tree.TreeData,
                 changes: dict[str, int]) -> Dataset:
    """The tree: a fresh working copy per tool, changed the same seeded way for each."""
    work = args.workdir / "run" / "tree-parent"
    job = Job("tree", "tree", cwd=work, rel="tree")

    def prepare() -> None:
        set_aside(work, args.workdir)
        work.mkdir(parents=True)
        shutil.copytree(tree.root, job.path, symlinks=True)
        os.sync()
        warm_up(job.path)

    def change() -> None:
        changes.update(repo_tree.change_tree(job.path, args.seed))

    def check(restored: Path, changed: bool) -> str | None:
        if not restored.is_dir():
            return f"no restored tree at {restored}"
        return repo_tree.compare_trees(job.path, restored)

    return Dataset("tree", job, args.steps, prepare, change, check)


def big_dataset(args: argparse.Namespace, img: workload.ImageData) -> Dataset:
    """The big image: sbr only, full backup and restore, straight from the data cache."""
    job = Job("image", "big", cwd=img.v1.parent, rel=img.v1.name)

    def check(restored: Path, changed: bool) -> str | None:
        if not restored.is_file():
            return f"no restored file at {restored}"
        return None if workload.sha256_file(restored) == img.sha_v1 else "sha256 differs"

    steps = [s for s in args.steps if s in ("full", "restore")]
    return Dataset("image-big", job, steps, lambda: warm_up(job.path), lambda: None, check)


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f} %" if whole else "-"


def intro(args: argparse.Namespace, tools: list[Tool], img: workload.ImageData | None,
          tree: repo_tree.TreeData | None, changes: dict[str, int],
          big: workload.ImageData | None) -> list[str]:
    """The lines above the tables: when, where, how, on what."""
    script = os.path.relpath(Path(__file__).resolve(), Path.cwd())
    lines = [
        f"Run {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} with",
        "", "```sh", f"python {shlex.join([script, *sys.argv[1:]])}", "```", "",
        f"- **Machine:** {report.machine()}.",
        "- **Tools:**",
    ]
    lines += [f"  - {t.name}: {t.version()}; {t.settings}." for t in tools]
    if img:
        c = img.composition
        blocks = img.changed_bytes // workload.BLOCK
        lines.append(
            f"- **Image:** {workload.human(img.size)}, seed {args.seed}, 1 MiB regions in "
            f"seeded order: zeros {_share(c['zeros'], img.size)}, text "
            f"{_share(c['text'], img.size)} (zstd -3 ratio {img.text_ratio:.1f}), random "
            f"{_share(c['random'], img.size)}, copies of earlier 64 KiB blocks "
            f"{_share(c['repeated'], img.size)}. The change overwrites {blocks} seeded 64 KiB "
            f"blocks ({_share(img.changed_bytes, img.size)}, "
            f"{workload.human(img.changed_bytes)} in {img.changed_extents} extents; half "
            "text, half random) in place, in the same file at the same path for every tool; "
            "sbr is told the changed extents, restic and borg find the change themselves.")
    if tree:
        k = tree.kinds
        lines.append(
            f"- **Tree:** {tree.files} files in {tree.dirs} nested directories, "
            f"{workload.human(tree.total)}, seed {args.seed}: median file "
            f"{workload.human(tree.median)}, largest {workload.human(tree.largest)}; "
            f"{k['text']} text, {k['random']} random, {k['duplicate']} duplicates of other files.")
        if changes:
            lines.append(
                f"  The change modifies {changes['modified']} files (in place, appended or "
                f"rewritten), removes {changes['removed']} and adds {changes['added']} "
                f"({workload.human(changes['written'])} written).")
    if big:
        lines.append(f"- **Big image:** {workload.human(big.size)}, the same mix, seed "
                     f"{args.seed}; sbr only, full backup and restore, for peak memory.")
    if (img and img.size != 2 * workload.GiB) or (
            tree and (args.tree_size != workload.GiB or args.tree_files != 20_000)):
        lines.append("- **Note:** smaller data than the issue's 2 GiB image and 1 GiB / 20,000 "
                     "file tree; the targets below are indicative only.")
    lines += [
        "- **Method:** each step is one child process; wall is the elapsed time, CPU the "
        "user + system time of the process and its children, peak RSS their largest resident "
        "set (both from `wait4`). Repository size is the apparent size of the repository's "
        "files after the step; growth is the incremental's increase. MB = 10^6 bytes. The "
        "page cache is warm: nothing is dropped, the data is read once before each tool's "
        "first step, and `sync` runs before every step. Each restore is compared with the "
        "source (sha256 of the image; every file's content in the tree): *check* says ok or "
        "MISMATCH. Each restore runs --restore-runs times (into fresh targets); the row shows "
        "the run of median wall time. restic's and borg's incrementals read the whole "
        "changed image. sbr runs "
        "from compiled bytecode, as installed from a wheel. Tree working copies and restores "
        "are set aside and deleted only when the run ends: on this journal-less ext4, files "
        "created within minutes of deleting thousands of others are created several times "
        "slower, which would bill one tool's clean-up to the next tool's restore.",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    """Generate or reuse the data, run every tool, print and write the results."""
    args = parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(args.workdir / "logs", ignore_errors=True)  # only this run's logs remain
    empty_trash(args.workdir)  # left by an interrupted run
    settle(args.workdir)
    tools = build_tools(args)
    img = tree = big = None
    if "image" in args.datasets:
        img = workload.image(args.workdir, args.image_size, args.seed, log=log)
    if "tree" in args.datasets:
        tree = repo_tree.tree(args.workdir, args.tree_size, args.tree_files, args.seed, log=log)
    if args.big and "sbr" in args.tools:
        big = workload.image(args.workdir, args.big_size, args.seed, with_change=False, log=log)
    runner = Runner(args)
    changes: dict[str, int] = {}
    datasets = []
    if img:
        datasets.append(image_dataset(args, img))
    if tree:
        datasets.append(tree_dataset(args, tree, changes))
    for data in datasets:
        for tool in tools:
            log(f"{tool.name} on the {data.key}:")
            runner.run(tool, data)
    if big:
        empty_trash(args.workdir)  # room for the 20 GiB restore; it creates one file only
        log("sbr on the big image:")
        runner.run(next(t for t in tools if t.name == "sbr"), big_dataset(args, big))
    shutil.rmtree(args.workdir / "run", ignore_errors=True)
    empty_trash(args.workdir)

    sections = []
    if img:
        sections.append((f"Disk image, {workload.human(img.size)}",
                         [r for r in runner.rows if r.dataset == "image"]))
    if tree:
        sections.append((f"File tree, {tree.files} files, {workload.human(tree.total)}",
                         [r for r in runner.rows if r.dataset == "tree"]))
    if big:
        sections.append((f"Big disk image, {workload.human(big.size)} (sbr only)",
                         [r for r in runner.rows if r.dataset == "image-big"]))
    found = report.targets(runner.rows, workload.human(img.size) if img else "image",
                           workload.human(big.size) if big else None)
    report.print_tables(sections, found)
    if args.output != "-":
        section = report.markdown(intro(args, tools, img, tree, changes, big), sections, found)
        report.write_section(Path(args.output), section)
        log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
