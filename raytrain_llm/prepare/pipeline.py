"""`prepare(options)`: inputs -> tokenizer -> shards -> manifest, atomically, skipping finished work.

Everything is written into `<out>.tmp-prepare` and renamed to `<out>` after the manifest, so a
killed preparation never leaves a manifest pointing at partial shards. Rerunning the same command
(same fingerprint: options and each input's path, size and mtime) finds the finished `<out>` and
does nothing; after a kill it reuses the tokenizer already trained in the temporary folder and
the work its launcher had finished.

Two ways to write the same bytes (one layout rule, writer.opens_shard):
- local (`_write_locally`): worker processes tokenize, the driver receives each file's token ids in
  input order and appends them to the shards; after a kill it cuts the shards back to the last
  recorded progress and goes on after the files recorded there (progress.py).
- ray (`ray_runner.py`): the workers write part files and then the shards themselves; the driver
  only sees counts. Resume reuses the finished blocks of part files.
The local path keeps its single pass: on one machine the ids cross a pipe, not a network, and
the driver writes while the workers tokenize, where the two phases would write every token twice
for nothing.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Iterator, Optional

import numpy as np

from raytrain_llm.core.atomic_io import atomic_write_json, atomic_write_text, fsync_dir
from raytrain_llm.core.errors import UsageError
from raytrain_llm.data.token_shards import FORMAT_VERSION, MANIFEST_FILE, read_manifest
from raytrain_llm.data.tokenizer import TOKENIZER_FILE, TextTokenizer, check_trainable_vocab, file_sha256
from raytrain_llm.prepare.documents import FORMATS, is_validation, parse_documents
from raytrain_llm.prepare.encode import SPLITS, EncodeSettings, FileResult
from raytrain_llm.prepare.local_runner import encode_locally
from raytrain_llm.prepare.parts import PARTS_DIR
from raytrain_llm.prepare.progress import PROGRESS_FILE, SAVE_EVERY_S, load_progress, save_progress
from raytrain_llm.prepare.sources import Source, expand_inputs, read_source
from raytrain_llm.prepare.writer import ShardWriter

FINGERPRINT_FILE = ".fingerprint"
# The options that shape the output (the fingerprint's, with each input's path, size and mtime).
RESULT_KEYS = ("inputs", "tokenizer", "fmt", "text_field", "val_fraction", "seed", "shard_tokens", "eod_token",
               "tokenizer_train_bytes")


@dataclass
class PrepareOptions:
    inputs: list[str]
    out: str
    tokenizer: str  # "train:VOCAB" or a tokenizer.json path
    fmt: str = "text"
    text_field: str = "text"
    val_fraction: float = 0.01
    seed: int = 0
    shard_tokens: int = 1 << 26
    eod_token: str = "<|endoftext|>"
    tokenizer_train_bytes: int = 1 << 30  # train a tokenizer on at most this much text (the first train documents)
    # How the work runs (not part of the result: any launcher writes the same bytes).
    launcher: str = "local"  # local | ray
    workers: int = 0  # local processes or concurrent Ray tasks; 0: the CPU count
    ray_address: str = ""
    progress: Optional[bool] = None  # None: when stderr is a terminal

    def trained_vocab(self) -> Optional[int]:
        if not self.tokenizer.startswith("train:"):
            return None
        try:
            return int(self.tokenizer.split(":", 1)[1])
        except ValueError:
            raise UsageError(f"--tokenizer: train:VOCAB needs an integer vocabulary size (got {self.tokenizer!r})") from None

    def check(self) -> None:
        if not self.inputs:
            raise UsageError("--input: name at least one file, glob or URI")
        if self.fmt not in FORMATS:
            raise UsageError(f"--format: must be one of {', '.join(FORMATS)} (got {self.fmt!r})")
        if not 0 <= self.val_fraction < 1:
            raise UsageError(f"--val-fraction: must be in [0, 1) (got {self.val_fraction})")
        if self.shard_tokens < 1:
            raise UsageError(f"--shard-tokens: must be >= 1 (got {self.shard_tokens})")
        if self.launcher not in ("local", "ray"):
            raise UsageError(f"--launcher: must be local or ray (got {self.launcher!r})")
        if self.workers < 0:
            raise UsageError(f"--workers: must be >= 0 (got {self.workers})")
        if "://" in self.out:
            raise UsageError(f"--out: must be a folder path, not a URI (with --launcher ray on a cluster: a path on "
                             f"storage every node mounts at the same place) (got {self.out})")
        vocab = self.trained_vocab()
        if vocab is not None:
            check_trainable_vocab(vocab)

    def command(self) -> str:
        """The command that makes this output (the options that shape it, not how it ran)."""
        args = ["python", "-m", "raytrain_llm.prepare"]
        for spec in self.inputs:
            args += ["--input", spec]
        args += ["--format", self.fmt]
        if self.fmt != "text":
            args += ["--text-field", self.text_field]
        args += ["--tokenizer", self.tokenizer, "--out", self.out, "--val-fraction", repr(self.val_fraction),
                 "--seed", str(self.seed), "--shard-tokens", str(self.shard_tokens), "--eod-token", self.eod_token]
        if self.trained_vocab() is not None:
            args += ["--tokenizer-train-bytes", str(self.tokenizer_train_bytes)]
        return shlex.join(args)

    def fingerprint(self, sources: list[Source]) -> str:
        options = {k: v for k, v in asdict(self).items() if k in RESULT_KEYS}
        if self.trained_vocab() is None:
            options["tokenizer_sha256"] = file_sha256(self.tokenizer)
        blob = json.dumps({"format_version": FORMAT_VERSION, "options": options,
                           "sources": [[s.path, s.key, s.size, s.mtime_ns] for s in sources]}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def prepare(options: PrepareOptions, log: Callable[[str], None] = _log) -> dict:
    """The manifest of `options.out`, prepared now or found finished from an identical earlier run."""
    options.check()
    sources = expand_inputs(options.inputs)
    out = os.path.abspath(options.out)
    fingerprint = options.fingerprint(sources)
    finished = _finished(out, fingerprint)
    if finished is not None:
        log(f"{options.out}: already prepared by this command ({finished['splits']['train']['tokens']} train tokens); "
            "nothing to do")
        return finished
    tmp = out.rstrip("/") + ".tmp-prepare"
    _start_tmp(tmp, fingerprint)
    try:
        manifest = _prepare_into(tmp, options, sources, fingerprint, log)
    except UsageError:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing of a refused preparation stays behind
        raise
    if os.path.isdir(out):
        os.rmdir(out)  # empty (checked by _finished)
    os.replace(tmp, out)
    fsync_dir(os.path.dirname(out))
    return manifest


def _finished(out: str, fingerprint: str) -> Optional[dict]:
    if not os.path.exists(out):
        return None
    if not os.path.isdir(out):
        raise UsageError(f"--out: {out} is a file, not a folder")
    if os.path.isfile(os.path.join(out, MANIFEST_FILE)):
        manifest = read_manifest(out, "--out")
        if manifest.get("fingerprint") == fingerprint:
            return manifest
        raise UsageError(f"--out: {out} holds data prepared by another command or from other inputs "
                         f"({manifest.get('command', '?')}); choose another --out or delete it")
    if os.listdir(out):
        raise UsageError(f"--out: {out} exists and is not a prepared folder (no {MANIFEST_FILE}); "
                         "choose another --out")
    return None


def _start_tmp(tmp: str, fingerprint: str) -> None:
    marker = os.path.join(tmp, FINGERPRINT_FILE)
    if os.path.isdir(tmp):
        try:
            with open(marker, encoding="utf-8") as fh:
                same = fh.read().strip() == fingerprint
        except OSError:
            same = False
        if same:  # a killed run of this command: keep its tokenizer and what progress.py recorded
            if load_progress(tmp, fingerprint) is None:
                for name in os.listdir(tmp):
                    if name.endswith(".bin"):
                        os.unlink(os.path.join(tmp, name))
            if os.path.exists(os.path.join(tmp, MANIFEST_FILE)):
                os.unlink(os.path.join(tmp, MANIFEST_FILE))
            return
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    atomic_write_text(marker, fingerprint + "\n")


def _prepare_into(tmp: str, options: PrepareOptions, sources: list[Source], fingerprint: str,
                  log: Callable[[str], None]) -> dict:
    tokenizer = _tokenizer(tmp, options, sources, log)
    settings = EncodeSettings(options.fmt, options.text_field, options.seed, options.val_fraction, tokenizer.dtype,
                              tokenizer.tokenizer.to_str(), options.eod_token)
    write = _write_with_ray if options.launcher == "ray" else _write_locally
    splits, bad, per_source, text_bytes = write(tmp, options, sources, settings, fingerprint, log)
    documents = sum(s["documents"] for s in per_source)
    _report_bad(bad, documents, options, log)
    manifest = {
        "format_version": FORMAT_VERSION, "tokenizer_sha256": file_sha256(os.path.join(tmp, TOKENIZER_FILE)),
        "vocab_size": tokenizer.vocab_size, "eod_token": tokenizer.eod_token, "eod_id": tokenizer.eod_id,
        "dtype": tokenizer.dtype, "splits": splits, "sources": per_source, "documents": documents,
        "text_bytes": text_bytes, "bad_records": dict(sorted(bad.items())),
        "tokenizer": {"trained_vocab": options.trained_vocab(), "file": TOKENIZER_FILE},
        "seed": options.seed, "val_fraction": options.val_fraction, "command": options.command(),
        "fingerprint": fingerprint,
    }
    if options.val_fraction > 0 and not splits["val"]["documents"]:
        log(f"warning: no document fell into the val split ({documents} documents, --val-fraction "
            f"{options.val_fraction}); training from this folder needs a larger fraction or training.validate=false")
    for name in (FINGERPRINT_FILE, PROGRESS_FILE):
        if os.path.exists(os.path.join(tmp, name)):
            os.unlink(os.path.join(tmp, name))
    atomic_write_json(os.path.join(tmp, MANIFEST_FILE), manifest)  # last: it vouches for the shards
    log(f"{options.out}: {splits['train']['tokens']} train tokens in {len(splits['train']['shards'])} shards, "
        f"{splits['val']['tokens']} val tokens in {len(splits['val']['shards'])}; {documents} documents; "
        f"vocabulary {tokenizer.vocab_size}")
    return manifest


Written = tuple[dict, Counter, list[dict], int]  # (splits, bad records by kind, per source, text bytes)


def _source_entry(source: Source, documents: int, bad_records: int) -> dict:
    return {"path": source.path, "split_key": source.key, "bytes": source.size, "documents": documents,
            "bad_records": bad_records}


def _write_locally(tmp: str, options: PrepareOptions, sources: list[Source], settings: EncodeSettings,
                   fingerprint: str, log: Callable[[str], None]) -> Written:
    """The driver writes the shards from the files' token ids, in input order, as they arrive."""
    shutil.rmtree(os.path.join(tmp, PARTS_DIR), ignore_errors=True)  # a killed Ray run's (not reused here)
    itemsize = np.dtype(settings.dtype).itemsize
    writers = {s: ShardWriter(tmp, s, options.shard_tokens, itemsize) for s in SPLITS}
    bad, per_source, text_bytes = Counter(), [], 0
    saved = load_progress(tmp, fingerprint)
    if saved is not None:
        for split in SPLITS:
            writers[split].restore(saved["writers"][split])
        bad, per_source, text_bytes = Counter(saved["bad"]), saved["per_source"], saved["text_bytes"]
        log(f"resuming after the {len(per_source)} files an interrupted run of this command had written")
    start = len(per_source)
    workers = options.workers or os.cpu_count() or 1
    results = encode_locally(sources[start:], settings, workers, start)
    last_save, closed = time.monotonic(), sum(w.closed_shards for w in writers.values())
    for result in _with_progress(results, sources, options.progress, start):
        for split in SPLITS:
            writers[split].add(result.tokens[split], np.frombuffer(result.doc_lengths[split], np.int64))
        bad.update(result.bad)
        text_bytes += result.text_bytes
        per_source.append(_source_entry(sources[result.index], result.documents, sum(result.bad.values())))
        now_closed = sum(w.closed_shards for w in writers.values())
        if now_closed > closed or time.monotonic() - last_save > SAVE_EVERY_S:
            save_progress(tmp, {"fingerprint": fingerprint, "writers": {s: w.state() for s, w in writers.items()},
                                "bad": dict(bad), "per_source": per_source, "text_bytes": text_bytes})
            last_save, closed = time.monotonic(), now_closed
    return {s: w.finish() for s, w in writers.items()}, bad, per_source, text_bytes


def _write_with_ray(tmp: str, options: PrepareOptions, sources: list[Source], settings: EncodeSettings,
                    fingerprint: str, log: Callable[[str], None]) -> Written:
    """Ray workers write part files, then the shards (ray_runner.py); the driver gets counts."""
    from raytrain_llm.prepare.ray_runner import prepare_with_ray

    for name in os.listdir(tmp):  # a killed local run's shards and progress: the Ray path redoes them
        if name.endswith(".bin") or name == PROGRESS_FILE:
            os.unlink(os.path.join(tmp, name))
    workers = options.workers or os.cpu_count() or 1
    splits, bad, files, text_bytes = prepare_with_ray(
        tmp, sources, settings, options.shard_tokens, np.dtype(settings.dtype).itemsize, workers,
        options.ray_address, log, _progress_counter(sources, options.progress))
    per_source = [_source_entry(sources[f["index"]], f["documents"], f["bad_records"]) for f in files]
    return splits, bad, per_source, text_bytes


def _tokenizer(tmp: str, options: PrepareOptions, sources: list[Source], log: Callable[[str], None]) -> TextTokenizer:
    path = os.path.join(tmp, TOKENIZER_FILE)
    vocab = options.trained_vocab()
    if vocab is None:
        tokenizer = TextTokenizer.load(options.tokenizer, options.eod_token)
        if not os.path.isfile(path):
            shutil.copyfile(options.tokenizer, path + ".part")  # its own bytes: the hash users know
            os.replace(path + ".part", path)
        return tokenizer
    if os.path.isfile(path):
        log(f"reusing the tokenizer trained by an interrupted run of this command ({path})")
        return TextTokenizer.load(path, options.eod_token)
    log(f"training a byte-level BPE tokenizer of {vocab} tokens on up to {options.tokenizer_train_bytes} "
        "bytes of training documents")
    seen = {"documents": 0, "bad": Counter()}
    tokenizer = TextTokenizer.train(_training_texts(options, sources, seen), vocab, options.eod_token)
    if not seen["documents"]:  # every file was read: the counts are complete
        _report_bad(seen["bad"], 0, options, log)
        raise UsageError("--val-fraction: no document is left to train the tokenizer on (all went to val)")
    tokenizer.save(path + ".part")
    os.replace(path + ".part", path)
    return TextTokenizer.load(path, options.eod_token)  # as every later reader will see it


def _training_texts(options: PrepareOptions, sources: list[Source], seen: dict) -> Iterator[str]:
    """The train split's documents in input order, up to tokenizer_train_bytes of text; `seen`
    counts the documents given and the bad records met."""
    budget = options.tokenizer_train_bytes
    for source in sources:
        docs, bad = parse_documents(read_source(source.path), options.fmt, options.text_field, source.path)
        seen["bad"].update(bad)
        for record, text in docs:
            if is_validation(options.seed, source.key, record, options.val_fraction):
                continue
            seen["documents"] += 1
            yield text
            budget -= len(text.encode("utf-8"))
            if budget <= 0:
                return


def _report_bad(bad: Counter, documents: int, options: PrepareOptions, log: Callable[[str], None]) -> None:
    names = {"non_utf8": "not UTF-8", "not_json": "not JSON", "missing_field": f"without a string {options.text_field!r}"
             if options.fmt != "text" else "missing", "empty": "empty"}
    total = sum(bad.values())
    what = ", ".join(f"{n} {names.get(k, k)}" for k, n in sorted(bad.items()))
    if documents == 0:
        raise UsageError(f"--input: no usable document in {total} records ({what or 'no records'})"
                         + (f"; is --text-field {options.text_field!r} right?" if bad.get("missing_field") else ""))
    if total:
        log(f"skipped {total} bad records of {total + documents}: {what}")


def _with_progress(results: Iterable[FileResult], sources: list[Source], progress: Optional[bool],
                   start: int) -> Iterator[FileResult]:
    show = sys.stderr.isatty() if progress is None else progress
    total = sum(s.size for s in sources) or 1
    done = sum(s.size for s in sources[:start])
    for i, result in enumerate(results, start):
        done += sources[result.index].size
        if result.index != i:
            raise RuntimeError(f"file results out of order: got file {result.index} at position {i}")
        if show:
            print(f"\rprepare: {i + 1}/{len(sources)} files, {100 * done / total:5.1f}% of input bytes",
                  end="", file=sys.stderr, flush=True)
        yield result
    if show:
        print(file=sys.stderr)


def _progress_counter(sources: list[Source], progress: Optional[bool]) -> Callable[[int], None]:
    """A progress line of files done (files arrive in blocks, in any order)."""
    show = sys.stderr.isatty() if progress is None else progress

    def update(done: int) -> None:
        if show:
            print(f"\rprepare: {done}/{len(sources)} files", end="\n" if done == len(sources) else "",
                  file=sys.stderr, flush=True)

    return update
