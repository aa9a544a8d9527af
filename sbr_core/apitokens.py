"""API tokens: how scripts and the ``sbr`` CLI act as a user on the REST API.

A token is ``sbru_`` and 256 random bits, shown once; the server keeps only its SHA-256, as
for node tokens (a fast hash is enough for a random secret of that size). A token acts with
its user's role, as a session would; it stops working when revoked, when it expires, or when
its user is disabled. The prefix keeps user and node tokens apart: neither is accepted where
the other is expected.
"""

from __future__ import annotations

import hmac
from datetime import timedelta
from typing import Any

from sbr_core.bearer import mint, token_digest
from sbr_core.db.schema import ApiToken, Role, User, utcnow
from sbr_core.errors import AuthError, NotFoundError, UsageError

TOKEN_PREFIX = "sbru_"  # noqa: S105 - marks user API tokens, not a secret
DEFAULT_LIFETIME_DAYS = 90
MAX_LIFETIME_DAYS = 3650
#: ``last_used_at`` is written at most this often, so reads stay reads.
_TOUCH_EVERY = timedelta(minutes=1)
_MAX_NAME = 100


def create_token(user: User, *, name: str = "", days: int | None = DEFAULT_LIFETIME_DAYS
                 ) -> tuple[ApiToken, str]:
    """A new token for ``user``, valid for ``days`` (None: no expiry); returns the row and
    the token itself, which is never stored."""
    name = name.strip()
    if len(name) > _MAX_NAME:
        raise UsageError(f"name: at most {_MAX_NAME} characters")
    if days is not None and (isinstance(days, bool) or not isinstance(days, int)
                             or not 1 <= days <= MAX_LIFETIME_DAYS):
        raise UsageError(f"expires_in_days: must be a whole number from 1 to "
                         f"{MAX_LIFETIME_DAYS}")
    token, digest = mint(TOKEN_PREFIX)
    now = utcnow()
    row = ApiToken.create(user=user, name=name, token_hash=digest, created_at=now,
                          expires_at=now + timedelta(days=days) if days else None)
    return row, token


def authenticate(token: str) -> ApiToken:
    """The token's row, its user (with the role) read in the same query, when the token
    is good and its user active; AuthError for anything else (not a user token, unknown,
    revoked, expired, user disabled)."""
    if not token.startswith(TOKEN_PREFIX):
        raise AuthError("not an API token (sbru_…); get one with `sbr login` or "
                        "POST /api/v1/tokens")
    digest = token_digest(token)
    row: ApiToken | None = (ApiToken.select(ApiToken, User, Role).join(User).join(Role)
                            .where(ApiToken.token_hash == digest).first())
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        raise AuthError("unknown API token")
    if row.revoked:
        raise AuthError("this API token was revoked")
    now = utcnow()
    if row.expires_at is not None and row.expires_at <= now:
        raise AuthError("this API token has expired")
    if not row.user.active:
        raise AuthError("the user of this API token is disabled")
    if row.last_used_at is None or now - row.last_used_at >= _TOUCH_EVERY:
        ApiToken.update(last_used_at=now).where(ApiToken.id == row.id).execute()
    return row


def get_token(token_id: int) -> ApiToken:
    """The token row with that id; NotFoundError otherwise."""
    row: ApiToken | None = ApiToken.get_or_none(ApiToken.id == token_id)
    if row is None:
        raise NotFoundError(f"token: no API token with id {token_id}")
    return row


def revoke_token(token_id: int) -> ApiToken:
    """Refuse the token from now on (the row stays, for the record)."""
    row = get_token(token_id)
    ApiToken.update(revoked=True).where(ApiToken.id == row.id).execute()
    row.revoked = True
    return row


def tokens_of(user: User) -> list[ApiToken]:
    """The user's tokens, newest first."""
    return list(ApiToken.select().where(ApiToken.user == user)
                .order_by(ApiToken.created_at.desc(), ApiToken.id.desc()))


def describe(row: ApiToken) -> dict[str, Any]:
    """What may be shown of a token: never the token nor its hash."""
    now = utcnow()
    expired = row.expires_at is not None and row.expires_at <= now
    return {"id": row.id, "name": row.name, "created_at": _iso(row.created_at),
            "last_used_at": _iso(row.last_used_at), "expires_at": _iso(row.expires_at),
            "revoked": bool(row.revoked),
            "state": "revoked" if row.revoked else "expired" if expired else "active"}


def _iso(moment: Any) -> str | None:
    return moment.isoformat() + "Z" if moment is not None else None
