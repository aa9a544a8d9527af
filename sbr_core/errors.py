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


class ConfigError(SbrError):
    """Settings that do not fit their schema; ``problems`` maps field name to message."""

    exit_code = 2

    def __init__(self, subject: str, problems: dict[str, str]) -> None:
        self.subject = subject
        self.problems = dict(problems)
        details = "; ".join(f"{field}: {msg}" for field, msg in self.problems.items())
        super().__init__(f"{subject}: {details}" if details else subject)


class UsageError(SbrError):
    """A request that names something unknown or combines options wrongly."""

    exit_code = 2


class NotFoundError(UsageError):
    """A named object (plugin, user, destination, …) does not exist."""


class PluginError(SbrError):
    """A plugin misbehaved: bad registration, wrong provider type, duplicate name."""


class ProviderError(SbrError):
    """A platform (hypervisor, application, storage) failed; raised by plugins at their boundary."""


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


class DatabaseError(SbrError):
    """The database cannot be reached, or refuses the credentials, or its schema is off."""


class AuthError(SbrError):
    """Authentication failed or the user lacks the permission asked for."""

    exit_code = 3


class SecretError(SbrError):
    """A secret could not be decrypted (wrong or missing server key) or the key file is unsafe."""
