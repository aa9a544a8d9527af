"""Claiming tasks, holding them with leases, and taking them back from lost nodes.

Two nodes must never run one task. On MariaDB the claim locks the chosen row with
``SELECT … FOR UPDATE SKIP LOCKED`` (another claimer skips it and takes the next); on SQLite
every transaction begins ``IMMEDIATE`` (see :mod:`sbr_core.db.connect`): it takes the
database's write lock before reading, so claims queue up.
The attempt number a claim hands out is the lease's fence: a heartbeat or result that
carries an older attempt is refused, so a node that lost its lease cannot overwrite the
work of the node that took the task over.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import attrs
import peewee as pw

from sbr_core.db.retry import retry_on_lock_conflict
from sbr_core.db.schema import Node, Task, TaskLog, Workflow, utcnow

LEASE = dt.timedelta(seconds=60)
RETRY_BASE = dt.timedelta(seconds=30)
RETRY_CAP = dt.timedelta(minutes=10)


@attrs.frozen
class Timing:
    """How long a lease lasts and how long a retry waits. The defaults suit production;
    ``sbr server --lease/--retry-delay`` change them (tests use seconds, not minutes)."""

    lease: dt.timedelta = LEASE
    retry_base: dt.timedelta = RETRY_BASE
    retry_cap: dt.timedelta = RETRY_CAP

    @property
    def heartbeat_seconds(self) -> float:
        """How often a node renews: four times a lease, so one lost beat costs nothing."""
        return self.lease.total_seconds() / 4

    def retry_delay(self, attempt: int) -> dt.timedelta:
        """Backoff before attempt ``attempt + 1``: the base, doubling, at most the cap."""
        delay: dt.timedelta = min(self.retry_base * (2 ** max(attempt - 1, 0)),
                                  self.retry_cap)
        return delay


DEFAULT_TIMING = Timing()


@attrs.frozen
class Claim:
    """A task a node now holds: its id and the attempt that fences its lease."""

    task_id: int
    attempt: int
    workflow_id: int
    step: str


@attrs.frozen
class Reaped:
    """What the reaper did to one task whose lease ran out."""

    task_id: int
    node_name: str
    requeued: bool  # False: out of attempts, the task and its workflow failed


@retry_on_lock_conflict
def claim(db: pw.Database, node: Node, *, now: dt.datetime | None = None,
          timing: Timing = DEFAULT_TIMING) -> Claim | None:
    """Give ``node`` the oldest task it may run, or None. Atomic on both databases."""
    now = now or utcnow()
    with db.atomic():
        running = Task.select().where((Task.node == node) & (Task.state == "running")).count()
        if running >= node.concurrency:
            return None
        ready = ((Task.state == "queued")
                 & (Task.not_before.is_null() | (Task.not_before <= now))
                 & (Task.node.is_null() | (Task.node == node)))
        task = _first_eligible(db, ready, _placement(node))
        if task is None:
            return None
        attempt = task.attempts + 1
        changed = (Task.update(state="running", node=node, attempts=attempt,
                               lease_expires_at=now + timing.lease,
                               started_at=pw.fn.COALESCE(Task.started_at, now))
                   .where((Task.id == task.id) & (Task.state == "queued"))
                   .execute())
        if changed != 1:  # cannot happen under the locks above; never hand out a lost race
            return None
        Workflow.update(state="running").where(
            (Workflow.id == task.workflow_id) & (Workflow.state == "pending")).execute()
        return Claim(task.id, attempt, task.workflow_id, task.step)


CANDIDATES = 8  # tasks a MariaDB claim tries to lock, in order, before reading again


def _first_eligible(db: pw.Database, ready: Any, placement: Any) -> Task | None:
    """The first task by priority, then age, that is ``ready`` (conditions on the task row)
    and whose workflow matches ``placement``, locked for this transaction; None when there
    is none (or, on MariaDB, every one is being claimed).

    SQLite: one query; ``BEGIN IMMEDIATE`` already holds every other writer off.
    MariaDB: a plain read names the first few candidates, then each task row alone is
    locked by its key with ``FOR UPDATE SKIP LOCKED`` until one is free (a workflow's
    provider and location never change, so its placement needs no lock). Locking in the
    ordered read itself fails whenever MariaDB plans it with a filesort (the plan depends
    on the data): the sort then ends at the first locked row and returns nothing, so every
    claimer but one went away empty-handed while work was queued.
    """
    columns = (Task.id, Task.attempts, Task.workflow, Task.step)
    ordered = (Task.select(*columns).join(Workflow, on=(Task.workflow == Workflow.id))
               .where(ready & placement).order_by(Task.priority.desc(), Task.id))
    if isinstance(db, pw.SqliteDatabase):
        first: Task | None = ordered.first()
        return first
    for _ in range(3):
        candidates = [row.id for row in ordered.limit(CANDIDATES)]
        for task_id in candidates:
            locked: Task | None = (Task.select(*columns).where((Task.id == task_id) & ready)
                                   .for_update("FOR UPDATE SKIP LOCKED")  # type: ignore[arg-type]
                                   .first())
            if locked is not None:
                return locked
        if len(candidates) < CANDIDATES:
            return None  # every eligible task was taken by another claim meanwhile
    return None


def parse_affinity(values: Any) -> tuple[frozenset[str], tuple[str, ...]]:
    """A node's ties: ``provider:NAME`` (a provider connection) and ``cluster:PATH`` (an
    instance location and everything below it)."""
    providers: set[str] = set()
    clusters: list[str] = []
    for value in values or ():
        kind, _, name = str(value).partition(":")
        if kind == "provider" and name:
            providers.add(name)
        elif kind == "cluster" and name:
            clusters.append(name.rstrip("/"))
    return frozenset(providers), tuple(clusters)


def _placement(node: Node) -> Any:
    """Which workflows ``node`` may take. A node tied to providers or clusters takes
    theirs, and work of no provider (a restore into a directory, a prune), which every node
    can do: were that left to untied nodes, a site whose nodes are all tied would never
    prune. An untied node takes everything no node is tied to, so work for a tied provider
    waits for its own nodes rather than running where it cannot reach."""
    providers, clusters = parse_affinity(node.affinity)
    if providers or clusters:
        unplaced = (Workflow.provider_name == "") & (Workflow.location == "")
        return _matches(providers, clusters) | unplaced
    all_providers: set[str] = set()
    all_clusters: list[str] = []
    for other in Node.select(Node.affinity).where(Node.revoked == False):  # noqa: E712
        more_providers, more_clusters = parse_affinity(other.affinity)
        all_providers |= more_providers
        all_clusters.extend(more_clusters)
    if not all_providers and not all_clusters:
        return pw.SQL("1 = 1")
    return ~_matches(frozenset(all_providers), tuple(all_clusters))


def _matches(providers: frozenset[str], clusters: tuple[str, ...]) -> Any:
    condition: Any = pw.SQL("1 = 0")
    if providers:
        condition = condition | Workflow.provider_name.in_(sorted(providers))
    for cluster in clusters:
        condition = condition | (Workflow.location == cluster) | Workflow.location.startswith(
            cluster + "/")
    return condition


@retry_on_lock_conflict
def renew(db: pw.Database, task_id: int, node: Node, attempt: int, *,
          now: dt.datetime | None = None, timing: Timing = DEFAULT_TIMING) -> bool:
    """Extend the lease of a task ``node`` holds; False when it no longer holds it."""
    now = now or utcnow()
    with db.atomic():
        changed = (Task.update(lease_expires_at=now + timing.lease)
                   .where((Task.id == task_id) & (Task.node == node)
                          & (Task.attempts == attempt) & (Task.state == "running"))
                   .execute())
    return bool(changed == 1)


def retry_delay(attempt: int) -> dt.timedelta:
    """Backoff before attempt ``attempt + 1`` by default: 30 s, 1 min, 2 min … 10 min."""
    return DEFAULT_TIMING.retry_delay(attempt)


@retry_on_lock_conflict
def reap(db: pw.Database, *, now: dt.datetime | None = None,
         timing: Timing = DEFAULT_TIMING) -> list[Reaped]:
    """Take back every running task whose lease ran out: queue it again after a backoff,
    or fail it (and its workflow) when it has used all its attempts."""
    now = now or utcnow()
    done: list[Reaped] = []
    with db.atomic():
        expired = list(Task.select(Task, Node).join(Node, pw.JOIN.LEFT_OUTER)
                       .where((Task.state == "running") & (Task.lease_expires_at < now)))
        for task in expired:
            node_name = task.node.name if task.node is not None else ""
            reason = f"node {node_name!r} stopped renewing its lease"
            # One node runs a whole workflow (its later steps need what the first left on
            # that node), so a lost node's workflow starts again from its first task, and
            # the attempts of that first task count the restarts.
            first = (Task.select().where((Task.workflow == task.workflow_id)
                                         & (Task.seq < task.seq))
                     .order_by(Task.seq).first()) or task
            attempts, limit = first.attempts, first.max_attempts
            if attempts < limit:
                if first.id != task.id:
                    Task.update(state="waiting", node=None, lease_expires_at=None,
                                result=None, started_at=None, finished_at=None,
                                progress_done=0, progress_total=0, speed_bps=0).where(
                        (Task.workflow == task.workflow_id)
                        & (Task.seq > first.seq)).execute()
                retry_at = now + timing.retry_delay(attempts)
                Task.update(state="queued", node=None, lease_expires_at=None, result=None,
                            finished_at=None, not_before=retry_at,
                            error=reason).where(Task.id == first.id).execute()
                # The log keeps the lost attempt; the error column is the latest outcome's.
                TaskLog.create(task=first.id, at=now, level="warning",
                               message=f"attempt {attempts} lost: {reason} (during "
                                       f"{task.step}); retrying from {first.step} after "
                                       f"{retry_at:%H:%M:%S} UTC")
                done.append(Reaped(task.id, node_name, requeued=True))
            else:
                message = f"{reason}; gave up after {attempts} attempts"
                Task.update(state="failed", lease_expires_at=None, finished_at=now,
                            error=message).where(Task.id == task.id).execute()
                TaskLog.create(task=task.id, at=now, level="error", message=message)
                Task.update(state="cancelled", finished_at=now).where(
                    (Task.workflow == task.workflow_id)
                    & (Task.state.in_(("waiting", "queued")))).execute()
                Workflow.update(state="failed", error=message, finished_at=now).where(
                    Workflow.id == task.workflow_id).execute()
                done.append(Reaped(task.id, node_name, requeued=False))
        lost = {r.node_name for r in done if r.node_name}
        if lost:
            Node.update(state="lost").where(Node.name.in_(sorted(lost))).execute()
    return done
