"""The libvirt side: opening a connection, and turning libvirt's errors into SBR's.

Calls into libvirt run inside :func:`translated` (or catch libvirtError and say what failed
themselves), so an error reaches the admin as one line that names the connection and what
was being done, never as a libvirtError traceback.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sbr_core.errors import ProviderError

if TYPE_CHECKING:
    import libvirt

    from sbr_plugins.kvm.config import KvmConfig

_quiet = threading.Lock()
_quieted = False

# libvirt error codes (virErrorNumber) this plugin tells apart.
ERR_NO_DOMAIN = 42
ERR_AUTH_FAILED = 45
ERR_ARGUMENT_UNSUPPORTED = 74
ERR_AGENT_UNRESPONSIVE = 86
ERR_NO_DOMAIN_CHECKPOINT = 103
ERR_NO_DOMAIN_BACKUP = 104
ERR_CHECKPOINT_INCONSISTENT = 109
ERR_AUTH_UNAVAILABLE = 94
ERR_NO_DOMAIN_SNAPSHOT = 72


def libvirt_module() -> Any:
    """libvirt-python, imported on first use, with its stderr error printing turned off."""
    global _quieted
    try:
        import libvirt
    except ImportError as exc:
        raise ProviderError("libvirt-python is not installed on this node "
                            "(pip install 'sbr[kvm]'; it needs libvirt-dev to build)") from exc
    with _quiet:
        if not _quieted:
            libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
            _quieted = True
    return libvirt


def error_code(exc: BaseException) -> int:
    get = getattr(exc, "get_error_code", None)
    return int(get() or 0) if get is not None else 0


def error_text(exc: BaseException) -> str:
    get = getattr(exc, "get_error_message", None)
    return str((get() if get is not None else None) or exc).strip()


@contextmanager
def translated(what: str) -> Iterator[None]:
    """Turn a libvirtError raised inside into a ProviderError saying ``what`` failed."""
    libvirt = libvirt_module()
    try:
        yield
    except libvirt.libvirtError as exc:
        raise ProviderError(f"{what}: {error_text(exc)}") from exc


def is_local(uri: str) -> bool:
    """Whether ``uri`` names the hypervisor on this host (no host name, or a unix socket)."""
    parts = urlsplit(uri)
    return not parts.hostname or parts.scheme.endswith("+unix")


def open_connection(name: str, config: KvmConfig) -> libvirt.virConnect:
    """Open ``config.uri``, answering credential prompts from the configured user name and
    password; errors say whether the host is unreachable or the credentials are wrong."""
    libvirt = libvirt_module()
    username = config.username
    password = config.password.reveal()
    asked: list[str] = []

    def answer(credentials: list[list[Any]], _data: Any) -> int:
        for credential in credentials:
            kind = credential[0]
            if kind == libvirt.VIR_CRED_AUTHNAME:
                asked.append("user name")
                credential[4] = username or credential[3] or ""
            elif kind in (libvirt.VIR_CRED_PASSPHRASE, libvirt.VIR_CRED_NOECHOPROMPT):
                asked.append("password")
                if not password:
                    return -1
                credential[4] = password
            else:
                return -1
        return 0

    auth = [[libvirt.VIR_CRED_AUTHNAME, libvirt.VIR_CRED_PASSPHRASE,
             libvirt.VIR_CRED_NOECHOPROMPT], answer, None]
    try:
        conn = libvirt.openAuth(config.uri, auth, 0)
    except libvirt.libvirtError as exc:
        code, text = error_code(exc), error_text(exc)
        if code in (ERR_AUTH_FAILED, ERR_AUTH_UNAVAILABLE) or "authentication" in text.lower():
            if "password" in asked and not password:
                hint = "the hypervisor asks for a password and none is configured"
            else:
                hint = "wrong user name or password, or this user may not connect"
            raise ProviderError(f"kvm connection {name!r}: {config.uri} refused the "
                                f"credentials ({hint}): {text}") from exc
        raise ProviderError(f"kvm connection {name!r}: cannot connect to {config.uri}: {text}",
                            retryable=True) from exc
    if conn is None:  # old bindings return None instead of raising
        raise ProviderError(f"kvm connection {name!r}: cannot connect to {config.uri}")
    return conn
