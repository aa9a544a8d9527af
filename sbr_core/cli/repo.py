"""``sbr repo``: use a backup repository directly, like restic or borg.

DEST is a directory or a URL (``s3://bucket/prefix?endpoint=…``). The passphrase comes from
``SBR_REPO_PASSWORD`` or a prompt. Long operations draw a progress bar on a terminal and
stay quiet otherwise; ``--json`` prints one JSON document for scripts.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from sbr_core.cli.output import new_private_file, size
from sbr_core.errors import UsageError
from sbr_core.operation import Operation

PASSWORD_ENV = "SBR_REPO_PASSWORD"  # noqa: S105 - the variable name, not a password
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
dest_argument = click.argument("dest", metavar="DEST")


def _passphrase(*, confirm: bool = False, env: str = PASSWORD_ENV,
                prompt: str = "Repository passphrase") -> str | None:
    """From ``env``, else asked on the terminal, once per command: a second call returns
    the first answer (``key export`` wraps the key under the passphrase that opened it)."""
    value = os.environ.get(env)
    if value:
        return value
    context = click.get_current_context(silent=True)
    asked: dict[str, str] = context.meta.setdefault("sbr.passphrases", {}) if context else {}
    if prompt not in asked and sys.stdin.isatty():
        asked[prompt] = click.prompt(prompt, hide_input=True, confirmation_prompt=confirm,
                                     err=True)
    entered: str | None = asked.get(prompt)
    return entered


def _destination(dest: str, *, create: bool = False) -> Any:
    from sbr_core.cli.context import plugin_host
    from sbr_core.repository.location import open_destination

    return open_destination(dest, plugin_host(), create=create)


def _open(dest: str) -> Any:
    from sbr_core.repository import open_repository

    destination = _destination(dest)
    key_file = (click.get_current_context().find_root().obj or {}).get("repo_key_file")
    key = None
    if key_file:
        try:
            key = json.loads(Path(key_file).read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read key file {key_file}: {exc}") from None
    passphrase = os.environ.get(PASSWORD_ENV)
    if not passphrase:  # a prompt, if any, belongs to this thread
        return open_repository(destination, passphrase=_passphrase, key_file=key)
    # The key derivation (scrypt, 0.06 s) runs beside the imports the command needs next.
    with ThreadPoolExecutor(1, thread_name_prefix="sbr-unlock") as pool:
        opening = pool.submit(open_repository, destination, passphrase=passphrase,
                              key_file=key)
        import sbr_core.repository.writer  # noqa: F401 - imports backup and restore use
        return opening.result()


def _emit(as_json: bool, data: Any, human: Callable[[], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        human()


@contextmanager
def _progress(description: str, total: int, *, enabled: bool) -> Iterator[Operation]:
    """An Operation whose progress drives a rich bar on a terminal (bytes, speed, ETA)."""
    if not (enabled and sys.stderr.isatty()):
        yield Operation()
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), transient=True,
                  console=_stderr_console()) as bar:
        task = bar.add_task(description, total=total or None)

        def report(done: int, of: int, message: str) -> None:
            bar.update(task, completed=done, total=of or total or None)

        yield Operation(report=report)


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*[str(v) for v in row])
    Console().print(table)


@click.group()
@click.option("--key-file", type=click.Path(dir_okay=False),
              help="Open the repository with this exported key instead of its own.")
@click.pass_context
def repo(ctx: click.Context, key_file: str | None) -> None:
    """Work with a backup repository directly (init, backup, restore, verify, gc)."""
    from sbr_core.repository.memory import use_fixed_mmap_threshold

    use_fixed_mmap_threshold()
    ctx.ensure_object(dict)
    ctx.find_root().ensure_object(dict)
    ctx.find_root().obj["repo_key_file"] = key_file


@repo.command()
@dest_argument
@click.option("--encryption", type=click.Choice(["aes-256-gcm", "none"]), default="aes-256-gcm",
              show_default=True, help="Encrypt everything stored, with a passphrase-wrapped key.")
@click.option("--compression-level", type=click.IntRange(0, 22), default=3, show_default=True,
              help="zstd level (0: no compression).")
@click.option("--image-chunk-size", type=int, default=None,
              help="Fixed chunk size of disk images in bytes (power of two).")
@click.option("--pack-size", type=int, default=None, help="Target pack object size in bytes.")
@json_option
def init(dest: str, encryption: str, compression_level: int, image_chunk_size: int | None,
         pack_size: int | None, as_json: bool) -> None:
    """Create a repository at DEST."""
    from sbr_core.repository import init_repository
    from sbr_core.repository.repo import DEFAULT_IMAGE_CHUNK, DEFAULT_PACK_SIZE

    passphrase = _passphrase(confirm=True) if encryption != "none" else None
    if encryption != "none" and not passphrase:
        raise UsageError(f"set {PASSWORD_ENV} (or run on a terminal) to give the passphrase")
    repository = init_repository(
        _destination(dest, create=True), passphrase=passphrase, encryption=encryption,
        compression_level=compression_level,
        image_chunk_size=image_chunk_size or DEFAULT_IMAGE_CHUNK,
        pack_size=pack_size or DEFAULT_PACK_SIZE)
    params = repository.config.params()
    _emit(as_json, params, lambda: click.echo(
        f"created repository {repository.config.id[:8]} at {dest} "
        f"(encryption: {encryption}). Keep the passphrase safe: without it the backups "
        "cannot be read. Export the key with `sbr repo key export`."))


def _backup_summary(manifest: Any, seconds: float) -> dict[str, Any]:
    return {"backup_id": manifest.id, "name": manifest.name, "kind": manifest.kind,
            "parent": manifest.parent or None, "seconds": round(seconds, 3), **manifest.stats}


def _print_backup(summary: dict[str, Any]) -> None:
    click.echo(f"backup {summary['backup_id'][:8]} of {summary['name']!r} done in "
               f"{summary['seconds']:.1f} s: read {size(summary['bytes_read'])}, new "
               f"{size(summary['bytes_new'])}, stored {size(summary['stored_new'])}")


@repo.command("backup-image")
@dest_argument
@click.argument("name")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--parent", help="Backup id (or NAME@latest) this one is incremental to.")
@click.option("--changed-extents", type=click.Path(path_type=Path),
              help="File of 'OFFSET LENGTH' lines: only these ranges changed since --parent.")
@click.option("--tag", "tags", multiple=True, help="Tag the backup (repeatable).")
@json_option
def backup_image(dest: str, name: str, file: Path, parent: str | None,
                 changed_extents: Path | None, tags: tuple[str, ...], as_json: bool) -> None:
    """Back up a disk image FILE (or block device) as backup NAME."""
    from sbr_core.repository import BackupWriter
    from sbr_core.repository.sources import ImageFile, read_extents_file
    from sbr_core.repository.writer import WORKERS

    if changed_extents and not parent:
        raise UsageError("--changed-extents needs --parent: the backup they changed from")
    repository = _open(dest)
    base = repository.resolve(parent) if parent else None
    image = ImageFile(file)
    started = time.monotonic()
    try:
        if changed_extents:
            extents = read_extents_file(changed_extents, image.size)
            image.prefetch(extents)
        else:
            extents = list(image.allocated_extents())
        total = sum(e.length for e in extents)
        with _progress(f"backup {name}", total, enabled=not as_json) as op, \
                BackupWriter(repository, name=name, kind="image", parent=base, tags=tags,
                             op=op) as writer:
            writer.add_disk("disk", image.size, extents, image.read,
                            full=changed_extents is None, label=str(file),
                            parallel_reads=WORKERS)
            manifest = writer.commit(metadata={"source": str(file.resolve())})
    finally:
        image.close()
    summary = _backup_summary(manifest, time.monotonic() - started)
    _emit(as_json, summary, lambda: _print_backup(summary))


@repo.command("backup-path")
@dest_argument
@click.argument("name")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--full", is_flag=True, help="Read every file, even unchanged ones.")
@click.option("--tag", "tags", multiple=True, help="Tag the backup (repeatable).")
@json_option
def backup_path(dest: str, name: str, directory: Path, full: bool, tags: tuple[str, ...],
                as_json: bool) -> None:
    """Back up DIRECTORY as backup NAME (files unchanged since NAME's last backup are not
    read again)."""
    from sbr_core.repository import BackupWriter
    from sbr_core.repository.sources import walk_directory

    repository = _open(dest)
    parent = None if full else repository.latest(name)
    skipped: list[dict[str, str]] = []
    started = time.monotonic()

    def on_skip(path: str, reason: str) -> None:
        skipped.append({"path": path, "reason": reason})
        if not as_json:
            click.echo(f"sbr: warning: skipped {path}: {reason}", err=True)

    with _progress(f"backup {name}", 0, enabled=not as_json) as op, \
            BackupWriter(repository, name=name, kind="path", parent=parent, tags=tags,
                         op=op) as writer:
        writer.add_tree(walk_directory(directory, on_skip=on_skip),
                        on_skip=lambda entry, reason: on_skip(entry.path, reason))
        manifest = writer.commit(metadata={"source": str(directory.resolve())})
    summary = {**_backup_summary(manifest, time.monotonic() - started), "skipped": skipped}
    _emit(as_json, summary, lambda: _print_backup(summary))


@repo.command("list")
@dest_argument
@click.argument("name", required=False)
@json_option
def list_backups(dest: str, name: str | None, as_json: bool) -> None:
    """List the backups (of NAME only, when given)."""
    repository = _open(dest)
    manifests = [m for m in repository.manifests() if name is None or m.name == name]
    data = [{"backup_id": m.id, "name": m.name, "kind": m.kind, "created": m.created,
             "parent": m.parent or None, "host": m.host, "tags": list(m.tags),
             "size": m.stats.get("logical_bytes", 0),
             "stored_new": m.stats.get("stored_new", 0)} for m in manifests]
    _emit(as_json, data, lambda: _table(
        f"{len(data)} backup(s)", ["id", "name", "kind", "created", "size", "new stored"],
        [[d["backup_id"][:8], d["name"], d["kind"], d["created"][:19].replace("T", " "),
          size(d["size"]),
          size(d["stored_new"])] for d in data]))


@repo.command()
@dest_argument
@click.argument("backup_id")
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--include", default="", help="Restore only this path of a file backup.")
@click.option("--disk", "disk_key", help="Restore only this disk (by key).")
@json_option
def restore(dest: str, backup_id: str, target: Path, include: str, disk_key: str | None,
            as_json: bool) -> None:
    """Restore backup BACKUP_ID to TARGET: an image file or device for a one-disk backup, a
    directory for file backups and several disks (KEY.img each)."""
    from sbr_core.repository import restore_disk, restore_tree

    repository = _open(dest)
    with repository.reading():
        manifest = repository.resolve(backup_id)
        started = time.monotonic()
        result: dict[str, Any] = {"backup_id": manifest.id}
        disks = [d for d in manifest.disks if disk_key is None or d.key == disk_key]
        if disk_key and not disks:
            raise UsageError(f"backup {manifest.id[:8]} has no disk {disk_key!r} (it has: "
                             f"{', '.join(d.key for d in manifest.disks) or 'none'})")
        if manifest.tree is not None and not disk_key:
            with _progress("restore", 0, enabled=not as_json) as op:
                result.update(restore_tree(repository, manifest, target, include=include, op=op))
        elif len(disks) == 1 and manifest.tree is None:
            with _progress("restore", disks[0].size, enabled=not as_json) as op:
                result["bytes"] = restore_disk(repository, disks[0], target, op=op)
        else:
            target.mkdir(parents=True, exist_ok=True)
            result["bytes"] = 0
            for disk in disks:
                with _progress(f"restore {disk.key}", disk.size, enabled=not as_json) as op:
                    result["bytes"] += restore_disk(repository, disk, target / f"{disk.key}.img",
                                                    op=op)
        if not disk_key and manifest.tree is None and len(disks) != 1:  # target is a directory
            for name, blob_id in manifest.files.items():
                (target / name).write_bytes(repository.read_blob(blob_id))
    result["seconds"] = round(time.monotonic() - started, 3)
    _emit(as_json, result, lambda: click.echo(
        f"restored backup {manifest.id[:8]} to {target} in {result['seconds']:.1f} s"))


@repo.command()
@dest_argument
@click.argument("backup_ids", nargs=-1)
@json_option
def verify(dest: str, backup_ids: tuple[str, ...], as_json: bool) -> None:
    """Re-read and check every chunk of the given backups (all when none are given).

    Exits with 1 and names the damaged backups when anything is wrong."""
    from sbr_core.repository.verify import verify as run_verify

    repository = _open(dest)
    with _progress("verify", 0, enabled=not as_json) as op:
        report = run_verify(repository, backup_ids,
                            progress=lambda done, total: op.progress(done, total, "packs"))
    data = report.to_dict()

    def human() -> None:
        click.echo(f"checked {report.backups_checked} backup(s), {report.packs_checked} "
                   f"pack(s), {report.blobs_checked} chunk(s), {size(report.bytes_read)}")
        for key, problem in report.damaged_index.items():
            click.echo(f"damaged index {key}: {problem}")
        for pack, problem in report.damaged_packs.items():
            click.echo(f"damaged pack {pack[:16]}: {problem}")
        for backup, problems in report.damaged_backups.items():
            click.echo(f"backup {backup[:8]} cannot be restored whole: {'; '.join(problems)}")
        click.echo("no errors" if report.ok else "ERRORS FOUND")

    _emit(as_json, data, human)
    if not report.ok:
        sys.exit(1)


@repo.command()
@dest_argument
@click.argument("backup_ids", nargs=-1)
@click.option("--keep-last", type=click.IntRange(0), help="Keep the newest N of each name.")
@click.option("--keep-daily", type=click.IntRange(0), help="Keep the last of N days.")
@click.option("--keep-weekly", type=click.IntRange(0), help="Keep the last of N weeks.")
@click.option("--keep-monthly", type=click.IntRange(0), help="Keep the last of N months.")
@click.option("--keep-yearly", type=click.IntRange(0), help="Keep the last of N years.")
@click.option("--name", help="Apply the --keep rules to backups of this name only.")
@click.option("--dry-run", is_flag=True, help="Say what would be forgotten, do nothing.")
@json_option
def forget(dest: str, backup_ids: tuple[str, ...], keep_last: int | None,
           keep_daily: int | None, keep_weekly: int | None, keep_monthly: int | None,
           keep_yearly: int | None, name: str | None, dry_run: bool, as_json: bool) -> None:
    """Forget backups, by id or by --keep rules per name; `gc` then frees their space."""
    from sbr_core.repository import forget as run_forget
    from sbr_core.repository.retention import RetentionRules, select_forgettable

    rules = RetentionRules(last=keep_last, daily=keep_daily, weekly=keep_weekly,
                           monthly=keep_monthly, yearly=keep_yearly)
    if not backup_ids and not rules.any():
        raise UsageError("name backups to forget, or give --keep-last/--keep-daily/"
                         "--keep-weekly/--keep-monthly/--keep-yearly")
    if backup_ids and rules.any():
        raise UsageError("give backup ids or --keep rules, not both")
    repository = _open(dest)
    if backup_ids:
        chosen = [repository.resolve(ref).id for ref in backup_ids]
    else:
        manifests = [m for m in repository.manifests() if name is None or m.name == name]
        chosen = [m.id for m in select_forgettable(manifests, rules)]
    if not dry_run:
        run_forget(repository, chosen)
    _emit(as_json, {"forgotten": chosen, "dry_run": dry_run}, lambda: click.echo(
        ("would forget" if dry_run else "forgot") + f" {len(chosen)} backup(s)"
        + "".join(f"\n  {c[:8]}" for c in chosen)))


@repo.command()
@dest_argument
@click.option("--wait", type=click.FloatRange(0), default=0.0, show_default=True,
              help="Seconds to wait for running writers before leaving the sweep for later.")
@json_option
def gc(dest: str, wait: float, as_json: bool) -> None:
    """Delete data no backup references. Safe while other nodes back up: data is first
    marked, and deleted only once every writer that could still use it has finished."""
    from sbr_core.repository import collect_garbage

    repository = _open(dest)
    report = collect_garbage(repository, wait=wait,
                             progress=None if as_json else lambda m: click.echo(m, err=True))
    data = report.to_dict()

    def human() -> None:
        click.echo(f"gc: {report.phase}; deleted {report.packs_deleted} pack(s) "
                   f"({size(report.bytes_deleted)}), repacked {report.packs_repacked}")
        if report.waiting_for:
            click.echo("waiting for: " + ", ".join(report.waiting_for) + " — run gc again "
                       "when they have finished")

    _emit(as_json, data, human)


@repo.command()
@dest_argument
@json_option
def stats(dest: str, as_json: bool) -> None:
    """Sizes: what the backups hold, and what the repository stores."""
    repository = _open(dest)
    packs = list(repository.destination.list("packs/"))
    manifests = list(repository.manifests())
    index = repository.index
    data = {
        "repository_id": repository.config.id, "encryption": repository.config.encryption,
        "backups": len(manifests), "names": len({m.name for m in manifests}),
        "packs": len(packs), "stored_bytes": sum(p.size for p in packs),
        "blobs": len(index),
        "unique_bytes": sum(loc.raw_length for _, loc in index.items()),
        "backed_up_bytes": sum(m.stats.get("logical_bytes", 0) for m in manifests),
        "damaged_index_files": sorted(index.damaged),
    }
    _emit(as_json, data, lambda: _table("repository", ["", "value"], [
        ["backups", data["backups"]], ["names", data["names"]], ["packs", data["packs"]],
        ["stored", size(data["stored_bytes"])], ["unique data", size(data["unique_bytes"])],
        ["backed up (logical)", size(data["backed_up_bytes"])],
        ["encryption", data["encryption"]]]))


@repo.command("repair-index")
@dest_argument
@json_option
def repair_index(dest: str, as_json: bool) -> None:
    """Rebuild the index from the pack headers (after an index file was damaged or lost)."""
    from sbr_core.repository.repair import rebuild_index

    repository = _open(dest)
    result = rebuild_index(repository)
    _emit(as_json, result, lambda: click.echo(
        f"indexed {result['packs']} pack(s), {result['blobs']} blob(s); "
        f"{len(result['unreadable_packs'])} unreadable pack(s)"))


@repo.group()
def key() -> None:
    """Export the repository key, or change its passphrase."""


@key.command("export")
@dest_argument
@click.argument("file", type=click.Path(path_type=Path), required=False)
def key_export(dest: str, file: Path | None) -> None:
    """Write the repository key (still protected by the passphrase) to FILE or stdout.

    Keep it apart from the repository: with it and the passphrase, the backups can be read
    even if the repository's own key objects are lost (`--key-file`)."""
    from sbr_core.repository.keys import export_key

    repository = _open(dest)
    data = export_key(repository, _passphrase() or "")
    if file is None:
        click.echo(data.decode(), nl=False)
    else:
        with os.fdopen(new_private_file(file, "FILE"), "wb") as out:
            out.write(data)
        click.echo(f"key written to {file}", err=True)


@key.command("passwd")
@dest_argument
def key_passwd(dest: str) -> None:
    """Change the passphrase (the new one from SBR_REPO_NEW_PASSWORD or a prompt)."""
    from sbr_core.repository.keys import change_passphrase

    repository = _open(dest)
    new = _passphrase(confirm=True, env="SBR_REPO_NEW_PASSWORD", prompt="New passphrase")
    if not new:
        raise UsageError("set SBR_REPO_NEW_PASSWORD (or run on a terminal)")
    change_passphrase(repository, new)
    click.echo("passphrase changed", err=True)
