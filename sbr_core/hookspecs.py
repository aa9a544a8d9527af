"""Every hook SBR offers a plugin, in one module, grouped by phase.

Plugins are pluggy plugins of the project ``sbr``, found through the entry point group ``sbr``.
Implement a hook with ``@sbr_core.hookimpl``. pluggy passes arguments by keyword only, so a hook
implementation may accept any subset of the parameters listed here, by name.

The core never calls ``pm.hook`` itself: it goes through :class:`sbr_core.plugins.PluginHost`,
which calls registration and event hooks one implementation at a time so that one failing
plugin cannot hurt the others.

Groups:

* registration — providers a plugin contributes: hypervisors, applications, storage providers,
  backup destinations, workflow steps, notifiers;
* surface — CLI commands and web blueprints;
* steps — wrapping each workflow step (pre/post commands, timing, audit);
* events — told in the past tense, after the fact; return values are ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import click
    import flask

    from sbr_core.events import BackupEvent, NodeEvent, TaskEvent
    from sbr_core.providers import Application, Destination, Hypervisor, Notifier, StorageProvider
    from sbr_core.steps import StepContext, StepResult, WorkflowStep

PROJECT = "sbr"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- registration -------------------------------------------------------------------------


@hookspec
def sbr_register_hypervisors() -> list[type[Hypervisor]]:
    """Contribute hypervisor providers (VMware vSphere, KVM/libvirt, …).

    Called by: ``PluginHost.hypervisors()``, once per host, when the server, a node or the CLI
    first needs the list.

    Returns: a list of :class:`sbr_core.providers.Hypervisor` subclasses; ``None`` or an empty
    list when the plugin has none. The classes may import their platform library at module
    level: the host imports them here, and an ``ImportError`` marks the plugin "unavailable"
    with the missing module as the reason.

    May raise: anything; the host catches it and marks only this plugin unavailable.
    """


@hookspec
def sbr_register_applications() -> list[type[Application]]:
    """Contribute application providers (Microsoft 365 tenants, databases, …).

    Called by: ``PluginHost.applications()``, once per host.

    Returns: a list of :class:`sbr_core.providers.Application` subclasses, or ``None``.

    May raise: anything; the host marks only this plugin unavailable.
    """


@hookspec
def sbr_register_storage_providers() -> list[type[StorageProvider]]:
    """Contribute storage providers (file shares, NAS, object stores protected as files).

    Called by: ``PluginHost.storage_providers()``, once per host.

    Returns: a list of :class:`sbr_core.providers.StorageProvider` subclasses, or ``None``.

    May raise: anything; the host marks only this plugin unavailable.
    """


@hookspec
def sbr_register_destinations() -> list[type[Destination]]:
    """Contribute backup destinations (file system, S3, IBM Spectrum Protect, …).

    Called by: ``PluginHost.destinations()``, once per host.

    Returns: a list of :class:`sbr_core.providers.Destination` subclasses, or ``None``.

    May raise: anything; the host marks only this plugin unavailable.
    """


@hookspec
def sbr_register_workflow_steps() -> list[type[WorkflowStep]]:
    """Contribute workflow steps that run before or after a core step (e.g. a pre-backup
    command, an application freeze).

    Called by: ``PluginHost.workflow_steps()``, once per host, when workflows are planned.

    Returns: a list of :class:`sbr_core.steps.WorkflowStep` subclasses, or ``None``.

    May raise: anything; the host marks only this plugin unavailable.
    """


@hookspec
def sbr_register_notifiers() -> list[type[Notifier]]:
    """Contribute notifiers: places that tell people about failed backups, failed tasks and
    lost nodes (e-mail, webhooks, chat, ticket systems).

    Called by: ``PluginHost.notifiers()``, once per host, when the server's notification
    worker first loads the notifier connections an admin configured, or when the UI or CLI
    lists the notifier plugins.

    Returns: a list of :class:`sbr_core.providers.Notifier` subclasses, or ``None``. Each
    class's ``Config`` must derive from :class:`sbr_core.providers.NotifierConfig`, which
    carries the event choices every notifier offers. Deliveries run in a worker thread of
    the server, never in a task, with the configured timeout and a few retries.

    May raise: anything; the host marks only this plugin unavailable.
    """


# --- surface ------------------------------------------------------------------------------


@hookspec
def sbr_register_commands() -> list[click.Command]:
    """Contribute sub-commands to the ``sbr`` command line.

    Called by: the CLI's root group, when it lists or resolves sub-commands.

    Returns: a list of click commands or groups; a name that clashes with a core command is
    refused and the plugin is marked with the reason.

    May raise: anything; the CLI goes on without this plugin's commands.
    """


@hookspec
def sbr_register_blueprints() -> list[flask.Blueprint]:
    """Contribute Flask blueprints (pages, API routes) to the server's web app.

    Called by: ``sbr_web.create_app``, once, while the app is built. Every route of a plugin
    blueprint requires a logged-in user; the core adds that check.

    Returns: a list of blueprints, or ``None``.

    May raise: anything; the app starts without this plugin's blueprints.
    """


# --- steps --------------------------------------------------------------------------------


@hookspec(firstresult=True)
def sbr_run_step(context: StepContext, run: Callable[[], StepResult]) -> StepResult:
    """Run one workflow step. The core's own implementation (last in line) calls ``run()``.

    Called by: the task engine, once per step of every workflow run, via
    ``PluginHost.run_step()``.

    Plugins wrap it with ``@hookimpl(wrapper=True)`` to add pre/post commands, timing or
    audit: ``result = yield`` runs the step (and inner wrappers) and returns its
    :class:`sbr_core.steps.StepResult` or raises its error. A wrapper may raise an SbrError to
    fail the step.

    Returns: the step's result; never ``None``.
    """


# --- events -------------------------------------------------------------------------------


@hookspec
def sbr_task_started(event: TaskEvent) -> None:
    """A node began running a task.

    Called by: ``PluginHost.emit()``, from the task engine, after the task's state became
    ``running``.

    May raise: anything; the error is logged and the task goes on.
    """


@hookspec
def sbr_task_finished(event: TaskEvent) -> None:
    """A task ended: ``event.state`` is ``succeeded``, ``failed`` or ``cancelled``.

    Called by: ``PluginHost.emit()``, from the task engine, after the final state was stored.

    May raise: anything; the error is logged and ignored.
    """


@hookspec
def sbr_backup_completed(event: BackupEvent) -> None:
    """A backup of one instance is stored and recorded in the catalog.

    Called by: ``PluginHost.emit()``, from the backup workflow, after its manifest is written.

    May raise: anything; the error is logged and the backup stays.
    """


@hookspec
def sbr_backup_failed(event: BackupEvent) -> None:
    """A backup of one instance failed; ``event.error`` says why. Nothing partial is visible.

    Called by: ``PluginHost.emit()``, from the backup workflow, after its last attempt failed.

    May raise: anything; the error is logged and ignored.
    """


@hookspec
def sbr_node_lost(event: NodeEvent) -> None:
    """A node missed its heartbeats; its tasks were put back in the queue.

    Called by: ``PluginHost.emit()``, from the server's lease check.

    May raise: anything; the error is logged and ignored.
    """
