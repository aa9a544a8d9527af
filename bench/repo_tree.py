"""The seeded file tree of bench/repository.py: generation, its 2 % change, comparison."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from repo_workload import (
    GENERATOR_VERSION,
    TREE_CHANGE_STREAM,
    TREE_STREAM,
    KiB,
    MiB,
    TextSource,
    human,
    random_bytes,
    read_marker,
    seeded_rng,
    sha256_file,
    write_marker,
)

FILES_PER_DIR = 20
MAX_FILE_SHARE = 1 / 16  # the largest file is at most this share of the tree
TREE_MIX = {"text": 0.55, "random": 0.35, "duplicate": 0.10}


@dataclass(frozen=True)
class TreeData:
    """A generated tree and what it holds."""

    root: Path
    files: int
    dirs: int
    total: int
    kinds: dict[str, int]  # content type -> files
    largest: int
    median: int


def _sizes(rng: np.random.Generator, files: int, total: int) -> np.ndarray:
    """Log-normal sizes (many small files, a few large) scaled to add up to about total."""
    raw = rng.lognormal(0.0, 2.3, files)
    cap = total * MAX_FILE_SHARE
    sizes = raw * (total / raw.sum())
    for _ in range(8):  # clip the giants and spread what they lose over the others
        over = sizes > cap
        if not over.any():
            break
        sizes[over] = cap
        free = ~over
        sizes[free] *= (total - sizes[over].sum()) / sizes[free].sum()
    return sizes.astype(np.int64)


def _dirs(rng: np.random.Generator, count: int) -> list[str]:
    """Nested relative directory paths, up to 5 deep."""
    paths = [""]
    for k in range(1, count):
        parent = paths[int(rng.integers(0, len(paths)))]
        if parent.count("/") >= 4:
            parent = ""
        paths.append(f"{parent}/d{k:04d}" if parent else f"d{k:04d}")
    return paths


def _write_content(path: Path, size: int, kind: str, rng: np.random.Generator,
                   text: TextSource) -> None:
    with path.open("wb") as f:
        left = size
        while left > 0:
            n = min(left, 8 * MiB)
            f.write(text.bytes(rng, n) if kind == "text" else random_bytes(rng, n))
            left -= n


def _generate(root: Path, files: int, total: int, seed: int) -> dict:
    rng = seeded_rng(seed, TREE_STREAM, total, files)
    text = TextSource(seed)
    dirs = _dirs(rng, max(1, files // FILES_PER_DIR))
    for d in dirs[1:]:
        (root / d).mkdir(parents=True, exist_ok=True)
    sizes = _sizes(rng, files, total)
    names = list(TREE_MIX)
    kinds = rng.choice(len(names), files, p=list(TREE_MIX.values()))
    # The largest files are never duplicates: copying a smaller one in their place would
    # leave the tree well short of its nominal size.
    big = sizes > np.quantile(sizes, 0.95)
    kinds[big & (kinds == names.index("duplicate"))] = names.index("random")
    counts = dict.fromkeys(names, 0)
    written: list[tuple[Path, int]] = []
    actual = []
    for i in range(files):
        d = dirs[int(rng.integers(0, len(dirs)))]
        kind = names[kinds[i]] if written or names[kinds[i]] != "duplicate" else "random"
        path = root / d / f"f{i:05d}.{ {'text': 'txt', 'random': 'bin'}.get(kind, 'dat') }"
        if kind == "duplicate":
            # Of a few earlier files, copy the one nearest the drawn size, so the tree still
            # adds up to about its nominal size.
            picks = rng.integers(0, len(written), 8)
            best = min(picks.tolist(), key=lambda p: abs(written[p][1] - int(sizes[i])))
            shutil.copyfile(written[best][0], path)
        else:
            _write_content(path, int(sizes[i]), kind, rng, text)
            written.append((path, int(sizes[i])))
        counts[kind] += 1
        actual.append(path.stat().st_size)
    return {"files": files, "dirs": len(dirs) - 1, "total": int(sum(actual)), "kinds": counts,
            "largest": int(max(actual)), "median": int(np.median(actual))}


def tree(workdir: Path, total: int, files: int, seed: int,
         log: Callable[[str], None] = print) -> TreeData:
    """The cached tree of this size, file count and seed, generated if missing."""
    directory = workdir / "data" / f"tree-{total}-{files}-s{seed}"
    expect = {"version": GENERATOR_VERSION, "size": total, "count": files, "seed": seed}
    meta = read_marker(directory, expect)
    if meta is None:
        shutil.rmtree(directory, ignore_errors=True)
        (directory / "tree").mkdir(parents=True)
        log(f"generating a {human(total)} tree of {files} files (seed {seed}) in {directory} ...")
        meta = {**expect, **_generate(directory / "tree", files, total, seed)}
        write_marker(directory, meta)
    return TreeData(root=directory / "tree", files=meta["files"], dirs=meta["dirs"],
                    total=meta["total"], kinds=meta["kinds"], largest=meta["largest"],
                    median=meta["median"])


def list_files(root: Path) -> list[str]:
    """Sorted relative paths of the regular files under root."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        out.extend(os.path.normpath(os.path.join(rel, f)) for f in sorted(filenames))
    return sorted(out)


def change_tree(root: Path, seed: int) -> dict[str, int]:
    """Change a working copy the way a day of use would: ~2 % of files, a few added, removed.

    Deterministic from the seed and the tree's content, so every tool sees the same change.
    """
    rng = seeded_rng(seed, TREE_CHANGE_STREAM)
    text = TextSource(seed)
    files = list_files(root)
    n = len(files)
    order = rng.permutation(n)
    modify = sorted(order[: max(1, round(n * 0.02))].tolist())
    remove = order[len(modify): len(modify) + max(1, round(n * 0.001))].tolist()
    written = 0
    for i in modify:
        path = root / files[i]
        size = path.stat().st_size
        mode = rng.random()
        if mode < 0.5 and size > 0:  # overwrite a range in place
            length = min(size, int(rng.integers(4 * KiB, 64 * KiB)))
            offset = int(rng.integers(0, size - length + 1))
            with path.open("r+b") as f:
                f.seek(offset)
                f.write(random_bytes(rng, length))
            written += length
        elif mode < 0.8:  # append a little text, like a log
            length = int(rng.integers(1 * KiB, 16 * KiB))
            with path.open("ab") as f:
                f.write(text.bytes(rng, length))
            written += length
        else:  # rewrite the whole file
            kind = "text" if rng.random() < 0.5 else "random"
            _write_content(path, size, kind, rng, text)
            written += size
    for i in remove:
        (root / files[i]).unlink()
    new_dir = root / "added-today"
    new_dir.mkdir(exist_ok=True)
    existing_dirs = sorted({os.path.dirname(f) for f in files})
    added = max(1, round(n * 0.002))
    for k in range(added):
        d = new_dir if k % 4 == 0 else root / existing_dirs[int(rng.integers(len(existing_dirs)))]
        size = int(rng.lognormal(9.0, 1.5))
        _write_content(d / f"new{k:04d}.txt", size, "text", rng, text)
        written += size
    return {"modified": len(modify), "removed": len(remove), "added": added, "written": written}


def compare_trees(source: Path, restored: Path) -> str | None:
    """None when restored holds the same directories and file contents as source, else why not."""

    def dirs(root: Path) -> set[str]:
        return {os.path.relpath(d, root) for d, _, _ in os.walk(root)}

    want, got = list_files(source), list_files(restored)
    if want != got:
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        return f"files differ: {len(missing)} missing {missing[:2]}, {len(extra)} extra {extra[:2]}"
    missing_dirs = dirs(source) - dirs(restored)
    if missing_dirs:
        return f"{len(missing_dirs)} directories missing, e.g. {sorted(missing_dirs)[0]}"
    for rel in want:
        a, b = source / rel, restored / rel
        if a.stat().st_size != b.stat().st_size or sha256_file(a) != sha256_file(b):
            return f"content differs: {rel}"
    return None
