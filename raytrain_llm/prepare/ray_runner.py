"""`--launcher ray`: the workers read, tokenize and write the shards; the driver handles counts.

Phase 1, Ray Data: `from_items` (one row per block of consecutive input files) -> `map_batches`
(parts.encode_block: read, parse, tokenize with the code the local processes run, and write the
block's token ids per split to part files in `<out>.tmp-prepare/parts`). Only the block's first
file index (or a usage error) comes back; the driver reads the blocks' small counts (documents
per split and their lengths, bad records, text bytes) from their marker files. Phase 2, Ray
tasks: the driver lays out the shards from the counts alone (parts.plan_shards, the writer's
rule), and tasks copy each shard's byte ranges out of the part files. The driver then removes the
parts; pipeline.py writes the manifest last and publishes the folder. So the shards are byte for
byte the local path's, and no token id passes through the driver.

A killed run leaves finished blocks (their marker written last, atomically); the rerun of the
same command (same fingerprint, so the same tokenizer and options) keeps them, drops whatever
else is in `parts/`, encodes the files no block covers, and redoes phase 2 (a copy, cheap).

Why not `read_text` / `read_json` / `read_parquet`: the split and the order are defined per
(file, record index), and those readers do not say which record of which file a row is; reading
whole files in the task also decompresses .gz/.zst and reaches any pyarrow filesystem alike.
On a cluster the tasks run where Ray places them: every input must be readable, and `--out` a
path writable at the same place, on every node (shared storage); the driver only reads the
blocks' counts and writes the manifest.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections import Counter
from typing import Callable, Iterator

from raytrain_llm.core.errors import UsageError
from raytrain_llm.prepare.encode import SPLITS, EncodeSettings
from raytrain_llm.prepare.parts import (
    PARTS_DIR,
    ShardPlan,
    encode_block,
    finished_blocks,
    plan_blocks,
    plan_shards,
    read_block,
    remove_unfinished,
    tally,
    write_shards,
)
from raytrain_llm.prepare.sources import Source
from raytrain_llm.prepare.writer import split_summary

ERROR_COLUMN = "usage_error"
BLOCKS_PER_WORKER = 4
BLOCK_BYTES = 64 << 20  # of input (as stored) per block: what a kill loses, per task running


def _encode_blocks(batch: dict, parts: str, settings: EncodeSettings):
    """map_batches function: rows (first file index, the block's files as JSON) -> (first, error)."""
    # One tokenizer thread per task: each task holds one CPU (the library would use every core).
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    firsts, errors = [], []
    for first, items in zip(batch["first"].tolist(), batch["items"].tolist()):
        try:
            encode_block(parts, [tuple(item) for item in json.loads(items)], settings)
            errors.append("")
        except UsageError as exc:  # back to the driver as data: a task exception would be retried
            errors.append(str(exc))
        firsts.append(int(first))
    import pyarrow as pa

    return pa.table({"first": firsts, ERROR_COLUMN: errors})


def _init_ray(workers: int, address: str) -> None:
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS", "")
    if address:
        ray.init(address=address, logging_level="WARNING")
    else:  # never attach to a cluster this command was not told about
        ray.init(address="local", num_cpus=workers, include_dashboard=False, logging_level="WARNING")


@contextlib.contextmanager
def _data_context(**options):
    """Ray Data's process-wide execution options, set for one dataset and put back after."""
    import ray

    context = ray.data.DataContext.get_current()
    before = {"preserve_order": context.execution_options.preserve_order,
              "enable_progress_bars": context.enable_progress_bars}
    context.execution_options.preserve_order = options["preserve_order"]
    context.enable_progress_bars = options["enable_progress_bars"]
    try:
        yield
    finally:
        context.execution_options.preserve_order = before["preserve_order"]
        context.enable_progress_bars = before["enable_progress_bars"]


def _encoded_blocks(parts: str, blocks: list[tuple[int, int]], sources: list[Source], settings: EncodeSettings,
                    workers: int) -> Iterator[tuple[int, int]]:
    """Phase 1: each block's range as its task finishes (in any order)."""
    import ray

    rows = [{"first": first, "items": json.dumps([[i, sources[i].path, sources[i].key] for i in range(first, last)])}
            for first, last in blocks]
    ranges = dict(blocks)
    with _data_context(preserve_order=False, enable_progress_bars=False):
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
            _encode_blocks, fn_kwargs={"parts": parts, "settings": settings}, batch_size=1, batch_format="numpy",
            compute=ray.data.TaskPoolStrategy(size=max(1, min(workers, len(rows)))), num_cpus=1)
        for row in dataset.iter_rows():
            if row[ERROR_COLUMN]:
                raise UsageError(row[ERROR_COLUMN])
            yield int(row["first"]), ranges[int(row["first"])]


def _write_shard_groups(folder: str, plans: list[ShardPlan], workers: int) -> None:
    """Phase 2: the shards, in about 2 groups per worker of consecutive shards of similar size."""
    import ray

    if not plans:
        return
    total = sum(p.tokens for p in plans) or 1
    groups, size, per_group = [[]], 0, total / min(len(plans), 2 * workers)
    for plan in plans:
        if groups[-1] and size >= per_group:
            groups.append([])
            size = 0
        groups[-1].append(plan)
        size += plan.tokens
    task = ray.remote(num_cpus=1)(write_shards)
    ray.get([task.remote(folder, group) for group in groups])


def prepare_with_ray(folder: str, sources: list[Source], settings: EncodeSettings, shard_tokens: int, itemsize: int,
                     workers: int, address: str, log: Callable[[str], None],
                     on_files: Callable[[int], None] = lambda done: None) -> tuple[dict, Counter, list[dict], int]:
    """Shards of `sources` written into `folder` by Ray workers: (the manifest's splits, bad records
    by kind, per file (index, documents, bad_records) in input order, text bytes); `on_files(n)`
    after each finished block with the number of files done."""
    _init_ray(workers, address)
    parts = os.path.join(folder, PARTS_DIR)
    os.makedirs(parts, exist_ok=True)
    done = [b for b in finished_blocks(parts) if b[1] <= len(sources)]
    remove_unfinished(parts, done)
    files_done = sum(last - first for first, last in done)
    if done:
        log(f"reusing {len(done)} blocks ({files_done} files) an interrupted run of this command had tokenized")
    covered = {i for first, last in done for i in range(first, last)}
    left = sum(s.size for i, s in enumerate(sources) if i not in covered)
    # A task per block: BLOCKS_PER_WORKER blocks per worker balance uneven files at the end; fewer
    # would leave a worker idle longer, more pay Ray's per-task cost more often. At most
    # BLOCK_BYTES each, so a large corpus has many.
    block_bytes = max(1, min(BLOCK_BYTES, -(-left // (BLOCKS_PER_WORKER * workers))))
    todo = plan_blocks(done, [s.size for s in sources], block_bytes)
    on_files(files_done)
    for first, last in _encoded_blocks(parts, todo, sources, settings, workers) if todo else ():
        files_done += last - first
        on_files(files_done)
    blocks = [read_block(parts, first, last) for first, last in sorted(done + todo)]
    plans = {split: plan_shards(blocks, split, shard_tokens, itemsize) for split in SPLITS}
    _write_shard_groups(folder, plans["train"] + plans["val"], workers)
    shutil.rmtree(parts)
    splits = {split: split_summary([{"file": p.file, "tokens": p.tokens, "documents": p.documents} for p in plans[split]])
              for split in SPLITS}
    return (splits, *tally(blocks))
