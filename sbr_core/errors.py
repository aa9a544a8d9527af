"""The one exception hierarchy of SBR.

Every error meant for an admin derives from :class:`SbrError`; its message names the object
that is wrong ("destination 'nas1': /srv/backup is read-only"). The CLI turns any SbrError into
one line and a non-zero exit; the web API turns it into a 4xx/5xx JSON body.
"""

from __future__ import annotations


class SbrError(Exception):
    """Base of every error SBR reports to a person."""

    #: Exit code the CLI uses for this error.
    exit_code: int = 1
    #: HTTP status the JSON APIs answer with (502: a platform behind the server failed).
    http_status: int = 502


class ConfigError(SbrError):
    """Settings that do not fit their schema; ``problems`` maps field name to message."""

    exit_code = 2
    http_status = 400

    def __init__(self, subject: str, problems: dict[str, str]) -> None:
        self.subject = subject
        self.problems = dict(problems)
        details = "; ".join(f"{field}: {msg}" for field, msg in self.problems.items())
        super().__init__(f"{subject}: {details}" if details else subject)


class UsageError(SbrError):
    """A request that names something unknown or combines options wrongly."""

    exit_code = 2
    http_status = 400


class NotFoundError(UsageError):
    """A named object (plugin, user, destination, …) does not exist."""

    http_status = 404


class ConflictError(UsageError):
    """The request clashes with the current state (a backup already pending, a workflow
    that already ended)."""

    http_status = 409


class LeaseLost(ConflictError):
    """A node reported on a task it no longer holds (its lease ran out and the task went
    elsewhere, or the task was cancelled): the report is refused."""


class PluginError(SbrError):
    """A plugin misbehaved: bad registration, wrong provider type, duplicate name."""


class ProviderError(SbrError):
    """A platform (hypervisor, application, storage) failed; raised by plugins at their boundary.

    ``retryable`` says that the same call may succeed later (throttling, a busy server, a
    dropped connection); ``retry_after`` is the platform's own hint in seconds, when it gave one
    (Graph's Retry-After). The task engine retries only retryable errors.
    """

    def __init__(self, message: str, *, retryable: bool = False,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class ItemUnavailable(ProviderError):
    """One item could not be exported or restored (deleted meanwhile, too large, locked);
    the rest of the instance goes on and the item is reported as skipped."""


class DestinationError(ProviderError):
    """A backup destination could not do what was asked."""


class DestinationUnavailable(DestinationError):
    """The destination cannot be reached: missing path, unmounted share, network down."""


class DestinationFull(DestinationError):
    """The destination has no room left; the object being written was not stored."""


class DestinationReadOnly(DestinationError):
    """The destination refuses writes."""


class ObjectNotFound(DestinationError):
    """No object exists under the requested key."""


class ObjectExists(DestinationError):
    """``put(..., if_absent=True)`` found an object under that key; nothing was written."""


class DestinationRetentionLocked(DestinationError):
    """The destination refuses to delete an object before its retention period ends."""


class TaskCancelled(SbrError):
    """The task was cancelled; raised by :meth:`Operation.check` at a safe point."""


class DatabaseError(SbrError):
    """The database cannot be reached, or refuses the credentials, or its schema is off."""


class AuthError(SbrError):
    """Authentication failed or the user lacks the permission asked for."""

    exit_code = 3
    http_status = 401


class SecretError(SbrError):
    """A secret could not be decrypted (wrong or missing server key) or the key file is unsafe."""


class RepositoryError(SbrError):
    """A backup repository cannot be used as asked (not initialised, no such backup, locked)."""


class RepositoryNotFound(RepositoryError):
    """There is no repository at that destination (yet)."""


class RepositoryCorrupt(RepositoryError):
    """Stored repository data failed its checks (a damaged or missing pack, index or manifest)."""


class WrongPassphrase(RepositoryError):
    """No key of the repository opens with the passphrase given."""

    exit_code = 3
