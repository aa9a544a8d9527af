"""The behaviour every backup destination owes the repository, as one reusable test class.

A destination's test module subclasses :class:`DestinationContract` and provides a
``destination`` fixture (an empty destination); the class runs these tests against it.
Destination-specific faults (full disk, unmounted share, throttling) stay in that module.
"""

from __future__ import annotations

import io
import os
import time
from typing import Any

import pytest

from sbr_core.errors import ObjectExists, ObjectNotFound, UsageError

INVALID_KEYS = ["", "../x", "/abs", "a//b", ".hidden", "a/", "-x", "a/../b", "sp ace", "k\n"]


class DestinationContract:
    """Subclass me, with a ``destination`` fixture."""

    def test_put_bytes_then_get_returns_them(self, destination: Any) -> None:
        destination.put("packs/ab/one", b"first object")
        destination.put("empty", b"")
        assert destination.get("packs/ab/one") == b"first object"
        assert destination.get("empty") == b""

    def test_put_a_stream_of_several_mib_round_trips(self, destination: Any) -> None:
        payload = os.urandom(5 * 1024 * 1024 + 17)
        destination.put("packs/big", io.BytesIO(payload))
        assert destination.get("packs/big") == payload

    def test_get_with_offset_and_length_returns_that_range(self, destination: Any) -> None:
        destination.put("data", bytes(range(256)) * 4)
        assert destination.get("data", 10, 5) == bytes(range(10, 15))
        assert destination.get("data", 1020) == bytes(range(252, 256))
        assert destination.get("data", 1020, 100) == bytes(range(252, 256))

    def test_put_replaces_an_existing_object_whole(self, destination: Any) -> None:
        destination.put("index/latest", b"old and longer")
        destination.put("index/latest", b"new")
        assert destination.get("index/latest") == b"new"
        assert destination.stat("index/latest").size == 3

    def test_put_if_absent_creates_once(self, destination: Any) -> None:
        destination.put("locks/gc", b"first", if_absent=True)
        with pytest.raises(ObjectExists, match="'locks/gc' already exists"):
            destination.put("locks/gc", b"second", if_absent=True)
        assert destination.get("locks/gc") == b"first"

    def test_list_yields_keys_with_the_prefix(self, destination: Any) -> None:
        for key in ("packs/ab/1", "packs/ab/2", "packs/cd/3", "packsx", "index/1"):
            destination.put(key, key.encode())
        def keys(prefix: str = "") -> list[str]:
            return sorted(info.key for info in destination.list(prefix))
        assert keys() == ["index/1", "packs/ab/1", "packs/ab/2", "packs/cd/3", "packsx"]
        assert keys("packs/") == ["packs/ab/1", "packs/ab/2", "packs/cd/3"]
        assert keys("packs/a") == ["packs/ab/1", "packs/ab/2"]
        assert keys("nothing/") == []
        sizes = {info.key: info.size for info in destination.list("index/")}
        assert sizes == {"index/1": len(b"index/1")}

    def test_stat_gives_size_and_a_recent_time(self, destination: Any) -> None:
        before = time.time() - 5
        destination.put("a/b", b"12345")
        info = destination.stat("a/b")
        assert (info.key, info.size) == ("a/b", 5)
        assert before <= info.mtime <= time.time() + 5

    def test_delete_removes_and_a_missing_key_is_fine(self, destination: Any) -> None:
        destination.put("a/b", b"x")
        destination.delete("a/b")
        destination.delete("a/b")
        destination.delete("never/was")
        assert [info.key for info in destination.list()] == []

    def test_missing_objects_raise_object_not_found_naming_the_key(
            self, destination: Any) -> None:
        for call in (destination.get, destination.stat, destination.open):
            with pytest.raises(ObjectNotFound, match="'packs/missing'"):
                call("packs/missing")

    def test_open_streams_the_whole_object(self, destination: Any) -> None:
        payload = os.urandom(3 * 1024 * 1024)
        destination.put("packs/streamed", payload)
        with destination.open("packs/streamed") as stream:
            assert stream.read(10) == payload[:10]
            assert stream.read() == payload[10:]

    def test_get_many_returns_every_object(self, destination: Any) -> None:
        for key in ("x/1", "x/2", "x/3"):
            destination.put(key, key.encode())
        assert dict(destination.get_many(["x/3", "x/1"])) == {"x/3": b"x/3", "x/1": b"x/1"}

    @pytest.mark.parametrize("key", INVALID_KEYS)
    def test_invalid_keys_are_refused_by_every_call(self, destination: Any, key: str) -> None:
        for call in (lambda: destination.put(key, b"x"), lambda: destination.get(key),
                     lambda: destination.stat(key), lambda: destination.delete(key)):
            with pytest.raises(UsageError):
                call()

    @pytest.mark.parametrize("prefix", ["../", "/abs", ".hidden", "a//b"])
    def test_invalid_list_prefixes_are_refused(self, destination: Any, prefix: str) -> None:
        with pytest.raises(UsageError):
            list(destination.list(prefix))
