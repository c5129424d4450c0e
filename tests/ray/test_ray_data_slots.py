"""Slot layout of the Ray Data pipeline, checked without Ray: it must be the sampler's layout."""
from __future__ import annotations

import numpy as np
import pytest

from raytrain_llm.data.base import ResumableBatchSampler
from raytrain_llm.launchers.ray_data import SlotGenerator, train_batches_needed

from ray_testing import ray_config


@pytest.mark.timeout(60)
@pytest.mark.parametrize("world", [1, 2, 3])
def test_slots_match_resumable_batch_sampler(tmp_path, world):
    cfg = ray_config(tmp_path, distributed__num_workers=world)
    n, b, nb = 128, 8, 128 // (8 * world)
    gen = SlotGenerator(cfg, "train", n, batch_size=b, world_size=world, batches_per_epoch=nb,
                        seed=cfg.data.seed, shuffle=True)
    for epoch in (0, 1):
        for rank in range(world):
            expected = list(ResumableBatchSampler(n, b, rank=rank, world_size=world, seed=cfg.data.seed,
                                                  epoch=epoch))
            got = [gen.slot_ids((epoch * nb + i) * world + rank)[3].tolist() for i in range(nb)]
            assert got == expected
    # The generated row holds exactly the dataset's rows for those ids.
    row = gen({"id": np.array([world + 0])})
    ids = gen.slot_ids(world)[3]
    np.testing.assert_array_equal(row["x"][0], gen.dataset.rows(ids)["x"])
    # Slot `world` is global batch 1, rank 0, whatever the world size.
    assert [int(row[k][0]) for k in ("_epoch", "_batch", "_rank", "_count")] == [0, 1, 0, b]


@pytest.mark.timeout(30)
def test_validation_tail_is_padded_and_counted(tmp_path):
    cfg = ray_config(tmp_path)
    gen = SlotGenerator(cfg, "val", 20, batch_size=8, world_size=2, batches_per_epoch=2, seed=0, shuffle=False)
    counts = [int(gen({"id": np.array([k])})["_count"][0]) for k in range(4)]
    assert counts == [8, 8, 4, 0] and sum(counts) == 20


@pytest.mark.timeout(30)
def test_batches_needed_respects_max_steps_and_accumulation(tmp_path):
    cfg = ray_config(tmp_path, training__epochs=3, training__max_steps=0)
    assert train_batches_needed(cfg, 10) == 30
    cfg = ray_config(tmp_path, training__epochs=3, training__max_steps=7, training__grad_accum_steps=2)
    # 5 steps per epoch (the last one a single batch) use 9 batches; then 2 steps use 4 batches.
    assert train_batches_needed(cfg, 9) == 9 + 4
