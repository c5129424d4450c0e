"""`SafeFileSystemReader`: DCP's FileSystemReader that never runs code from the files it reads.

DCP keeps three kinds of data in a checkpoint folder, and the stock reader unpickles two of
them without restriction:
  .metadata (and the rank-local __<rank>.metadata)  pickle.load: any class, any callable.
  byte items (non-tensor values, e.g. the optimizer's param_groups)  read_data hands them to
      the load planner, whose DefaultLoadPlanner.load_bytes unpickles them with weights-only off.
  tensor items  torch.load(weights_only=True) already.
Here the metadata goes through `_MetadataUnpickler`, which admits only the classes DCP metadata
is made of, and each byte item is loaded weights-only and re-serialized before the planner sees
it, so the planner unpickles only what the weights-only unpickler built. Anything else is a
CheckpointError naming the file and the refused global; nothing of it was executed.
"""
from __future__ import annotations

import io
import os
import pickle
import re
import warnings
from typing import Any, Optional

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from raytrain_llm.core.errors import CheckpointError

_NEVER_RUNS_CODE = "loading never runs code from a file"

# Every global the .metadata of torch 2.13's FileSystemWriter refers to (checked against files
# saved from one process and from FSDP2 DTensor shards, fp32/bf16/fp16/int64/bool, with AdamW state).
_DCP_METADATA_GLOBALS = frozenset({
    *(("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "StorageMeta", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
        "TensorProperties", "MetadataIndex", "_MEM_FORMAT_ENCODING")),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # torch.layout pickles as _get_layout("torch.strided"): a table lookup
    # storage_meta.checkpoint_id: the path the checkpoint was saved to (pathlib moved in 3.13).
    ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),
    ("pathlib._local", "PosixPath"), ("pathlib._local", "PurePosixPath"),
})
_TORCH_CONSTANTS = (torch.dtype, torch.layout, torch.memory_format)  # torch.float32 etc. pickle by name


def _refusal(where: str, what: str, why: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {where}: refused to unpickle {what}: {why} ({_NEVER_RUNS_CODE})")


class _MetadataUnpickler(pickle.Unpickler):
    """pickle.Unpickler whose find_class admits DCP's metadata classes and torch constants only.
    Every callable a pickle can invoke (REDUCE, NEWOBJ, BUILD's __setstate__) is first looked up
    here, so nothing outside that list runs. Persistent ids are refused by pickle itself."""

    def __init__(self, file, where: str):
        super().__init__(file)
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        admitted = (module, name) in _DCP_METADATA_GLOBALS or (
            # vars(), not getattr(): torch's module __getattr__ imports submodules on demand.
            module == "torch" and isinstance(vars(torch).get(name), _TORCH_CONSTANTS))
        if not admitted:
            raise _refusal(self.where, f"{module}.{name}", "not DCP metadata")
        return super().find_class(module, name)


def read_dcp_metadata(path: str, rank: Optional[int] = None) -> Metadata:
    """The Metadata of the DCP folder `path` (`__<rank>.metadata` when rank is given), unpickled
    by `_MetadataUnpickler`; a CheckpointError when it is missing, garbled or not DCP metadata."""
    where = os.path.join(str(path), ".metadata" if rank is None else f"__{rank}.metadata")
    try:
        with open(where, "rb") as fh:
            metadata = _MetadataUnpickler(fh, where).load()
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {where} not found: not a complete sharded checkpoint") from None
    except Exception as exc:  # pickle raises many types for truncated or garbled files
        raise CheckpointError(f"checkpoint {where} is corrupt or unreadable: "
                              f"{type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(metadata, Metadata) or not isinstance(metadata.state_dict_metadata, dict):
        raise CheckpointError(f"checkpoint {where} is not DCP metadata (it holds a {type(metadata).__name__})")
    return metadata


class _WeightsOnlyBytes:
    """The load planner as `FileSystemReader.read_data` sees it (the three methods it calls),
    with every byte item loaded weights-only first and handed on re-serialized."""

    def __init__(self, planner, where: str):
        self._planner = planner
        self._where = where

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        fqn = read_item.storage_index.fqn
        try:
            obj = torch.load(value, map_location="cpu", weights_only=True)
        except Exception as exc:  # the weights-only unpickler's refusal, or a garbled item
            found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
            what = f"{found.group(1)} in item {fqn}" if found else f"item {fqn}"
            raise _refusal(self._where, what, "not plain data") from None
        again = io.BytesIO()
        torch.save(obj, again)
        again.seek(0)
        self._planner.load_bytes(read_item, again)

    def resolve_tensor(self, read_item) -> torch.Tensor:
        return self._planner.resolve_tensor(read_item)

    def commit_tensor(self, read_item, tensor: torch.Tensor) -> None:
        self._planner.commit_tensor(read_item, tensor)


class SafeFileSystemReader(dcp.FileSystemReader):
    """A FileSystemReader for `dcp.load(..., storage_reader=SafeFileSystemReader(path))` that
    runs no code from the checkpoint: metadata through `_MetadataUnpickler`, byte items
    weights-only, tensors weights-only (as FileSystemReader does)."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        metadata = read_dcp_metadata(str(self.path), kwargs.get("rank"))
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata

    def read_data(self, plan, planner):
        return super().read_data(plan, _WeightsOnlyBytes(planner, str(self.path)))


def checkpoint_error_of(exc: BaseException, path: str) -> CheckpointError:
    """One CheckpointError for a failed DCP load: DCP wraps each rank's exception in a
    CheckpointException (a BaseException, its text a traceback per rank); ours come back as
    they were, anything else as its first line. (A refused .metadata reaches DCP's own
    "metadata is None" AssertionError only as text: `load_sharded` reads the metadata first.)"""
    causes = [failure[0] for failure in exc.failures.values()] if isinstance(exc, CheckpointException) else [exc]
    ours = [cause for cause in causes if isinstance(cause, CheckpointError)]
    if ours:
        return ours[0]
    text = str(causes[0]).strip() if causes else ""
    first = text.splitlines()[0][:400] if text else ""
    return CheckpointError(f"checkpoint {path} is corrupt or unreadable: {type(causes[0]).__name__}: {first}")


def load_sharded(state_dict: dict[str, Any], path: str, *, process_group=None, no_dist: bool = False,
                 planner=None) -> None:
    """`dcp.load(state_dict, ...)` from the DCP folder `path` through SafeFileSystemReader: fills
    state_dict's tensors (plain or DTensor, resharded to their placements) in place and replaces
    its non-tensor values, collective over `process_group` unless no_dist; `planner` as dcp.load's
    (default: DefaultLoadPlanner). The metadata is read (safely) first, so a missing or refused
    file is one CheckpointError on every rank, before any collective."""
    read_dcp_metadata(path)
    try:
        with warnings.catch_warnings():
            # no_dist=True warns that it assumes one process, which is what it was asked.
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state_dict, storage_reader=SafeFileSystemReader(path), process_group=process_group,
                     no_dist=no_dist, planner=planner)
    except (Exception, CheckpointException) as exc:
        raise checkpoint_error_of(exc, path) from None
