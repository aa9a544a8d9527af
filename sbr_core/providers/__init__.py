"""Provider kinds: one abstract base class per kind of extension a plugin can contribute."""

from sbr_core.providers.base import Provider, ProviderContext, ProviderKind
from sbr_core.providers.destination import Destination, ObjectInfo
from sbr_core.providers.hypervisor import Hypervisor
from sbr_core.providers.items import Application, StorageProvider
from sbr_core.providers.notifier import EventKind, Notifier, NotifierConfig

__all__ = [
    "Application",
    "Destination",
    "EventKind",
    "Hypervisor",
    "Notifier",
    "NotifierConfig",
    "ObjectInfo",
    "Provider",
    "ProviderContext",
    "ProviderKind",
    "StorageProvider",
]
