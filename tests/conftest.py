"""Core tests: tests/ goes on sys.path so `rt_testing` (helpers) and `rt_helpers` (test tasks,
used as `--task rt_helpers:Name`) import the same way in-process and in the CLI subprocesses.
Tests marked `gpu` are skipped where no CUDA device is present, and run wherever one is."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = str(Path(__file__).resolve().parent)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)


@pytest.fixture(scope="session")
def text_lm_run(tmp_path_factory):
    """(run folder, tokenizer, result) of a tiny lm trained on BPE-tokenized text, shared by the
    sample/evaluate/export tests, which only read it."""
    from rt_inference import text_run

    return text_run(tmp_path_factory.mktemp("text-lm"))


@pytest.fixture(scope="session")
def moe_lm_run(tmp_path_factory):
    """(run folder, result) of a tiny MoE lm on synthetic data (no tokenizer), read-only."""
    from rt_inference import synthetic_moe_run

    return synthetic_moe_run(tmp_path_factory.mktemp("moe-lm") / "run", **{"data.num_val_samples": 40})


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)
