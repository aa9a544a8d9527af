"""``sbr repo`` as an admin or a script runs it: subprocesses on a local repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.cli_runs import as_json, assert_one_line_error, ok, sbr

PASSWORD = "a long repository passphrase"


@pytest.fixture
def env(sbr_env: dict[str, str]) -> dict[str, str]:
    return {**sbr_env, "SBR_REPO_PASSWORD": PASSWORD}


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    with open(path, "wb") as out:
        out.write(os.urandom(1024 * 1024))
        out.seek(3 * 1024 * 1024)  # a hole: never read, restored as zeros
        out.write(b"text after the hole " * 5000)
    return path


def test_image_backup_incremental_restore_verify_forget_gc(env: dict[str, str], tmp_path: Path,
                                                           image: Path) -> None:
    repo = str(tmp_path / "repo")
    init = as_json(sbr("repo", "init", repo, "--json", env=env))
    assert isinstance(init, dict) and init["encryption"] == "aes-256-gcm"
    full = as_json(sbr("repo", "backup-image", repo, "vm1", str(image), "--json", env=env))
    assert isinstance(full, dict)
    assert full["bytes_read"] < image.stat().st_size  # the hole was skipped
    with open(image, "r+b") as disk:
        disk.seek(4096)
        disk.write(b"changed!")
    extents = tmp_path / "changed.txt"
    extents.write_text("# offset length\n4096 8\n")
    incremental = as_json(sbr("repo", "backup-image", repo, "vm1", str(image), "--parent",
                              full["backup_id"][:8], "--changed-extents", str(extents),
                              "--json", env=env))
    assert isinstance(incremental, dict) and incremental["bytes_read"] <= 128 * 1024
    listed = as_json(sbr("repo", "list", repo, "vm1", "--json", env=env))
    assert [b["backup_id"] for b in listed] == [full["backup_id"], incremental["backup_id"]]
    ok(sbr("repo", "forget", repo, full["backup_id"], env=env))
    gc = as_json(sbr("repo", "gc", repo, "--json", env=env))
    assert isinstance(gc, dict) and gc["phase"] in ("swept", "nothing to do")
    restored = tmp_path / "restored.img"
    ok(sbr("repo", "restore", repo, incremental["backup_id"], str(restored), env=env))
    assert restored.read_bytes() == image.read_bytes()
    assert restored.stat().st_blocks * 512 < restored.stat().st_size  # sparse again
    report = as_json(sbr("repo", "verify", repo, "--json", env=env))
    assert isinstance(report, dict) and report["ok"] is True
    stats = as_json(sbr("repo", "stats", repo, "--json", env=env))
    assert isinstance(stats, dict) and stats["backups"] == 1


def test_path_backup_and_restore(env: dict[str, str], tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "file.txt").write_text("hello\n" * 100)
    (source / "top.bin").write_bytes(os.urandom(300_000))
    repo = str(tmp_path / "repo")
    ok(sbr("repo", "init", repo, "--encryption", "none", env=env))
    first = as_json(sbr("repo", "backup-path", repo, "share", str(source), "--json", env=env))
    second = as_json(sbr("repo", "backup-path", repo, "share", str(source), "--json", env=env))
    assert isinstance(first, dict) and isinstance(second, dict)
    assert second["parent"] == first["backup_id"] and second["files_unchanged"] == 2
    ok(sbr("repo", "restore", repo, "share@latest", str(tmp_path / "out"), env=env))
    assert (tmp_path / "out" / "sub" / "file.txt").read_text() == "hello\n" * 100
    assert (tmp_path / "out" / "top.bin").read_bytes() == (source / "top.bin").read_bytes()


def test_retention_rules_forget_all_but_the_newest(env: dict[str, str], tmp_path: Path,
                                                   image: Path) -> None:
    repo = str(tmp_path / "repo")
    ok(sbr("repo", "init", repo, env=env))
    ids = [as_json(sbr("repo", "backup-image", repo, "vm1", str(image), "--json", env=env))
           for _ in range(3)]
    dry = as_json(sbr("repo", "forget", repo, "--keep-last", "1", "--dry-run", "--json",
                      env=env))
    assert isinstance(dry, dict) and len(dry["forgotten"]) == 2
    ok(sbr("repo", "forget", repo, "--keep-last", "1", env=env))
    listed = as_json(sbr("repo", "list", repo, "--json", env=env))
    assert [b["backup_id"] for b in listed] == [ids[-1]["backup_id"]]  # type: ignore[index]


def test_key_export_opens_the_repository_when_its_keys_are_lost(env: dict[str, str],
                                                                 tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    ok(sbr("repo", "init", str(repo), env=env))
    key_file = tmp_path / "key.json"
    ok(sbr("repo", "key", "export", str(repo), str(key_file), env=env))
    assert key_file.stat().st_mode & 0o077 == 0
    saved = key_file.read_bytes()
    assert_one_line_error(sbr("repo", "key", "export", str(repo), str(key_file), env=env),
                          f"{key_file} already exists")
    assert key_file.read_bytes() == saved
    for key in (repo / "keys").iterdir():
        key.unlink()
    assert_one_line_error(sbr("repo", "list", str(repo), env=env), "no readable key file")
    ok(sbr("repo", "--key-file", str(key_file), "list", str(repo), env=env))


@pytest.mark.parametrize(("args", "fragments"), [
    (["repo", "list", "{repo}/nothing-here"], ["does not exist"]),
    (["repo", "list", "ftp://host/x"], ["no destination plugin takes ftp:// URLs"]),
    (["repo", "backup-image", "{repo}", "vm", "/no/such/file"], ["cannot read /no/such/file"]),
    (["repo", "backup-image", "{repo}", "vm", "{repo}/config", "--changed-extents", "x"],
     ["--changed-extents needs --parent"]),
    (["repo", "restore", "{repo}", "deadbeef00", "{repo}/out"], ["no backup 'deadbeef00'"]),
    (["repo", "forget", "{repo}"], ["--keep-last"]),
    (["repo", "init", "{repo}"], ["already exists"]),
])
def test_bad_input_is_one_line_and_a_usage_exit(env: dict[str, str], tmp_path: Path,
                                                args: list[str], fragments: list[str]) -> None:
    repo = tmp_path / "repo"
    ok(sbr("repo", "init", str(repo), env=env))
    result = sbr(*[a.replace("{repo}", str(repo)) for a in args], env=env)
    assert_one_line_error(result, *fragments)


def test_malformed_extents_file_names_the_line(env: dict[str, str], tmp_path: Path,
                                               image: Path) -> None:
    repo = str(tmp_path / "repo")
    ok(sbr("repo", "init", repo, env=env))
    full = as_json(sbr("repo", "backup-image", repo, "vm1", str(image), "--json", env=env))
    extents = tmp_path / "changed.txt"
    extents.write_text("0 4096\n4096 lots\n")
    result = sbr("repo", "backup-image", repo, "vm1", str(image), "--parent",
                 full["backup_id"], "--changed-extents", str(extents), env=env)  # type: ignore[index]
    assert_one_line_error(result, "changed.txt:2", "'4096 lots'")
    assert result.returncode == 2


def test_wrong_or_missing_passphrase(env: dict[str, str], tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    ok(sbr("repo", "init", repo, env=env))
    wrong = sbr("repo", "list", repo, env={**env, "SBR_REPO_PASSWORD": "nope"})
    assert_one_line_error(wrong, "wrong passphrase")
    assert wrong.returncode == 3 and "nope" not in wrong.stderr
    missing = {k: v for k, v in env.items() if k != "SBR_REPO_PASSWORD"}
    assert_one_line_error(sbr("repo", "list", repo, env=missing), "SBR_REPO_PASSWORD")
