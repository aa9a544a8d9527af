"""What a node does for one KVM backup or restore, as one process the KVM bench measures.

    python bench/kvm_node.py backup  --uri URI --domain UUID --repo DIR --scratch DIR --state FILE
    python bench/kvm_node.py restore --repo DIR --state FILE --out FILE [--format raw|qcow2]

``backup`` runs the plugin's export and the node's store step (the same code as the
``export`` and ``store`` tasks: sbr_core.engine.vm_steps.store_vm) into a local repository,
full the first time and incremental after, and keeps the backup id and the plugin's state in
--state. ``restore`` writes the last backup's first disk to --out. Both print a JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from pathlib import Path

from sbr_core.config import structure_config
from sbr_core.engine.vm_steps import store_vm
from sbr_core.errors import RepositoryNotFound
from sbr_core.models import BackupPoint, ExportRequest
from sbr_core.operation import Operation
from sbr_core.providers.base import ProviderContext
from sbr_core.repository import (
    BackedUpDisk,
    BackupWriter,
    init_repository,
    open_repository,
    restore_disk,
)
from sbr_plugins.filesystem.destination import FilesystemDestination
from sbr_plugins.kvm.hypervisor import KvmHypervisor

PASSPHRASE = "kvm bench passphrase"  # noqa: S105 - a throwaway repository


def _repository(path: Path) -> object:
    path.mkdir(parents=True, exist_ok=True)
    config = structure_config(FilesystemDestination.Config, {"path": str(path)},
                              subject="destination 'bench'")
    destination = FilesystemDestination(config, context=ProviderContext(name="bench"))
    try:
        return open_repository(destination, passphrase=PASSPHRASE)
    except RepositoryNotFound:
        return init_repository(destination, passphrase=PASSPHRASE)


def _provider(uri: str, scratch: str) -> KvmHypervisor:
    config = structure_config(KvmHypervisor.Config, {"uri": uri, "scratch_dir": scratch},
                              subject="hypervisor 'bench'")
    return KvmHypervisor(config, context=ProviderContext(name="bench"))


class RssTrail:
    """The process's resident set every half second, with the bytes done so far (as the
    step's :class:`Operation` reports them, see :attr:`op`): whether memory levels off as
    the disk goes on, or keeps growing with it."""

    def __init__(self) -> None:
        self.samples: list[tuple[int, int]] = []  # (bytes done, RSS bytes)
        self.done: int | None = None
        self.op = Operation(logger=logging.getLogger("sbr.bench"), report=self._progress)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssTrail:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            if self.done is not None:
                self.samples.append((self.done, _rss()))

    def _progress(self, done: int, total: int, message: str = "") -> None:
        self.done = done

    def by_quarter(self) -> list[list[int]]:
        """The largest RSS seen in each quarter of the bytes done: [bytes done, RSS]."""
        if not self.samples:
            return []
        total = self.samples[-1][0] or 1
        quarters: list[list[int]] = []
        for q in range(1, 5):
            inside = [s for s in self.samples if (q - 1) * total / 4 < s[0] <= q * total / 4]
            if inside:
                quarters.append([inside[-1][0], max(rss for _, rss in inside)])
        return quarters


def _rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def backup(args: argparse.Namespace) -> dict[str, object]:
    repo = _repository(Path(args.repo))
    state_file = Path(args.state)
    previous = json.loads(state_file.read_text()) if state_file.exists() else None
    log = logging.getLogger("sbr.bench")
    with _provider(args.uri, args.scratch) as provider:
        instance = provider.get_instance(args.domain)
        parent = repo.manifest(previous["backup_id"]) if previous else None  # type: ignore[attr-defined]
        request = ExportRequest(
            instance=instance, op=Operation(logger=log),
            previous=BackupPoint(previous["backup_id"], instance, previous["platform_state"])
            if previous else None)
        started = time.perf_counter()
        with RssTrail() as trail, provider.export(request) as export, \
                BackupWriter(repo, name=f"bench/{instance.external_id}", kind="vm",  # type: ignore[arg-type]
                             parent=parent, op=trail.op) as writer:
            store_vm(writer, export, parent=parent, log=log)
            manifest = writer.commit(platform_state=dict(export.platform_state),
                                     metadata={"config_name": export.config_name})
            full = export.full
        provider.finish_export(instance, manifest.platform_state, committed=True)
    state_file.write_text(json.dumps({"backup_id": manifest.id,
                                      "platform_state": manifest.platform_state}))
    return {"backup_id": manifest.id, "full": full, "seconds": time.perf_counter() - started,
            "bytes_read": manifest.stats["bytes_read"],
            "stored_new": manifest.stats.get("stored_new", 0),
            "rss_by_quarter": trail.by_quarter()}


def restore(args: argparse.Namespace) -> dict[str, object]:
    repo = _repository(Path(args.repo))
    state = json.loads(Path(args.state).read_text())
    manifest = repo.manifest(state["backup_id"])  # type: ignore[attr-defined]
    disk = manifest.disks[0]
    out = Path(args.out)
    with RssTrail() as trail, repo.reading():  # type: ignore[attr-defined]
        if args.format == "raw":
            written = restore_disk(repo, disk, out, op=trail.op)  # type: ignore[arg-type]
        else:
            with _provider("qemu:///system", args.scratch) as provider:
                written = provider.write_image(BackedUpDisk(repo, disk), out, args.format,  # type: ignore[arg-type]
                                               op=trail.op)
    return {"bytes_written": written, "size": disk.size, "rss_by_quarter": trail.by_quarter()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("backup", "restore"))
    parser.add_argument("--uri", default="qemu:///system")
    parser.add_argument("--domain", default="")
    parser.add_argument("--repo", required=True)
    parser.add_argument("--scratch", default="/var/tmp")  # noqa: S108 - mkdtemp inside
    parser.add_argument("--state", required=True)
    parser.add_argument("--out", default="")
    parser.add_argument("--format", choices=("raw", "qcow2"), default="raw")
    args = parser.parse_args()
    result = backup(args) if args.command == "backup" else restore(args)
    print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
