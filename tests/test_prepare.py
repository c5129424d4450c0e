"""Corpus preparation on a real corpus (stdlib sources): tokenizer, shards that decode back to the
documents exactly, manifest counts, a deterministic split, reruns that skip work, and bad inputs."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prep_testing import prepare_args, split_tokens, stdlib_corpus
from raytrain_llm.data.tokenizer import TextTokenizer
from raytrain_llm.prepare.__main__ import main
from raytrain_llm.prepare.documents import is_validation
from rt_testing import REPO, cli_env

ARGS = ("--tokenizer", "train:1024", "--val-fraction", "0.15", "--seed", "3", "--shard-tokens", "30000")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    return stdlib_corpus(folder / "src")


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep") / "data"
    assert main(prepare_args([corpus[0].parent / "*.py"], out, *ARGS, "--workers", "2")) == 0
    return out, json.loads((out / "manifest.json").read_text())


def _files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_shards_decode_back_to_exactly_the_documents(corpus, prepared):
    out, manifest = prepared
    tok = TextTokenizer.load(str(out / "tokenizer.json"))
    assert manifest["tokenizer_sha256"] == hashlib.sha256((out / "tokenizer.json").read_bytes()).hexdigest()
    assert (manifest["vocab_size"], manifest["dtype"], manifest["eod_token"]) == (1024, "uint16", "<|endoftext|>")
    assert manifest["eod_id"] == tok.eod_id == tok.tokenizer.token_to_id("<|endoftext|>")
    paths = [str(p) for p in corpus]
    assert [s["path"] for s in manifest["sources"]] == paths
    for split in ("train", "val"):
        want = [p.read_text(encoding="utf-8") for p in corpus
                if is_validation(3, p.name, 0, 0.15) == (split == "val")]
        tokens = split_tokens(out, split, manifest)
        assert tokens[-1] == tok.eod_id  # every document, the last included, ends with the EOD token
        assert [tok.decode(d) for d in tok.split_documents(tokens)] == want
        info = manifest["splits"][split]
        assert info["documents"] == len(want) and info["tokens"] == len(tokens)
        for shard in info["shards"]:  # per-shard counts; shards hold whole documents
            data = np.fromfile(out / shard["file"], dtype="uint16")
            assert len(data) == shard["tokens"] and (data == tok.eod_id).sum() == shard["documents"]
            assert data[-1] == tok.eod_id and (shard["tokens"] <= 30000 or shard["documents"] == 1)
    assert len(manifest["splits"]["train"]["shards"]) >= 3 and manifest["splits"]["val"]["documents"] >= 2
    assert manifest["documents"] == len(corpus) and manifest["bad_records"] == {}
    assert manifest["command"].startswith("python -m raytrain_llm.prepare --input ")
    assert sorted(os.listdir(out.parent)) == ["data"]  # the temporary folder is gone


def test_split_is_deterministic_and_independent_of_workers_and_rerun_skips(corpus, prepared, tmp_path, capsys):
    out, manifest = prepared
    # The same command with 1 worker into the same path (moved away first) writes the same bytes.
    moved = tmp_path / "first"
    os.replace(out, moved)
    try:
        assert main(prepare_args([corpus[0].parent / "*.py"], out, *ARGS, "--workers", "1")) == 0
        assert _files(out) == _files(moved)
    finally:
        os.replace(moved, out) if not out.exists() else None
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    assert main(prepare_args([corpus[0].parent / "*.py"], out, *ARGS)) == 0
    assert "already prepared" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps  # nothing rewritten
    # Another seed: another split of whole documents.
    other = tmp_path / "seed4"
    assert main(prepare_args([corpus[0].parent / "*.py"], other, *ARGS[:-4], "--seed", "4",
                             "--shard-tokens", "30000")) == 0
    m4 = json.loads((other / "manifest.json").read_text())
    assert m4["splits"]["val"]["tokens"] != manifest["splits"]["val"]["tokens"]
    # A different command into a finished folder is refused, not mixed in.
    assert main(prepare_args([corpus[0]], out, *ARGS)) == 2
    assert "holds data prepared by another command" in capsys.readouterr().err


DIE_AFTER_20_FILES = """
import os, sys
from raytrain_llm.prepare import pipeline
from raytrain_llm.prepare.__main__ import main
loop = pipeline._with_progress
def dying(*args, **kwargs):
    for i, result in enumerate(loop(*args, **kwargs)):
        if i == 20:  # 20 files written (and their progress saved where a shard closed)
            os._exit(137)
        yield result
pipeline._with_progress = dying
sys.exit(main(sys.argv[1:]))
"""


def test_a_killed_run_publishes_nothing_and_its_rerun_finishes_the_same_bytes(corpus, prepared, tmp_path, capsys):
    reference, _ = prepared
    out = tmp_path / "data"
    args = prepare_args([corpus[0].parent / "*.py"], out, *ARGS, "--workers", "2")
    # Killed (os._exit, as SIGKILL would leave it) after 20 of the 36 files: shards closed before then
    # were recorded in .progress.json; the open ones hold bytes past the record. The kill comes from
    # this test, wrapped around the command's loop over finished files.
    p = subprocess.run([sys.executable, "-c", DIE_AFTER_20_FILES, *map(str, args)], cwd=REPO, timeout=120,
                       env=cli_env(), capture_output=True, text=True)
    tmp = tmp_path / "data.tmp-prepare"
    assert p.returncode == 137 and not out.exists() and (tmp / ".progress.json").exists(), p.stderr
    saved = json.loads((tmp / ".progress.json").read_text())
    # (How many: the files up to the last shard closed at or before file 20.)
    assert 0 < len(saved["per_source"]) <= 20 and (tmp / "tokenizer.json").exists()
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "reusing the tokenizer" in err and f"resuming after the {len(saved['per_source'])} files" in err
    got, want = _files(out), _files(reference)
    manifests = [json.loads(files.pop("manifest.json")) for files in (got, want)]
    assert got == want and not tmp.exists()  # the shards and the tokenizer, byte for byte
    assert [{k: v for k, v in m.items() if k != "command"} for m in manifests][0] == \
        {k: v for k, v in manifests[1].items() if k != "command"}  # (the command names another --out)


def test_jsonl_gz_and_parquet_count_bad_records(corpus, tmp_path):
    texts = [p.read_text(encoding="utf-8") for p in corpus[:6]]
    lines = [json.dumps({"text": t}).encode() for t in texts[:4]]
    lines += [b'{"text": "\xff\xfe broken"}', b'{"body": "no text field"}', b'{"text": "   "}', b"not json", b""]
    with gzip.open(tmp_path / "a.jsonl.gz", "wb") as fh:
        fh.write(b"\n".join(lines) + b"\n")
    pq.write_table(pa.table({"text": texts[4:] + [None, ""]}), tmp_path / "b.parquet")
    tok = tmp_path / "tok.json"
    TextTokenizer.train(iter(texts), 400).save(str(tok))
    out = tmp_path / "j"
    assert main(prepare_args([tmp_path / "a.jsonl.gz"], out, "--format", "jsonl", "--tokenizer", tok,
                             "--val-fraction", "0")) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["bad_records"] == {"empty": 1, "missing_field": 1, "non_utf8": 1, "not_json": 1}
    assert m["tokenizer_sha256"] == hashlib.sha256(tok.read_bytes()).hexdigest()  # the file as given
    t = TextTokenizer.load(str(out / "tokenizer.json"))
    assert [t.decode(d) for d in t.split_documents(split_tokens(out, "train", m))] == texts[:4]
    out = tmp_path / "p"
    assert main(prepare_args([tmp_path / "b.parquet"], out, "--format", "parquet", "--tokenizer", tok,
                             "--val-fraction", "0")) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["bad_records"] == {"empty": 1, "missing_field": 1} and m["documents"] == 2
    assert [t.decode(d) for d in t.split_documents(split_tokens(out, "train", m))] == texts[4:]


def _bad_inputs(tmp, corpus):
    (tmp / "rows.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n')
    (tmp / "broken.parquet").write_bytes(b"PAR1 this is not a parquet file PAR1")
    (tmp / "not_a_tokenizer.json").write_text('{"hello": "world"}')
    return {
        "missing file": ([tmp / "nope.txt"], ["--tokenizer", "train:300"], r"no such file: .*nope.txt"),
        "empty glob": ([tmp / "*.nothing"], ["--tokenizer", "train:300"], r"no file matches .*\*.nothing"),
        "wrong field": ([tmp / "rows.jsonl"], ["--format", "jsonl", "--text-field", "body", "--tokenizer", "train:300"],
                        r"no usable document in 2 records \(2 without a string 'body'\)"),
        "corrupt parquet": ([tmp / "broken.parquet"], ["--format", "parquet", "--tokenizer", "train:300"],
                            r"broken.parquet is not a readable Parquet file"),
        "vocab too small": ([corpus[0]], ["--tokenizer", "train:100"], r"needs a vocabulary of at least 257 tokens"),
        "not a tokenizer": ([corpus[0]], ["--tokenizer", tmp / "not_a_tokenizer.json"],
                            r"not_a_tokenizer.json is not a Hugging Face tokenizer.json"),
    }


@pytest.mark.parametrize("case", ["missing file", "empty glob", "wrong field", "corrupt parquet", "vocab too small",
                                  "not a tokenizer"])
def test_bad_inputs_exit_2_with_one_line_and_write_nothing(case, corpus, tmp_path, capsys):
    import re

    inputs, extra, pattern = _bad_inputs(tmp_path, corpus)[case]
    before = set(os.listdir(tmp_path))
    capsys.readouterr()
    assert main(prepare_args(inputs, tmp_path / "out", *extra)) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert errors == [err.splitlines()[-1]] and "Traceback" not in err, err
    assert re.search(pattern, errors[0]), err
    assert set(os.listdir(tmp_path)) == before  # no out, no out.tmp-prepare


def test_the_command_line_prints_one_line_and_no_traceback(tmp_path):
    p = subprocess.run([sys.executable, "-m", "raytrain_llm.prepare", "--input", str(tmp_path / "*.txt"),
                        "--tokenizer", "train:300", "--out", str(tmp_path / "o")],
                       cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=60)
    assert (p.returncode, p.stderr) == (2, f"error: --input: no file matches {tmp_path}/*.txt\n")


def test_help_names_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "--text-field" in out and "train:VOCAB" in out and "--launcher" in out


def test_uri_globs_and_zstd_text_are_read(corpus, tmp_path):
    # A pyarrow-filesystem URI with a glob, and a .zst document beside plain ones.
    texts = [p.read_text(encoding="utf-8") for p in corpus[:3]]
    folder = tmp_path / "in"
    folder.mkdir()
    for i, text in enumerate(texts[:2]):
        (folder / f"doc{i}.txt").write_text(text, encoding="utf-8")
    with pa.CompressedOutputStream(str(folder / "doc2.txt.zst"), "zstd") as fh:
        fh.write(texts[2].encode("utf-8"))
    out = tmp_path / "out"
    assert main(prepare_args([f"file://{folder}/doc*"], out, "--tokenizer", "train:300", "--val-fraction", "0")) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert [s["path"] for s in m["sources"]] == [f"file://{folder}/doc{i}.txt" for i in range(2)] + \
        [f"file://{folder}/doc2.txt.zst"]
    t = TextTokenizer.load(str(out / "tokenizer.json"))
    assert [t.decode(d) for d in t.split_documents(split_tokens(out, "train", m))] == texts


def test_part_files_copied_into_shards_are_the_local_shards(corpus, prepared, tmp_path):
    # The two phases of --launcher ray without Ray: blocks of uneven sizes (one left unfinished by
    # a "killed" writer: its temporary files, no marker), the layout from the counts alone, the copy.
    from raytrain_llm.prepare import parts as P
    from raytrain_llm.prepare.encode import EncodeSettings
    from raytrain_llm.prepare.sources import expand_inputs
    from raytrain_llm.prepare.writer import split_summary

    out, manifest = prepared
    tok = TextTokenizer.load(str(out / "tokenizer.json"))
    settings = EncodeSettings("text", "text", 3, 0.15, "uint16", tok.tokenizer.to_str(), "<|endoftext|>")
    sources = expand_inputs([str(corpus[0].parent / "*.py")])
    items = [(i, s.path, s.key) for i, s in enumerate(sources)]
    parts = tmp_path / P.PARTS_DIR
    parts.mkdir()
    ranges = [(0, 1), (1, 8), (8, 9), (9, 30), (30, 36)]
    for first, last in ranges[:3] + ranges[4:]:
        P.encode_block(str(parts), items[first:last], settings)
    (parts / "train-00000009-00000030.bin.tmp-dead").write_bytes(b"\0" * 10)
    assert P.finished_blocks(str(parts)) == [r for r in ranges if r != (9, 30)]
    P.remove_unfinished(str(parts), P.finished_blocks(str(parts)))
    ones = [1] * 36  # blocks of 8 files of 1 byte; the gap [9, 30) is what is left to do
    assert P.plan_blocks(P.finished_blocks(str(parts)), ones, 8) == [(9, 17), (17, 25), (25, 30)]
    assert P.plan_blocks([(2, 5)], [3, 9, 1, 1, 1, 2, 2, 7, 1], 4) == [(0, 1), (1, 2), (5, 7), (7, 8), (8, 9)]
    for first, last in P.plan_blocks(P.finished_blocks(str(parts)), ones, 8):
        P.encode_block(str(parts), items[first:last], settings)
    blocks = [P.read_block(str(parts), f, t) for f, t in P.finished_blocks(str(parts))]
    assert [b.first for b in blocks] == [0, 1, 8, 9, 17, 25, 30]
    for split in ("train", "val"):
        plans = P.plan_shards(blocks, split, 30000, 2)
        P.write_shards(str(tmp_path), plans)
        got = split_summary([{"file": p.file, "tokens": p.tokens, "documents": p.documents} for p in plans])
        assert got == manifest["splits"][split]
        for plan in plans:
            assert (tmp_path / plan.file).read_bytes() == (out / plan.file).read_bytes()
    bad, files, text_bytes = P.tally(blocks)
    assert [f["index"] for f in files] == list(range(36)) and text_bytes == manifest["text_bytes"] and not bad
