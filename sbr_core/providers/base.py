"""What every provider has: a stable name, a label, a ``Config`` class, optional connection test."""

from __future__ import annotations

import abc
import enum
import logging
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import attrs


class ProviderKind(enum.Enum):
    """The kinds of provider a plugin can register."""

    HYPERVISOR = "hypervisor"
    APPLICATION = "application"
    STORAGE = "storage"
    DESTINATION = "destination"
    NOTIFIER = "notifier"


@attrs.frozen
class ProviderContext:
    """What the core hands a provider besides its settings.

    ``name`` is the admin's name for this configured connection ("nas1", "vcenter-prod"); put it
    in every error message. ``staging_dir`` is the node's scratch space, if the provider needs one.
    """

    name: str
    logger: logging.Logger = attrs.field(factory=lambda: logging.getLogger("sbr.provider"))
    staging_dir: Path | None = None


class Provider(abc.ABC):
    """Base of every provider class a plugin registers.

    Subclasses set the class attributes below; ``Config`` is an attrs class whose fields come
    from :func:`sbr_core.settings.setting`. The core builds the provider with a validated config.
    """

    kind: ClassVar[ProviderKind]
    #: Stable identifier, unique within its kind; stored in the database. Never rename it.
    name: ClassVar[str]
    #: Human-readable name for the UI.
    label: ClassVar[str]
    description: ClassVar[str] = ""
    Config: ClassVar[type[Any]]
    #: What every ``Config`` of this kind must derive from (the host checks it).
    config_base: ClassVar[type] = object

    def __init__(self, config: Any, *, context: ProviderContext) -> None:
        self.config = config
        self.context = context

    def test_connection(self) -> None:
        """Check that the configured platform answers; raise a ProviderError saying why not.

        Only providers that can really test override this; the UI offers "Test connection"
        only for them.
        """
        raise NotImplementedError

    @classmethod
    def can_test_connection(cls) -> bool:
        """Whether this provider overrides :meth:`test_connection`."""
        return cls.test_connection is not Provider.test_connection

    def close(self) -> None:  # noqa: B027 - optional hook for subclasses
        """Release connections; called once when the core is done with the provider."""

    def __enter__(self) -> Provider:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
