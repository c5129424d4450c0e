"""Sharded checkpoints (state.pt with "format": "sharded" and the tensors in a DCP folder
`sharded/`) work wherever a full one does: consolidate gives the saved weights exactly, and
sample, evaluate and export print and write the same as from the equivalent full checkpoint;
`python -m raytrain_llm.consolidate` writes the weights to one .pt or .safetensors file. One
checkpoint comes from 2 gloo processes whose parameters were FSDP2 DTensor shards."""
from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from raytrain_llm.consolidate import cli as consolidate_cli
from raytrain_llm.core.sharded.consolidate import consolidate
from raytrain_llm.evaluate import cli as evaluate_cli
from raytrain_llm.export import cli as export_cli
from raytrain_llm.inference.checkpoint_source import load_trained_model, read_checkpoint
from raytrain_llm.sample import cli as sample_cli
from rt_testing import checkpoints, load_state
from test_dcp_safe_reader import WritesFile, assert_same, save_dcp


def sharded_twin(full, folder):
    """The checkpoint folder `full` as a sharded save leaves it: the same files, state.pt without
    model/optimizer tensors, and those in a DCP folder `sharded/`."""
    shutil.copytree(full, folder)
    state = load_state(full)
    save_dcp({"model": state["model"], "optimizer": state["optimizer"]}, folder / "sharded")
    torch.save({**state, "model": None, "optimizer": None, "format": "sharded"}, folder / "state.pt")
    return folder


@pytest.fixture(scope="module")
def twins(moe_lm_run, tmp_path_factory):
    """(full checkpoint folder, its sharded twin, its state) of the tiny MoE lm run."""
    full = checkpoints(moe_lm_run[0])[-1]
    return full, sharded_twin(full, tmp_path_factory.mktemp("sharded") / full.name), load_state(full)


def run_cli(cli, args, capsys) -> tuple[int, str, str]:
    code = cli([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_consolidate_gives_the_saved_weights_exactly(twins):
    full, sharded, state = twins
    assert_same(consolidate(sharded / "sharded"), state["model"])
    assert_same(read_checkpoint(str(sharded))[1], read_checkpoint(str(full))[1])
    optimizer = consolidate(sharded / "sharded", "optimizer")  # flat keys under the prefix
    assert torch.equal(optimizer["state.0.exp_avg"], state["optimizer"]["state"][0]["exp_avg"])


def test_sample_evaluate_and_export_match_the_full_checkpoint(twins, tmp_path, capsys):
    from safetensors.torch import load_file

    full, sharded, _ = twins
    sampled = [run_cli(sample_cli, ["--checkpoint", c, "--prompt", "1 2 3", "--prompt", "7", "--max-new-tokens", 8,
                                    "--temperature", 0.8, "--seed", 4, "--device", "cpu"], capsys) for c in (full, sharded)]
    assert sampled[0][0] == sampled[1][0] == 0 and sampled[0][1] == sampled[1][1] and "sample 1" in sampled[0][1]
    reports = []
    for checkpoint in (full, sharded):
        code, out, _ = run_cli(evaluate_cli, ["--checkpoint", checkpoint, "--device", "cpu"], capsys)
        assert code == 0
        reports.append({k: v for k, v in json.loads(out).items() if k != "checkpoint"})
    assert reports[0] == reports[1] and reports[0]["tokens"] > 0
    # Export's formats share the loading; hf only renames (and imports transformers: seconds).
    for name, checkpoint in (("full", full), ("sharded", sharded)):
        assert run_cli(export_cli, ["--checkpoint", checkpoint, "--out", tmp_path / name, "--format", "safetensors"],
                       capsys)[0] == 0
    assert_same(load_file(tmp_path / "sharded" / "model.safetensors"), load_file(tmp_path / "full" / "model.safetensors"))
    assert (tmp_path / "sharded" / "config.yaml").read_text() == (tmp_path / "full" / "config.yaml").read_text()


def test_the_consolidate_command_writes_pt_and_safetensors(twins, tmp_path, capsys):
    from safetensors.torch import load_file

    full, sharded, state = twins
    for checkpoint in (sharded, full):
        code, out, _ = run_cli(consolidate_cli, ["--checkpoint", checkpoint, "--out", tmp_path / checkpoint.parent.name / "w.pt"], capsys)
        assert code == 0 and out.startswith(f"wrote {len(state['model'])} tensors (")
        assert_same(torch.load(tmp_path / checkpoint.parent.name / "w.pt", weights_only=True), state["model"])
    assert run_cli(consolidate_cli, ["--checkpoint", sharded, "--out", tmp_path / "w.safetensors"], capsys)[0] == 0
    assert_same(load_file(tmp_path / "w.safetensors"), state["model"])

    before = sorted(p.name for p in tmp_path.iterdir())
    for args, message in (
            (["--checkpoint", tmp_path / "nowhere", "--out", tmp_path / "x.pt"], "--checkpoint: .*/nowhere does not exist"),
            (["--checkpoint", sharded, "--out", tmp_path / "w.safetensors"], "--out .*/w.safetensors already exists"),
            (["--checkpoint", sharded, "--out", tmp_path / "w.bin"], "--out .*/w.bin: name the file .pt .* or .safetensors"),
            (["--checkpoint", sharded, "--out", tmp_path / "w.safetensors" / "x.pt"], "--out: cannot create .*/w.safetensors: "),
            (["--checkpoint", sharded], "the following arguments are required: --out")):
        code, out, err = run_cli(consolidate_cli, args, capsys)
        assert code == 2 and out == "" and len(err.splitlines()) == 1, err
        assert re.match(f"error: {message}", err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, nothing lost


def test_a_crafted_sharded_checkpoint_is_one_line_and_runs_nothing(twins, tmp_path, capsys):
    import pickle

    from raytrain_llm.core.sharded.safe_reader import read_dcp_metadata

    crafted = shutil.copytree(twins[1], tmp_path / "step-crafted")
    metadata = read_dcp_metadata(crafted / "sharded")
    metadata.storage_meta = WritesFile(tmp_path / "ran")
    (crafted / "sharded" / ".metadata").write_bytes(pickle.dumps(metadata))
    for cli, extra in ((sample_cli, ["--prompt", "1"]), (evaluate_cli, []), (consolidate_cli, ["--out", tmp_path / "w.pt"])):
        code, out, err = run_cli(cli, ["--checkpoint", crafted, *extra], capsys)
        assert (code, out) == (2, "") and err == (
            f"error: checkpoint {crafted}/sharded/.metadata: refused to unpickle pathlib.Path.write_text: "
            "not DCP metadata (loading never runs code from a file)\n")
    assert not (tmp_path / "ran").exists() and not (tmp_path / "w.pt").exists()


def test_a_checkpoint_of_fsdp2_shards_from_two_ranks(tmp_path):
    from rt_fsdp_checkpoint import lm_config, write_fsdp_checkpoint

    write_fsdp_checkpoint(tmp_path, timeout_s=120)
    gathered = torch.load(tmp_path / "full_weights.pt", weights_only=True)  # full_tensor() of each DTensor
    assert_same(consolidate(tmp_path / "sharded"), gathered)
    trained = load_trained_model(str(tmp_path))
    assert_same(trained.model.state_dict(), gathered)
    assert trained.config.model.d_model == lm_config().model.d_model
