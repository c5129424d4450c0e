"""Part files: a block of input files tokenized into per-split files, then copied into shards.

The two phases of a preparation whose workers write (ray_runner.py runs them as Ray tasks; this
module is plain file work and imports no Ray):

1. `encode_block` reads and tokenizes files [first, last) and writes, per split, the token ids of
   their documents back to back (`<split>-FFFFFFFF-LLLLLLLL.bin`) and the documents' lengths
   (`.len`, int64), then, last and atomically, `block-FFFFFFFF-LLLLLLLL.json` with the per-file
   counts. The JSON vouches for the block: a block without it is unfinished and is redone.
2. `plan_shards` lays the documents out in shards from the counts alone, by the writer's rule
   (`writer.opens_shard`: whole documents, a shard closed before a document that would pass
   shard_tokens), so the shards are byte for byte those the local path's ShardWriter writes;
   `write_shards` copies each shard's byte ranges out of the part files.

A block is named by its file range, so blocks of an interrupted run are reused whatever ranges
the rerun would have chosen (`finished_blocks`), and two writers of the same range write the
same bytes under unique temporary names before an atomic rename.
"""
from __future__ import annotations

import json
import os
import re
import uuid
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from raytrain_llm.core.atomic_io import fsync_dir
from raytrain_llm.prepare.encode import SPLITS, EncodeSettings, encode_file
from raytrain_llm.prepare.sources import read_source
from raytrain_llm.prepare.writer import opens_shard

PARTS_DIR = "parts"
_BLOCK_JSON = re.compile(r"^block-(\d{8})-(\d{8})\.json$")
_COPY_BYTES = 8 << 20


def _stem(first: int, last: int) -> str:
    return f"{first:08d}-{last:08d}"


def part_path(parts: str, split: str, first: int, last: int, suffix: str) -> str:
    return os.path.join(parts, f"{split}-{_stem(first, last)}.{suffix}")


def _marker(parts: str, first: int, last: int) -> str:
    return os.path.join(parts, f"block-{_stem(first, last)}.json")


def encode_block(parts: str, items: list[tuple[int, str, str]], settings: EncodeSettings) -> None:
    """Files `items` ((index, path, key), consecutive indices) -> the block's part files.
    A UsageError (an unreadable file) leaves no marker: the block counts as not done."""
    first, last = items[0][0], items[-1][0] + 1
    tag = uuid.uuid4().hex[:8]  # a rerun's task may write the same range while a stale one still runs
    temps = {(s, x): part_path(parts, s, first, last, x) + f".tmp-{tag}" for s in SPLITS for x in ("bin", "len")}
    handles = {k: open(p, "wb") for k, p in temps.items()}  # noqa: SIM115 (closed below)
    files, totals = [], {s: {"tokens": 0, "documents": 0} for s in SPLITS}
    try:
        for index, path, key in items:
            result = encode_file(index, path, key, read_source(path), settings)
            for split in SPLITS:
                handles[split, "bin"].write(result.tokens[split])
                handles[split, "len"].write(result.doc_lengths[split])
                lengths = np.frombuffer(result.doc_lengths[split], np.int64)
                totals[split]["tokens"] += int(lengths.sum())
                totals[split]["documents"] += len(lengths)
            files.append({"index": index, "documents": result.documents, "bad": result.bad,
                          "text_bytes": result.text_bytes})
        for fh in handles.values():
            fh.flush()
            os.fsync(fh.fileno())
    finally:
        for fh in handles.values():
            fh.close()
        if len(files) < len(items):
            for p in temps.values():
                if os.path.exists(p):
                    os.unlink(p)
    for (split, suffix), p in temps.items():
        os.replace(p, part_path(parts, split, first, last, suffix))
    # The marker last, atomically; never creating `parts` again (the driver removes the folder of a
    # refused preparation while other tasks may still run).
    marker = _marker(parts, first, last)
    with open(marker + f".tmp-{tag}", "w", encoding="utf-8") as fh:
        json.dump({"first": first, "last": last, "files": files, "splits": totals}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(marker + f".tmp-{tag}", marker)
    fsync_dir(parts)


@dataclass
class Block:
    """A finished block's counts: what the driver knows of files [first, last)."""

    first: int
    last: int
    files: list[dict]  # per file: index, documents, bad (kind -> count), text_bytes
    lengths: dict[str, np.ndarray] = field(default_factory=dict)  # split -> int64 tokens per document


def finished_blocks(parts: str) -> list[tuple[int, int]]:
    """Ranges of the blocks whose marker is written, non-overlapping (the earliest-starting kept)."""
    if not os.path.isdir(parts):
        return []
    found = sorted((int(m[1]), int(m[2])) for m in map(_BLOCK_JSON.match, os.listdir(parts)) if m)
    kept, end = [], 0
    for first, last in found:
        if first >= end and last > first:
            kept.append((first, last))
            end = last
    return kept


def remove_unfinished(parts: str, keep: list[tuple[int, int]]) -> None:
    """Every file in `parts` but those of the blocks in `keep` (the rest: left by killed tasks)."""
    names = {os.path.basename(_marker(parts, f, t)) for f, t in keep}
    names |= {os.path.basename(part_path(parts, s, f, t, x)) for f, t in keep for s in SPLITS for x in ("bin", "len")}
    for name in os.listdir(parts):
        if name not in names:
            os.unlink(os.path.join(parts, name))


def read_block(parts: str, first: int, last: int) -> Block:
    with open(_marker(parts, first, last), encoding="utf-8") as fh:
        meta = json.load(fh)
    lengths = {s: np.fromfile(part_path(parts, s, first, last, "len"), dtype=np.int64) for s in SPLITS}
    return Block(first, last, meta["files"], lengths)


def plan_blocks(done: list[tuple[int, int]], sizes: list[int], block_bytes: int) -> list[tuple[int, int]]:
    """Ranges that cover the files (of `sizes` bytes each) outside `done`: consecutive files, a
    range closed before a file that would take it past block_bytes (a larger file alone)."""
    todo, at = [], 0
    for first, last in [*done, (len(sizes), len(sizes))]:
        start, size = at, 0
        for i in range(at, first):
            if i > start and size + sizes[i] > block_bytes:
                todo.append((start, i))
                start, size = i, 0
            size += sizes[i]
        if start < first:
            todo.append((start, first))
        at = last
    return todo


@dataclass
class ShardPlan:
    file: str
    tokens: int = 0
    documents: int = 0
    pieces: list[list] = field(default_factory=list)  # [part file name, first byte, bytes], in order


def plan_shards(blocks: list[Block], split: str, shard_tokens: int, itemsize: int) -> list[ShardPlan]:
    """The split's shards laid out from the blocks' document lengths (blocks in file order)."""
    shards: list[ShardPlan] = []
    for block in blocks:
        name = os.path.basename(part_path("", split, block.first, block.last, "bin"))
        at = 0  # bytes into the block's part file
        for n in block.lengths[split].tolist():
            if opens_shard(shards[-1].tokens if shards else None, n, shard_tokens):
                shards.append(ShardPlan(f"{split}-{len(shards):05d}.bin"))
            shard, size = shards[-1], n * itemsize
            if shard.pieces and shard.pieces[-1][0] == name and shard.pieces[-1][1] + shard.pieces[-1][2] == at:
                shard.pieces[-1][2] += size
            else:
                shard.pieces.append([name, at, size])
            shard.tokens += n
            shard.documents += 1
            at += size
    return shards


def write_shards(folder: str, plans: list[ShardPlan]) -> None:
    """Each planned shard in `folder`, copied from the part files in `folder/parts`."""
    parts = os.path.join(folder, PARTS_DIR)
    for plan in plans:
        with open(os.path.join(folder, plan.file), "wb") as out:
            for name, start, size in plan.pieces:
                fd = os.open(os.path.join(parts, name), os.O_RDONLY)
                try:
                    done = 0
                    while done < size:
                        chunk = os.pread(fd, min(_COPY_BYTES, size - done), start + done)
                        if not chunk:
                            raise OSError(f"{name} is shorter than its block's counts say")
                        out.write(chunk)
                        done += len(chunk)
                finally:
                    os.close(fd)
            out.flush()
            os.fsync(out.fileno())
    fsync_dir(folder)


def tally(blocks: list[Block]) -> tuple[Counter, list[dict], int]:
    """(bad records by kind, per file (index, documents, bad records), text bytes) over the blocks."""
    bad, files, text_bytes = Counter(), [], 0
    for block in blocks:
        for f in block.files:
            bad.update(f["bad"])
            text_bytes += f["text_bytes"]
            files.append({"index": f["index"], "documents": f["documents"], "bad_records": sum(f["bad"].values())})
    return bad, files, text_bytes
