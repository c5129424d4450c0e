"""Input files: local paths, globs and pyarrow-filesystem URIs, expanded in a fixed order, and read
whole (decompressed when named .gz or .zst)."""
from __future__ import annotations

import dataclasses
import glob
import os
from dataclasses import dataclass

from raytrain_llm.core.errors import UsageError


@dataclass(frozen=True)
class Source:
    path: str  # as read: an absolute local path or a URI
    size: int  # bytes on storage (compressed, if it is)
    mtime_ns: int
    key: str = ""  # the name the split hashes: the path below its glob's fixed folder, or the base name


def _is_uri(path: str) -> bool:
    return "://" in path


def _filesystem(path: str):
    """(pyarrow filesystem, path inside it)."""
    from pyarrow import fs

    if not _is_uri(path):
        return fs.LocalFileSystem(), path
    try:
        return fs.FileSystem.from_uri(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid/ValueError/OSError for unknown schemes
        raise UsageError(f"--input: cannot open {path}: {exc}") from None


def _info(path: str) -> Source:
    from pyarrow import fs

    filesystem, inner = _filesystem(path)
    try:
        info = filesystem.get_file_info(inner)
    except OSError as exc:
        raise UsageError(f"--input: cannot read {path}: {exc}") from None
    if info.type == fs.FileType.NotFound:
        raise UsageError(f"--input: no such file: {path}")
    if info.type == fs.FileType.Directory:
        raise UsageError(f"--input: {path} is a folder: name its files (e.g. '{path.rstrip('/')}/*.txt')")
    return Source(path, int(info.size or 0), int(info.mtime_ns or 0))


def expand_inputs(inputs: list[str]) -> list[Source]:
    """Every file the inputs name, in the order given, a glob's matches sorted by name; a file
    named twice is read once. A UsageError for a missing file or an empty glob."""
    paths: list[tuple[str, str]] = []  # (path, key)
    for spec in inputs:
        if _is_uri(spec):
            found = _expand_uri(spec)
        elif glob.has_magic(spec):
            found = [os.path.abspath(p) for p in sorted(glob.glob(os.path.expanduser(spec), recursive=True))
                     if os.path.isfile(p)]
            if not found:
                raise UsageError(f"--input: no file matches {spec}")
        else:
            found = [os.path.abspath(os.path.expanduser(spec))]
        base = _fixed_folder(spec) if glob.has_magic(spec) else None
        paths += [(p, _key(p, base)) for p in found]
    seen: set[str] = set()
    unique = [(p, k) for p, k in paths if not (p in seen or seen.add(p))]
    return [dataclasses.replace(_info(p), key=k) for p, k in unique]


def _fixed_folder(spec: str) -> str:
    """The folders of a glob before its first wildcard: 'data/**/x*.txt' -> 'data'."""
    parts = spec.split("/")
    fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    return "/".join(parts[:fixed])


def _key(path: str, base) -> str:
    """A file's name for the split hash: below its glob's fixed folder, or its base name. Moving
    or copying the corpus elsewhere keeps the split."""
    if base is None:
        return path.rstrip("/").rsplit("/", 1)[-1]
    base_path = base if _is_uri(base) else os.path.abspath(os.path.expanduser(base or "."))
    rel = path[len(base_path):] if path.startswith(base_path) else path
    return rel.lstrip("/")


def _expand_uri(spec: str) -> list[str]:
    """A URI's files; a glob in its last component is matched against the folder's listing."""
    if not glob.has_magic(spec):
        return [spec]
    import fnmatch

    from pyarrow import fs

    folder, pattern = spec.rsplit("/", 1)
    filesystem, inner = _filesystem(folder)
    scheme = spec.split("://", 1)[0]
    try:
        infos = filesystem.get_file_info(fs.FileSelector(inner))
    except OSError as exc:
        raise UsageError(f"--input: cannot list {folder}: {exc}") from None
    matches = sorted(i.path for i in infos if i.type == fs.FileType.File and fnmatch.fnmatch(i.base_name, pattern))
    if not matches:
        raise UsageError(f"--input: no file matches {spec}")
    return [f"{scheme}://{m.lstrip('/') if scheme != 'file' else m}" for m in matches]


def read_source(path: str) -> bytes:
    """The file's bytes, decompressed by its suffix (pyarrow's detection: .gz, .zst, .bz2, .lz4);
    a UsageError naming it if unreadable."""
    import pyarrow as pa

    filesystem, inner = _filesystem(path)
    try:
        with filesystem.open_input_stream(inner, compression="detect") as stream:
            return stream.read()
    except (OSError, pa.ArrowException) as exc:
        raise UsageError(f"--input: cannot read {path}: {exc}") from None
