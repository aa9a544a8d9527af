"""Users, roles and passwords (scrypt hashes via werkzeug). Roles are enforced on the server."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from pathlib import Path

import peewee as pw
from werkzeug.security import check_password_hash, generate_password_hash

from sbr_core.db.schema import (
    ApiToken,
    Permission,
    Role,
    RolePermission,
    User,
    database_proxy,
    utcnow,
)
from sbr_core.errors import AuthError, NotFoundError, UsageError

MIN_PASSWORD_LENGTH = 8
_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,149}$")
# A hash to compare against when the user does not exist, so both cases take equally long.
_DUMMY_HASH = generate_password_hash("sbr-no-such-user")


def _check_password_rules(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UsageError(f"password: must be at least {MIN_PASSWORD_LENGTH} characters")


def _role(name: str) -> Role:
    role: Role | None = Role.get_or_none(Role.name == name)
    if role is None:
        known = ", ".join(r.name for r in Role.select().order_by(Role.name))
        raise NotFoundError(f"no role named {name!r} (roles: {known})")
    return role


def get_user(username: str) -> User:
    """The user row; NotFoundError when there is none."""
    user: User | None = User.get_or_none(User.username == username)
    if user is None:
        raise NotFoundError(f"no user named {username!r}")
    return user


def add_user(username: str, password: str, *, role: str = "admin") -> User:
    """Create a user; the name must be new and the password long enough."""
    if not _USERNAME.match(username):
        raise UsageError(f"user name {username!r} is invalid: use letters, digits and ._@- "
                         "(up to 150 characters)")
    _check_password_rules(password)
    role_row = _role(role)
    try:
        return User.create(username=username, password_hash=generate_password_hash(password),
                           role=role_row)
    except pw.IntegrityError:
        raise UsageError(f"user {username!r} already exists") from None


def set_password(username: str, password: str) -> int:
    """Replace a user's password and revoke the user's API tokens with the old one: a
    password is changed because it may be known, and a token made with it is as good as
    it. (Web sessions end too: see :func:`session_stamp`.) Returns how many tokens were
    revoked."""
    _check_password_rules(password)
    user = get_user(username)
    with database_proxy.atomic():
        user.password_hash = generate_password_hash(password)
        user.save()
        revoked: int = (ApiToken.update(revoked=True)
                        .where((ApiToken.user == user.id) & (ApiToken.revoked == False))  # noqa: E712
                        .execute())
    return revoked


def session_stamp(user: User) -> str:
    """A short value that changes with the user's password: kept in a web session, it
    ends that session when the password changes."""
    return hashlib.sha256(user.password_hash.encode()).hexdigest()[:16]


def authenticate(username: str, password: str) -> User:
    """The active user with that name and password; AuthError otherwise, never saying which
    of the two was wrong."""
    user = User.get_or_none(User.username == username)
    valid = check_password_hash(user.password_hash if user else _DUMMY_HASH, password)
    if user is None or not valid or not user.active:
        raise AuthError("wrong user name or password")
    user.last_login_at = utcnow()
    user.save(only=[User.last_login_at])
    return user


def permissions_of(user: User) -> frozenset[str]:
    """Names of the permissions the user's role grants."""
    query = (Permission.select(Permission.name)
             .join(RolePermission).where(RolePermission.role == user.role_id))
    return frozenset(p.name for p in query)


def ensure_initial_admin(password_file: Path) -> str | None:
    """On a database without users, create ``admin`` with a random password written to
    ``password_file`` (0600). Returns the password file path, or None if users exist."""
    if User.select().exists():
        return None
    password = secrets.token_urlsafe(15)
    add_user("admin", password, role="admin")
    fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(password + "\n")
    return str(password_file)
