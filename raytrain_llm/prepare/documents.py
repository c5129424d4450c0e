"""A file's bytes -> its documents, bad records counted; and each document's split.

Formats:
- text: the whole file is one document (a folder of .txt/.md/.py files, one text per file);
- jsonl: one JSON object per line, the document in its `text_field` (blank lines are skipped);
- parquet: one document per row of the `text_field` column.
A record is bad when it is not UTF-8 (or not JSON), lacks the field (or holds a non-string),
or is empty (only whitespace); bad records are counted by kind and skipped.

The split is a pure function of (seed, file key, record index): a document goes to validation
when a hash of those falls below the fraction. The key is the file's path below its glob's fixed
folder, or its base name (sources.py), so a corpus moved elsewhere splits the same; the split
depends on nothing else (not on the other files, the number of workers or the launcher).
"""
from __future__ import annotations

import hashlib
import io
import json
from collections import Counter

from raytrain_llm.core.errors import UsageError

FORMATS = ("text", "jsonl", "parquet")
BAD_KINDS = ("non_utf8", "not_json", "missing_field", "empty")


def parse_documents(data: bytes, fmt: str, text_field: str, path: str) -> tuple[list[tuple[int, str]], Counter]:
    """([(record index, text)], Counter of bad records by kind)."""
    if fmt == "text":
        return _records([data], lambda raw: raw)
    if fmt == "jsonl":
        lines = [line for line in data.split(b"\n") if line.strip()]
        return _records(lines, lambda raw: _json_field(raw, text_field))
    if fmt == "parquet":
        return _parquet(data, text_field, path)
    raise UsageError(f"--format: must be one of {', '.join(FORMATS)} (got {fmt!r})")


class _Bad(Exception):
    def __init__(self, kind: str):
        self.kind = kind


def _records(raws, extract) -> tuple[list[tuple[int, str]], Counter]:
    docs, bad = [], Counter()
    for i, raw in enumerate(raws):
        try:
            text = extract(raw)
            if isinstance(text, bytes):
                text = text.decode("utf-8")
        except UnicodeDecodeError:
            bad["non_utf8"] += 1
            continue
        except _Bad as exc:
            bad[exc.kind] += 1
            continue
        if not text.strip():
            bad["empty"] += 1
            continue
        docs.append((i, text))
    return docs, bad


def _json_field(raw: bytes, field: str):
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _Bad("non_utf8") from None
    try:
        record = json.loads(text)
    except ValueError:
        raise _Bad("not_json") from None
    value = record.get(field) if isinstance(record, dict) else None
    if not isinstance(value, str):
        raise _Bad("missing_field")
    return value


def _parquet(data: bytes, field: str, path: str) -> tuple[list[tuple[int, str]], Counter]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(io.BytesIO(data))
        if field not in parquet.schema_arrow.names:
            return [], Counter(missing_field=parquet.metadata.num_rows)
        column = parquet.read(columns=[field]).column(field)
    except (pa.ArrowException, OSError) as exc:
        raise UsageError(f"--input: {path} is not a readable Parquet file: {str(exc).splitlines()[0]}") from None
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
            or pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)):
        return [], Counter(missing_field=len(column))
    return _records(column.to_pylist(), _present)


def _present(value):
    if value is None:
        raise _Bad("missing_field")
    return value


def is_validation(seed: int, source: str, record: int, fraction: float) -> bool:
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(f"{seed}\0{source}\0{record}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0 ** 64 < fraction
