"""The steps of VM workflows on a node: storing an export's disks, restoring them to image
files, importing a VM, taking and pruning snapshots. :mod:`.runner` calls these; they
talk to the hypervisor plugin only through :class:`~sbr_core.providers.Hypervisor`."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sbr_core.errors import ProviderError, SbrError, UsageError
from sbr_core.models import Instance
from sbr_core.providers import Provider
from sbr_core.providers.hypervisor import Hypervisor, ImportRequest, VmExport
from sbr_core.steps import StepContext, StepResult

if TYPE_CHECKING:  # the repository loads when a step first needs it
    from sbr_core.repository import BackupWriter, Manifest, Repository

#: Image file name extensions by format.
EXTENSIONS = {"raw": "img", "qcow2": "qcow2"}


def store_vm(writer: BackupWriter, export: VmExport, *, parent: Manifest | None,
             log: logging.Logger) -> None:
    """Put an export's configuration files and disks into the backup being written."""
    for name, data in export.files.items():
        writer.add_file(name, data)
    for disk in export.disks:
        full = disk.full or parent is None or parent.disk(disk.disk.key) is None
        before = writer.stats["bytes_read"]
        writer.add_disk(disk.disk.key, disk.disk.capacity_bytes, disk.extents(), disk.read,
                        full=full, identity=disk.identity, label=disk.disk.label,
                        parallel_reads=disk.max_parallel_reads)
        log.info("disk %s: %s, %d bytes read", disk.disk.key,
                 "full" if full else "changes only", writer.stats["bytes_read"] - before)


def committed(provider: Hypervisor, instance: Instance, platform_state: Mapping[str, Any], *,
              log: logging.Logger) -> None:
    """Tell the plugin its export was kept, so it can drop state no backup needs."""
    try:
        provider.finish_export(instance, platform_state, committed=True)
    except SbrError as exc:  # the backup is safe; stale state only costs space
        log.warning("after the backup: %s", exc)


def _config_files(repo: Repository, manifest: Manifest) -> dict[str, bytes]:
    return {name: repo.read_blob(blob_id) for name, blob_id in manifest.files.items()}


def _chosen_disks(manifest: Manifest, params: Mapping[str, Any]) -> list[Any]:
    wanted = params.get("disks")
    disks = list(manifest.disks)
    if wanted:
        missing = sorted(set(wanted) - {d.key for d in disks})
        if missing:
            raise UsageError(f"disks: the backup has no disk {', '.join(missing)} (it has "
                             f"{', '.join(d.key for d in disks)})")
        disks = [d for d in disks if d.key in wanted]
    return disks


def restore_to_files(repo: Repository, manifest: Manifest, context: StepContext, *,
                     provider: Provider | None) -> StepResult:
    """Write a VM backup's disks as image files (``format``: raw or qcow2) into the
    directory ``path``, with its configuration files beside them. Existing files are never
    overwritten; a failure removes what this restore wrote."""
    from sbr_core.repository import BackedUpDisk, restore_disk

    params = context.params
    target = params.get("path")
    if not target:
        raise UsageError("path: a restore to files needs a target directory")
    fmt = str(params.get("format") or "raw")
    if fmt not in EXTENSIONS:
        raise UsageError(f"format: must be raw or qcow2, not {fmt!r}")
    if fmt != "raw" and not (isinstance(provider, Hypervisor)
                             and fmt in provider.image_formats):
        raise UsageError(f"format {fmt}: the backup's hypervisor plugin does not write "
                         f"{fmt} images on this node")
    directory = Path(str(target))
    directory.mkdir(parents=True, exist_ok=True)
    disks = _chosen_disks(manifest, params)
    files = _config_files(repo, manifest)
    paths = {d.key: directory / f"{d.key}.{EXTENSIONS[fmt]}" for d in disks}
    clashes = [str(p) for p in [*paths.values(), *(directory / n for n in files)]
               if p.exists()]
    if clashes:
        raise UsageError(f"{', '.join(clashes)} already exist; restore into an empty "
                         "directory (SBR does not overwrite files)")
    written: list[Path] = []
    total = 0
    try:
        with repo.reading():
            for record in disks:
                path = paths[record.key]
                context.logger.info("disk %s: writing %s (%s, %d bytes)", record.key, path,
                                    fmt, record.size)
                if fmt == "raw":
                    written.append(path)
                    total += restore_disk(repo, record, path, op=context.op)
                else:
                    assert isinstance(provider, Hypervisor)
                    total += provider.write_image(BackedUpDisk(repo, record), path, fmt,
                                                  op=context.op)
                    written.append(path)
        for name, data in files.items():
            _write_new(directory / name, data)
            written.append(directory / name)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return StepResult(summary=f"restored {len(disks)} disk(s) as {fmt} images and "
                              f"{len(files)} configuration file(s) into {directory}",
                      figures={"disks": len(disks), "bytes": total, "path": str(directory)})


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def import_vm(provider: Hypervisor, repo: Repository, manifest: Manifest,
              context: StepContext) -> StepResult:
    """Recreate the backed-up VM through its plugin (params: see the import API)."""
    from sbr_core.repository import BackedUpDisk

    params = context.params
    replace = context.instance if params.get("replace") else None
    name = str(params.get("name") or (replace.name if replace else ""))
    if not name:
        raise UsageError("name: an import needs the new VM's name")
    config_name = str(manifest.metadata.get("config_name") or "")
    files = _config_files(repo, manifest)
    if config_name not in files:
        raise UsageError(f"backup {manifest.id[:8]} keeps no VM configuration to import from")
    disks = _chosen_disks(manifest, params)
    placement = {k: str(params[k]) for k in ("directory", "pool") if params.get(k)}
    with repo.reading():
        made = provider.import_vm(ImportRequest(
            name=name, files=files, config_name=config_name,
            disks={d.key: BackedUpDisk(repo, d) for d in disks}, placement=placement,
            disk_targets=dict(params.get("disk_targets") or {}),
            disk_format=str(params.get("disk_format") or ""),
            network_map=dict(params.get("network_map") or {}), replace=replace,
            new_identity=replace is None and bool(params.get("new_identity", True)),
            power_on=bool(params.get("power_on")), op=context.op))
    what = "restored over" if replace else "imported as"
    return StepResult(summary=f"{what} {made.name!r} ({made.external_id})",
                      figures={"name": made.name, "external_id": made.external_id,
                               "disks": len(disks)})


_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def snapshot(provider: Hypervisor, context: StepContext) -> StepResult:
    """Take a snapshot named for its policy, then delete that policy's oldest snapshots
    beyond ``keep_snapshots`` (0: keep all)."""
    instance = context.instance
    if instance is None:
        raise UsageError("a snapshot needs an instance")
    params = context.params
    options = dict(params.get("options") or {})
    prefix = f"sbr-{_SAFE.sub('-', str(params.get('policy') or 'manual'))}-"
    name = prefix + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    made = provider.create_snapshot(instance, name, quiesce=bool(options.get("quiesce", True)),
                                    memory=bool(options.get("memory", False)),
                                    options=options, op=context.op)
    keep = int(params.get("keep_snapshots") or 0)
    pruned: list[str] = []
    if keep > 0:
        ours = [s for s in provider.list_snapshots(instance) if s.name.startswith(prefix)]
        for old in ours[:-keep]:
            context.op.check()
            try:
                provider.delete_snapshot(instance, old.snapshot_id, op=context.op)
                pruned.append(old.name)
            except ProviderError as exc:  # the new snapshot stands; the next run retries
                context.logger.warning("snapshot %s could not be deleted: %s", old.name, exc)
    return StepResult(summary=f"{made.kind} snapshot {made.name} taken"
                              + (f"; {len(pruned)} old one(s) deleted" if pruned else ""),
                      figures={"snapshot": made.name, "kind": made.kind, "pruned": pruned})
