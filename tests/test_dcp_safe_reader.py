"""Sharded (DCP) checkpoints load without running code from them: SafeFileSystemReader reads
real DCP metadata and byte items exactly as the stock reader does, and refuses a crafted
.metadata or byte item whose unpickling would write a file (the file stays unwritten), while
the stock reader, run on the same files in a subprocess, writes it."""
from __future__ import annotations

import pathlib
import pickle
import subprocess
import sys
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from raytrain_llm.core.errors import CheckpointError
from raytrain_llm.core.sharded.consolidate import consolidate
from raytrain_llm.core.sharded.safe_reader import (
    SafeFileSystemReader,
    checkpoint_error_of,
    load_sharded,
    read_dcp_metadata,
)
from rt_testing import REPO, cli_env


class WritesFile:
    """Unpickling this writes `path`: what a crafted checkpoint would do with any callable."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return pathlib.Path.write_text, (pathlib.Path(self.path), "code from the checkpoint ran")


def save_dcp(state: dict, folder) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp.save(state, checkpoint_id=str(folder), no_dist=True)
    return str(folder)


def mixed_state() -> dict:
    """A model of fp32, bf16, fp16, int64 and bool tensors and its AdamW state after one step
    (tensors, and param_groups as DCP byte items)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2).to(torch.bfloat16))
    model.register_buffer("counts", torch.arange(5, dtype=torch.int64) * 7)
    model.register_buffer("halves", torch.randn(2, dtype=torch.float16))
    model.register_buffer("flags", torch.tensor([True, False]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict()}


def zeroed(value):
    if isinstance(value, dict):
        return {k: zeroed(v) for k, v in value.items()}
    if torch.is_tensor(value):
        return torch.zeros_like(value)
    return None if not isinstance(value, list) else [zeroed(v) for v in value]


def assert_same(got, want):
    if isinstance(want, dict):
        assert sorted(got) == sorted(want)
        for k in want:
            assert_same(got[k], want[k])
    elif torch.is_tensor(want):
        assert got.dtype == want.dtype and torch.equal(got, want)
    else:
        assert got == want


def test_real_checkpoints_load_as_the_stock_reader_loads_them(tmp_path):
    state = mixed_state()
    folder = save_dcp(state, tmp_path / "ck")
    ours, stock = read_dcp_metadata(folder), dcp.FileSystemReader(folder).read_metadata()
    assert ours.state_dict_metadata == stock.state_dict_metadata and ours.storage_data == stock.storage_data
    assert {str(m.properties.dtype) for m in ours.state_dict_metadata.values() if hasattr(m, "properties")} == {
        "torch.float32", "torch.bfloat16", "torch.float16", "torch.int64", "torch.bool"}
    loaded = zeroed(state)
    load_sharded(loaded, folder, no_dist=True)
    assert_same(loaded, state)  # model, AdamW moments and step, param_groups (byte items)
    assert_same(consolidate(folder), state["model"])


def test_crafted_metadata_and_byte_items_are_refused_and_run_nothing(tmp_path):
    metadata_marker, bytes_marker = tmp_path / "metadata-ran", tmp_path / "bytes-ran"
    model = {"w": torch.randn(3, 2)}
    crafted = save_dcp({"model": model}, tmp_path / "crafted-metadata")
    metadata = read_dcp_metadata(crafted)
    metadata.planner_data = {"model.w": WritesFile(metadata_marker)}  # deep inside real metadata
    with open(f"{crafted}/.metadata", "wb") as fh:
        pickle.dump(metadata, fh)
    with_item = save_dcp({"model": model, "extra": WritesFile(bytes_marker)}, tmp_path / "crafted-item")

    refusal = (f"checkpoint {crafted}/.metadata: refused to unpickle pathlib.Path.write_text: not DCP metadata "
               "(loading never runs code from a file)")
    for load in (lambda: read_dcp_metadata(crafted), lambda: consolidate(crafted),
                 lambda: load_sharded({"model": zeroed(model)}, crafted, no_dist=True)):
        with pytest.raises(CheckpointError) as caught:
            load()
        assert str(caught.value) == refusal
    # Straight through dcp.load, DCP words the refusal into its own error (after trying the
    # rank-local __0.metadata, absent): load_sharded reads the metadata first for that reason.
    with pytest.raises(CheckpointException) as wrapped:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp.load({"model": zeroed(model)}, storage_reader=SafeFileSystemReader(crafted), no_dist=True)
    assert f"global metadata read failed: {refusal}" in str(checkpoint_error_of(wrapped.value, crafted))
    # The byte item, read by DCP's default planner (which would torch.load it weights_only=False).
    with pytest.raises(CheckpointError, match=r"^checkpoint .*crafted-item: refused to unpickle \S+ in item extra: "
                                              r"not plain data \(loading never runs code from a file\)$"):
        load_sharded({"model": zeroed(model), "extra": None}, with_item, no_dist=True)
    assert torch.equal(consolidate(with_item)["w"], model["w"])  # the model alone never reads that item
    assert not metadata_marker.exists() and not bytes_marker.exists()

    # The same files through the stock FileSystemReader do run the code: the test can fail.
    stock = (f"import warnings, torch.distributed.checkpoint as dcp; warnings.simplefilter('ignore')\n"
             f"dcp.FileSystemReader({crafted!r}).read_metadata()\n"
             f"dcp.load({{'extra': None}}, storage_reader=dcp.FileSystemReader({with_item!r}), no_dist=True)\n")
    subprocess.run([sys.executable, "-c", stock], cwd=REPO, env=cli_env(), check=True, timeout=120)
    assert metadata_marker.read_text() == bytes_marker.read_text() == "code from the checkpoint ran"


def test_missing_and_garbled_metadata_are_one_line_errors(tmp_path):
    folder = save_dcp({"model": {"w": torch.ones(2)}}, tmp_path / "ck")
    metadata = read_dcp_metadata(folder)
    (tmp_path / "ck" / "__0_0.distcp").rename(tmp_path / "data")
    with pytest.raises(CheckpointError, match=r"^checkpoint .*/ck is corrupt or unreadable: FileNotFoundError: "):
        consolidate(folder)
    (tmp_path / "data").rename(tmp_path / "ck" / "__0_0.distcp")
    metadata.state_dict_metadata["model.w"].chunks.clear()  # the shards of a rank that never wrote
    with open(f"{folder}/.metadata", "wb") as fh:
        pickle.dump(metadata, fh)
    with pytest.raises(CheckpointError, match=r"^checkpoint .*/ck: model.w has 0 of its 2 elements saved: its "
                                              r"shards do not cover it$"):
        consolidate(folder)
    with pytest.raises(CheckpointError, match=r"^checkpoint .*/nowhere/\.metadata not found: not a complete "):
        consolidate(str(tmp_path / "nowhere"))
    with pytest.raises(CheckpointError, match="holds nothing under 'optimizer'$"):
        consolidate(folder, "optimizer")
    (tmp_path / "ck" / ".metadata").write_bytes(b"\x80\x04garbage")
    with pytest.raises(CheckpointError, match=r"^checkpoint .*/ck/\.metadata is corrupt or unreadable: "):
        consolidate(folder)
    (tmp_path / "ck" / ".metadata").write_bytes(pickle.dumps({"not": "metadata"}))
    with pytest.raises(CheckpointError, match=r"is not DCP metadata \(it holds a dict\)$"):
        consolidate(folder)
