"""Running a transaction again when MariaDB chose it as a deadlock victim.

InnoDB resolves a lock cycle by rolling back one of the transactions in it (error 1213), and
a lock wait can time out (1205). Both are normal under contention (several server threads
claiming and finishing tasks at once) and the documented answer is to run the transaction
again from the start. SQLite serialises writers and never raises either.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import peewee as pw

from sbr_core.db.schema import database_proxy

log = logging.getLogger(__name__)

DEADLOCK = 1213
LOCK_WAIT_TIMEOUT = 1205
ATTEMPTS = 5

P = ParamSpec("P")
R = TypeVar("R")


def is_lock_conflict(exc: BaseException) -> bool:
    """True for the errors that a fresh run of the same transaction may not meet again."""
    return (isinstance(exc, pw.OperationalError) and bool(exc.args)
            and exc.args[0] in (DEADLOCK, LOCK_WAIT_TIMEOUT))


def retry_on_lock_conflict(work: Callable[P, R]) -> Callable[P, R]:
    """Decorate a function that is one whole transaction, so that it runs again (at most
    ``ATTEMPTS`` times, with a short growing pause) when it lost a lock conflict.

    Called inside a transaction someone else opened, it does not retry: the conflict rolled
    back that outer transaction too, and only its owner can start it again.
    """

    @functools.wraps(work)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        for attempt in range(1, ATTEMPTS + 1):
            nested = database_proxy.obj is not None and database_proxy.in_transaction()
            try:
                return work(*args, **kwargs)
            except pw.OperationalError as exc:
                if nested or attempt == ATTEMPTS or not is_lock_conflict(exc):
                    raise
                log.info("%s lost a lock conflict (%s); running it again (attempt %d)",
                         work.__qualname__, exc.args[0], attempt + 1)
                time.sleep(0.002 * 2 ** attempt)
        raise AssertionError("unreachable")  # the loop returns or raises

    return run
