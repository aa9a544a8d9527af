"""Serving backed-up disks over NBD, read-only, straight from the repository.

This is how a backup is mounted without restoring it first: any NBD client (``qemu-nbd
--connect``, ``nbdfuse``, ``guestfish --format=raw -a nbd://…``, ``qemu-img``) reads the disk
as it was at the backup, and each read fetches only the chunks it touches.

The server speaks the fixed-newstyle handshake of the NBD protocol
(https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md) with simple replies:
``NBD_OPT_GO``/``NBD_OPT_INFO``/``NBD_OPT_EXPORT_NAME`` to pick an export, then ``READ``,
``CACHE`` and ``DISC``. Writes are refused with ``EPERM``. Export names are the only access
control (NBD has none but TLS): they are long random names, never listed
(``NBD_OPT_LIST`` is refused), and a wrong one gets the same answer as a missing one.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import struct
import threading
from collections.abc import Callable, Mapping
from typing import Any

from sbr_core.errors import SbrError

log = logging.getLogger(__name__)

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698

FLAG_FIXED_NEWSTYLE = 1
FLAG_NO_ZEROES = 2

OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_INFO = 6
OPT_GO = 7

REP_ACK = 1
REP_INFO = 3
REP_ERR_UNSUP = 2**31 + 1
REP_ERR_POLICY = 2**31 + 2
REP_ERR_INVALID = 2**31 + 3
REP_ERR_UNKNOWN = 2**31 + 6

INFO_EXPORT = 0
INFO_BLOCK_SIZE = 3

TRANSMIT_HAS_FLAGS = 1
TRANSMIT_READ_ONLY = 2
TRANSMIT_CAN_MULTI_CONN = 1 << 8
TRANSMIT_SEND_CACHE = 1 << 10
TRANSMIT_FLAGS = (TRANSMIT_HAS_FLAGS | TRANSMIT_READ_ONLY | TRANSMIT_CAN_MULTI_CONN
                  | TRANSMIT_SEND_CACHE)

CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_CACHE = 5

EPERM = 1
EIO = 5
EINVAL = 22

#: The largest read one request may ask for (QEMU asks for at most 32 MiB too).
MAX_READ = 32 << 20
#: An option's data is a name and a few info requests; more is a confused or hostile client.
MAX_OPTION = 64 << 10
PREFERRED_BLOCK = 64 << 10

#: What an export is read through: ``read(offset, length) -> bytes`` and ``size``.
#: A new reader is made per connection, so a reader need not be thread-safe.
ReaderFactory = Callable[[], Any]


class _ClientGone(Exception):
    """The client closed the connection, or broke the protocol."""


class NbdDiskServer:
    """A threaded NBD server for a fixed set of read-only exports, ``name → reader factory``.

    ``sizes`` gives each export's size in bytes. Counters (``connections``, ``reads``,
    ``bytes_read``, ``errors``) are for the task's progress; :meth:`stop` ends every
    connection and closes the socket.
    """

    def __init__(self, exports: Mapping[str, ReaderFactory], sizes: Mapping[str, int], *,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.exports = dict(exports)
        self.sizes = dict(sizes)
        self.connections = 0
        self.reads = 0
        self.bytes_read = 0
        self.errors = 0
        self.last_error = ""
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        server = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                server._serve_connection(self.request)

        family = socket.AF_INET6 if ":" in host else socket.AF_INET

        class Server(socketserver.ThreadingTCPServer):
            address_family = family
            allow_reuse_address = True
            daemon_threads = True

        try:
            self._server = Server((host, port), Handler)
        except OSError as exc:
            raise SbrError(f"cannot listen on {host} port {port}: {exc.strerror or exc}") \
                from None
        self.host, self.port = self._server.server_address[:2]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.2},
                                        name=f"sbr-nbd-{self.port}", daemon=True)

    def start(self) -> NbdDiskServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            for sock in self._open:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._thread.join(timeout=5)

    def __enter__(self) -> NbdDiskServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- one connection ---------------------------------------------------------------------

    def _serve_connection(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._open.add(sock)
            self.connections += 1
        try:
            chosen = self._handshake(sock)
            if chosen is not None:
                self._transmit(sock, chosen)
        except (_ClientGone, OSError):
            pass
        finally:
            with self._lock:
                self._open.discard(sock)

    def _handshake(self, sock: socket.socket) -> str | None:
        """Option haggling; the export chosen, or ``None`` when the client gave up."""
        sock.sendall(struct.pack(">QQH", NBDMAGIC, IHAVEOPT,
                                 FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
        (client_flags,) = struct.unpack(">I", _receive(sock, 4))
        if client_flags & ~(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES):
            raise _ClientGone
        no_zeroes = bool(client_flags & FLAG_NO_ZEROES)
        while True:
            magic, option, length = struct.unpack(">QII", _receive(sock, 16))
            if magic != IHAVEOPT or length > MAX_OPTION:
                raise _ClientGone
            data = _receive(sock, length)
            if option == OPT_EXPORT_NAME:
                name = data.decode("utf-8", "replace")
                if name not in self.exports:
                    raise _ClientGone  # this option has no error reply: the spec says close
                sock.sendall(struct.pack(">QH", self.sizes[name], TRANSMIT_FLAGS)
                             + (b"" if no_zeroes else bytes(124)))
                return name
            if option == OPT_ABORT:
                _option_reply(sock, option, REP_ACK)
                return None
            if option in (OPT_INFO, OPT_GO):
                described = self._export_info(sock, option, data)
                if option == OPT_GO and described is not None:
                    return described
                continue
            if option == OPT_LIST:
                _option_reply(sock, option, REP_ERR_POLICY,
                              b"exports are not listed: ask for one by its name")
                continue
            # Structured replies, meta contexts, TLS, extended headers: simple replies only.
            _option_reply(sock, option, REP_ERR_UNSUP)

    def _export_info(self, sock: socket.socket, option: int, data: bytes) -> str | None:
        if len(data) < 6:
            _option_reply(sock, option, REP_ERR_INVALID, b"option data too short")
            return None
        (name_length,) = struct.unpack(">I", data[:4])
        if len(data) < 4 + name_length + 2:
            _option_reply(sock, option, REP_ERR_INVALID, b"option data too short")
            return None
        name = data[4:4 + name_length].decode("utf-8", "replace")
        if name not in self.exports:
            _option_reply(sock, option, REP_ERR_UNKNOWN, b"no such export")
            return None
        _option_reply(sock, option, REP_INFO,
                      struct.pack(">HQH", INFO_EXPORT, self.sizes[name], TRANSMIT_FLAGS))
        _option_reply(sock, option, REP_INFO,
                      struct.pack(">HIII", INFO_BLOCK_SIZE, 1, PREFERRED_BLOCK, MAX_READ))
        _option_reply(sock, option, REP_ACK)
        return name

    def _transmit(self, sock: socket.socket, name: str) -> None:
        reader = self.exports[name]()
        size = self.sizes[name]
        while True:
            magic, _flags, command, cookie, offset, length = struct.unpack(
                ">IHHQQI", _receive(sock, 28))
            if magic != REQUEST_MAGIC:
                raise _ClientGone
            if command == CMD_DISC:
                return
            if command == CMD_WRITE:
                _discard(sock, length)  # the payload follows; keep the stream in step
                _simple_reply(sock, cookie, EPERM)
                continue
            if command not in (CMD_READ, CMD_CACHE):
                _simple_reply(sock, cookie, EPERM if command in (4, 6) else EINVAL)
                continue
            if offset + length > size or length > MAX_READ:
                _simple_reply(sock, cookie, EINVAL)
                continue
            try:
                data = reader.read(offset, length)
            except Exception as exc:  # a damaged or unreachable pack: EIO, and say why once
                self._read_failed(name, offset, length, exc)
                _simple_reply(sock, cookie, EIO)
                continue
            with self._lock:
                self.reads += 1
                self.bytes_read += length
            if command == CMD_CACHE:
                _simple_reply(sock, cookie, 0)
            else:
                sock.sendall(struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, 0, cookie) + data)

    def _read_failed(self, name: str, offset: int, length: int, exc: Exception) -> None:
        message = f"read of {length} bytes at {offset} failed: {exc}"
        with self._lock:
            self.errors += 1
            first = self.last_error != str(exc)
            self.last_error = str(exc)
        if first:
            log.error("export %s: %s", name.rsplit("/", 1)[-1], message)


def _receive(sock: socket.socket, length: int) -> bytes:
    parts = []
    while length:
        part = sock.recv(min(length, 1 << 20))
        if not part:
            raise _ClientGone
        parts.append(part)
        length -= len(part)
    return b"".join(parts)


def _discard(sock: socket.socket, length: int) -> None:
    while length:
        part = sock.recv(min(length, 1 << 20))
        if not part:
            raise _ClientGone
        length -= len(part)


def _option_reply(sock: socket.socket, option: int, reply: int, data: bytes = b"") -> None:
    sock.sendall(struct.pack(">QIII", REPLY_MAGIC, option, reply, len(data)) + data)


def _simple_reply(sock: socket.socket, cookie: int, error: int) -> None:
    sock.sendall(struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, error, cookie))
