"""Running one claimed workflow on a node: its steps in order, with heartbeats.

A workflow's tasks all run here (the server pins them to this node), so what one step
opens the next can use: the export's open stream is what the store step reads, and the
export's context (a snapshot, a checkpoint) is left only when the workflow ends, however
it ends. Each task has its own heartbeat thread that renews the lease, carries progress
and log lines, and brings back a cancel request.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sbr_core.config import structure_config
from sbr_core.engine import vm_steps
from sbr_core.engine.client import NodeClient, ServerUnreachable
from sbr_core.errors import LeaseLost, ProviderError, SbrError, TaskCancelled, UsageError
from sbr_core.models import BackupPoint, ExportRequest, Instance, InstanceState
from sbr_core.operation import Operation
from sbr_core.plugins import PluginHost
from sbr_core.providers import Destination, Provider, ProviderContext, ProviderKind
from sbr_core.providers.hypervisor import Hypervisor, VmExport
from sbr_core.providers.items import ItemExport, ItemProvider
from sbr_core.steps import StepContext, StepResult

if TYPE_CHECKING:  # the repository loads when a step first needs it
    from sbr_core.repository import Manifest, Repository

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 15.0
#: A restore into an instance logs the first this many notes of each kind (renamed,
#: skipped, failed); the step's summary counts them all.
_OUTCOME_LINES = 50
_FINISH_RETRIES = 5


class TaskReporter:
    """The heartbeat of one running task: progress, log lines, cancel and lease loss."""

    def __init__(self, client: NodeClient, task_id: int, attempt: int, *,
                 interval: float) -> None:
        self.client = client
        self.task_id = task_id
        self.attempt = attempt
        self.interval = interval
        self.cancel = threading.Event()  # asked by the server, or the lease is gone
        self.lost = False
        self._lock = threading.Lock()
        self._done = self._total = 0
        self._speed = 0
        self._window: tuple[float, int] = (time.monotonic(), 0)
        self._lines: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"sbr-heartbeat-{task_id}",
                                        daemon=True)

    def progress(self, done: int, total: int, message: str = "") -> None:
        with self._lock:
            self._done, self._total = int(done), int(total)

    def log(self, level: str, message: str) -> None:
        with self._lock:
            self._lines.append((level, message))

    def drain(self) -> list[tuple[str, str]]:
        with self._lock:
            lines, self._lines = self._lines, []
        return lines

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join()

    def send_now(self) -> None:
        """Beat at once instead of at the next interval: what was just logged is something
        the user waits for (where a mount is served)."""
        self._wake.set()

    def _beat(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            with self._lock:
                now = time.monotonic()
                since, before = self._window
                if now - since >= 1.0:
                    self._speed = int(max(0, self._done - before) / (now - since))
                    self._window = (now, self._done)
                done, total, speed = self._done, self._total, self._speed
            lines = self.drain()
            try:
                if self.client.heartbeat(self.task_id, self.attempt, done=done, total=total,
                                         speed=speed, log=lines):
                    self.cancel.set()
            except LeaseLost as exc:
                log.warning("task %d: %s; stopping it", self.task_id, exc)
                self.lost = True
                self.cancel.set()
                return
            except SbrError as exc:  # the server is away: keep working, keep trying
                log.warning("task %d: heartbeat failed: %s", self.task_id, exc)
                with self._lock:
                    self._lines[:0] = lines


class _TaskLogHandler(logging.Handler):
    """Copies a workflow run's log records into the current task's heartbeat, so that what
    an earlier step's context says when it closes (an export's snapshot removed after a
    failed store) lands in the log of the task that ended it."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.reporter: TaskReporter | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.reporter is not None:
            self.reporter.log(record.levelname.lower(), record.getMessage())


class WorkflowRun:
    """Runs the work order of a claimed task and every task the server hands on after it."""

    def __init__(self, order: dict[str, Any], *, client: NodeClient, host: PluginHost,
                 node_name: str, staging_dir: Path | None,
                 heartbeat_seconds: float = HEARTBEAT_SECONDS) -> None:
        self.order = order
        self.client = client
        self.host = host
        self.node_name = node_name
        self.staging_dir = staging_dir
        self.heartbeat_seconds = heartbeat_seconds
        self.results: dict[str, Any] = {}
        self.error = ""
        self._contexts: list[AbstractContextManager[Any]] = []
        self.export: ItemExport | VmExport | None = None
        # A logger of its own, outside logging's registry (which keeps every named logger
        # for good), passing records on to "sbr.task" as a child would.
        self._logger = logging.Logger(f"sbr.task.workflow-{order['workflow']['id']}")
        self._logger.parent = logging.getLogger("sbr.task")
        self._log_handler = _TaskLogHandler()
        self._logger.addHandler(self._log_handler)
        self.provider: Provider | None = None  # the export's, told later how it ended

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        order: dict[str, Any] | None = self.order
        try:
            while order is not None:
                order = self._run_task(order)
        finally:
            self._close_contexts()
            if self.provider is not None:
                self.provider.close()

    def _run_task(self, order: dict[str, Any]) -> dict[str, Any] | None:
        task = order["task"]
        workflow = order["workflow"]
        reporter = TaskReporter(self.client, task["id"], task["attempt"],
                                interval=self.heartbeat_seconds)
        logger = self._logger
        self._log_handler.reporter = reporter
        op = Operation(task_id=task["id"], logger=logger, staging_dir=self.staging_dir,
                       report=reporter.progress, is_cancelled=reporter.cancel.is_set)
        context = StepContext(
            workflow=workflow["kind"], step=task["step"], task_id=task["id"],
            workflow_id=workflow["id"], attempt=task["attempt"], node_name=self.node_name,
            instance=_instance(order.get("instance")), params=workflow.get("params") or {},
            results=dict(self.results), error=self.error, op=op, logger=logger)
        reporter.start()
        state, error, result = "succeeded", "", {}
        try:
            try:
                outcome = self.host.run_step(context, lambda: self._step(order, context))
                result = dict(outcome.figures)
                if outcome.summary:
                    reporter.log("info", outcome.summary)
            except TaskCancelled:
                state, error = "cancelled", "cancelled by request"
            except SbrError as exc:
                state, error = ("cancelled", "cancelled by request") \
                    if reporter.cancel.is_set() else ("failed", str(exc))
            except Exception as exc:  # a plugin bug fails the task, never the node
                state, error = "failed", f"internal error in step {task['step']!r}: {exc!r}"
                reporter.log("error", traceback.format_exc(limit=20))
            if state != "succeeded":
                self.error = self.error or error
                self._close_contexts(failed=True)  # while its log still reaches this task
            else:
                self.results[task["step"]] = result
        finally:
            reporter.stop()
            self._log_handler.reporter = None
        if reporter.lost:
            return None  # another node has it now; our report would be refused
        following = self._finish(task, state, result, error, reporter.drain())
        # The server names only the next task; everything else in the order stays the same.
        return None if following is None else {**order, **following}

    def _finish(self, task: dict[str, Any], state: str, result: dict[str, Any], error: str,
                lines: list[tuple[str, str]]) -> dict[str, Any] | None:
        for attempt in range(_FINISH_RETRIES):
            try:
                return self.client.finish(task["id"], task["attempt"], state=state,
                                          result=result, error=error, log=lines)
            except LeaseLost as exc:
                log.warning("task %d: result refused: %s", task["id"], exc)
                return None
            except ServerUnreachable as exc:
                log.warning("task %d: cannot report (%s); retrying", task["id"], exc)
                time.sleep(min(2 ** attempt, 15))
        log.error("task %d: gave up reporting; its lease will run out and it will be retried",
                  task["id"])
        return None

    # --- steps ----------------------------------------------------------------------------

    def _step(self, order: dict[str, Any], context: StepContext) -> StepResult:
        step = context.step
        core: dict[str, Callable[[dict[str, Any], StepContext], StepResult]] = {
            "export": self._export, "store": self._store, "restore": self._restore,
            "prune": self._prune, "import": self._import, "snapshot": self._snapshot,
            "mount": self._mount}
        if step in core:
            return core[step](order, context)
        plugin_steps = self.host.workflow_steps()
        if step in plugin_steps:
            return plugin_steps[step]().run(context)
        raise UsageError(f"step {step!r} cannot run on node {self.node_name!r}: no such step "
                         "here (is the plugin that adds it installed on this node?)")

    def _provider(self, order: dict[str, Any]) -> Provider:
        spec = order.get("provider")
        if not spec:
            raise UsageError("this workflow has no provider")
        return _build(self.host, ProviderKind(spec["kind"]), spec, self.staging_dir)

    def _export(self, order: dict[str, Any], context: StepContext) -> StepResult:
        provider = self._provider(order)
        if not isinstance(provider, ItemProvider | Hypervisor):
            raise UsageError(f"provider {order['provider']['name']!r} is a "
                             f"{provider.kind.value}: it has nothing to back up")
        self.provider = provider
        instance = context.instance
        assert instance is not None
        parent = order.get("parent")
        previous = BackupPoint(parent["backup_id"], instance, parent["platform_state"]) \
            if parent else None
        options = dict(context.params.get("options") or {})
        request = ExportRequest(
            instance=instance, previous=previous,
            full=bool(context.params.get("full")) or previous is None,
            quiesce=bool(options.get("quiesce", True)), options=options,
            retained_points=tuple(BackupPoint(p["backup_id"], instance, p["platform_state"])
                                  for p in order.get("retained") or ()),
            op=context.op)
        manager = provider.export(request)
        self.export = manager.__enter__()
        self._contexts.append(manager)
        return StepResult(summary=f"export of {instance.name!r} opened "
                                  f"({'full' if self.export.full else 'incremental'}"
                                  f"{': ' + self.export.reason if self.export.reason else ''})",
                          figures={"full": self.export.full})

    def _store(self, order: dict[str, Any], context: StepContext) -> StepResult:
        from sbr_core.repository import BackupWriter

        export = self.export
        instance = context.instance
        if export is None or instance is None:
            raise UsageError("store: the export step did not run on this node")
        repo = _repository(self.host, order["destination"], create=True)
        parent_id = (order.get("parent") or {}).get("backup_id")
        parent = repo.manifest(parent_id) if parent_id else None
        skipped: list[str] = []

        def on_skip(entry: Any, reason: str) -> None:
            skipped.append(entry.path)
            context.logger.warning("skipped %s: %s", entry.path, reason)

        name = f"{order['provider']['name']}/{instance.external_id}"
        metadata: dict[str, Any] = {"instance": instance.name, "workflow": context.workflow_id}
        vm = isinstance(export, VmExport)
        with BackupWriter(repo, name=name, kind="vm" if vm else "items", parent=parent,
                          op=context.op) as writer:
            if isinstance(export, VmExport):
                vm_steps.store_vm(writer, export, parent=parent, log=context.logger)
                metadata.update(config_name=export.config_name,
                                consistency=export.consistency)
            elif export.full or parent is None:
                writer.add_tree(export.entries(), complete=True, on_skip=on_skip)
            else:
                writer.add_tree(export.entries(), complete=False, removed=export.removed(),
                                on_skip=on_skip)
            manifest = writer.commit(platform_state=dict(export.platform_state),
                                     metadata=metadata)
        self._close_contexts()
        if isinstance(self.provider, Hypervisor):
            vm_steps.committed(self.provider, instance, manifest.platform_state,
                               log=context.logger)
        stats = manifest.stats
        return StepResult(
            summary=f"stored backup {manifest.id[:8]}: {stats.get('logical_bytes', 0)} bytes, "
                    f"{stats.get('stored_new', 0)} new after deduplication and compression"
                    + (f"; {len(skipped)} entries skipped" if skipped else ""),
            figures={"backup_id": manifest.id, "full": parent is None or (vm and export.full),
                     "bytes_logical": stats.get("logical_bytes", 0),
                     "bytes_stored": stats.get("stored_new", 0), "skipped": len(skipped),
                     "platform_state": dict(manifest.platform_state)})

    def _restore(self, order: dict[str, Any], context: StepContext) -> StepResult:
        from sbr_core.repository import restore_tree

        repo = _repository(self.host, order["destination"], create=False)
        manifest = repo.manifest(order["backup"]["repo_backup_id"])
        if context.params.get("mode") == "instance":
            return self._restore_into_instance(repo, manifest, order, context)
        if manifest.disks:
            if context.workflow == "restore-import":  # the import step writes the disks
                return StepResult(summary=f"backup {manifest.id[:8]} holds "
                                          f"{len(manifest.disks)} disk(s); importing")
            return vm_steps.restore_to_files(repo, manifest, context,
                                             provider=self._optional_provider(order))
        target = context.params.get("path")
        if not target:
            raise UsageError("path: a restore to the file system needs a target path")
        with repo.reading():
            totals = restore_tree(repo, manifest, Path(target),
                                  include=str(context.params.get("include", "")),
                                  op=context.op)
        return StepResult(summary=f"restored {totals['files']} files, {totals['bytes']} "
                                  f"bytes to {target}", figures=dict(totals))

    def _restore_into_instance(self, repo: Repository, manifest: Manifest,
                               order: dict[str, Any], context: StepContext) -> StepResult:
        """Entries back into an instance (the backup's own: its original location) through
        its provider's ``restore()``, which keeps what the platform needs (a share's owners
        and links, a mailbox's folders); one entry failing never stops the others, and
        the step fails at the end if any did."""
        from sbr_core.providers.items import ItemRestoreRequest
        from sbr_core.repository.reader import tree_entries

        if manifest.disks:
            raise UsageError(f"backup {manifest.id[:8]} is of a VM: import it to restore it "
                             "to its hypervisor")
        provider = self._optional_provider(order)
        target = context.instance
        if not isinstance(provider, ItemProvider) or target is None:
            raise UsageError("a restore into an instance needs the instance's storage or "
                             "application provider")
        params = context.params
        into = str(params.get("into", ""))
        conflict = str(params.get("conflict", "rename"))
        if context.attempt > 1 and conflict == "rename":
            context.logger.warning(
                "an earlier attempt of this restore was interrupted: what it restored is "
                "there already, so it may now exist twice (the second as \"NAME (restored)\")")
        request = ItemRestoreRequest(
            target=target, entries=tree_entries(repo, manifest, str(params.get("include", ""))),
            destination_path=into, conflict=conflict, op=context.op)
        counts = {"restored": 0, "skipped": 0, "failed": 0}
        first_failure = ""
        with repo.reading():
            for outcome in provider.restore(request):
                counts[outcome.status] = counts.get(outcome.status, 0) + 1
                if outcome.status == "restored":
                    if outcome.message and counts["restored"] <= _OUTCOME_LINES:
                        context.logger.info("%s: %s", outcome.path, outcome.message)
                    continue
                if counts[outcome.status] <= _OUTCOME_LINES:
                    level = logging.ERROR if outcome.status == "failed" else logging.WARNING
                    context.logger.log(level, "%s %s: %s", outcome.path, outcome.status,
                                       outcome.message)
                if outcome.status == "failed" and not first_failure:
                    first_failure = f"{outcome.path}: {outcome.message}"
        place = f"{target.name}/{into.strip('/')}" if into.strip("/") else target.name
        summary = (f"restored {counts['restored']} entries into {place} (on conflict: "
                   f"{conflict}); {counts['skipped']} skipped, {counts['failed']} failed")
        if counts["failed"]:
            raise ProviderError(f"{summary}; the first: {first_failure}")
        return StepResult(summary=summary, figures=counts)

    def _import(self, order: dict[str, Any], context: StepContext) -> StepResult:
        provider = self._hypervisor(order)
        repo = _repository(self.host, order["destination"], create=False)
        manifest = repo.manifest(order["backup"]["repo_backup_id"])
        return vm_steps.import_vm(provider, repo, manifest, context)

    def _mount(self, order: dict[str, Any], context: StepContext) -> StepResult:
        from sbr_core.engine.mount import serve_backup

        repo = _repository(self.host, order["destination"], create=False)
        manifest = repo.manifest(order["backup"]["repo_backup_id"])
        reporter = self._log_handler.reporter
        return serve_backup(repo, manifest, context,
                            announce=reporter.send_now if reporter else lambda: None)

    def _snapshot(self, order: dict[str, Any], context: StepContext) -> StepResult:
        return vm_steps.snapshot(self._hypervisor(order), context)

    def _hypervisor(self, order: dict[str, Any]) -> Hypervisor:
        provider = self._provider(order)
        if not isinstance(provider, Hypervisor):
            raise UsageError(f"provider {order['provider']['name']!r} is a "
                             f"{provider.kind.value}, not a hypervisor")
        self.provider = provider
        return provider

    def _optional_provider(self, order: dict[str, Any]) -> Provider | None:
        if not order.get("provider"):
            return None
        self.provider = self._provider(order)
        return self.provider

    def _prune(self, order: dict[str, Any], context: StepContext) -> StepResult:
        """Retention: forget the expired backups' manifests, then collect the garbage.
        A manifest already gone (an earlier attempt got that far) counts as forgotten."""
        from sbr_core.repository import collect_garbage
        from sbr_core.repository.gc import forget

        repo = _repository(self.host, order["destination"], create=False)
        doomed = list(order.get("prune") or ())
        present = set(repo.backup_ids())
        forgotten = []
        for entry in doomed:
            context.op.check()
            if entry["repo_backup_id"] in present:
                forget(repo, [entry["repo_backup_id"]])
            forgotten.append(entry["id"])
        report = collect_garbage(repo, wait=float(context.params.get("gc_wait", 60.0)),
                                 progress=lambda message: context.logger.info("%s", message))
        if report.waiting_for:
            context.logger.warning("gc is waiting for writers (%s); the space is freed by "
                                   "the next prune", ", ".join(report.waiting_for))
        return StepResult(
            summary=f"forgot {len(forgotten)} expired backup(s); gc {report.phase}: "
                    f"{report.packs_deleted} pack(s), {report.bytes_deleted} bytes freed",
            figures={"forgotten": forgotten, "gc_phase": report.phase,
                     "packs_deleted": report.packs_deleted,
                     "bytes_deleted": report.bytes_deleted})

    def _close_contexts(self, *, failed: bool = False) -> None:
        """Leave what the steps opened (an export's snapshot), newest first."""
        while self._contexts:
            manager = self._contexts.pop()
            try:
                if failed:
                    manager.__exit__(TaskCancelled, TaskCancelled("workflow stopped"), None)
                else:
                    manager.__exit__(None, None, None)
            except Exception:
                log.exception("closing a step's context failed")
        self.export = None


def _instance(data: dict[str, Any] | None) -> Instance | None:
    if not data:
        return None
    try:
        state = InstanceState(data.get("state", "unknown"))
    except ValueError:
        state = InstanceState.UNKNOWN
    return Instance(external_id=data["external_id"], name=data["name"],
                    kind=data.get("kind", "vm"), state=state,
                    tags=tuple(data.get("tags") or ()), location=data.get("location", ""),
                    attributes=dict(data.get("attributes") or {}))


def _build(host: PluginHost, kind: ProviderKind, spec: dict[str, Any],
           staging_dir: Path | None) -> Provider:
    """A provider or destination from a work order's spec, with this node's plugin."""
    cls = host.provider_class(kind, spec["plugin"])
    config = structure_config(cls.Config, dict(spec["settings"]),
                              subject=f"{kind.value} {spec['name']!r}")
    return cls(config, context=ProviderContext(name=spec["name"], staging_dir=staging_dir))


def _repository(host: PluginHost, spec: dict[str, Any] | None, *, create: bool) -> Any:
    """Open the repository on a destination (creating it on the first backup)."""
    from sbr_core.errors import ObjectExists, RepositoryNotFound
    from sbr_core.repository import init_repository, open_repository

    if not spec:
        raise UsageError("this workflow has no destination")
    destination = cast(Destination, _build(host, ProviderKind.DESTINATION, spec, None))
    try:
        return open_repository(destination, passphrase=spec["passphrase"])
    except RepositoryNotFound:
        if not create:
            raise
    try:
        return init_repository(destination, passphrase=spec["passphrase"])
    except ObjectExists:  # another node's first backup created it meanwhile
        return open_repository(destination, passphrase=spec["passphrase"])
