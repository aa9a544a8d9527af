"""Rows, constraints, accounts and encrypted secrets on SQLite and MariaDB alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import peewee as pw
import pytest

from sbr_core import accounts, connections
from sbr_core.db.schema import (
    AuditLog,
    Backup,
    Destination,
    Instance,
    ProviderConnection,
    Task,
    Workflow,
)
from sbr_core.errors import AuthError, ConfigError, NotFoundError, UsageError
from sbr_core.plugins import PluginHost
from sbr_core.providers import ProviderKind
from sbr_core.providers.destination import Destination as DestinationBase
from sbr_core.providers.destination import ObjectInfo
from sbr_core.secretbox import SecretBox, load_or_create_key
from sbr_core.settings import Secret, setting

CLEAR_SECRET = "s3cr3t-Access-Key-xyz"


@attrs.frozen
class VaultConfig:
    url: str = setting(label="URL", help="Where the vault is")
    access_key: Secret = setting(label="Access key", secret=True)
    retries: int = setting(label="Retries", default=3)


class VaultDestination(DestinationBase):
    name = "vault"
    label = "Vault"
    Config = VaultConfig

    def put(self, key: str, data: Any) -> None: ...
    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes: return b""
    def list(self, prefix: str = "") -> Any: return iter(())
    def delete(self, key: str) -> None: ...
    def stat(self, key: str) -> ObjectInfo: return ObjectInfo(key, 0, 0.0)


class _VaultPlugin:
    from sbr_core import hookimpl

    @hookimpl
    def sbr_register_destinations(self) -> list[type]:
        return [VaultDestination]


@pytest.fixture
def host() -> PluginHost:
    plugins = PluginHost()
    plugins.add(_VaultPlugin(), name="vault")
    return plugins


@pytest.fixture
def box(tmp_path: Path) -> SecretBox:
    return SecretBox(load_or_create_key(tmp_path / "secret.key"))


def test_users_authenticate_with_hashed_passwords_and_role_permissions(
        database: pw.Database) -> None:
    accounts.add_user("alice", "correct horse", role="operator")
    user = accounts.authenticate("alice", "correct horse")
    assert accounts.permissions_of(user) == {"view", "operate"}
    assert "correct horse" not in user.password_hash
    with pytest.raises(AuthError, match="wrong user name or password"):
        accounts.authenticate("alice", "wrong horse")
    with pytest.raises(AuthError, match="wrong user name or password"):
        accounts.authenticate("nobody", "correct horse")
    accounts.set_password("alice", "battery staple")
    assert accounts.authenticate("alice", "battery staple").username == "alice"


def test_bad_user_input_names_what_is_wrong(database: pw.Database) -> None:
    accounts.add_user("bob", "long enough")
    with pytest.raises(UsageError, match="already exists"):
        accounts.add_user("bob", "long enough")
    with pytest.raises(UsageError, match="at least 8"):
        accounts.add_user("carol", "short")
    with pytest.raises(NotFoundError, match=r"no role named 'chief'.*admin"):
        accounts.add_user("carol", "long enough", role="chief")
    with pytest.raises(UsageError, match="invalid"):
        accounts.add_user("bad name!", "long enough")
    with pytest.raises(NotFoundError):
        accounts.set_password("nobody", "long enough")


def test_initial_admin_is_created_once_with_a_private_password_file(
        database: pw.Database, tmp_path: Path) -> None:
    path = tmp_path / "initial-admin-password"
    assert accounts.ensure_initial_admin(path) == str(path)
    assert path.stat().st_mode & 0o077 == 0
    password = path.read_text().strip()
    assert accounts.authenticate("admin", password).role.name == "admin"
    assert accounts.ensure_initial_admin(path) is None


def test_secrets_are_sealed_in_the_database_and_never_described(
        database: pw.Database, host: PluginHost, box: SecretBox) -> None:
    connections.save(ProviderKind.DESTINATION, "vault1", "vault",
                     {"url": "https://vault.example", "access_key": CLEAR_SECRET,
                      "retries": "5"}, host=host, box=box)
    raw = database.execute_sql("SELECT settings, secrets FROM destination").fetchall()
    assert CLEAR_SECRET not in repr(raw)
    assert raw[0][1].startswith("sbr1:")

    shown = connections.describe(ProviderKind.DESTINATION, "vault1", host=host, box=box)
    assert shown["settings"] == {"url": "https://vault.example", "retries": 5,
                                 "access_key": "(set)"}
    assert CLEAR_SECRET not in repr(shown)

    provider = connections.open_provider(ProviderKind.DESTINATION, "vault1", host=host, box=box)
    assert provider.config.access_key.reveal() == CLEAR_SECRET
    assert CLEAR_SECRET not in repr(provider.config)


def test_updating_without_a_secret_keeps_the_stored_one(
        database: pw.Database, host: PluginHost, box: SecretBox) -> None:
    connections.save(ProviderKind.DESTINATION, "vault1", "vault",
                     {"url": "https://a", "access_key": CLEAR_SECRET}, host=host, box=box)
    connections.save(ProviderKind.DESTINATION, "vault1", "vault",
                     {"url": "https://b", "access_key": ""}, host=host, box=box, replace=True)
    provider = connections.open_provider(ProviderKind.DESTINATION, "vault1", host=host, box=box)
    assert provider.config.url == "https://b"
    assert provider.config.access_key.reveal() == CLEAR_SECRET


def test_invalid_settings_write_nothing_and_name_the_field(
        database: pw.Database, host: PluginHost, box: SecretBox) -> None:
    with pytest.raises(ConfigError) as caught:
        connections.save(ProviderKind.DESTINATION, "vault1", "vault",
                         {"url": "https://a", "access_key": "k", "retries": "many",
                          "colour": "red"}, host=host, box=box)
    assert set(caught.value.problems) == {"retries", "colour"}
    assert Destination.select().count() == 0
    with pytest.raises(NotFoundError, match="no destination plugin named 'tape'"):
        connections.save(ProviderKind.DESTINATION, "t", "tape", {}, host=host, box=box)
    connections.save(ProviderKind.DESTINATION, "v", "vault",
                     {"url": "u", "access_key": "k"}, host=host, box=box)
    with pytest.raises(UsageError, match="already exists"):
        connections.save(ProviderKind.DESTINATION, "v", "vault",
                         {"url": "u", "access_key": "k"}, host=host, box=box)


def test_deleting_a_connection_removes_its_inventory(database: pw.Database) -> None:
    conn = ProviderConnection.create(name="kvm1", kind="hypervisor", plugin="kvm")
    for i in range(3):
        Instance.create(connection=conn, external_id=f"uuid-{i}", name=f"vm{i}",
                        tags=["prod"], attributes={"vcpus": i})
    with pytest.raises(pw.IntegrityError), database.atomic():
        Instance.create(connection=conn, external_id="uuid-1", name="dup")
    assert Instance.get(Instance.external_id == "uuid-2").attributes == {"vcpus": 2}
    conn.delete_instance()
    assert Instance.select().count() == 0


def test_large_numbers_json_and_unicode_survive_a_round_trip(database: pw.Database) -> None:
    conn = ProviderConnection.create(name="m365", kind="application", plugin="m365")
    inst = Instance.create(connection=conn, external_id="id", name="Søren’s mailbox 📫",
                           attributes={"quota": 5 * 2**40, "nested": {"a": [1, 2]}})
    dest = Destination.create(name="nas", plugin="filesystem", settings={"path": "/srv"})
    flow = Workflow.create(kind="backup", instance=inst)
    task = Task.create(workflow=flow, step="export", progress_total=20 * 2**40)
    Backup.create(instance=inst, destination=dest, workflow=flow, repo_backup_id="b1",
                  bytes_logical=3 * 2**40)
    assert Instance.get_by_id(inst.id).name == "Søren’s mailbox 📫"
    assert Instance.get_by_id(inst.id).attributes["nested"] == {"a": [1, 2]}
    assert Task.get_by_id(task.id).progress_total == 20 * 2**40
    assert Backup.get().bytes_logical == 3 * 2**40
    AuditLog.create(action="x", detail={"k": "v"})
    assert AuditLog.get().detail == {"k": "v"}
