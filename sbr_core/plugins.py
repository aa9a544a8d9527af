"""The plugin host: the one owner of the pluggy manager.

Core code asks the host for providers, steps, commands and blueprints and tells it events; it
never touches ``pm.hook``. The host loads entry points itself, one at a time, so that a plugin
that fails to import or to register is listed as unavailable with the reason and nothing else
suffers. Nothing is loaded at import time: build a host with :meth:`PluginHost.discover`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from importlib import metadata
from typing import Any, TypeVar

import attrs
import pluggy

from sbr_core import hookspecs
from sbr_core.errors import NotFoundError, PluginError
from sbr_core.events import BackupEvent, NodeEvent, TaskEvent
from sbr_core.hookspecs import hookimpl
from sbr_core.providers import (
    Application,
    Destination,
    Hypervisor,
    Notifier,
    Provider,
    ProviderKind,
    StorageProvider,
)
from sbr_core.steps import StepContext, StepResult, WorkflowStep

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "sbr"
_CORE_PLUGIN = "sbr-core"
_NAME = re.compile(r"^[a-z][a-z0-9-]*$")

P = TypeVar("P", bound=Provider)

_PROVIDER_HOOKS: dict[ProviderKind, tuple[str, type[Provider]]] = {
    ProviderKind.HYPERVISOR: ("sbr_register_hypervisors", Hypervisor),
    ProviderKind.APPLICATION: ("sbr_register_applications", Application),
    ProviderKind.STORAGE: ("sbr_register_storage_providers", StorageProvider),
    ProviderKind.DESTINATION: ("sbr_register_destinations", Destination),
    ProviderKind.NOTIFIER: ("sbr_register_notifiers", Notifier),
}

# Which extension kind each hook stands for, as `sbr plugins` shows it.
_HOOK_KINDS = {
    **{hook: kind.value for kind, (hook, _) in _PROVIDER_HOOKS.items()},
    "sbr_register_workflow_steps": "workflow-step",
    "sbr_register_commands": "cli",
    "sbr_register_blueprints": "web",
    "sbr_run_step": "step-wrapper",
    "sbr_task_started": "events",
    "sbr_task_finished": "events",
    "sbr_backup_completed": "events",
    "sbr_backup_failed": "events",
    "sbr_node_lost": "events",
}


@attrs.frozen
class ProviderInfo:
    """One provider class a plugin contributed."""

    kind: str
    name: str
    label: str


@attrs.frozen
class PluginRecord:
    """What ``sbr plugins`` and the Plugins page show of one plugin."""

    name: str
    version: str
    distribution: str
    kinds: tuple[str, ...]
    status: str  # "available", "unavailable" or "disabled"
    reason: str = ""
    providers: tuple[ProviderInfo, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """A plain dict for ``--json`` and the REST API."""
        return attrs.asdict(self, recurse=True)


@attrs.define
class _Loaded:
    name: str
    version: str
    distribution: str
    module: object | None
    failure: str = ""
    disabled: bool = False


class _CoreImplementations:
    """The core's own hook implementations."""

    @hookimpl(trylast=True)
    def sbr_run_step(self, context: StepContext, run: Callable[[], StepResult]) -> StepResult:
        return run()


class PluginHost:
    """Owns the plugin manager; typed access to everything plugins contribute."""

    def __init__(self) -> None:
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self._pm.register(_CoreImplementations(), name=_CORE_PLUGIN)
        self._loaded: dict[str, _Loaded] = {}
        self._providers: dict[ProviderKind, dict[str, type[Provider]]] | None = None
        self._steps: dict[str, type[WorkflowStep]] | None = None

    # --- loading --------------------------------------------------------------------------

    @classmethod
    def discover(cls, *, disabled: Iterable[str] = ()) -> PluginHost:
        """A host with every plugin of the ``sbr`` entry point group loaded (or marked)."""
        host = cls()
        host.load_entry_points(disabled=disabled)
        return host

    def load_entry_points(self, *, disabled: Iterable[str] = ()) -> None:
        """Import each entry point of the group under ``try`` and register what loads."""
        skip = set(disabled)
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist
            version = dist.version if dist else "?"
            dist_name = dist.metadata["Name"] if dist else "?"
            if ep.name in self._loaded:
                log.warning("plugin %r is installed twice; keeping the first", ep.name)
                continue
            if ep.name in skip:
                self._loaded[ep.name] = _Loaded(ep.name, version, dist_name, None, disabled=True)
                continue
            try:
                module = ep.load()
            except Exception as exc:  # any failure disables this plugin only
                self._loaded[ep.name] = _Loaded(ep.name, version, dist_name, None, _reason(exc))
                continue
            self.add(module, name=ep.name, version=version, distribution=dist_name)

    def add(
        self, plugin: object, *, name: str, version: str = "", distribution: str = ""
    ) -> None:
        """Register a plugin object directly (tests; programs embedding SBR).

        Raises PluginError when a plugin of that name is already known: replacing its record
        would hide the first plugin, which stays registered.
        """
        if name in self._loaded:
            raise PluginError(f"a plugin named {name!r} is already registered")
        distribution = distribution or name
        try:
            self._pm.register(plugin, name=name)
        except Exception as exc:  # a malformed hookimpl: bad arguments
            # pluggy leaves the hooks registered before the bad one in place; drop them all.
            if self._pm.get_plugin(name) is plugin:
                self._pm.unregister(name=name)
            self._loaded[name] = _Loaded(name, version, distribution, None, _reason(exc))
            return
        # pluggy accepts implementations of hooks it has no spec for; a misspelt hook would
        # otherwise leave the plugin "available" and silently doing nothing.
        unknown = sorted(caller.name for caller in self._pm.get_hookcallers(plugin) or ()
                         if caller.spec is None)
        if unknown:
            self._pm.unregister(plugin)
            reason = f"implements unknown hook(s): {', '.join(unknown)}"
            self._loaded[name] = _Loaded(name, version, distribution, None, reason)
            return
        self._loaded[name] = _Loaded(name, version, distribution, plugin)
        self._providers = None
        self._steps = None

    # --- registration ---------------------------------------------------------------------

    def _call_each(self, hook_name: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call every implementation of a hook alone; a failing one marks its plugin."""
        results = []
        caller = getattr(self._pm.hook, hook_name)
        for impl in caller.get_hookimpls():  # registration order: the first plugin wins a name
            if impl.plugin_name == _CORE_PLUGIN or self._failed(impl.plugin_name):
                continue
            try:
                value = impl.function(**{arg: kwargs[arg] for arg in impl.argnames})
            except Exception as exc:
                self._fail(impl.plugin_name, f"{hook_name} failed: {_reason(exc)}")
                continue
            # Callers iterate the value: anything but a list would break them, not the plugin.
            if value is not None and not isinstance(value, (list, tuple)):
                self._fail(impl.plugin_name,
                           f"{hook_name} returned {type(value).__name__}, not a list")
                continue
            results.append((impl.plugin_name, value))
        return results

    def _failed(self, plugin_name: str) -> bool:
        loaded = self._loaded.get(plugin_name)
        return loaded is not None and bool(loaded.failure)

    def _fail(self, plugin_name: str, reason: str) -> None:
        """Mark a plugin unavailable and take it out of every hook (steps, events too)."""
        log.warning("plugin %r is unavailable: %s", plugin_name, reason)
        loaded = self._loaded.get(plugin_name)
        if loaded is not None and not loaded.failure:
            loaded.failure = reason
        if self._pm.get_plugin(plugin_name) is not None:
            self._pm.unregister(name=plugin_name)

    def _collect_providers(self) -> dict[ProviderKind, dict[str, type[Provider]]]:
        if self._providers is not None:
            return self._providers
        table: dict[ProviderKind, dict[str, type[Provider]]] = {k: {} for k in ProviderKind}
        owners: dict[tuple[ProviderKind, str], str] = {}
        for kind, (hook_name, base) in _PROVIDER_HOOKS.items():
            for plugin_name, classes in self._call_each(hook_name):
                problem = _check_classes(classes, base, kind)
                for cls in classes or ():
                    if problem:
                        break
                    owner = owners.get((kind, cls.name))
                    if owner is not None:
                        problem = (f"{kind.value} {cls.name!r} is already provided by plugin "
                                   f"{owner!r}")
                if problem:
                    self._fail(plugin_name, problem)
                    continue
                for cls in classes or ():
                    table[kind][cls.name] = cls
                    owners[(kind, cls.name)] = plugin_name
        # A plugin that failed in one hook contributes nothing anywhere.
        for (kind, provider_name), owner in owners.items():
            if self._failed(owner):
                table[kind].pop(provider_name, None)
        self._providers = table
        self._owners = owners
        return table

    def providers(self, kind: ProviderKind) -> dict[str, type[Provider]]:
        """Provider classes of one kind, by name, from available plugins."""
        return dict(self._collect_providers()[kind])

    def hypervisors(self) -> dict[str, type[Hypervisor]]:
        """Hypervisor provider classes by name."""
        return self.providers(ProviderKind.HYPERVISOR)  # type: ignore[return-value]

    def applications(self) -> dict[str, type[Application]]:
        """Application provider classes by name."""
        return self.providers(ProviderKind.APPLICATION)  # type: ignore[return-value]

    def storage_providers(self) -> dict[str, type[StorageProvider]]:
        """Storage provider classes by name."""
        return self.providers(ProviderKind.STORAGE)  # type: ignore[return-value]

    def destinations(self) -> dict[str, type[Destination]]:
        """Destination classes by name."""
        return self.providers(ProviderKind.DESTINATION)  # type: ignore[return-value]

    def notifiers(self) -> dict[str, type[Notifier]]:
        """Notifier classes by name."""
        return self.providers(ProviderKind.NOTIFIER)  # type: ignore[return-value]

    def provider_class(self, kind: ProviderKind, name: str) -> type[Provider]:
        """The provider class ``name`` of ``kind``; NotFoundError lists what exists."""
        found = self.providers(kind)
        if name in found:
            return found[name]
        known = ", ".join(sorted(found)) or "none"
        raise NotFoundError(f"no {kind.value} plugin named {name!r} (available: {known})")

    def workflow_steps(self) -> dict[str, type[WorkflowStep]]:
        """Plugin workflow steps by name."""
        if self._steps is None:
            steps: dict[str, type[WorkflowStep]] = {}
            for plugin_name, classes in self._call_each("sbr_register_workflow_steps"):
                problem = _check_steps(classes or (), steps)
                if problem:
                    self._fail(plugin_name, problem)
                    continue
                steps.update({cls.name: cls for cls in classes or ()})
            self._steps = steps
        return dict(self._steps)

    def commands(self) -> list[tuple[str, Any]]:
        """(plugin name, click command) pairs contributed through ``sbr_register_commands``."""
        return [(p, cmd) for p, cmds in self._call_each("sbr_register_commands")
                for cmd in cmds or ()]

    def blueprints(self) -> list[tuple[str, Any]]:
        """(plugin name, Flask blueprint) pairs contributed through ``sbr_register_blueprints``."""
        return [(p, bp) for p, bps in self._call_each("sbr_register_blueprints")
                for bp in bps or ()]

    def mark_unavailable(self, plugin_name: str, reason: str) -> None:
        """Record that a contribution of this plugin was refused (e.g. a command name clash)."""
        self._fail(plugin_name, reason)

    # --- steps and events -----------------------------------------------------------------

    def run_step(self, context: StepContext, run: Callable[[], StepResult]) -> StepResult:
        """Run a workflow step through every plugin wrapper of ``sbr_run_step``."""
        result: StepResult = self._pm.hook.sbr_run_step(context=context, run=run)
        return result

    def emit(self, event: TaskEvent | BackupEvent | NodeEvent) -> None:
        """Tell plugins an event; each listener is called alone and its errors only logged."""
        if isinstance(event, TaskEvent):
            hook_name = "sbr_task_started" if event.state == "running" else "sbr_task_finished"
        elif isinstance(event, BackupEvent):
            hook_name = "sbr_backup_failed" if event.error else "sbr_backup_completed"
        elif isinstance(event, NodeEvent):
            hook_name = "sbr_node_lost"
        else:
            raise TypeError(f"not an SBR event: {event!r}")
        caller = getattr(self._pm.hook, hook_name)
        for impl in reversed(caller.get_hookimpls()):
            try:
                impl.function(**{arg: event for arg in impl.argnames if arg == "event"})
            except Exception:
                log.exception("plugin %r failed in %s", impl.plugin_name, hook_name)

    # --- listing --------------------------------------------------------------------------

    def records(self) -> list[PluginRecord]:
        """Every plugin the host knows, available or not, sorted by name."""
        table = self._collect_providers()
        self.workflow_steps()
        owned = sorted(self._owners.items(), key=lambda item: (item[0][0].value, item[0][1]))
        out = []
        for name, loaded in sorted(self._loaded.items()):
            kinds = self._kinds_of(name)
            providers = tuple(
                ProviderInfo(kind.value, provider_name, table[kind][provider_name].label)
                for (kind, provider_name), owner in owned
                if owner == name and provider_name in table[kind]
            )
            if loaded.disabled:
                status, reason = "disabled", "disabled by SBR_DISABLE_PLUGINS"
            elif loaded.failure:
                status, reason = "unavailable", loaded.failure
            else:
                status, reason = "available", ""
            out.append(PluginRecord(name, loaded.version, loaded.distribution, kinds, status,
                                    reason, providers))
        return out

    def record(self, name: str) -> PluginRecord:
        """One plugin's record; NotFoundError names the plugins there are."""
        records = self.records()
        for rec in records:
            if rec.name == name:
                return rec
        known = ", ".join(r.name for r in records) or "none"
        raise NotFoundError(f"no plugin named {name!r} is installed (installed: {known})")

    def _kinds_of(self, plugin_name: str) -> tuple[str, ...]:
        plugin = self._loaded[plugin_name].module
        if plugin is None:
            return ()
        kinds = {_HOOK_KINDS[impl_name] for impl_name in _HOOK_KINDS
                 if callable(getattr(plugin, impl_name, None))}
        return tuple(sorted(kinds))


def _is_subclass(value: object, base: type) -> bool:
    return isinstance(value, type) and issubclass(value, base)


def _check_steps(classes: Any, known: dict[str, type[WorkflowStep]]) -> str:
    """Why registered workflow steps are unusable, or '' when they are fine."""
    names: set[str] = set()
    for cls in classes:
        if not _is_subclass(cls, WorkflowStep):
            return f"returned {cls!r}, not a WorkflowStep subclass"
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not _NAME.match(name):
            return f"workflow step {cls.__name__} has no valid name (lower-case letters, digits, -)"
        if name in known or name in names:
            return f"workflow step {name!r} is already registered"
        names.add(name)
    return ""


def _check_classes(classes: Any, base: type, kind: ProviderKind) -> str:
    """Why a registration result is unusable, or '' when it is fine."""
    if classes is None:
        return ""
    if not isinstance(classes, (list, tuple)):
        return f"registration returned {type(classes).__name__}, not a list of classes"
    seen: set[str] = set()
    for cls in classes:
        if not _is_subclass(cls, base):
            return f"returned {cls!r}, not a {base.__name__} subclass"
        if cls.__abstractmethods__:
            missing = ", ".join(sorted(cls.__abstractmethods__))
            return f"{kind.value} {cls.__name__} does not implement: {missing}"
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not _NAME.match(name):
            return f"{kind.value} {cls.__name__} has no valid name (lower-case letters, digits, -)"
        if name in seen:
            return f"{kind.value} {name!r} is registered twice by this plugin"
        seen.add(name)
        if not attrs.has(getattr(cls, "Config", None)):  # type: ignore[arg-type]
            return f"{kind.value} {name!r} has no attrs Config class"
        config_base = getattr(base, "config_base", object)
        if not issubclass(cls.Config, config_base):
            return (f"{kind.value} {name!r}: its Config does not derive from "
                    f"{config_base.__name__}")
        if not getattr(cls, "label", ""):
            return f"{kind.value} {name!r} has no label"
    return ""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return f"missing dependency: no module named {exc.name!r}"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, ImportError) else text
