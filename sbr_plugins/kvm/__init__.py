"""The ``kvm`` hypervisor provider: libvirt domains (QEMU/KVM) backed up through libvirt's
checkpoints and pull-mode backup jobs, read over NBD, restored to files or imported as new
domains. libvirt-python and libnbd are imported only when the provider is used."""

from __future__ import annotations

from sbr_core import hookimpl


@hookimpl
def sbr_register_hypervisors() -> list[type]:
    """Contribute the KVM/libvirt hypervisor provider."""
    from sbr_plugins.kvm.hypervisor import KvmHypervisor

    return [KvmHypervisor]
