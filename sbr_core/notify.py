"""Notifications: what an event tells people, and getting it to every notifier that wants it.

Three layers, each usable without the next:

* :func:`build_notification` turns an event into a :class:`Notification` (subject, plain-text
  body, severity, the event's fields for JSON), or ``None`` for events nobody is told about
  (a task that started or succeeded).
* :func:`dispatch` sends one event to a list of configured notifiers, synchronously: each
  notifier whose event choices (:class:`~sbr_core.providers.NotifierConfig`) want it gets it,
  with bounded retries of retryable failures. Nothing raises out of it; every outcome comes
  back as a :class:`Delivery` and failures are logged. :func:`load_notifiers` reads the
  notifier connections an admin configured from the database.
* :class:`Notifications` is the core's own listener on the event hooks, registered by the
  server with :func:`install` (not by any plugin). Its hook implementations only put the
  notification on a bounded queue; worker threads load the notifier connections and send.
  A slow or unreachable mail server therefore never delays or fails a task: the worst it
  costs is a queued notification, and when the queue is full new ones are dropped and logged.

Delivery failures are logged (logger ``sbr.notify``), not written to the audit log: the audit
log records what people did, and a mail server being down is not an admin's action.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, cast

import attrs

from sbr_core import __version__
from sbr_core.db.connect import close_database
from sbr_core.db.schema import database_proxy
from sbr_core.errors import ProviderError, SbrError
from sbr_core.events import BackupEvent, NodeEvent, TaskEvent
from sbr_core.hookspecs import hookimpl
from sbr_core.plugins import PluginHost
from sbr_core.providers import EventKind, Notifier, ProviderContext, ProviderKind
from sbr_core.redaction import redact
from sbr_core.secretbox import SecretBox

log = logging.getLogger("sbr.notify")

Event = TaskEvent | BackupEvent | NodeEvent

#: Steps of a backup workflow: when one fails, the workflow tells ``sbr_backup_failed`` with
#: the instance and the error, so the task failure itself is not told a second time.
BACKUP_STEPS = frozenset({"export", "store"})

#: The name under which :func:`install` registers the listener with the plugin host.
LISTENER_NAME = "sbr-notifications"

_SEVERITY = {
    EventKind.BACKUP_FAILED: "error",
    EventKind.TASK_FAILED: "error",
    EventKind.NODE_LOST: "warning",
    EventKind.BACKUP_SUCCEEDED: "info",
}


# --- what an event tells -------------------------------------------------------------------


@attrs.frozen
class Notification:
    """One message about one event, the same for every notifier.

    ``kind`` says which event it is, ``severity`` is ``error``, ``warning`` or ``info``;
    ``subject`` is one line, ``body`` plain text; ``fields`` are the event's own fields (for
    JSON); ``id`` is the same on every retry, so a receiver can drop duplicates; ``time`` is
    when the event was told (ISO 8601, UTC) and ``origin`` the server's host name.
    """

    kind: EventKind
    severity: str
    subject: str
    body: str
    fields: dict[str, Any]
    id: str = attrs.field(factory=lambda: uuid.uuid4().hex)
    time: str = attrs.field(factory=lambda: _iso(time.time()))
    origin: str = attrs.field(factory=socket.gethostname)

    def to_json(self) -> dict[str, Any]:
        """The notification as plain JSON values (what a webhook posts)."""
        return {"id": self.id, "event": self.kind.value, "severity": self.severity,
                "subject": self.subject, "text": self.body, "time": self.time,
                "origin": self.origin, "sbr_version": __version__, "data": dict(self.fields)}


def notification_kind(event: Event) -> EventKind | None:
    """Which notifiable event this is, or ``None`` when nobody is told about it."""
    if isinstance(event, BackupEvent):
        return EventKind.BACKUP_FAILED if event.error else EventKind.BACKUP_SUCCEEDED
    if isinstance(event, NodeEvent):
        return EventKind.NODE_LOST
    if isinstance(event, TaskEvent):
        step = event.kind.rpartition(".")[2]  # the engine says "backup.store"
        if event.state == "failed" and step not in BACKUP_STEPS:
            return EventKind.TASK_FAILED
        return None
    raise TypeError(f"not an SBR event: {event!r}")


def build_notification(event: Event, at: float | None = None) -> Notification | None:
    """The notification for ``event`` (told at ``at``, default now); ``None`` when it is
    not one people are told about.

    Text is passed through the log redaction as a backstop: an error message that quotes a
    secret SBR knows never leaves the server in a mail.
    """
    kind = notification_kind(event)
    if kind is None:
        return None
    subject, lead, facts = _describe(event)
    lines = [lead, ""]
    lines += [f"{label + ':':<13}" + str(value).replace("\n", "\n" + " " * 13)
              for label, value in facts if value not in ("", None)]
    body = "\n".join(lines) + "\n"
    fields = {name: redact(value) if isinstance(value, str) else value
              for name, value in attrs.asdict(event).items()}
    return Notification(kind=kind, severity=_SEVERITY[kind], subject=redact(subject),
                        body=redact(body), fields=fields, time=_iso(at or time.time()))


def _describe(event: Event) -> tuple[str, str, list[tuple[str, Any]]]:
    """(subject, first sentence, labelled facts) of an event."""
    if isinstance(event, BackupEvent):
        target = f"instance {event.instance_name!r} to destination {event.destination_name!r}"
        facts: list[tuple[str, Any]] = [("Instance", event.instance_name),
                                        ("Destination", event.destination_name)]
        if event.error:
            facts += [("Error", event.error), ("Workflow", event.workflow_id)]
            return (f"Backup of {event.instance_name!r} failed",
                    f"The backup of {target} failed.", facts)
        facts += [("Backup", event.backup_id),
                  ("Type", "full" if event.full else "incremental"),
                  ("Read", _size(event.bytes_read)), ("Stored", _size(event.bytes_stored)),
                  ("Duration", _duration(event.duration_s)), ("Workflow", event.workflow_id)]
        return (f"Backup of {event.instance_name!r} succeeded",
                f"The backup of {target} succeeded.", facts)
    if isinstance(event, NodeEvent):
        return (f"Node {event.node_name!r} lost",
                f"Node {event.node_name!r} stopped sending heartbeats; its tasks were put back "
                "in the queue for other nodes.",
                [("Node", event.node_name), ("Last seen", _iso(event.last_seen)),
                 ("Requeued", f"{event.tasks_requeued} task(s)")])
    about = f" for {event.instance_name!r}" if event.instance_name else ""
    return (f"Task {event.task_id} ({event.kind}){about} failed",
            f"Task {event.task_id} ({event.kind}){about} failed.",
            [("Instance", event.instance_name), ("Error", event.error),
             ("Node", event.node_name), ("Task", event.task_id),
             ("Workflow", event.workflow_id)])


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="seconds")


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024:
            return f"{value:.1f} {unit}"
    return f"{value / 1024:.1f} TiB"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


# --- sending -------------------------------------------------------------------------------


@attrs.frozen
class Retry:
    """How often one notifier is tried: ``attempts`` in all, waiting ``delays[i]`` seconds
    before try ``i + 2`` (the last delay repeats); a server's own hint (Retry-After) is
    followed up to ``max_wait`` seconds."""

    attempts: int = 3
    delays: tuple[float, ...] = (5.0, 30.0)
    max_wait: float = 300.0

    def delay(self, attempt: int, hint: float | None) -> float:
        """Seconds to wait after failed try number ``attempt`` (1-based)."""
        if hint is not None and hint >= 0:
            return min(hint, self.max_wait)
        return self.delays[min(attempt, len(self.delays)) - 1] if self.delays else 0.0


DEFAULT_RETRY = Retry()


@attrs.frozen
class Delivery:
    """The outcome of sending one notification to one notifier."""

    notifier: str
    ok: bool
    attempts: int
    error: str = ""


#: ``wait(seconds)`` sleeps between tries; a true result abandons the retries (shutdown).
Wait = Callable[[float], object]


def deliver(notification: Notification, notifiers: Iterable[Notifier], *,
            retry: Retry = DEFAULT_RETRY, wait: Wait = time.sleep) -> list[Delivery]:
    """Send ``notification`` to each notifier that wants its kind; never raises."""
    return [_send_with_retries(n, notification, retry, wait) for n in notifiers
            if n.config.wants(notification.kind)]


def dispatch(event: Event, notifiers: Iterable[Notifier], *, retry: Retry = DEFAULT_RETRY,
             wait: Wait = time.sleep) -> list[Delivery]:
    """Build the notification for ``event`` and :func:`deliver` it, in the calling thread.

    Returns one :class:`Delivery` per notifier that wanted the event (none for events nobody
    is told about). Failures are logged and returned, never raised.
    """
    notification = build_notification(event)
    return [] if notification is None else deliver(notification, notifiers, retry=retry,
                                                   wait=wait)


def _send_with_retries(notifier: Notifier, notification: Notification, retry: Retry,
                       wait: Wait) -> Delivery:
    name = notifier.context.name
    attempt = 0
    while True:
        attempt += 1
        try:
            notifier.send(notification)
        except ProviderError as exc:
            if exc.retryable and attempt < retry.attempts:
                delay = retry.delay(attempt, exc.retry_after)
                log.info("notifier %r: try %d of %d failed, next in %gs: %s",
                         name, attempt, retry.attempts, delay, exc)
                if not wait(delay):
                    continue
                return _failed(name, notification, attempt, f"{exc} (retry abandoned: "
                               "the server is stopping)")
            return _failed(name, notification, attempt, str(exc))
        except Exception as exc:  # a plugin bug: report it, do not retry
            log.exception("notifier %r failed unexpectedly", name)
            return _failed(name, notification, attempt, f"{type(exc).__name__}: {exc}",
                           logged=True)
        log.info("notifier %r told %s: %s", name, notification.kind.value, notification.subject)
        return Delivery(name, True, attempt)


def _failed(name: str, notification: Notification, attempts: int, error: str, *,
            logged: bool = False) -> Delivery:
    if not logged:
        log.warning("notifier %r could not tell %r after %d attempt(s): %s",
                    name, notification.subject, attempts, error)
    return Delivery(name, False, attempts, error)


def load_notifiers(*, host: PluginHost, box: SecretBox) -> list[Notifier]:
    """Every notifier connection configured in the database, ready to send, by name.

    A connection whose plugin is missing or unavailable, whose settings no longer validate or
    whose secrets cannot be opened is logged and skipped; the others still send.
    """
    from sbr_core import connections
    from sbr_core.db.schema import ProviderConnection

    rows = (ProviderConnection.select()
            .where(ProviderConnection.kind == ProviderKind.NOTIFIER.value)
            .order_by(ProviderConnection.name))
    out: list[Notifier] = []
    for row in rows:
        context = ProviderContext(name=row.name,
                                  logger=logging.getLogger(f"sbr.notify.{row.name}"))
        try:
            provider = connections.provider_of(ProviderKind.NOTIFIER, row, host=host, box=box,
                                               context=context)
        except SbrError as exc:
            log.warning("notifier %r is skipped: %s", row.name, exc)
            continue
        out.append(cast(Notifier, provider))  # the host admits only Notifier subclasses
    return out


# --- the server's listener -----------------------------------------------------------------


class Notifications:
    """The core's listener on the event hooks: queues each notification, sends in workers.

    ``load`` returns the notifiers to consider for each notification (default: the database,
    read afresh, so a notifier an admin just added or changed is used at once). ``workers``
    threads send; ``queue_size`` bounds what may wait (beyond it, new notifications are
    dropped and logged rather than held in memory or blocking the emitting task).
    """

    def __init__(self, *, host: PluginHost, box: SecretBox,
                 load: Callable[[], list[Notifier]] | None = None, workers: int = 2,
                 queue_size: int = 1000, retry: Retry = DEFAULT_RETRY) -> None:
        self._load = load or (lambda: load_notifiers(host=host, box=box))
        self._retry = retry
        self._workers = workers
        # (event, when it was told); None stops a worker
        self._queue: queue.Queue[tuple[Event, float] | None] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    # The hooks only queue: they run in the task engine's thread.

    @hookimpl
    def sbr_task_finished(self, event: TaskEvent) -> None:
        """Queue a notification when a task failed."""
        self.submit(event)

    @hookimpl
    def sbr_backup_completed(self, event: BackupEvent) -> None:
        """Queue a notification of a successful backup."""
        self.submit(event)

    @hookimpl
    def sbr_backup_failed(self, event: BackupEvent) -> None:
        """Queue a notification of a failed backup."""
        self.submit(event)

    @hookimpl
    def sbr_node_lost(self, event: NodeEvent) -> None:
        """Queue a notification of a lost node."""
        self.submit(event)

    def submit(self, event: Event) -> bool:
        """Queue the notification for ``event``; false when none is due or it was dropped.
        Only the cheap decision happens here, in the caller's thread; the text is written
        by a worker."""
        kind = notification_kind(event)
        if kind is None or self._stop.is_set():
            return False
        try:
            self._queue.put_nowait((event, time.time()))
        except queue.Full:
            log.warning("notification dropped, %d already waiting: %s",
                        self._queue.maxsize, kind.value)
            return False
        self._start_workers()
        return True

    def _start_workers(self) -> None:
        with self._lock:
            if self._threads or self._stop.is_set():
                return
            for number in range(self._workers):
                thread = threading.Thread(target=self._run, name=f"sbr-notify-{number}",
                                          daemon=True)
                thread.start()
                self._threads.append(thread)

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while batch[-1] is not None:  # what else is waiting shares one load
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._send([item for item in batch if item is not None])
            except Exception:  # the worker must survive whatever a notification does
                log.exception("notifications %r were not sent", batch)
            finally:
                for _ in batch:
                    self._queue.task_done()
            if batch[-1] is None:
                # The worker kept its database connection from one batch to the next
                # (peewee's are per thread): a new one per batch cost a MariaDB handshake
                # for every backup the server told about.
                if database_proxy.obj is not None:
                    close_database(database_proxy.obj)
                return

    def _send(self, events: list[tuple[Event, float]]) -> None:
        notifications = [n for n in (build_notification(e, at) for e, at in events) if n]
        if not notifications:
            return
        notifiers = self._load()
        try:
            for notification in notifications:
                deliver(notification, notifiers, retry=self._retry, wait=self._stop.wait)
        finally:
            for notifier in notifiers:
                try:
                    notifier.close()
                except Exception:
                    log.exception("notifier %r failed to close", notifier.context.name)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every queued notification was handled; false on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._queue.all_tasks_done.wait(remaining)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Stop taking notifications, give queued ones ``timeout`` seconds, end the workers.

        Retries still waiting are abandoned (and logged); what is left in the queue after the
        timeout is lost with the process, as the workers are daemon threads.
        """
        self.wait_idle(timeout)
        self._stop.set()
        with self._lock:
            threads, self._threads = self._threads, []
        for _ in threads:
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                break
        for thread in threads:
            thread.join(timeout=1.0)


def install(host: PluginHost, *, box: SecretBox, **options: Any) -> Notifications:
    """Register the notification listener with ``host``; the server calls this once at start.

    It is listed by ``sbr plugins`` as ``sbr-notifications`` (kind ``events``). ``options``
    go to :class:`Notifications`. Call :meth:`Notifications.close` at shutdown.
    """
    listener = Notifications(host=host, box=box, **options)
    host.add(listener, name=LISTENER_NAME, version=__version__, distribution="sbr")
    return listener
