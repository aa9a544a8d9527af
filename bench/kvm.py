"""Benchmark the KVM plugin against virtnbdbackup on the same running domain, in one run.

    python bench/kvm.py                          # 2 GiB disk of mixed content
    python bench/kvm.py --disk-size 256M --output /tmp/perf-test.md   # a quick check
    python bench/kvm.py --disk-size 20G --no-peers --full-runs 1   # memory bounded? (SBR)

A private libvirtd (tests/libvirtd.py) runs a TCG domain whose qcow2 disk is the
repository bench's seeded image (zeros, text, random, repeated blocks; zeros unallocated).
Each tool takes --full-runs full backups in turns (a full's time swings from run to run;
the table shows the median); the guest then rewrites a seeded 2 % of the disk (64 KiB
blocks, through the QEMU monitor, as the guest would); each tool takes an incremental; each
restores the last point, which is compared with the live disk by ``qemu-img compare``.
Every step is one child process measured with wait4 (wall, CPU, peak RSS): for SBR,
bench/kvm_node.py, which runs the node's export and store code into a local repository.
The table and the issue's targets go to the terminal and to a marked section of --output.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

import repo_report as report  # noqa: E402
import repo_workload as workload  # noqa: E402
from repo_tools import Command, Measured, compile_sbr, debian_version, run_measured  # noqa: E402

from tests.libvirtd import PrivateLibvirtd  # noqa: E402

DEFAULT_SIZE = "2G"
MiB = 1 << 20


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Row:
    tool: str
    step: str
    result: Measured
    logical: int
    note: str = ""
    runs: tuple[float, ...] = ()  # every full's wall time, when the row is their median


def _guest_writes(dom: object, extents: Path, turn: int) -> int:
    """Rewrite the seeded 2 % through the guest's virtio device; returns the bytes."""
    import libvirt_qemu

    alias = PrivateLibvirtd.disk_alias(dom)  # type: ignore[arg-type]
    qom = f"/machine/peripheral/{alias}/virtio-backend"
    total = 0
    for index, (offset, length) in enumerate(workload.read_extents(extents)):
        pattern = 0x20 + (index + 7 * turn) % 0x50
        out = libvirt_qemu.qemuMonitorCommand(
            dom, f'qemu-io -d {qom} "write -P {pattern} {offset} {length}"',
            libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
        if "error" in out.lower():
            raise RuntimeError(out)
        total += length
    # QEMU keeps qcow2 metadata in its cache: flushed, the file outside (qemu-img compare -U)
    # shows what the guest wrote.
    out = libvirt_qemu.qemuMonitorCommand(dom, f'qemu-io -d {qom} "flush"',
                                          libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
    if "error" in out.lower():
        raise RuntimeError(out)
    return total


def _compare(image: Path, live: Path) -> str:
    done = subprocess.run(["qemu-img", "compare", "-U", str(image), str(live)],
                          capture_output=True, text=True, check=False)
    return "restore matches the disk" if done.returncode == 0 else \
        f"MISMATCH: {done.stdout.strip() or done.stderr.strip()}"


def _measure(name: str, argv: list[str], logs: Path, env: dict[str, str]) -> Measured:
    log(f"  {name}: {shlex.join(argv)[:160]}")
    result = run_measured(Command(argv), env, logs / name)
    if result.error:
        log(f"    failed: {result.error}")
    else:
        log(f"    {result.wall:.2f} s wall, {result.cpu:.2f} s CPU, "
            f"{result.peak_rss / MiB:.0f} MiB peak RSS")
    return result


def _vnb_command(daemon: PrivateLibvirtd, name: str, rundir: Path, out: Path) -> list[str]:
    return ["virtnbdbackup", "-U", daemon.uri, "-d", name, "-o", str(out),
            "-S", str(rundir / "scratch"), "-f", str(rundir / "vnb.sock"), "-n",
            # 1.9.15 asks any qemu+… URI for credentials; the private daemon takes
            # none and ignores these.
            "--user", "root", "--password", "unused"]


def _drop_checkpoints(dom: object) -> None:
    for checkpoint in reversed(dom.listAllCheckpoints(0)):  # type: ignore[attr-defined]
        checkpoint.delete(0)


def _earlier_fulls(dom: object, name: str, daemon: PrivateLibvirtd, rundir: Path,
                   runs: int, peers: bool, sbr_backup: Callable[..., Measured], logs: Path,
                   env: dict[str, str]) -> dict[str, list[Measured]]:
    """All but the last of --full-runs full backups per tool, taking turns, each into a
    fresh directory or repository that is then removed with its checkpoints: one full's
    time swings with the page cache and with QEMU's own work, so the table shows the
    median."""
    fulls: dict[str, list[Measured]] = {"virtnbdbackup": [], "sbr": []}
    for turn in range(runs - 1):
        log(f"full backup, turn {turn + 1} of {runs} ...")
        if peers:
            out = rundir / "vnb-earlier"
            fulls["virtnbdbackup"].append(_measure(
                f"vnb-full-{turn}", [*_vnb_command(daemon, name, rundir, out), "-l", "full"],
                logs, env))
            shutil.rmtree(out, ignore_errors=True)
            _drop_checkpoints(dom)
        repo, state = rundir / "sbr-earlier-repo", rundir / "sbr-earlier-state.json"
        fulls["sbr"].append(sbr_backup(f"full-{turn}", repo, state))
        shutil.rmtree(repo, ignore_errors=True)
        state.unlink(missing_ok=True)
        _drop_checkpoints(dom)
    return fulls


def _median_full(rows: list[Row], earlier: dict[str, list[Measured]]) -> None:
    """Each tool's full row becomes the run of median wall time among all its fulls."""
    for row in rows:
        if row.step != "full" or not earlier.get(row.tool) or row.result.error:
            continue
        results = [m for m in earlier[row.tool] if not m.error] + [row.result]
        ranked = sorted(results, key=lambda m: m.wall)
        row.result = ranked[(len(ranked) - 1) // 2]
        row.runs = tuple(m.wall for m in ranked)


def _peers(dom: object, name: str, daemon: PrivateLibvirtd, rundir: Path, data: object,
           disk: Path, size: int, rows: list[Row], facts: dict[str, object], logs: Path,
           env: dict[str, str]) -> None:
    """virtnbdbackup's full, incremental and restore on the domain; its directory is
    measured, then removed (a 20 GiB run would not fit the disk otherwise)."""
    vnb_dir = rundir / "vnb"
    vnb = _vnb_command(daemon, name, rundir, vnb_dir)
    # virtnbdbackup refuses to run beside checkpoints it did not make, so the tools
    # take turns: each backs up, sees the same 2 % rewritten, backs up again and
    # restores; virtnbdbackup's checkpoints are then removed.
    log("virtnbdbackup: full, 2 % rewritten, incremental, restore ...")
    rows.append(Row("virtnbdbackup", "full",
                    _measure("vnb-full", [*vnb, "-l", "full"], logs, env), size))
    changed = _guest_writes(dom, data.extents, 0)  # type: ignore[arg-type]
    rows.append(Row("virtnbdbackup", "incremental",
                    _measure("vnb-incr", [*vnb, "-l", "inc"], logs, env), changed))
    vnb_out = rundir / "vnb-restore"
    result = _measure("vnb-restore", ["virtnbdrestore", "-U", daemon.uri, "--user",
                                      "root", "--password", "unused", "-i",
                                      str(vnb_dir), "-o", str(vnb_out), "-n"],
                      logs, env)
    restored = next(iter(sorted(vnb_out.glob("vda*"))), None) if vnb_out.exists() \
        else None
    rows.append(Row("virtnbdbackup", "restore (qcow2)", result, size,
                    _compare(restored, disk) if restored and not result.error
                    else ""))
    shutil.rmtree(vnb_out, ignore_errors=True)
    _drop_checkpoints(dom)
    facts["vnb_dir"] = _du(vnb_dir)
    shutil.rmtree(vnb_dir, ignore_errors=True)


def run(args: argparse.Namespace) -> tuple[list[Row], dict[str, object]]:
    size = workload.parse_size(args.disk_size)
    data = workload.image(Path(args.workdir), size, args.seed, log=log)
    rundir = Path(args.rundir)
    shutil.rmtree(rundir, ignore_errors=True)
    (rundir / "scratch").mkdir(parents=True)
    logs = rundir / "logs"
    disk = rundir / "vda.qcow2"
    log(f"converting the {workload.human(size)} image to qcow2 ...")
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", "-o", "compat=1.1", str(data.v1),
                    str(disk)], check=True)
    compile_sbr()
    env = dict(os.environ)
    daemon = PrivateLibvirtd(rundir / "libvirtd")
    daemon.start()
    rows: list[Row] = []
    facts: dict[str, object] = {}
    try:
        name = f"bench-{uuid.uuid4().hex[:6]}"
        with daemon.domain(name, disk, memory_mib=128) as dom:
            sbr_base = [sys.executable, str(BENCH / "kvm_node.py")]
            sbr_state, repo = rundir / "sbr-state.json", rundir / "sbr-repo"

            def sbr_backup(step: str, repo: Path = repo, state: Path = sbr_state) -> Measured:
                return _measure(f"sbr-{step}", [*sbr_base, "backup", "--uri", daemon.uri,
                                                "--domain", dom.UUIDString(), "--repo",
                                                str(repo), "--scratch",
                                                str(rundir / "scratch"), "--state",
                                                str(state)], logs, env)

            earlier = _earlier_fulls(dom, name, daemon, rundir, args.full_runs, args.peers,
                                     sbr_backup, logs, env)
            if args.peers:
                _peers(dom, name, daemon, rundir, data, disk, size, rows, facts, logs, env)
            log("sbr: full, 2 % rewritten, incremental, restores ...")
            rows.append(Row("sbr", "full", sbr_backup("full"), size))
            changed = _guest_writes(dom, data.extents, 1)  # type: ignore[arg-type]
            facts["changed"] = changed
            rows.append(Row("sbr", "incremental", sbr_backup("incr"), changed))
            _median_full(rows, earlier)
            for row in rows:
                if row.tool == "sbr" and not row.result.error:
                    reported = _reported(row.result)
                    row.note = (f"read {workload.human(reported['bytes_read'])}, stored "
                                f"{workload.human(reported['stored_new'])} new"
                                + _rss_trail(reported, "done"))
            for fmt in ("raw", "qcow2"):
                out = rundir / f"restored.{fmt}"
                result = _measure(f"sbr-restore-{fmt}",
                                  [*sbr_base, "restore", "--repo", str(repo), "--state",
                                   str(sbr_state), "--out", str(out), "--format", fmt,
                                   "--scratch", str(rundir / "scratch")], logs, env)
                rows.append(Row("sbr", f"restore ({fmt})", result, size,
                                _compare(out, disk) + _rss_trail(_reported(result), "written")
                                if not result.error else ""))
                out.unlink(missing_ok=True)
            facts["sbr_repo"] = _du(repo)
    finally:
        daemon.stop()
    facts.update(size=size, composition=data.composition, seed=args.seed,
                 full_runs=args.full_runs,
                 vnb=debian_version("virtnbdbackup") or "?")
    return rows, facts


def _reported(result: Measured) -> dict[str, Any]:
    """The JSON line bench/kvm_node.py printed last."""
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _rss_trail(out: dict[str, Any], done: str) -> str:
    """The node's RSS over the run (bench/kvm_node.py's rss_by_quarter), for the notes."""
    quarters = out.get("rss_by_quarter") or []
    if len(quarters) < 2:
        return ""
    return f"; RSS by quarter {done}: " + ", ".join(
        f"{rss / MiB:.0f} MiB by {workload.human(n)}" for n, rss in quarters)


def _du(path: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def _row_cells(row: Row) -> list[str]:
    r = row.result
    speed = f"{row.logical / r.wall / MiB:.0f}" if r.wall and not r.error else ""
    note = r.error or row.note
    if row.runs and len(row.runs) > 1:
        note += f" (median of {', '.join(f'{w:.2f}' for w in row.runs)} s)"
    return [row.tool, row.step, f"{r.wall:.2f}", f"{r.cpu:.2f}", f"{r.peak_rss / MiB:.0f}",
            speed, note]


def targets(rows: list[Row]) -> list[tuple[str, str, bool]]:
    by = {(r.tool, r.step): r.result for r in rows if not r.result.error}
    out = []
    sbr_full, vnb_full = by.get(("sbr", "full")), by.get(("virtnbdbackup", "full"))
    if sbr_full and vnb_full:
        out.append(("full backup at least as fast as virtnbdbackup's",
                    f"{sbr_full.wall:.2f} s vs {vnb_full.wall:.2f} s",
                    sbr_full.wall <= vnb_full.wall))
    sbr_inc = by.get(("sbr", "incremental"))
    if sbr_full and sbr_inc:
        share = sbr_inc.wall / sbr_full.wall
        out.append(("incremental under 15 % of the full's time",
                    f"{share * 100:.1f} %", share < 0.15))
    raw = next((r for r in rows if r.tool == "sbr" and r.step == "restore (raw)"), None)
    if raw and not raw.result.error:
        speed = raw.logical / raw.result.wall / MiB
        out.append(("restore at least 300 MB/s of logical data",
                    f"{speed * MiB / 1e6:.0f} MB/s (raw)", speed * MiB >= 300e6))
    peak = max((r.result.peak_rss for r in rows if r.tool == "sbr"), default=0)
    out.append(("node peak memory under 300 MB", f"{peak / 1e6:.0f} MB", peak < 300e6))
    return out


def _composition(parts: object) -> str:
    return ", ".join(f"{kind} {workload.human(n)}" for kind, n in dict(parts).items())  # type: ignore[call-overload]


def markdown(rows: list[Row], facts: dict[str, object], command: str) -> str:
    header = ("tool", "step", "wall s", "CPU s", "peak RSS MiB", "MiB/s", "notes")
    start, end = markers(str(facts["section"]))
    title = ("the kvm plugin and virtnbdbackup on one running domain" if facts["peers"] else
             f"the kvm plugin alone, {workload.human(int(facts['size']))} disk "
             "(does memory stay bounded?)")
    lines = [start, f"## KVM benchmark: {title}", "", f"Command: `{command}`", "",
             f"Run {datetime.date.today().isoformat()} on {report.machine()}. A TCG domain "
             f"with a {workload.human(int(facts['size']))} qcow2 disk (seed {facts['seed']}; "
             f"{_composition(facts['composition'])}); the guest rewrites "
             f"{workload.human(int(facts.get('changed', 0)))} between the backups. "
             + (f"virtnbdbackup {facts['vnb']} with its defaults (no compression); "
              if facts["peers"] else "virtnbdbackup not run (--no-peers); ") + "SBR "
             "deduplicates, compresses (zstd) and encrypts. MiB/s is logical data (the disk "
             "size; the changed bytes for incrementals) over wall time."
             + (f" Each full row is the median of {facts['full_runs']} full backups per tool, "
                "taken in turns, each into a fresh directory or repository; the incremental "
                "follows the last." if int(facts["full_runs"]) > 1 else ""), "",
             report.md_table(header, [_row_cells(r) for r in rows]), "",
             f"Stored: SBR repository {workload.human(int(facts.get('sbr_repo', 0)))}"
             + (f", virtnbdbackup directory {workload.human(int(facts.get('vnb_dir', 0)))}"
                if facts["peers"] else "") + ".", "",
             report.md_table(("target", "measured", "result"),
                             [[t, m, "PASS" if ok else "FAIL"] for t, m, ok in targets(rows)]),
             "", end]
    return "\n".join(lines) + "\n"


def markers(section: str) -> tuple[str, str]:
    """The comments around this run's section of the output: one per disk size, so the
    2 GiB comparison and a 20 GiB scaling run stand side by side."""
    return f"<!-- bench:{section}:start -->", f"<!-- bench:{section}:end -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--disk-size", default=DEFAULT_SIZE)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", default="/var/tmp/sbr-bench",  # noqa: S108
                        help="cache of generated data (shared with bench/repository.py)")
    parser.add_argument("--rundir", default="/tmp/sbr-kvm-bench",  # noqa: S108
                        help="disk, repositories, restores; not under /etc, /run or /var "
                        "(the private libvirtd overlays those)")
    parser.add_argument("--output", default=str(ROOT / "docs" / "performance.md"))
    parser.add_argument("--full-runs", type=int, default=3,
                        help="full backups per tool, each into a fresh target; the table "
                        "shows the median (3)")
    parser.add_argument("--no-peers", dest="peers", action="store_false",
                        help="SBR only, e.g. for a disk too large for both tools' copies")
    args = parser.parse_args()
    if args.full_runs < 1:
        parser.error("--full-runs must be at least 1")
    missing = PrivateLibvirtd.missing() or ("" if shutil.which("virtnbdbackup") or
                                            not args.peers else
                                            "virtnbdbackup is not installed (apt-get install "
                                            "virtnbdbackup)")
    if missing:
        sys.exit(f"kvm bench: {missing}")
    rows, facts = run(args)
    command = shlex.join(["python", "bench/kvm.py", *sys.argv[1:]])
    section = "kvm" if args.disk_size == DEFAULT_SIZE and args.peers else \
        f"kvm-{args.disk_size}{'' if args.peers else '-alone'}"
    facts.update(section=section, peers=args.peers)
    text = markdown(rows, facts, command)
    print(text)
    start, end = markers(section)
    report.write_section(Path(args.output), text, start=start, end=end)


if __name__ == "__main__":
    main()
