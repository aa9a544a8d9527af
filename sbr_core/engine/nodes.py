"""Nodes as the server knows them: created by an admin, each with its own bearer token.

A token is 256 random bits shown once; the server keeps only its SHA-256 (a fast hash is
enough for a random secret of that size). Revoking a node refuses its token from then on.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable
from typing import Any

import peewee as pw

from sbr_core.bearer import mint, token_digest
from sbr_core.db.schema import Node, utcnow
from sbr_core.engine.claims import parse_affinity
from sbr_core.errors import AuthError, NotFoundError, UsageError

TOKEN_PREFIX = "sbrn_"  # noqa: S105 - marks node tokens, not a secret
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def validate_affinity(values: Iterable[str]) -> list[str]:
    """``provider:NAME`` and ``cluster:PATH`` entries, checked; errors name the field."""
    result = []
    for value in values:
        kind, _, name = str(value).partition(":")
        if kind not in ("provider", "cluster") or not name:
            raise UsageError(f"affinity: {value!r} is not provider:NAME or cluster:PATH")
        result.append(f"{kind}:{name}")
    parse_affinity(result)
    return result


def add_node(name: str, *, concurrency: int = 2, affinity: Iterable[str] = ()
             ) -> tuple[Node, str]:
    """Create a node; returns it and its token (shown once, never stored)."""
    if not _NAME.match(name):
        raise UsageError(f"name: {name!r} is invalid: use letters, digits and ._- "
                         "(up to 100 characters)")
    if not 1 <= concurrency <= 64:
        raise UsageError(f"concurrency: must be from 1 to 64, not {concurrency}")
    token, digest = mint(TOKEN_PREFIX)
    try:
        node = Node.create(name=name, token_hash=digest, concurrency=concurrency,
                           affinity=validate_affinity(affinity), state="new")
    except pw.IntegrityError:
        raise UsageError(f"name: node {name!r} already exists") from None
    return node, token


def rotate_token(name: str) -> str:
    """A new token for a node (the old one stops working); un-revokes it."""
    node = get_node(name)
    token, digest = mint(TOKEN_PREFIX)
    Node.update(token_hash=digest, revoked=False).where(Node.id == node.id).execute()
    return token


def get_node(name: str) -> Node:
    node: Node | None = Node.get_or_none(Node.name == name)
    if node is None:
        raise NotFoundError(f"node: no node named {name!r}")
    return node


def revoke_node(name: str) -> None:
    node = get_node(name)
    Node.update(revoked=True, state="revoked").where(Node.id == node.id).execute()


def authenticate(token: str) -> Node:
    """The node a bearer token belongs to; AuthError for unknown or revoked tokens."""
    if not token.startswith(TOKEN_PREFIX):
        raise AuthError("not a node token")
    digest = token_digest(token)
    # The columns node calls use; every request pays for each one selected.
    node: Node | None = (Node.select(Node.id, Node.name, Node.token_hash, Node.concurrency,
                                     Node.affinity, Node.revoked)
                         .where(Node.token_hash == digest).first())
    if node is None or not hmac.compare_digest(node.token_hash, digest):
        raise AuthError("unknown node token")
    if node.revoked:
        raise AuthError(f"node {node.name!r} is revoked")
    return node


def register(node: Node, *, version: str, staging_path: str, free_bytes: int) -> None:
    """What a node says about itself when it starts."""
    Node.update(version=str(version)[:32], staging_path=str(staging_path)[:1024],
                free_bytes=max(0, int(free_bytes)), state="online",
                last_seen_at=utcnow()).where(Node.id == node.id).execute()


def describe(node: Node) -> dict[str, Any]:
    return {"name": node.name, "state": node.state, "version": node.version,
            "concurrency": node.concurrency, "affinity": list(node.affinity or []),
            "staging_path": node.staging_path, "free_bytes": node.free_bytes,
            "revoked": node.revoked,
            "last_seen_at": node.last_seen_at.isoformat() + "Z" if node.last_seen_at else None}
