"""The plugin host: registration one plugin at a time, events, step wrappers, records.

Every test builds a fresh ``PluginHost()`` and adds small in-test plugins with ``host.add``;
only the entry-point tests load the real ``filesystem`` plugin of this distribution.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Iterator
from contextlib import AbstractContextManager
from typing import Any

import attrs
import click
import flask
import pytest

from sbr_core import hookimpl
from sbr_core.errors import NotFoundError, PluginError, ProviderError, SbrError
from sbr_core.events import BackupEvent, NodeEvent, TaskEvent
from sbr_core.models import ExportRequest, Instance
from sbr_core.plugins import PluginHost, PluginRecord, ProviderInfo
from sbr_core.providers import (
    Application,
    Destination,
    Hypervisor,
    ObjectInfo,
    ProviderKind,
    StorageProvider,
)
from sbr_core.providers.hypervisor import ImportRequest, Snapshot, VmExport
from sbr_core.providers.items import ItemExport, ItemRestoreRequest
from sbr_core.settings import setting
from sbr_core.steps import StepContext, StepResult, WorkflowStep

# --- small providers ---------------------------------------------------------------------


@attrs.frozen
class MemoryConfig:
    """Settings of the in-test providers."""

    bucket: str = setting(label="Bucket", default="b")


class MemoryDestination(Destination):
    """A complete destination that keeps nothing."""

    name = "memory"
    label = "Memory"
    Config = MemoryConfig

    def put(self, key: str, data: Any) -> None:
        """Drop the data."""

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """Nothing is ever stored."""
        return b""

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """No objects."""
        return iter(())

    def delete(self, key: str) -> None:
        """Nothing to remove."""

    def stat(self, key: str) -> ObjectInfo:
        """Every object is empty."""
        return ObjectInfo(key, 0, 0.0)


def destination(name: str, label: str = "") -> type[Destination]:
    """A complete destination class registered under ``name``."""
    return type(f"Dest_{name}", (MemoryDestination,), {"name": name, "label": label or name})


class NullHypervisor(Hypervisor):
    """A hypervisor with no VMs."""

    name = "null-hv"
    label = "Null hypervisor"
    Config = MemoryConfig

    def inventory(self) -> list[Instance]:
        """No VMs."""
        return []

    def export(self, request: ExportRequest) -> AbstractContextManager[VmExport]:
        """Never called in these tests."""
        raise NotImplementedError

    def import_vm(self, request: ImportRequest) -> Instance:
        """Never called in these tests."""
        raise NotImplementedError

    def list_snapshots(self, instance: Instance) -> list[Snapshot]:
        """No snapshots."""
        return []

    def create_snapshot(self, instance: Instance, name: str, *, quiesce: bool = True,
                        memory: bool = False) -> Snapshot:
        """Never called in these tests."""
        raise NotImplementedError

    def delete_snapshot(self, instance: Instance, snapshot_id: str) -> None:
        """Nothing to delete."""


class _NullItems:
    """Item-provider methods shared by the storage and application stand-ins."""

    def inventory(self) -> list[Instance]:
        """No instances."""
        return []

    def export(self, request: ExportRequest) -> AbstractContextManager[ItemExport]:
        """Never called in these tests."""
        raise NotImplementedError

    def restore(self, request: ItemRestoreRequest) -> None:
        """Never called in these tests."""


class NullStorage(_NullItems, StorageProvider):
    """A storage provider with no shares."""

    name = "null-share"
    label = "Null share"
    Config = MemoryConfig


class NullApplication(_NullItems, Application):
    """An application provider with no tenants."""

    name = "null-app"
    label = "Null application"
    Config = MemoryConfig


class FreezeStep(WorkflowStep):
    """A plugin step that would freeze an application before export."""

    name = "freeze"
    label = "Freeze application"
    workflows = ("backup",)
    position = "before"
    anchor = "export"

    def run(self, context: StepContext) -> StepResult:
        """Pretend to freeze."""
        return StepResult(summary="frozen")


# --- small plugins -----------------------------------------------------------------------


class DestinationPlugin:
    """Contributes the given destination classes."""

    def __init__(self, *classes: Any) -> None:
        self.classes = list(classes)

    @hookimpl
    def sbr_register_destinations(self) -> list[Any]:
        return self.classes


class BrokenRegistration:
    """Its registration hook raises, as a plugin with a missing dependency would."""

    @hookimpl
    def sbr_register_destinations(self) -> list[Any]:
        raise ModuleNotFoundError("No module named 'boto3'", name="boto3")


def host_with(*plugins: tuple[str, object]) -> PluginHost:
    host = PluginHost()
    for name, plugin in plugins:
        host.add(plugin, name=name)
    return host


def record_of(host: PluginHost, name: str) -> PluginRecord:
    return host.record(name)


# --- registration of providers -----------------------------------------------------------


def test_a_good_destination_is_registered_and_its_plugin_available() -> None:
    host = host_with(("mem", DestinationPlugin(MemoryDestination)))

    assert host.destinations() == {"memory": MemoryDestination}
    assert host.provider_class(ProviderKind.DESTINATION, "memory") is MemoryDestination
    record = record_of(host, "mem")
    assert (record.status, record.reason) == ("available", "")
    assert record.providers == (ProviderInfo("destination", "memory", "Memory"),)


@pytest.mark.parametrize(
    ("hook", "cls", "lookup"),
    [
        ("sbr_register_hypervisors", NullHypervisor, PluginHost.hypervisors),
        ("sbr_register_applications", NullApplication, PluginHost.applications),
        ("sbr_register_storage_providers", NullStorage, PluginHost.storage_providers),
        ("sbr_register_destinations", MemoryDestination, PluginHost.destinations),
    ],
    ids=["hypervisor", "application", "storage", "destination"],
)
def test_each_provider_kind_is_registered_through_its_hook(
    hook: str, cls: type, lookup: Callable[[PluginHost], dict[str, type]]
) -> None:
    plugin = type("KindPlugin", (), {hook: hookimpl(lambda self: [cls])})()
    host = host_with(("kinds", plugin))

    assert lookup(host) == {cls.name: cls}  # type: ignore[attr-defined]
    assert record_of(host, "kinds").providers == (
        ProviderInfo(cls.kind.value, cls.name, cls.label),)  # type: ignore[attr-defined]


def test_a_registration_hook_that_raises_marks_only_that_plugin() -> None:
    host = host_with(("good", DestinationPlugin(destination("good-dest"))),
                     ("s3", BrokenRegistration()),
                     ("other", DestinationPlugin(destination("other-dest"))))

    assert set(host.destinations()) == {"good-dest", "other-dest"}
    broken = record_of(host, "s3")
    assert broken.status == "unavailable"
    assert "sbr_register_destinations failed" in broken.reason
    assert "missing dependency: no module named 'boto3'" in broken.reason
    assert record_of(host, "good").status == "available"
    assert record_of(host, "other").status == "available"


def test_returning_a_class_that_is_not_a_destination_marks_the_plugin() -> None:
    host = host_with(("wrong", DestinationPlugin(NullHypervisor)),
                     ("good", DestinationPlugin(MemoryDestination)))

    assert host.destinations() == {"memory": MemoryDestination}
    record = record_of(host, "wrong")
    assert record.status == "unavailable"
    assert "not a Destination subclass" in record.reason


@pytest.mark.parametrize("value", [MemoryDestination, "memory", {"memory": MemoryDestination}])
def test_returning_something_other_than_a_list_marks_the_plugin(value: Any) -> None:
    plugin = type("Odd", (), {"sbr_register_destinations": hookimpl(lambda self: value)})()
    host = host_with(("odd", plugin))

    assert host.destinations() == {}
    assert "sbr_register_destinations returned" in record_of(host, "odd").reason
    assert "not a list" in record_of(host, "odd").reason


def test_an_abstract_destination_is_refused_with_the_missing_methods() -> None:
    class HalfDone(Destination):
        name = "half"
        label = "Half done"
        Config = MemoryConfig

        def put(self, key: str, data: Any) -> None:
            """Stores nothing."""

    host = host_with(("half", DestinationPlugin(HalfDone)))

    assert host.destinations() == {}
    reason = record_of(host, "half").reason
    assert "HalfDone does not implement: delete, get, list, stat" in reason


def test_a_duplicate_provider_name_marks_the_second_plugin_and_keeps_the_first() -> None:
    first, second = destination("nas", "First NAS"), destination("nas", "Second NAS")
    host = host_with(("alpha", DestinationPlugin(first)), ("beta", DestinationPlugin(second)))

    assert host.destinations() == {"nas": first}
    assert record_of(host, "alpha").status == "available"
    beta = record_of(host, "beta")
    assert beta.status == "unavailable"
    assert "destination 'nas' is already provided by plugin 'alpha'" in beta.reason
    assert beta.providers == ()


def test_one_plugin_registering_a_name_twice_is_refused() -> None:
    host = host_with(("twice", DestinationPlugin(destination("x"), destination("x"))))

    assert host.destinations() == {}
    assert "registered twice" in record_of(host, "twice").reason


@pytest.mark.parametrize("bad_name", ["Bad_Name", "1st", "", "with space", None])
def test_a_provider_without_a_valid_name_is_refused(bad_name: Any) -> None:
    cls = type("Badly", (MemoryDestination,), {"name": bad_name})
    host = host_with(("bad", DestinationPlugin(cls)))

    assert host.destinations() == {}
    assert "has no valid name" in record_of(host, "bad").reason


def test_a_provider_without_config_or_label_is_refused() -> None:
    no_config = type("NoConfig", (MemoryDestination,), {"name": "nc", "Config": dict})
    no_label = type("NoLabel", (MemoryDestination,), {"name": "nl", "label": ""})
    host = host_with(("nc", DestinationPlugin(no_config)), ("nl", DestinationPlugin(no_label)))

    assert host.destinations() == {}
    assert "has no attrs Config class" in record_of(host, "nc").reason
    assert "has no label" in record_of(host, "nl").reason


def test_a_plugin_that_fails_in_one_hook_contributes_nothing_anywhere() -> None:
    class Mixed:
        @hookimpl
        def sbr_register_hypervisors(self) -> list[Any]:
            return [NullHypervisor]

        @hookimpl
        def sbr_register_destinations(self) -> list[Any]:
            raise RuntimeError("boom")

    host = host_with(("mixed", Mixed()))

    assert host.hypervisors() == {}
    assert record_of(host, "mixed").reason == "sbr_register_destinations failed: RuntimeError: boom"


def test_provider_class_not_found_lists_the_names_there_are() -> None:
    host = host_with(("p", DestinationPlugin(destination("nas"), destination("s3"))))

    with pytest.raises(NotFoundError) as info:
        host.provider_class(ProviderKind.DESTINATION, "tape")
    assert str(info.value) == "no destination plugin named 'tape' (available: nas, s3)"

    with pytest.raises(NotFoundError, match=r"available: none"):
        host.provider_class(ProviderKind.HYPERVISOR, "vmware")


# --- adding plugins ----------------------------------------------------------------------


def test_a_misspelt_hook_marks_the_plugin_unavailable() -> None:
    class Typo:
        @hookimpl
        def sbr_register_destination(self) -> list[Any]:
            return [MemoryDestination]

    host = host_with(("typo", Typo()))

    record = record_of(host, "typo")
    assert record.status == "unavailable"
    assert "unknown hook(s): sbr_register_destination" in record.reason


def test_a_hookimpl_with_unknown_arguments_is_unavailable_and_fully_unregistered() -> None:
    calls: list[str] = []

    class BadArgs:
        @hookimpl
        def sbr_backup_completed(self, event: BackupEvent) -> None:
            calls.append("called")

        @hookimpl
        def sbr_register_destinations(self, registry: object) -> list[Any]:
            return []

    host = host_with(("badargs", BadArgs()))
    host.emit(BackupEvent("vm1", "nas1", 1, backup_id="b1"))

    record = record_of(host, "badargs")
    assert record.status == "unavailable"
    assert "registry" in record.reason
    assert record.kinds == ()
    assert calls == []  # its other hook was not left behind


def test_adding_a_second_plugin_under_a_known_name_is_refused() -> None:
    host = host_with(("mem", DestinationPlugin(MemoryDestination)))

    with pytest.raises(PluginError, match="'mem' is already registered"):
        host.add(DestinationPlugin(destination("other")), name="mem")
    assert host.destinations() == {"memory": MemoryDestination}
    assert record_of(host, "mem").status == "available"


# --- entry points ------------------------------------------------------------------------


def test_discover_loads_the_installed_filesystem_plugin() -> None:
    host = PluginHost.discover()

    assert "filesystem" in host.destinations()
    record = record_of(host, "filesystem")
    assert record.status == "available"
    assert record.distribution == "sbr"
    assert record.kinds == ("destination",)


def test_disabled_plugins_are_listed_but_not_loaded() -> None:
    host = PluginHost()
    host.load_entry_points(disabled=["filesystem"])

    assert "filesystem" not in host.destinations()
    record = record_of(host, "filesystem")
    assert record.status == "disabled"
    assert record.reason
    assert PluginHost.discover(disabled=["filesystem"]).record("filesystem").status == "disabled"


def test_record_of_an_unknown_plugin_names_the_installed_ones() -> None:
    host = host_with(("mem", DestinationPlugin(MemoryDestination)))

    with pytest.raises(NotFoundError, match=r"installed: mem"):
        host.record("nope")


# --- events ------------------------------------------------------------------------------


class Listener:
    """Records every event it is told, per hook."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, object]] = []

    @hookimpl
    def sbr_task_started(self, event: TaskEvent) -> None:
        self.seen.append(("sbr_task_started", event))

    @hookimpl
    def sbr_task_finished(self, event: TaskEvent) -> None:
        self.seen.append(("sbr_task_finished", event))

    @hookimpl
    def sbr_backup_completed(self, event: BackupEvent) -> None:
        self.seen.append(("sbr_backup_completed", event))

    @hookimpl
    def sbr_backup_failed(self, event: BackupEvent) -> None:
        self.seen.append(("sbr_backup_failed", event))

    @hookimpl
    def sbr_node_lost(self, event: NodeEvent) -> None:
        self.seen.append(("sbr_node_lost", event))


class RaisingListener:
    """Fails in every event hook."""

    @hookimpl
    def sbr_task_started(self) -> None:  # takes no argument: a subset is allowed
        raise RuntimeError("notifier down")

    @hookimpl
    def sbr_task_finished(self, event: TaskEvent) -> None:
        raise RuntimeError("notifier down")

    @hookimpl
    def sbr_backup_completed(self, event: BackupEvent) -> None:
        raise RuntimeError("notifier down")

    @hookimpl
    def sbr_backup_failed(self, event: BackupEvent) -> None:
        raise RuntimeError("notifier down")

    @hookimpl
    def sbr_node_lost(self, event: NodeEvent) -> None:
        raise RuntimeError("notifier down")


EVENTS = [
    ("sbr_task_started", TaskEvent(1, 10, "export", "running", "vm1", "node1")),
    ("sbr_task_finished", TaskEvent(1, 10, "export", "succeeded", "vm1", "node1")),
    ("sbr_task_finished", TaskEvent(2, 10, "store", "failed", error="disk full")),
    ("sbr_task_finished", TaskEvent(3, 10, "store", "cancelled")),
    ("sbr_backup_completed", BackupEvent("vm1", "nas1", 10, backup_id="b-1", full=True)),
    ("sbr_backup_failed", BackupEvent("vm1", "nas1", 10, error="snapshot failed")),
    ("sbr_node_lost", NodeEvent("node2", last_seen=1.0, tasks_requeued=2)),
]


@pytest.mark.parametrize(("hook", "event"), EVENTS, ids=[f"{h}-{i}" for i, (h, _) in
                                                          enumerate(EVENTS)])
def test_emit_tells_every_listener_even_when_one_raises(
    hook: str, event: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # The raising listener sits between two good ones, so whatever the calling order, one
    # good listener is called after it.
    first, second = Listener(), Listener()
    host = host_with(("first", first), ("raising", RaisingListener()), ("second", second))

    with caplog.at_level(logging.ERROR, logger="sbr_core.plugins"):
        host.emit(event)

    assert first.seen == [(hook, event)]
    assert second.seen == [(hook, event)]
    assert f"plugin 'raising' failed in {hook}" in caplog.text
    assert record_of(host, "raising").status == "available"  # an event error only logs


def test_emit_refuses_something_that_is_not_an_event() -> None:
    with pytest.raises(TypeError, match="not an SBR event"):
        PluginHost().emit("task done")  # type: ignore[arg-type]


# --- step wrappers -----------------------------------------------------------------------


def _context() -> StepContext:
    return StepContext(workflow="backup", step="export", task_id=7)


def wrapper_plugin(label: str, trail: list[str]) -> object:
    """A plugin wrapping every step: notes entry, the outcome and exit in ``trail``."""

    class Wrapper:
        @hookimpl(wrapper=True)
        def sbr_run_step(self, context: StepContext) -> Generator[None, StepResult, StepResult]:
            trail.append(f"{label} before {context.step}")
            try:
                result = yield
            except SbrError as exc:
                trail.append(f"{label} saw {exc}")
                raise
            trail.append(f"{label} after: {result.summary}")
            return attrs.evolve(result, figures={**result.figures, label: True})

    return Wrapper()


def test_run_step_runs_the_step_inside_every_wrapper_and_passes_the_result_through() -> None:
    trail: list[str] = []
    host = host_with(("audit", wrapper_plugin("audit", trail)),
                     ("timing", wrapper_plugin("timing", trail)))

    def run() -> StepResult:
        trail.append("run")
        return StepResult(summary="42 GiB read", figures={"bytes": 42})

    result = host.run_step(_context(), run)

    # pluggy calls the last registered wrapper outermost.
    assert trail == ["timing before export", "audit before export", "run",
                     "audit after: 42 GiB read", "timing after: 42 GiB read"]
    assert result == StepResult(summary="42 GiB read",
                                figures={"bytes": 42, "audit": True, "timing": True})


def test_run_step_without_plugins_just_runs_the_step() -> None:
    assert PluginHost().run_step(_context(), lambda: StepResult("done")) == StepResult("done")


def test_an_error_of_the_step_propagates_through_the_wrappers() -> None:
    trail: list[str] = []
    host = host_with(("audit", wrapper_plugin("audit", trail)),
                     ("timing", wrapper_plugin("timing", trail)))

    def run() -> StepResult:
        raise ProviderError("hypervisor 'kvm1': domain vm1 vanished")

    with pytest.raises(ProviderError, match="domain vm1 vanished"):
        host.run_step(_context(), run)
    assert trail == ["timing before export", "audit before export",
                     "audit saw hypervisor 'kvm1': domain vm1 vanished",
                     "timing saw hypervisor 'kvm1': domain vm1 vanished"]


def test_a_wrapper_may_fail_a_step_that_succeeded() -> None:
    class PostCommand:
        @hookimpl(wrapper=True)
        def sbr_run_step(self) -> Generator[None, StepResult, StepResult]:
            yield
            raise SbrError("post-backup command exited with status 3")

    host = host_with(("post", PostCommand()))

    with pytest.raises(SbrError, match="status 3"):
        host.run_step(_context(), lambda: StepResult("ok"))


# --- workflow steps, commands, blueprints ------------------------------------------------


def test_workflow_steps_are_registered_by_name() -> None:
    class Steps:
        @hookimpl
        def sbr_register_workflow_steps(self) -> list[Any]:
            return [FreezeStep]

    class NotSteps:
        @hookimpl
        def sbr_register_workflow_steps(self) -> list[Any]:
            return [MemoryDestination]

    host = host_with(("steps", Steps()), ("notsteps", NotSteps()))

    assert host.workflow_steps() == {"freeze": FreezeStep}
    assert "not a WorkflowStep subclass" in record_of(host, "notsteps").reason
    assert record_of(host, "steps").kinds == ("workflow-step",)


def test_commands_and_blueprints_are_collected_with_their_plugin() -> None:
    command = click.Command("hello", callback=lambda: None)
    blueprint = flask.Blueprint("hello_ui", __name__)

    class Surface:
        @hookimpl
        def sbr_register_commands(self) -> list[Any]:
            return [command]

        @hookimpl
        def sbr_register_blueprints(self) -> list[Any]:
            return [blueprint]

    class Silent:
        @hookimpl
        def sbr_register_commands(self) -> None:
            return None

    host = host_with(("surface", Surface()), ("silent", Silent()))

    assert host.commands() == [("surface", command)]
    assert host.blueprints() == [("surface", blueprint)]
    assert record_of(host, "surface").kinds == ("cli", "web")


def test_a_failing_commands_hook_marks_its_plugin_and_spares_the_others() -> None:
    command = click.Command("hello", callback=lambda: None)

    class Good:
        @hookimpl
        def sbr_register_commands(self) -> list[Any]:
            return [command]

    class Bad:
        @hookimpl
        def sbr_register_commands(self) -> list[Any]:
            raise ImportError("cannot import name 'group' from 'click'")

    class Bare:
        @hookimpl
        def sbr_register_commands(self) -> Any:
            return command  # not a list

    host = host_with(("bad", Bad()), ("good", Good()), ("bare", Bare()))

    assert host.commands() == [("good", command)]
    assert record_of(host, "bad").status == "unavailable"
    assert "cannot import name" in record_of(host, "bad").reason
    assert "sbr_register_commands returned Command, not a list" in record_of(host, "bare").reason


def test_mark_unavailable_records_a_refused_contribution() -> None:
    host = host_with(("surface", DestinationPlugin(MemoryDestination)))

    host.mark_unavailable("surface", "command 'server' clashes with a core command")

    record = record_of(host, "surface")
    assert (record.status, record.reason) == (
        "unavailable", "command 'server' clashes with a core command")
    assert host.destinations() == {}


# --- records -----------------------------------------------------------------------------


def test_records_list_every_plugin_sorted_with_kinds_and_status() -> None:
    class Everything(Listener):
        @hookimpl
        def sbr_register_destinations(self) -> list[Any]:
            return [MemoryDestination]

        @hookimpl
        def sbr_register_hypervisors(self) -> list[Any]:
            return [NullHypervisor]

        @hookimpl(wrapper=True)
        def sbr_run_step(self) -> Generator[None, StepResult, StepResult]:
            return (yield)

    host = host_with(("zeta", Everything()), ("broken", BrokenRegistration()))
    host.load_entry_points(disabled=["filesystem"])

    records = {r.name: r for r in host.records()}
    names = [r.name for r in host.records()]

    assert names == sorted(names)
    zeta = records["zeta"]
    assert zeta.kinds == ("destination", "events", "hypervisor", "step-wrapper")
    assert zeta.status == "available"
    assert zeta.providers == (ProviderInfo("destination", "memory", "Memory"),
                              ProviderInfo("hypervisor", "null-hv", "Null hypervisor"))
    assert (records["broken"].status, records["broken"].kinds) == (
        "unavailable", ("destination",))
    assert records["filesystem"].status == "disabled"
    assert records["filesystem"].kinds == ()
    assert zeta.to_json() == {
        "name": "zeta", "version": "", "distribution": "zeta",
        "kinds": ("destination", "events", "hypervisor", "step-wrapper"),
        "status": "available", "reason": "",
        "providers": ({"kind": "destination", "name": "memory", "label": "Memory"},
                      {"kind": "hypervisor", "name": "null-hv", "label": "Null hypervisor"}),
    }


def test_a_second_step_with_a_taken_name_marks_its_plugin() -> None:
    class Steps:
        @hookimpl
        def sbr_register_workflow_steps(self) -> list[Any]:
            return [FreezeStep]

    host = host_with(("first", Steps()), ("second", Steps()))

    assert host.workflow_steps() == {"freeze": FreezeStep}
    assert record_of(host, "first").status == "available"
    assert "'freeze' is already registered" in record_of(host, "second").reason


def test_a_plugin_marked_unavailable_is_no_longer_told_events_or_steps() -> None:
    class HalfBroken(Listener):
        @hookimpl
        def sbr_register_destinations(self) -> list[Any]:
            raise RuntimeError("cannot reach its licence server")

        @hookimpl(wrapper=True)
        def sbr_run_step(self, context: StepContext, run: Any) -> Any:
            self.seen.append(("sbr_run_step", context))
            return (yield)

    plugin = HalfBroken()
    host = host_with(("half", plugin))
    host.destinations()
    assert record_of(host, "half").status == "unavailable"
    assert record_of(host, "half").kinds == ("destination", "events", "step-wrapper")

    host.emit(NodeEvent(node_name="n1", last_seen=0.0))
    result = host.run_step(_context(), lambda: StepResult(summary="ran"))

    assert result.summary == "ran"
    assert plugin.seen == []
