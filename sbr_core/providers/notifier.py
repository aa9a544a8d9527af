"""Notifiers: tell people (mail, chat, a ticket system) about backups, tasks and nodes.

A notifier plugin registers :class:`Notifier` subclasses through ``sbr_register_notifiers``. An
admin configures each one as a named connection of kind ``notifier``; its ``Config`` derives
from :class:`NotifierConfig`, whose fields say which events this connection wants and how long
one delivery may take. The server builds a :class:`sbr_core.notify.Notification` from each
event and hands it to :meth:`Notifier.send` in a background thread (see
:mod:`sbr_core.notify`), so a slow or broken notifier never delays a task.
"""

from __future__ import annotations

import abc
import enum
from typing import TYPE_CHECKING, Any, ClassVar

import attrs

from sbr_core.providers.base import Provider, ProviderKind
from sbr_core.settings import setting

if TYPE_CHECKING:
    from sbr_core.notify import Notification


class EventKind(enum.StrEnum):
    """The events a notifier can be told about; the value is what JSON and mail headers show."""

    BACKUP_FAILED = "backup-failed"
    BACKUP_SUCCEEDED = "backup-succeeded"
    TASK_FAILED = "task-failed"
    NODE_LOST = "node-lost"


#: Longest timeout an admin may set: a worker thread waits at most this long per attempt.
MAX_TIMEOUT_S = 120.0


def _timeout(_: Any, __: attrs.Attribute[float], value: float) -> None:
    if not 0 < value <= MAX_TIMEOUT_S:
        raise ValueError(f"must be more than 0 and at most {MAX_TIMEOUT_S:g} seconds, "
                         f"got {value:g}")


@attrs.frozen(kw_only=True)
class NotifierConfig:
    """Settings every notifier has; each plugin's ``Config`` derives from this class.

    The fields are keyword-only, so a subclass may declare required fields of its own. The
    default is what an admin wants from a new notifier: failures and lost nodes, not every
    successful backup.
    """

    on_backup_failed: bool = setting(
        label="Backup failed",
        help="Tell when a backup of an instance failed after its last attempt.",
        default=True)
    on_backup_succeeded: bool = setting(
        label="Backup succeeded",
        help="Tell about every successful backup (one notification per instance and run).",
        default=False)
    on_task_failed: bool = setting(
        label="Task failed",
        help="Tell when a restore, mount, import, snapshot or plugin task failed. Failed "
        "export and store tasks are told as 'Backup failed' instead, so one failed backup "
        "gives one notification.",
        default=True)
    on_node_lost: bool = setting(
        label="Node lost",
        help="Tell when a node stopped sending heartbeats and its tasks were put back in the "
        "queue.",
        default=True)
    timeout: float = setting(
        label="Timeout (seconds)",
        help="How long one delivery attempt may wait for the server at the other end.",
        default=10.0, validator=_timeout)

    def wants(self, kind: EventKind) -> bool:
        """Whether this notifier is to be told about events of ``kind``."""
        return {
            EventKind.BACKUP_FAILED: self.on_backup_failed,
            EventKind.BACKUP_SUCCEEDED: self.on_backup_succeeded,
            EventKind.TASK_FAILED: self.on_task_failed,
            EventKind.NODE_LOST: self.on_node_lost,
        }[kind]


class Notifier(Provider):
    """Delivers notifications to one configured place (a mailbox, a webhook, …).

    ``Config`` must derive from :class:`NotifierConfig`; the host refuses a notifier whose
    ``Config`` does not. Override :meth:`~sbr_core.providers.Provider.test_connection` when the
    other end can be checked without sending anything.
    """

    kind: ClassVar[ProviderKind] = ProviderKind.NOTIFIER
    Config: ClassVar[type[NotifierConfig]]
    config_base: ClassVar[type] = NotifierConfig  # the dispatcher reads the event choices
    config: NotifierConfig

    @abc.abstractmethod
    def send(self, notification: Notification) -> None:
        """Deliver one notification, waiting at most ``config.timeout`` per network step.

        Called by: the server's notification worker thread, never by a task. Raise
        :class:`sbr_core.errors.ProviderError` naming the connection when delivery failed;
        ``retryable=True`` (a refused connection, a timeout, a 4xx SMTP or 5xx HTTP answer)
        lets the worker try again later, ``retryable=False`` (refused credentials, an unknown
        recipient) gives up at once. Anything else is treated as a bug and not retried.
        """
