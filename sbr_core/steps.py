"""Workflow steps a plugin can add around the core's export, store, restore, import, mount."""

from __future__ import annotations

import abc
import logging
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from sbr_core.models import Instance
from sbr_core.operation import Operation


@attrs.frozen
class StepContext:
    """One step of one workflow run, as plugins see it.

    ``workflow`` is ``backup``, ``restore``, ``restore-import``, ``mount`` or ``snapshot``;
    ``step`` the core step's name (``export``, ``store``, ``restore``, ``import``, ``mount``,
    ``snapshot``) or a plugin step's name. ``attempt`` counts from 1 on each retry of the task;
    ``results`` holds what earlier steps of this workflow reported (e.g. the backup id).
    ``error`` is set for steps that run after a failure (``always_run``).
    """

    workflow: str
    step: str
    task_id: int
    workflow_id: int = 0
    attempt: int = 1
    node_name: str = ""
    instance: Instance | None = None
    params: Mapping[str, Any] = attrs.field(factory=dict)
    results: Mapping[str, Any] = attrs.field(factory=dict)
    error: str = ""
    op: Operation = attrs.field(factory=Operation, eq=False, repr=False)
    logger: logging.Logger = attrs.field(factory=lambda: logging.getLogger("sbr.task"))


@attrs.frozen
class StepResult:
    """What a step reports back: an outcome summary for the task log and figures."""

    summary: str = ""
    figures: Mapping[str, Any] = attrs.field(factory=dict)


class WorkflowStep(abc.ABC):
    """A step a plugin inserts into workflows, before or after one of the core's steps."""

    #: Stable identifier, unique among steps.
    name: ClassVar[str]
    label: ClassVar[str]
    #: Which workflows it joins, and where: ("backup", "before", "export").
    workflows: ClassVar[tuple[str, ...]]
    position: ClassVar[str]  # "before" or "after"
    anchor: ClassVar[str]  # the core step it stands next to
    #: Run even when an earlier step failed (a thaw after a freeze, a cleanup command).
    always_run: ClassVar[bool] = False

    @abc.abstractmethod
    def run(self, context: StepContext) -> StepResult:
        """Do the step; raise an SbrError to fail the workflow with that message."""
