"""The inventory of a KVM connection as the server keeps it: refreshed on demand and by the
engine's periodic refresher; a domain that disappears is marked gone, never deleted."""

from __future__ import annotations

import uuid
from pathlib import Path

import peewee as pw

from sbr_core import connections, inventory
from sbr_core.db.schema import Instance, ProviderConnection
from sbr_core.plugins import PluginHost
from sbr_core.providers import ProviderKind
from sbr_core.secretbox import SecretBox, load_or_create_key
from tests.integration.kvm.conftest import new_disk
from tests.libvirtd import PrivateLibvirtd


def test_refresher_lists_domains_and_marks_undefined_ones_gone(
        database: pw.Database, libvirtd: PrivateLibvirtd, tmp_path: Path) -> None:
    host = PluginHost.discover()
    box = SecretBox(load_or_create_key(tmp_path / "secret.key"))
    connections.save(ProviderKind.HYPERVISOR, "kvm1", "kvm",
                     {"uri": libvirtd.uri, "scratch_dir": str(tmp_path)}, host=host, box=box)
    row = ProviderConnection.get(ProviderConnection.name == "kvm1")
    name = f"sbr-t-{uuid.uuid4().hex[:8]}"
    disk = new_disk(tmp_path / "vda.qcow2", "16M")
    with libvirtd.domain(name, disk) as dom:
        idle = inventory.Refresher(database, host=host, box=box, interval=3600)
        idle()  # the first round is one interval after start
        assert idle._thread is not None
        idle._thread.join(60)
        database.connect(reuse_if_open=True)
        assert not Instance.select().where(Instance.connection == row.id).exists()
        refresher = inventory.Refresher(database, host=host, box=box, interval=0)
        refresher()
        assert refresher._thread is not None
        refresher._thread.join(60)
        database.connect(reuse_if_open=True)
        listed = Instance.get((Instance.connection == row.id) & (Instance.name == name))
        assert listed.external_id == dom.UUIDString() and listed.present
        assert listed.state == "running" and listed.kind == "vm"
        assert listed.attributes["disks"][0]["key"] == "vda"
        assert listed.attributes["disks"][0]["capacity_bytes"] == 16 << 20
        assert listed.attributes["memory_bytes"] == 64 << 20
    result = inventory.refresh(database, row, host=host, box=box)
    assert result.vanished == 1
    gone = Instance.get_by_id(listed.id)
    assert not gone.present
