"""Per-file work in local processes (no Ray): results in input order, as the driver writes them.

One worker reads and tokenizes in this process, where `tokenizers` uses its own threads; several
are processes of one tokenizer thread each (`TOKENIZERS_PARALLELISM=false`: N processes
already fill N cores, and the library's threads are unsafe after a fork once it has used them).
They are forked (cheap) unless this process runs other Python threads (a program that calls
`prepare` with Ray connected, say): a fork copies locks those threads may hold, and the child
can hang on one; then they are spawned (~1 s each to start).
"""
from __future__ import annotations

import multiprocessing
import os
import threading
from typing import Iterator, Optional

from raytrain_llm.prepare.encode import EncodeSettings, FileResult, encode_file
from raytrain_llm.prepare.sources import Source, read_source

_SETTINGS: Optional[EncodeSettings] = None


def _init(settings: EncodeSettings) -> None:
    global _SETTINGS
    _SETTINGS = settings


def _work(item: tuple[int, str, str]) -> FileResult:
    index, path, key = item
    return encode_file(index, path, key, read_source(path), _SETTINGS)


def encode_locally(sources: list[Source], settings: EncodeSettings, workers: int, start: int = 0) -> Iterator[FileResult]:
    """Results of `sources`, numbered from `start` (their position in the whole input list)."""
    items = [(i, s.path, s.key) for i, s in enumerate(sources, start)]
    if workers <= 1 or len(items) <= 1:
        _init(settings)
        yield from map(_work, items)
        return
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # inherited by the children
    try:
        context = multiprocessing.get_context("fork" if threading.active_count() == 1 else "spawn")
        with context.Pool(min(workers, len(items)), initializer=_init, initargs=(settings,)) as pool:
            yield from pool.imap(_work, items, chunksize=1)
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before
