"""Per-file work as Ray Data tasks: `from_items` (one row per input file) -> `map_batches` (read,
parse, tokenize: encode.py, the code the local processes run) -> rows back to the driver in
input order (`preserve_order`), where the same writer as the local path writes the shards.

Why not `read_text` / `read_json` / `read_parquet`: the split and the order are defined per
(file, record index), and those readers do not say which record of which file a row is; reading
whole files in the task also decompresses .gz/.zst and reaches any pyarrow filesystem alike.
On a cluster the tasks run where Ray places them; each input must then be a path every node can
read (a URI or shared storage). The driver receives token ids, not text (about 4x fewer bytes).
"""
from __future__ import annotations

import os
from typing import Iterator

from raytrain_llm.core.errors import UsageError
from raytrain_llm.prepare.encode import SPLITS, EncodeSettings, FileResult, encode_file
from raytrain_llm.prepare.sources import Source, read_source

ERROR_COLUMN = "usage_error"
FILES_PER_BLOCK = 16


def _encode_files(batch: dict, settings: EncodeSettings):
    """map_batches function: a batch of (index, path) rows -> one result row per file."""
    # One tokenizer thread per task: each task holds one CPU (the library would use every core).
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    rows = []
    for index, path, key in zip(batch["index"].tolist(), batch["path"].tolist(), batch["key"].tolist()):
        try:
            row = encode_file(int(index), path, key, read_source(path), settings).to_row()
            row[ERROR_COLUMN] = ""
        except UsageError as exc:  # back to the driver as data: a task exception would be retried
            row = FileResult(int(index), {s: b"" for s in SPLITS}, {s: b"" for s in SPLITS}).to_row()
            row[ERROR_COLUMN] = str(exc)
        rows.append(row)
    # Arrow binary columns: numpy's fixed-width bytes would drop trailing zero bytes of token ids.
    import pyarrow as pa

    return pa.table({key: [r[key] for r in rows] for key in rows[0]})


def _init_ray(workers: int, address: str) -> None:
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS", "")
    if address:
        ray.init(address=address, logging_level="WARNING")
    else:  # never attach to a cluster this command was not told about
        ray.init(address="local", num_cpus=workers, include_dashboard=False, logging_level="WARNING")


def encode_with_ray(sources: list[Source], settings: EncodeSettings, workers: int, address: str,
                    start: int = 0) -> Iterator[FileResult]:
    """Results of `sources`, numbered from `start` (their position in the whole input list)."""
    import ray

    _init_ray(workers, address)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    items = [{"index": i, "path": s.path, "key": s.key} for i, s in enumerate(sources, start)]
    if not items:
        return
    # Blocks of up to FILES_PER_BLOCK files (one task each: fewer scheduling round trips than a task
    # per file), but at least 4 per worker so that uneven files still balance.
    blocks = min(len(items), max(4 * workers, -(-len(items) // FILES_PER_BLOCK)))
    dataset = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
        _encode_files, fn_kwargs={"settings": settings}, batch_size=1, batch_format="numpy",
        compute=ray.data.TaskPoolStrategy(size=max(1, min(workers, len(items)))), num_cpus=1)
    for row in dataset.iter_rows():
        if row[ERROR_COLUMN]:
            raise UsageError(row[ERROR_COLUMN])
        yield FileResult.from_row(row)
