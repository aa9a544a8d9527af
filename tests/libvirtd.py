"""A private libvirtd for tests: its own config, sockets, pid files and state under a temp dir.

A root libvirtd always runs the privileged QEMU driver, which reads ``/etc/libvirt/qemu.conf``
and keeps state in ``/run/libvirt``, ``/var/lib/libvirt``, ``/var/cache/libvirt`` and
``/var/log/libvirt``; no option moves those.  So both daemons run in a private mount namespace
(``unshare --mount``) in which ``/etc``, ``/run`` and ``/var`` are overlays whose upper layers
live under ``base``: the container-safe ``qemu.conf`` exists only there, the host's files are
never written, and everything libvirt and QEMU leave behind goes with ``base``.  QEMU runs in
that namespace too, which is also how ``stop()`` finds every process to end.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

from tests.cli_runs import terminate

if TYPE_CHECKING:
    import libvirt

_SEARCH = ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin")
_BINARIES = ("libvirtd", "virtlogd", "qemu-system-x86_64", "qemu-img", "unshare", "mount")
# The overlaid trees; ``base`` must not lie in one, or its files would land in an upper layer.
_OVERLAID = ("/etc", "/run", "/var")
EMULATOR = "/usr/bin/qemu-system-x86_64"
QEMU_ACCOUNT = "libvirt-qemu"  # Debian's --with-qemu-user/--with-qemu-group
#: The one SASL login of the read-only socket.
SASL_USER = "sbr-reader"
SASL_PASSWORD = "reader's password"
_SASL_MODULES = ("lib/*/sasl2/libscram.so*", "lib/sasl2/libscram.so*", "lib64/sasl2/libscram.so*")

# QEMU as root without AppArmor/SELinux, cgroups, per-VM namespaces or virtlogd: none of
# these is available (or wanted) in a container or CI runner.
QEMU_CONF = """\
# written by SBR tests
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
"""


def _find(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(Path(d) / name) for d in _SEARCH if (Path(d) / name).exists()), None)


def _binary(name: str) -> str:
    path = _find(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed")
    return path


def _mount_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class PrivateLibvirtd:
    """Starts, hands out domains on, and stops one virtlogd + libvirtd pair."""

    def __init__(self, base: Path) -> None:
        self.base = base.resolve()
        self.sock_dir = self.base / "run"
        self.process: subprocess.Popen[bytes] | None = None
        self._namespace: str | None = None
        self._conn: libvirt.virConnect | None = None

    @property
    def uri(self) -> str:
        """The connection URI of this daemon (its private read-write socket)."""
        return f"qemu+unix:///system?socket={self.sock_dir / 'libvirt-sock'}"

    @property
    def sasl_uri(self) -> str:
        """The read-only socket, which asks for a SASL login (:data:`SASL_USER`,
        :data:`SASL_PASSWORD`) when :meth:`sasl_missing` is ''."""
        return f"qemu+unix:///system?socket={self.sock_dir / 'libvirt-sock-ro'}"

    @staticmethod
    def sasl_missing() -> str:
        """Why the read-only socket cannot ask for a SASL login here, or ''."""
        if _find("saslpasswd2") is None:
            return "saslpasswd2 is not installed (apt-get install sasl2-bin)"
        if not any(Path("/usr").glob(pattern) for pattern in _SASL_MODULES):
            return "the SASL SCRAM module is not installed (apt-get install libsasl2-modules)"
        return ""

    @staticmethod
    def missing() -> str:
        """Why the daemons cannot be started here, or '' when they can."""
        if os.geteuid() != 0:
            return "needs root (private mount namespace, privileged QEMU driver)"
        absent = [n for n in _BINARIES if _find(n) is None]
        if absent:
            return (f"{', '.join(absent)} not installed (apt-get install --no-install-recommends"
                    " libvirt-daemon libvirt-daemon-driver-qemu qemu-system-x86 qemu-utils)")
        try:
            import libvirt  # noqa: F401
        except ImportError:
            return "libvirt-python is not installed (pip install libvirt-python)"
        probe = subprocess.run([_binary("unshare"), "--mount", "true"],
                               capture_output=True, text=True, check=False)
        if probe.returncode != 0:
            return f"cannot create a mount namespace: {probe.stderr.strip()}"
        return ""

    def _write_config(self) -> None:
        for tree in _OVERLAID:
            for layer in ("upper", "work"):
                (self.base / "ovl" / tree.strip("/") / layer).mkdir(parents=True)
        etc = self.base / "ovl/etc/upper/libvirt"
        etc.mkdir(parents=True)
        (etc / "qemu.conf").write_text(QEMU_CONF)
        # The driver resolves its built-in user before reading qemu.conf, and Debian's
        # 'libvirt-qemu' exists only with libvirt-daemon-system: add it in the overlay only.
        tables = {t: Path("/etc", t).read_text().splitlines() for t in ("passwd", "group")}
        used = {int(line.split(":")[2]) for lines in tables.values() for line in lines
                if line.count(":") >= 3 and line.split(":")[2].isdigit()}
        free = next(i for i in range(64055, 65534) if i not in used)
        for table, lines in tables.items():
            if not any(line.startswith(f"{QEMU_ACCOUNT}:") for line in lines):
                lines.append(f"{QEMU_ACCOUNT}:x:{free}:{free}::/nonexistent:/usr/sbin/nologin"
                             if table == "passwd" else f"{QEMU_ACCOUNT}:x:{free}:")
            (self.base / "ovl/etc/upper" / table).write_text("\n".join(lines) + "\n")
        self.sock_dir.mkdir(mode=0o700)
        ro_auth = "none"
        if not self.sasl_missing():
            self._write_sasl_config()
            ro_auth = "sasl"
        (self.base / "libvirtd.conf").write_text(
            f'unix_sock_dir = "{self.sock_dir}"\n'
            'unix_sock_rw_perms = "0700"\n'
            'auth_unix_rw = "none"\n'
            f'auth_unix_ro = "{ro_auth}"\n'
            "listen_tcp = 0\n"
            "listen_tls = 0\n"
            f'log_outputs = "3:file:{self.base / "libvirtd.log"}"\n')
        (self.base / "virtlogd.conf").write_text(
            f'log_outputs = "3:file:{self.base / "virtlogd.log"}"\n')

    def _write_sasl_config(self) -> None:
        """libvirtd reads /etc/sasl2/libvirt.conf: in the overlay, with a user database of
        our own holding one user."""
        sasl = self.base / "ovl/etc/upper/sasl2"
        sasl.mkdir(parents=True)
        database = self.base / "sasl-users.db"
        (sasl / "libvirt.conf").write_text(f"mech_list: scram-sha-256\nsasldb_path: {database}\n")
        subprocess.run([_binary("saslpasswd2"), "-a", "libvirt", "-f", str(database), "-p",
                        "-c", SASL_USER], input=SASL_PASSWORD.encode(), check=True,
                       capture_output=True, timeout=30)

    def _script(self) -> str:
        b = self.base
        mounts = "".join(
            f"mount -t overlay sbr-libvirtd -o lowerdir={tree},"
            f"upperdir={self.base}/ovl{tree}/upper,workdir={self.base}/ovl{tree}/work {tree}\n"
            for tree in _OVERLAID)
        return (
            "set -e\n"
            f"{mounts}"
            f"{_binary('virtlogd')} -d -f {b}/virtlogd.conf -p {b}/virtlogd.pid\n"
            f"exec {_binary('libvirtd')} -f {b}/libvirtd.conf -p {b}/libvirtd.pid\n")

    def start(self) -> None:
        """Write the configs, start both daemons in a new mount namespace, wait until ready."""
        for tree in _OVERLAID:
            if self.base.is_relative_to(tree):
                raise RuntimeError(f"base {self.base} lies under overlaid {tree}")
        self.base.mkdir(parents=True, exist_ok=True)
        self._write_config()
        with open(self.base / "daemon.out", "wb") as log:
            self.process = subprocess.Popen(
                [_binary("unshare"), "--mount", "--propagation", "private", "sh", "-c",
                 self._script()],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "LIBVIRT_AUTOSTART": "0"}, start_new_session=True)
        self._wait_ready()

    def _wait_ready(self) -> None:
        import libvirt

        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        deadline = time.monotonic() + 120  # the first start probes QEMU's capabilities
        last = ""
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError("libvirtd exited at start: " + self._logs())
            if self._namespace is None:
                ns = _mount_ns(self.process.pid)
                if ns is not None and ns != _mount_ns(os.getpid()):
                    self._namespace = ns
            try:
                conn = libvirt.open(self.uri)
                conn.getCapabilities()
                self._conn = conn
                return
            except libvirt.libvirtError as exc:
                last = str(exc)
                time.sleep(0.2)
        raise RuntimeError(f"libvirtd not ready within 120 s ({last}): {self._logs()}")

    def _logs(self) -> str:
        text = ""
        for name in ("daemon.out", "libvirtd.log", "virtlogd.log"):
            with suppress(OSError):
                text += f"\n--- {name}\n" + (self.base / name).read_text()[-1500:]
        return text

    def connection(self) -> libvirt.virConnect:
        """The shared connection to this daemon."""
        assert self._conn is not None, "start() first"
        return self._conn

    def qemu_log(self, name: str) -> str:
        """The QEMU log of domain ``name`` (stdio_handler 'file'), from the /var overlay."""
        with suppress(OSError):
            return (self.base / f"ovl/var/upper/log/libvirt/qemu/{name}.log").read_text()
        return ""

    def _pidfile_pids(self) -> list[int]:
        """The live daemons named by our pid files (checked against their command line)."""
        pids = []
        for name in ("virtlogd.pid", "libvirtd.pid"):
            with suppress(OSError, ValueError):
                pid = int((self.base / name).read_text().strip())
                if str(self.base) in Path(f"/proc/{pid}/cmdline").read_text() and _alive(pid):
                    pids.append(pid)
        return pids

    def namespace_pids(self) -> list[int]:
        """Every process in the daemons' mount namespace: libvirtd, virtlogd and any QEMU."""
        if self._namespace is None:
            return []
        return [int(p.name) for p in Path("/proc").iterdir()
                if p.name.isdigit() and _mount_ns(int(p.name)) == self._namespace
                and _alive(int(p.name))]

    def qemu_pids(self) -> list[int]:
        """The QEMU processes this daemon started and that still run."""
        pids = []
        for pid in self.namespace_pids():
            with suppress(OSError):
                if Path(f"/proc/{pid}/exe").resolve().name.startswith("qemu-system"):
                    pids.append(pid)
        return pids

    @contextmanager
    def domain(self, name: str, disk: Path, *, memory_mib: int = 64) -> Iterator[
            libvirt.virDomain]:
        """A persistent, running TCG domain with ``disk`` (qcow2) as virtio ``vda``, no OS
        and no network; destroyed and undefined, with its checkpoint metadata, afterwards."""
        xml = f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <emulator>{EMULATOR}</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>"""
        dom = self.connection().defineXML(xml)
        try:
            try:
                dom.create()
            except Exception as exc:
                raise RuntimeError(f"{exc}\n{self.qemu_log(name)[-1500:]}") from exc
            yield dom
        finally:
            self.remove_domain(dom)

    @staticmethod
    def remove_domain(dom: libvirt.virDomain) -> None:
        """Destroy ``dom`` (ending any job) and undefine it with all its metadata."""
        import libvirt

        with suppress(libvirt.libvirtError):
            if dom.isActive():
                dom.destroy()
        with suppress(libvirt.libvirtError):
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
                              | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)

    @staticmethod
    def disk_alias(dom: libvirt.virDomain, target: str = "vda") -> str:
        """The qdev id libvirt gave disk ``target`` in the running domain."""
        root = ET.fromstring(dom.XMLDesc(0))  # noqa: S314 - libvirt's own XML
        for disk in root.iterfind("devices/disk"):
            dev, alias = disk.find("target"), disk.find("alias")
            if dev is not None and dev.get("dev") == target and alias is not None:
                return alias.attrib["name"]
        raise LookupError(f"no alias for disk {target}")

    def stop(self) -> None:
        """Remove all domains, stop both daemons and every QEMU, delete the runtime files."""
        if self._conn is not None:
            with suppress(Exception):
                for dom in self._conn.listAllDomains(0):
                    self.remove_domain(dom)
            with suppress(Exception):
                self._conn.close()
            self._conn = None
        if self.process is not None:
            terminate(self.process)
        if self._namespace is None:  # libvirtd died at start; virtlogd may still run
            self._namespace = next(
                (ns for pid in self._pidfile_pids() if (ns := _mount_ns(pid)) is not None
                 and ns != _mount_ns(os.getpid())), None)
        for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            pids = sorted(set(self.namespace_pids()) | set(self._pidfile_pids()))
            for pid in pids:
                with suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + grace
            while pids and time.monotonic() < deadline:
                pids = [p for p in pids if _alive(p)]
                time.sleep(0.1)
        shutil.rmtree(self.base, ignore_errors=True)
