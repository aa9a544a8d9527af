"""A tiny real Linux guest running the real QEMU guest agent, for tests of agent quiescing.

``PrivateLibvirtd.domain()`` boots no OS, so libvirt's ``fsFreeze()``/``fsThaw()`` and
``qemuAgentCommand()`` have no agent to talk to there.  This module builds, once per set of
package versions, a Debian cloud kernel and a gzip'd cpio initramfs whose ``/init`` (busybox sh)
loads the virtio modules, creates the ``/dev/virtio-ports`` links udev would, mounts any disks
asked for and runs Debian's own ``qemu-ga`` on the virtio-serial channel.  Nothing is installed
on the host: the packages are fetched with ``apt-get download`` and unpacked with
``dpkg-deb -x``; ``qemu-ga``'s shared libraries are the host's (the ones libvirt itself uses).

Build the image (:func:`prepare`) before starting :class:`tests.libvirtd.PrivateLibvirtd`: its
QEMU sees ``/var`` (and so :data:`DEFAULT_CACHE`) through an overlay whose lower layer is the
host's ``/var``, and overlayfs leaves changes to a lower layer after the mount undefined (a late
build did boot here, but nothing promises it).  For the same reason a console log or disk
under ``/var``, written by QEMU, would land in the overlay: keep those under ``/tmp``.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape, quoteattr

if TYPE_CHECKING:
    import libvirt

DEFAULT_CACHE = Path("/var/tmp/sbr-test-guest")
KERNEL_PACKAGE = "linux-image-cloud-amd64"  # a meta-package: the real one is its dependency
AGENT_PACKAGE = "qemu-guest-agent"
BUSYBOX_PACKAGE = "busybox-static"
AGENT_CHANNEL = "org.qemu.guest_agent.0"
#: What the guest needs as modules when its kernel does not have them built in: the PCI
#: transport, virtio-serial (the agent's channel) and virtio-blk (disks to mount and freeze).
WANTED_MODULES = ("virtio_pci", "virtio_console", "virtio_blk")
_TOOLS = ("apt-get", "apt-cache", "dpkg-deb", "ldd")
_RECIPE = "1"  # bump when the image's contents change for the same package versions

INIT = f"""#!/bin/busybox sh
# PID 1 of the SBR guest-agent test guest; it must never exit.
/bin/busybox mkdir -p /proc /sys /dev /run /tmp /mnt
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs tmpfs /tmp
echo "sbr-guest: kernel $(uname -r), loading modules"
while read -r module; do
  insmod "/lib/modules/$module.ko" || echo "sbr-guest: insmod $module failed"
done < /lib/modules/load-order
# No udev here: make the /dev/virtio-ports/NAME links it would make.
link_ports() {{
  mkdir -p /dev/virtio-ports
  for port in /sys/class/virtio-ports/*; do
    [ -r "$port/name" ] || continue
    name=$(cat "$port/name")
    [ -n "$name" ] && ln -sf "../${{port##*/}}" "/dev/virtio-ports/$name"
  done
}}
tries=0
until [ -e /dev/virtio-ports/{AGENT_CHANNEL} ]; do
  link_ports
  tries=$((tries + 1))
  [ $tries -gt 600 ] && {{ echo "sbr-guest: no port {AGENT_CHANNEL}"; break; }}
  sleep 0.1
done
for arg in $(cat /proc/cmdline); do
  case "$arg" in sbr_mount=*) mounts=$(echo "${{arg#sbr_mount=}}" | tr , ' ') ;; esac
done
for dev in $mounts; do
  tries=0
  until [ -b "/dev/$dev" ] || [ $tries -gt 100 ]; do tries=$((tries + 1)); sleep 0.1; done
  mkdir -p "/mnt/$dev"
  if mount "/dev/$dev" "/mnt/$dev"; then
    echo "sbr-guest: mounted /dev/$dev on /mnt/$dev"
  else
    echo "sbr-guest: cannot mount /dev/$dev"
  fi
done
while true; do
  echo "sbr-guest: starting qemu-ga"
  qemu-ga --method=virtio-serial --path=/dev/virtio-ports/{AGENT_CHANNEL} --statedir=/run
  echo "sbr-guest: qemu-ga exited with status $?"
  sleep 1
done
"""


# qemu-ga's guest-shutdown runs "/sbin/shutdown -P|-H|-r +0 MESSAGE"; busybox has no shutdown.
SHUTDOWN = """#!/bin/sh
sync
case "$1" in -r) exec reboot -f ;; -H) exec halt -f ;; *) exec poweroff -f ;; esac
"""


@dataclass(frozen=True)
class GuestImage:
    """A built kernel + initramfs pair and what it was built from."""

    kernel: Path
    initrd: Path
    versions: dict[str, str]
    modules: tuple[str, ...]

    @staticmethod
    def missing() -> str:
        """Why no guest image can be had here ('' when it can), trying the build once:
        the download is the only way to learn that a package mirror is out of reach."""
        return _missing(DEFAULT_CACHE)


@cache
def _missing(cache_dir: Path) -> str:
    absent = [tool for tool in _TOOLS if shutil.which(tool) is None]
    if absent:
        return f"{', '.join(absent)} not installed"
    try:
        prepare(cache_dir)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        return f"cannot build the guest image: {exc}"
    return ""


def _run(*args: str, cwd: Path | None = None) -> str:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False,
                            timeout=600, env={**os.environ, "LC_ALL": "C"})
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {(result.stderr or result.stdout)[-800:]}")
    return result.stdout


def _candidates(*packages: str) -> dict[str, dict[str, str]]:
    """Package -> the fields of the version apt would install, from apt's lists."""
    try:
        text = _run("apt-cache", "show", "--no-all-versions", *packages)
    except RuntimeError as exc:
        raise RuntimeError(f"apt knows not all of {packages} (run apt-get update?): {exc}"
                           ) from exc
    found: dict[str, dict[str, str]] = {}
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            key, sep, value = line.partition(": ")
            if sep and not line[0].isspace():
                fields[key] = value.strip()
        if "Package" in fields and "Version" in fields:
            found[fields["Package"]] = fields
    absent = [package for package in packages if package not in found]
    if absent:
        raise RuntimeError(f"apt knows no version of {', '.join(absent)} (run apt-get update?)")
    return found


@cache
def _resolve() -> dict[str, str]:
    """Package name -> version: the real kernel package behind the meta-package (at the
    version the meta-package pins), the agent and busybox, each at apt's candidate version.
    Asked once per process: apt's lists do not change under a test run."""
    found = _candidates(KERNEL_PACKAGE, AGENT_PACKAGE, BUSYBOX_PACKAGE)
    dep = next((dep.strip() for dep in found[KERNEL_PACKAGE].get("Depends", "").split(",")
                if dep.strip().startswith("linux-image-")), None)
    if dep is None:
        raise RuntimeError(f"{KERNEL_PACKAGE} depends on no linux-image-* package")
    kernel, pinned = dep.split()[0], re.fullmatch(r"\S+ \(= (\S+)\)", dep)
    version = pinned.group(1) if pinned else _candidates(kernel)[kernel]["Version"]
    return {kernel: version, **{name: found[name]["Version"]
                                for name in (AGENT_PACKAGE, BUSYBOX_PACKAGE)}}


def _key(versions: dict[str, str]) -> str:
    recipe = hashlib.sha256(
        json.dumps([_RECIPE, INIT, SHUTDOWN, WANTED_MODULES, sorted(versions.items())]).encode()
    ).hexdigest()[:12]
    kernel = next(name for name in versions if name.startswith("linux-image-"))
    readable = f"{kernel}_{versions[kernel]}"
    return re.sub(r"[^A-Za-z0-9.+_-]", "_", readable) + f"-{recipe}"


def prepare(cache: Path | None = None) -> GuestImage:
    """The guest image for apt's current package versions: reused from ``cache`` (default
    :data:`DEFAULT_CACHE`) or built there, in a temporary directory renamed into place so
    that concurrent builders never see half an image."""
    cache = (cache or DEFAULT_CACHE).resolve()
    versions = _resolve()
    final = cache / _key(versions)
    if not (final / "manifest.json").exists():
        cache.mkdir(parents=True, exist_ok=True)
        for stale in cache.glob(".build-*"):  # left by a killed builder
            if time.time() - stale.stat().st_mtime > 3600:
                shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
        try:
            _build(work, versions)
            try:
                (work / "out").rename(final)
            except OSError:  # another builder won the race
                if not (final / "manifest.json").exists():
                    raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
    manifest = json.loads((final / "manifest.json").read_text())
    return GuestImage(kernel=final / "vmlinuz", initrd=final / "initrd.gz",
                      versions=manifest["versions"], modules=tuple(manifest["modules"]))


def _build(work: Path, versions: dict[str, str]) -> None:
    """Download, unpack and assemble into ``work/out``."""
    debs, root, out = work / "debs", work / "root", work / "out"
    for directory in (debs, root, out):
        directory.mkdir()
    _run("apt-get", "download", "-q", "-o", "APT::Sandbox::User=root",
         *(f"{name}={version}" for name, version in versions.items()), cwd=debs)
    for deb in sorted(debs.glob("*.deb")):
        _run("dpkg-deb", "-x", str(deb), str(root))
    vmlinuz = sorted((root / "boot").glob("vmlinuz-*"))
    if len(vmlinuz) != 1:
        raise RuntimeError(f"expected one kernel in the package, found {vmlinuz}")
    release = vmlinuz[0].name.removeprefix("vmlinuz-")
    agent, busybox = root / "usr/sbin/qemu-ga", root / "bin/busybox"
    for needed in (agent, busybox):
        if not needed.exists():
            raise RuntimeError(f"{needed.relative_to(root)} is not in the packages")
    archive = _Cpio()
    archive.file("init", INIT.encode(), 0o755)
    archive.device("dev/console", 5, 1)
    archive.file("sbin/shutdown", SHUTDOWN.encode(), 0o755)
    archive.file("bin/busybox", busybox.read_bytes(), 0o755)
    archive.file("usr/sbin/qemu-ga", agent.read_bytes(), 0o755)
    libraries = _libraries(agent)
    for shown, real in libraries.items():
        archive.file(shown.lstrip("/"), real.read_bytes(), 0o755)
    modules = _modules(root / "lib/modules" / release)
    for name, path in modules:
        archive.file(f"lib/modules/{name}.ko", _module_bytes(path), 0o644)
    archive.file("lib/modules/load-order", "".join(f"{n}\n" for n, _ in modules).encode(), 0o644)
    shutil.copyfile(vmlinuz[0], out / "vmlinuz")
    (out / "initrd.gz").write_bytes(gzip.compress(archive.finish(), compresslevel=6, mtime=0))
    (out / "manifest.json").write_text(json.dumps({
        "versions": versions, "release": release, "modules": [n for n, _ in modules],
        "libraries": sorted(libraries)}, indent=1) + "\n")


def _libraries(binary: Path) -> dict[str, Path]:
    """The shared objects ``binary`` loads, by the path the loader will look for (ldd's)."""
    found: dict[str, Path] = {}
    for line in _run("ldd", str(binary)).splitlines():
        match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if match:
            found[match.group(1)] = Path(match.group(1)).resolve()
        elif "not found" in line:
            raise RuntimeError(f"{binary.name} needs a library the host lacks: {line.strip()}")
    if not any("ld-linux" in shown for shown in found):
        raise RuntimeError(f"ldd named no dynamic loader for {binary.name}")
    return found


def _norm(name: str) -> str:
    return name.replace("-", "_")


def _modules(tree: Path) -> list[tuple[str, Path]]:
    """The ``.ko`` files of :data:`WANTED_MODULES` and their dependencies, in load order;
    none for what the kernel has built in.  Debian's package ships no ``modules.dep`` (its
    postinst runs depmod), so the dependencies come from each module's ``.modinfo``."""
    builtin = {_norm(Path(line).name.split(".ko")[0])
               for line in (tree / "modules.builtin").read_text().split()}
    files = {_norm(path.name.split(".ko")[0]): path for path in (tree / "kernel").rglob("*.ko*")}
    order: list[tuple[str, Path]] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in seen or name in builtin:
            return
        if name in chain:
            raise RuntimeError(f"module dependency cycle: {' -> '.join((*chain, name))}")
        if name not in files:
            raise RuntimeError(f"module {name} is neither built in nor in the package")
        data = _module_bytes(files[name])
        for dep in _modinfo(data).get("depends", "").split(","):
            if dep:
                visit(_norm(dep), (*chain, name))
        seen.add(name)
        order.append((name, files[name]))

    for wanted in WANTED_MODULES:
        visit(wanted, ())
    return order


def _module_bytes(path: Path) -> bytes:
    """A module uncompressed: busybox insmod takes plain ELF only."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        if shutil.which("zstd") is None:
            raise RuntimeError(f"{path.name} is zstd-compressed and zstd is not installed")
        return subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True,
                              timeout=60).stdout
    return data


def _modinfo(elf: bytes) -> dict[str, str]:
    """The key=value strings of a 64-bit little-endian ELF module's ``.modinfo`` section."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise RuntimeError("not a 64-bit little-endian ELF module")
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

    def section(index: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from(
            "<IIQQQQ", elf, shoff + index * shentsize)
        return name, offset, size

    _, names_at, _ = section(shstrndx)
    for index in range(shnum):
        name, offset, size = section(index)
        if elf[names_at + name:elf.index(b"\0", names_at + name)] == b".modinfo":
            pairs = (item.decode(errors="replace").partition("=")
                     for item in elf[offset:offset + size].split(b"\0") if b"=" in item)
            return {key: value for key, _, value in pairs}
    return {}


class _Cpio:
    """A cpio archive in the kernel's ``newc`` format, written without a cpio binary (and so
    able to hold a device node without mknod), deterministic: owner root, mtime 0."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._dirs: set[str] = set()
        self._inode = 0

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0),
               nlink: int = 1) -> None:
        self._inode += 1
        encoded = name.encode() + b"\0"
        fields = (self._inode, mode, 0, 0, nlink, 0, len(data), 0, 0, *rdev, len(encoded), 0)
        header = b"070701" + b"".join(b"%08X" % value for value in fields)
        self._parts += [header, encoded, b"\0" * (-(len(header) + len(encoded)) % 4),
                        data, b"\0" * (-len(data) % 4)]

    def _parents(self, name: str) -> None:
        parts = name.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            directory = "/".join(parts[:depth])
            if directory not in self._dirs:
                self._dirs.add(directory)
                self._entry(directory, stat.S_IFDIR | 0o755, nlink=2)

    def file(self, name: str, data: bytes, mode: int) -> None:
        self._parents(name)
        self._entry(name, stat.S_IFREG | mode, data)

    def device(self, name: str, major: int, minor: int) -> None:
        self._parents(name)
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0, nlink=1)
        data = b"".join(self._parts)
        return data + b"\0" * (-len(data) % 512)


def make_ext4_disk(path: Path, size_mib: int = 16) -> Path:
    """A raw, empty ext4 image for ``domain_xml(fs_disk=...)``: a real file system that
    ``fsFreeze()`` freezes (the initramfs and tmpfs mounts are skipped by qemu-ga)."""
    with open(path, "wb") as image:
        image.truncate(size_mib << 20)
    _run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(path))
    return path


def domain_xml(name: str, image: GuestImage, disk: Path, emulator: str, *,
               memory_mib: int = 128, console: Path | None = None,
               fs_disk: Path | None = None, mount_disk: bool = False) -> str:
    """A TCG domain booting ``image`` directly (no firmware boot menu, no bootloader) with
    ``disk`` (qcow2) as virtio ``vda``, a guest-agent channel, the serial console in
    ``console`` (default: ``<disk>.console.log``) and no network.  ``fs_disk`` (raw, e.g.
    from :func:`make_ext4_disk`) becomes ``vdb``, mounted on ``/mnt/vdb`` so that a freeze
    has a file system to freeze; ``mount_disk`` mounts ``vda`` too (it must hold one)."""
    console = console or disk.with_name(disk.name + ".console.log")
    mounts = (["vda"] if mount_disk else []) + (["vdb"] if fs_disk is not None else [])
    cmdline = "console=ttyS0 quiet panic=-1" + (f" sbr_mount={','.join(mounts)}" if mounts else "")
    extra = "" if fs_disk is None else f"""
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file={quoteattr(str(fs_disk))}/>
      <target dev='vdb' bus='virtio'/>
    </disk>"""
    return f"""<domain type='qemu'>
  <name>{escape(name)}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(image.kernel))}</kernel>
    <initrd>{escape(str(image.initrd))}</initrd>
    <cmdline>{escape(cmdline)}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <emulator>{escape(emulator)}</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file={quoteattr(str(disk))}/>
      <target dev='vda' bus='virtio'/>
    </disk>{extra}
    <controller type='usb' model='none'/>
    <controller type='virtio-serial' index='0'/>
    <channel type='unix'>
      <target type='virtio' name='{AGENT_CHANNEL}'/>
    </channel>
    <serial type='file'>
      <source path={quoteattr(str(console))}/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>"""


def console_path(dom: libvirt.virDomain) -> Path | None:
    """Where ``dom``'s serial console is written, if to a file."""
    root = ET.fromstring(dom.XMLDesc(0))  # noqa: S314 - libvirt's own XML
    for serial in root.iterfind("devices/serial"):
        source = serial.find("source")
        if serial.get("type") == "file" and source is not None and source.get("path"):
            return Path(source.attrib["path"])
    return None


def console_text(dom: libvirt.virDomain, limit: int = 4000) -> str:
    """The last ``limit`` characters of ``dom``'s serial console, for failure messages."""
    path = console_path(dom)
    if path is None:
        return "(no file console)"
    try:
        text = path.read_text(errors="replace")[-limit:]
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    # Below ~80 MiB the kernel dies before its console starts, and says nothing.
    return text or f"({path} is empty: the kernel died before its console; too little memory?)"


def wait_for_agent(dom: libvirt.virDomain, timeout: float = 120.0) -> float:
    """Seconds until ``dom``'s guest agent answered guest-ping.  Under TCG the boot takes a
    few seconds (about 2.5 on an idle machine), longer under load, so callers poll rather than
    guess; a guest that stops or never answers raises with its console, the only account of
    what went wrong inside it."""
    import libvirt
    import libvirt_qemu

    start = time.monotonic()
    last = ""
    while (waited := time.monotonic() - start) < timeout:
        if not dom.isActive():
            raise RuntimeError(f"domain {dom.name()} stopped before its agent answered:\n"
                               + console_text(dom))
        try:
            reply = libvirt_qemu.qemuAgentCommand(
                dom, '{"execute":"guest-ping"}', max(1, min(5, int(timeout - waited))), 0)
            if reply is not None and "return" in json.loads(reply):
                return time.monotonic() - start
            last = f"unexpected reply {reply!r}"
        except libvirt.libvirtError as exc:  # not connected yet, or timed out
            last = str(exc)
        time.sleep(0.25)
    raise TimeoutError(f"guest agent of {dom.name()} silent for {timeout:.0f} s ({last}):\n"
                       + console_text(dom))


def agent(dom: libvirt.virDomain, command: str, **arguments: Any) -> Any:
    """Send ``command`` to the guest agent; its ``return`` value."""
    import libvirt_qemu

    request = {"execute": command, **({"arguments": arguments} if arguments else {})}
    return json.loads(libvirt_qemu.qemuAgentCommand(dom, json.dumps(request), 30, 0))["return"]


def guest_shell(dom: libvirt.virDomain, script: str) -> str:
    """Run ``script`` in the guest through the agent; its output."""
    pid = agent(dom, "guest-exec", path="/bin/sh", arg=["-c", script],
                **{"capture-output": True})["pid"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = agent(dom, "guest-exec-status", pid=pid)
        if status["exited"]:
            assert status.get("exitcode") == 0, status
            return base64.b64decode(status.get("out-data", "")).decode()
        time.sleep(0.1)
    raise AssertionError(f"guest command did not end: {script}")
