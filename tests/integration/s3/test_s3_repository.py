"""A backup repository on S3, through ``sbr repo`` as an admin runs it: subprocesses against
the moto server, the bucket and credentials given as an ``s3://`` URL and AWS_* variables."""

from __future__ import annotations

import random
import uuid
from pathlib import Path

import pytest

from tests.cli_runs import as_json, ok, one_line_error, sbr
from tests.s3server import ANY_KEY_ID, ANY_SECRET, MotoS3Server

MiB = 2**20
PASSWORD = "a long repository passphrase"
PREFIX = "backups/site1"
#: This interpreter, not whatever `sbr` is first on PATH: the code under test is this checkout.


@pytest.fixture
def env(sbr_env: dict[str, str]) -> dict[str, str]:
    """The CLI's environment: credentials and passphrase as an admin sets them."""
    return {**sbr_env, "AWS_ACCESS_KEY_ID": ANY_KEY_ID, "AWS_SECRET_ACCESS_KEY": ANY_SECRET,
            "SBR_REPO_PASSWORD": PASSWORD}


@pytest.fixture
def repo_url(s3_server: MotoS3Server, bucket: str) -> str:
    return f"s3://{bucket}/{PREFIX}?endpoint={s3_server.endpoint}"


def mixed_image(path: Path) -> bytes:
    """20 MiB: 8 MiB of random bytes, 6 MiB of written zeros, 6 MiB of text."""
    text = b"".join(b"line %d: the quick brown fox jumps over the lazy dog\n" % n
                    for n in range(6 * MiB // 40))[:6 * MiB]
    data = random.Random(20).randbytes(8 * MiB) + bytes(6 * MiB) + text
    path.write_bytes(data)
    return data


def change(path: Path, data: bytes, extents: Path) -> bytes:
    """Rewrite 3 MiB of the random part and a little of the zeros and of the text; write
    the changed ranges as 'OFFSET LENGTH' lines. Returns the new content."""
    noise = random.Random(21)
    changes = [(0, noise.randbytes(3 * MiB)), (9 * MiB + 4096, b"not zero any more " * 6),
               (17 * MiB + 12345, noise.randbytes(5000))]
    changed = bytearray(data)
    lines = ["# offset length"]
    with open(path, "r+b") as image:
        for offset, new in changes:
            image.seek(offset)
            image.write(new)
            changed[offset:offset + len(new)] = new
            lines.append(f"{offset} {len(new)}")
    extents.write_text("\n".join(lines) + "\n")
    return bytes(changed)


def small_tree(root: Path) -> dict[str, bytes]:
    (root / "etc" / "app").mkdir(parents=True)
    files = {"etc/app/settings.ini": b"[main]\nname = site1\n" * 50,
             "etc/hostname": b"node1\n", "empty": b"",
             "data.bin": random.Random(22).randbytes(300_000)}
    for name, content in files.items():
        (root / name).write_bytes(content)
    return files


def read_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def stored_keys(s3_server: MotoS3Server, bucket: str) -> list[str]:
    paginator = s3_server.client().get_paginator("list_objects_v2")
    return [item["Key"] for page in paginator.paginate(Bucket=bucket)
            for item in page.get("Contents", [])]


def test_a_repository_on_s3_backs_up_restores_verifies_and_collects_garbage(
        env: dict[str, str], repo_url: str, s3_server: MotoS3Server, bucket: str,
        tmp_path: Path) -> None:
    init = as_json(sbr("repo", "init", repo_url, "--pack-size", str(MiB), "--json", env=env))
    assert init["encryption"] == "aes-256-gcm" and init["pack_size"] == MiB
    image, extents = tmp_path / "disk.img", tmp_path / "changed.txt"
    original = mixed_image(image)
    full = as_json(sbr("repo", "backup-image", repo_url, "vm1", str(image), "--json", env=env))
    changed = change(image, original, extents)
    incremental = as_json(sbr("repo", "backup-image", repo_url, "vm1", str(image), "--parent",
                              full["backup_id"], "--changed-extents", str(extents), "--json",
                              env=env))
    assert incremental["parent"] == full["backup_id"]
    assert incremental["bytes_read"] < 4 * MiB  # only the changed chunks were read
    tree = small_tree(tmp_path / "src")
    files = as_json(sbr("repo", "backup-path", repo_url, "etc", str(tmp_path / "src"),
                        "--json", env=env))

    keys = stored_keys(s3_server, bucket)
    assert keys and all(key.startswith(f"{PREFIX}/") for key in keys)
    assert sum(key.startswith(f"{PREFIX}/packs/") for key in keys) >= 5
    listed = as_json(sbr("repo", "list", repo_url, "--json", env=env))
    assert [(b["backup_id"], b["name"], b["kind"], b["parent"]) for b in listed] == [
        (full["backup_id"], "vm1", "image", None),
        (incremental["backup_id"], "vm1", "image", full["backup_id"]),
        (files["backup_id"], "etc", "path", None)]

    ok(sbr("repo", "restore", repo_url, full["backup_id"], str(tmp_path / "full.img"),
           env=env))
    assert (tmp_path / "full.img").read_bytes() == original
    ok(sbr("repo", "restore", repo_url, incremental["backup_id"], str(tmp_path / "incr.img"),
           env=env))
    assert (tmp_path / "incr.img").read_bytes() == changed
    ok(sbr("repo", "restore", repo_url, "etc@latest", str(tmp_path / "out"), env=env))
    assert read_tree(tmp_path / "out") == tree
    report = as_json(sbr("repo", "verify", repo_url, "--json", env=env))
    assert report["ok"] is True

    ok(sbr("repo", "forget", repo_url, full["backup_id"], env=env))
    gc = as_json(sbr("repo", "gc", repo_url, "--json", env=env))
    assert gc["phase"] == "swept" and gc["packs_deleted"] >= 1, gc
    assert len(stored_keys(s3_server, bucket)) < len(keys)
    report = as_json(sbr("repo", "verify", repo_url, "--json", env=env))
    assert report["ok"] is True and report["backups_checked"] == 2, report
    (tmp_path / "incr.img").unlink()
    ok(sbr("repo", "restore", repo_url, incremental["backup_id"], str(tmp_path / "incr.img"),
           env=env))
    assert (tmp_path / "incr.img").read_bytes() == changed


def test_an_unknown_setting_in_the_url_is_a_usage_error_naming_it(
        env: dict[str, str], repo_url: str, s3_server: MotoS3Server, bucket: str) -> None:
    result = sbr("repo", "init", f"{repo_url}&colour=blue", env=env)
    assert "unknown setting(s) in the s3:// URL: colour" in one_line_error(result)
    assert result.returncode == 2
    assert stored_keys(s3_server, bucket) == []


def test_a_missing_bucket_is_named_in_a_one_line_error(env: dict[str, str],
                                                        s3_server: MotoS3Server) -> None:
    missing = f"sbr-missing-{uuid.uuid4().hex[:12]}"
    url = f"s3://{missing}/{PREFIX}?endpoint={s3_server.endpoint}"
    for args in (["init", url], ["list", url]):
        message = one_line_error(sbr("repo", *args, env=env))
        assert f"bucket {missing!r} does not exist at {s3_server.endpoint}" in message
