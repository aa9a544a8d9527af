"""Seeded test data for bench/repository.py: a mixed disk image, its 2 % change, a file tree.

Everything here is a pure function of the seed and the sizes, so every tool in a run, and
every run on every machine, sees byte-identical data. Generated data is cached under the
work directory, keyed by seed and size; a marker file written last says a cache is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Bump when the generators change, so stale caches are regenerated, never reused.
GENERATOR_VERSION = 1

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
BLOCK = 64 * KiB  # the unit of the 2 % change and of the repeated blocks
REGION = 1 * MiB  # content types are laid out in shuffled regions of this size

# Image mix: share of regions per content type.
IMAGE_MIX = {"zeros": 0.40, "text": 0.30, "random": 0.20, "repeated": 0.10}
CHANGE_FRACTION = 0.02

# Seed streams: one per purpose, so changing one generator never shifts another's data.
VOCAB_STREAM, IMAGE_STREAM, CHANGE_STREAM, TREE_STREAM, TREE_CHANGE_STREAM = range(5)


def parse_size(text: str) -> int:
    """'256M', '2G', '2GiB', '1048576' -> bytes (binary units)."""
    s = text.strip().upper().removesuffix("IB").removesuffix("B")
    units = {"K": KiB, "M": MiB, "G": GiB, "T": 1024 * GiB}
    if s and s[-1] in units:
        return int(float(s[:-1]) * units[s[-1]])
    return int(s)


def human(n: float) -> str:
    """Bytes as a short binary-unit string."""
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size:
            return f"{n / size:g} {unit}" if n % size == 0 else f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def seeded_rng(seed: int, stream: int, *more: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, stream, *more]))


def random_bytes(rng: np.random.Generator, n: int) -> bytes:
    """Incompressible bytes, fast (the raw 64-bit stream of the generator)."""
    words = rng.bit_generator.random_raw((n + 7) // 8)
    return words.astype(np.uint64).tobytes()[:n]


class TextSource:
    """Compressible, non-repetitive text: words of a seeded vocabulary, Zipf-distributed.

    zstd level 3 compresses it about 3.5x, like prose or logs; no two regions share long
    runs, so a deduplicating chunker finds nothing to share across regions.
    """

    _LETTERS = b"etaoinshrdlcumwfgypbvkjxqz"
    _FREQ = (12.7, 9.1, 8.2, 7.5, 7.0, 6.7, 6.3, 6.1, 6.0, 4.3, 4.0, 2.8, 2.8,
             2.4, 2.4, 2.2, 2.0, 2.0, 1.9, 1.5, 1.0, 0.8, 0.15, 0.15, 0.1, 0.07)
    _WIDTH = 16
    _SEPS = np.frombuffer(b" \n,.", dtype=np.uint8)
    _SEP_CDF = np.cumsum([0.88, 0.06, 0.03, 0.03])

    def __init__(self, seed: int, vocabulary: int = 5000, zipf: float = 1.2) -> None:
        rng = seeded_rng(seed, VOCAB_STREAM)
        freq = np.array(self._FREQ) / sum(self._FREQ)
        letters = np.frombuffer(self._LETTERS, dtype=np.uint8)
        self._lengths = np.clip(1 + rng.poisson(4.0, vocabulary), 1, self._WIDTH - 1).astype(
            np.int32)
        self._table = letters[rng.choice(26, (vocabulary, self._WIDTH), p=freq)].ravel().copy()
        weights = 1.0 / np.arange(1, vocabulary + 1) ** zipf
        cdf = np.cumsum(weights) / weights.sum()
        # A lookup table instead of a binary search per word: 10x faster sampling.
        steps = 1 << 20
        self._lut = np.searchsorted(cdf, (np.arange(steps) + 0.5) / steps).astype(np.int32)

    def bytes(self, rng: np.random.Generator, n: int) -> bytes:
        """n bytes of text drawn with rng."""
        out = np.empty(n, np.uint8)
        filled = 0
        while filled < n:
            k = min(n - filled, MiB)
            words = k // 4 + 16  # words are at least 2 bytes with their separator
            idx = self._lut[rng.integers(0, len(self._lut), words, dtype=np.int32)]
            lens = self._lengths[idx] + 1
            ends = np.cumsum(lens, dtype=np.int32)
            flat = np.repeat(idx * self._WIDTH - (ends - lens), lens)
            flat += np.arange(int(ends[-1]), dtype=np.int32)
            buf = self._table.take(flat)
            buf[ends - 1] = self._SEPS[np.searchsorted(self._SEP_CDF, rng.random(words))]
            out[filled:filled + k] = buf[:k]
            filled += k
        return out.tobytes()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's content."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(8 * MiB):
            h.update(chunk)
    return h.hexdigest()


def read_marker(directory: Path, expect: dict) -> dict | None:
    marker = directory / "done.json"
    try:
        meta = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    if any(meta.get(k) != v for k, v in expect.items()):
        return None
    return meta


def write_marker(directory: Path, meta: dict) -> None:
    tmp = directory / "done.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
    tmp.replace(directory / "done.json")


# ---------------------------------------------------------------------------- image


@dataclass(frozen=True)
class ImageData:
    """A generated image, its changed copy and the changed extents."""

    v1: Path
    v2: Path | None
    extents: Path | None
    size: int
    sha_v1: str
    sha_v2: str | None
    composition: dict[str, int]  # content type -> bytes
    changed_bytes: int
    changed_extents: int
    text_ratio: float  # zstd level 3 ratio measured on the image's text


def _region_types(rng: np.random.Generator, regions: int) -> np.ndarray:
    counts = [round(regions * share) for share in IMAGE_MIX.values()]
    counts[-1] = regions - sum(counts[:-1])
    kinds = np.repeat(np.arange(len(counts)), counts)
    rng.shuffle(kinds)
    return kinds


def _write_image(path: Path, size: int, seed: int, text: TextSource) -> tuple[str, dict, float]:
    """Write the image sequentially; return its sha256, composition and text zstd ratio."""
    import zstandard

    rng = seeded_rng(seed, IMAGE_STREAM, size)
    kinds = _region_types(rng, size // REGION)
    names = list(IMAGE_MIX)
    composition = dict.fromkeys(names, 0)
    sources: list[int] = []  # offsets of non-zero 64 KiB blocks written so far
    digest = hashlib.sha256()
    sample_in = sample_out = 0
    cctx = zstandard.ZstdCompressor(level=3)
    zero = bytes(REGION)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i, kind in enumerate(kinds):
            name = names[kind]
            offset = i * REGION
            if name == "repeated" and not sources:
                name = "random"  # nothing earlier to copy yet
            if name == "zeros":
                data = zero
            elif name == "text":
                data = text.bytes(rng, REGION)
                if sample_in < 64 * MiB:
                    sample_in += len(data)
                    sample_out += len(cctx.compress(data))
            elif name == "random":
                data = random_bytes(rng, REGION)
            else:
                picks = rng.integers(0, len(sources), REGION // BLOCK)
                data = b"".join(os.pread(fd, BLOCK, sources[p]) for p in picks)
            if name in ("text", "random"):
                sources.extend(range(offset, offset + REGION, BLOCK))
            os.pwrite(fd, data, offset)
            digest.update(data)
            composition[name] += REGION
        tail = size - len(kinds) * REGION
        if tail:
            data = random_bytes(rng, tail)
            os.pwrite(fd, data, len(kinds) * REGION)
            digest.update(data)
            composition["random"] += tail
    finally:
        os.close(fd)
    ratio = sample_in / sample_out if sample_out else 0.0
    return digest.hexdigest(), composition, ratio


def changed_blocks(size: int, seed: int) -> np.ndarray:
    """Sorted indexes of the 64 KiB blocks the 2 % change overwrites."""
    blocks = size // BLOCK
    rng = seeded_rng(seed, CHANGE_STREAM, size)
    count = max(1, round(blocks * CHANGE_FRACTION))
    return np.sort(rng.choice(blocks, count, replace=False))


def merge_extents(blocks: np.ndarray) -> list[tuple[int, int]]:
    """Block indexes -> merged (offset, length) extents in bytes."""
    extents: list[tuple[int, int]] = []
    for b in blocks.tolist():
        off = b * BLOCK
        if extents and extents[-1][0] + extents[-1][1] == off:
            extents[-1] = (extents[-1][0], extents[-1][1] + BLOCK)
        else:
            extents.append((off, BLOCK))
    return extents


def _write_change(v1: Path, v2: Path, extents_path: Path, size: int, seed: int,
                  text: TextSource) -> tuple[int, int]:
    """Copy v1 to v2 and overwrite 2 % of its blocks; write the extents file."""
    shutil.copyfile(v1, v2)
    blocks = changed_blocks(size, seed)
    rng = seeded_rng(seed, CHANGE_STREAM, size, 1)
    fd = os.open(v2, os.O_WRONLY)
    try:
        for b in blocks.tolist():
            # Half the changed blocks get new text, half random bytes: mixed, like a real
            # guest writing files and metadata.
            data = text.bytes(rng, BLOCK) if rng.random() < 0.5 else random_bytes(rng, BLOCK)
            os.pwrite(fd, data, b * BLOCK)
    finally:
        os.close(fd)
    extents = merge_extents(blocks)
    extents_path.write_text("".join(f"{off} {length}\n" for off, length in extents))
    return len(blocks) * BLOCK, len(extents)


def image(workdir: Path, size: int, seed: int, *, with_change: bool = True,
          log: Callable[[str], None] = print) -> ImageData:
    """The cached image of this size and seed (and its 2 % change), generated if missing."""
    directory = workdir / "data" / f"image-{size}-s{seed}"
    expect = {"version": GENERATOR_VERSION, "size": size, "seed": seed}
    if with_change:
        expect["with_change"] = True
    meta = read_marker(directory, expect)
    if meta is None:
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        text = TextSource(seed)
        log(f"generating a {human(size)} image (seed {seed}) in {directory} ...")
        sha_v1, composition, ratio = _write_image(directory / "disk-v1.img", size, seed, text)
        meta = {**expect, "sha_v1": sha_v1, "composition": composition, "text_ratio": ratio,
                "sha_v2": None, "changed_bytes": 0, "changed_extents": 0}
        if with_change:
            log("writing its 2 % change (disk-v2.img, changed-extents.txt) ...")
            changed, n_extents = _write_change(
                directory / "disk-v1.img", directory / "disk-v2.img",
                directory / "changed-extents.txt", size, seed, text)
            meta.update(sha_v2=sha256_file(directory / "disk-v2.img"),
                        changed_bytes=changed, changed_extents=n_extents)
        write_marker(directory, meta)
    return ImageData(
        v1=directory / "disk-v1.img",
        v2=directory / "disk-v2.img" if with_change else None,
        extents=directory / "changed-extents.txt" if with_change else None,
        size=size, sha_v1=meta["sha_v1"], sha_v2=meta["sha_v2"],
        composition=meta["composition"], changed_bytes=meta["changed_bytes"],
        changed_extents=meta["changed_extents"], text_ratio=meta["text_ratio"])


def read_extents(path: Path) -> Iterator[tuple[int, int]]:
    """(offset, length) pairs of an extents file."""
    for line in path.read_text().splitlines():
        if line.strip():
            off, length = line.split()
            yield int(off), int(length)


def apply_change(target: Path, v2: Path, extents: Path) -> None:
    """Overwrite target's changed extents in place with v2's bytes, like a guest writing.

    The file keeps its inode and path; only its content and mtime change, which is what
    each tool's change detection sees on a real disk image.
    """
    with v2.open("rb") as src, target.open("r+b") as dst:
        for off, length in read_extents(extents):
            src.seek(off)
            dst.seek(off)
            dst.write(src.read(length))
