"""Slot layout of the Ray Data pipeline: it must be the sampler's layout (checked without Ray, then through real shards)."""
from __future__ import annotations

import numpy as np
import pytest

from ray_testing import ray_config
from raytrain_llm.data.base import ResumableBatchSampler
from raytrain_llm.launchers.ray_train.data_shards import SlotGenerator, train_batches_needed


def _shard(gen: SlotGenerator, rank: int) -> list[tuple[int, int, list[int]]]:
    """What streaming_split gives `rank`: blocks j with j % W == rank, in order (see launchers/ray_train/data_shards.py)."""
    out = []
    for row in range(gen.num_rows):
        if (row // gen.g) % gen.w == rank:
            epoch, batch, r, ids = gen.slot_ids(row)
            assert r == rank
            out.append((epoch, batch, ids.tolist()))
    return out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("world,group", [(1, 1), (2, 8), (3, 4), (2, 3)])
def test_shards_match_resumable_batch_sampler(tmp_path, world, group):
    cfg = ray_config(tmp_path, distributed__num_workers=world)
    n, b = 128, 8
    nb = n // (b * world)
    gen = SlotGenerator(cfg, "train", n, batch_size=b, world_size=world, batches_per_epoch=nb,
                        total_batches=2 * nb, seed=cfg.data.seed, shuffle=True, group=group)
    for rank in range(world):
        expected = [(e, i, ids) for e in (0, 1) for i, ids in enumerate(
            ResumableBatchSampler(n, b, rank=rank, world_size=world, seed=cfg.data.seed, epoch=e))]
        got = _shard(gen, rank)
        assert got[:len(expected)] == expected
        assert all(not ids for _, _, ids in got[len(expected):])  # block padding holds no samples
    # A generated row holds exactly the dataset's rows for its ids.
    row = gen({"id": np.array([1])})
    epoch, batch, rank, ids = gen.slot_ids(1)
    np.testing.assert_array_equal(row["x"][0], gen.dataset.rows(ids)["x"])
    assert [int(row[k][0]) for k in ("_epoch", "_batch", "_rank", "_count")] == [epoch, batch, rank, b]


@pytest.mark.timeout(30)
def test_validation_tail_is_padded_and_counted(tmp_path):
    cfg = ray_config(tmp_path)
    gen = SlotGenerator(cfg, "val", 20, batch_size=8, world_size=2, batches_per_epoch=2, total_batches=2,
                        seed=0, shuffle=False, group=4)
    counts = {r: [int(gen({"id": np.array([k])})["_count"][0]) for k in range(gen.num_rows) if (k // 4) % 2 == r]
              for r in (0, 1)}
    assert counts == {0: [8, 4, 0, 0], 1: [8, 0, 0, 0]}  # batch 1 holds ids 16..19: all rank 0's
    assert sum(map(sum, counts.values())) == 20


@pytest.mark.timeout(30)
def test_batches_needed_respects_max_steps_and_accumulation(tmp_path):
    cfg = ray_config(tmp_path, training__epochs=3, training__max_steps=0)
    assert train_batches_needed(cfg, 10) == 30
    cfg = ray_config(tmp_path, training__epochs=3, training__max_steps=7, training__grad_accum_steps=2)
    # 5 steps per epoch (the last one a single batch) use 9 batches; then 2 steps use 4 batches.
    assert train_batches_needed(cfg, 9) == 9 + 4


@pytest.mark.timeout(30)
def test_a_started_stream_pulls_its_first_item_early_and_keeps_order_and_errors():
    import threading

    from raytrain_llm.launchers.ray_train.data_shards import StartedStream

    pulled = threading.Event()

    def items():
        pulled.set()
        yield from range(5)

    stream = StartedStream(items())
    assert pulled.wait(10)  # before anyone asked
    assert list(stream) == [0, 1, 2, 3, 4]
    assert list(StartedStream(iter(()))) == []

    def failing():
        yield 1
        raise ValueError("block lost")

    broken = StartedStream(failing())
    assert next(broken) == 1
    with pytest.raises(ValueError, match="block lost"):
        next(broken)

    def failing_at_once():
        raise KeyError("no shard")
        yield  # a generator

    with pytest.raises(KeyError, match="no shard"):
        next(StartedStream(failing_at_once()))


@pytest.mark.timeout(120)
def test_read_slots_gives_each_rank_the_samplers_batches_from_real_shards(tmp_path, ray_local):
    """Blocks of slots read through Ray Data's streaming_split, unpacked per slot: each rank gets its
    sampler batches in order, as the tensors the dataset holds for those ids."""
    from concurrent.futures import ThreadPoolExecutor

    import ray.data
    from ray.data import ExecutionOptions

    from raytrain_llm.launchers.ray_train.data_shards import build_ray_datasets, read_slots
    from raytrain_llm.launchers.task_resolution import resolve_task

    world, b = 2, 8
    cfg = ray_config(tmp_path, distributed__num_workers=world, training__max_steps=0, training__epochs=1)
    module = resolve_task(cfg.task)(cfg).build_data_module()
    ctx = ray.data.DataContext.get_current()
    saved = ctx.execution_options
    ctx.execution_options = ExecutionOptions(preserve_order=True)
    try:
        shards = build_ray_datasets(cfg, module, world)["train"].streaming_split(world, equal=True)
        # The split's consumers advance together (as Train's workers do): read them concurrently.
        with ThreadPoolExecutor(world) as pool:
            got = dict(enumerate(pool.map(lambda shard: list(read_slots(shard, prefetch=1)), shards)))
    finally:
        ctx.execution_options = saved
    n = len(module.train_dataset)
    for rank in range(world):
        expected = list(ResumableBatchSampler(n, b, rank=rank, world_size=world, seed=cfg.data.seed, epoch=0))
        slots = [(data, meta) for data, meta in got[rank] if meta[3]]  # block padding: empty slots
        assert [meta[:3] for _, meta in slots] == [(0, i, rank) for i in range(len(expected))]
        for (data, _), ids in zip(slots, expected):
            rows = module.train_dataset.rows(np.asarray(ids))
            assert data.keys() == rows.keys()
            for k in rows:
                np.testing.assert_array_equal(data[k].numpy(), np.asarray(rows[k]))
            assert all(t.is_contiguous() or t.dim() == 0 for t in data.values())


@pytest.mark.timeout(120)
def test_the_drivers_early_split_serves_the_first_worker_group_and_a_restart_gets_a_new_one(ray_local):
    import threading

    import ray.cloudpickle as cloudpickle
    import ray.data
    from ray.data import ExecutionOptions

    from raytrain_llm.launchers.ray_train.early_split import EarlySplitDataConfig

    train = ray.data.range(8, override_num_blocks=4)
    val = ray.data.range(4, override_num_blocks=2)
    config = EarlySplitDataConfig({"train": train}, 2, execution_options=ExecutionOptions(preserve_order=True))

    def configure(name, ds):  # as Train's DatasetManager does, on its own (unpickled) copy
        return [per_rank[name] for per_rank in cloudpickle.loads(cloudpickle.dumps(config)).configure(
            {name: ds}, 2, None, None)]

    first = configure("train", train)
    coordinator = first[0]._coord_actor
    assert all(split._coord_actor == coordinator for split in first)
    rows: dict[int, list[int]] = {}

    def read(rank: int, splits) -> None:
        rows[rank] = [int(r["id"]) for r in splits[rank].iter_rows()]

    threads = [threading.Thread(target=read, args=(rank, first)) for rank in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert rows == {0: [0, 1, 4, 5], 1: [2, 3, 6, 7]}  # block j to shard j mod 2, in order
    restarted = configure("train", train)  # a restarted worker group: Train's own split, a new coordinator
    assert all(split._coord_actor != coordinator for split in restarted)
    assert all(split._coord_actor != coordinator for split in configure("val", val))  # not split early


@pytest.mark.timeout(120)
def test_the_slot_function_loads_torch_in_ray_tasks_but_not_in_actors(tmp_path, ray_local):
    """Where Ray unpickles the slot datasets' plan: an actor (split coordinator, Train's dataset
    manager) imports no torch for it, a task (where slots are made) imports it then, not in its
    first call (slot_generator.py). Each in a fresh process: a runtime env no worker has yet."""
    import os
    import uuid

    import ray
    from ray_testing import TESTS_DIR
    from rt_torch_probe import TorchProbe, torch_loaded_after_unpickling

    cfg = ray_config(tmp_path)
    gen = SlotGenerator(cfg, "train", 64, batch_size=4, world_size=1, batches_per_epoch=16, total_batches=16,
                        seed=0, shuffle=True)

    def fresh():
        paths = [TESTS_DIR] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        return {"env_vars": {"PYTHONPATH": os.pathsep.join(paths), "RAYTRAIN_TEST_FRESH": uuid.uuid4().hex}}

    actor = ray.remote(num_cpus=0)(TorchProbe).options(runtime_env=fresh()).remote()
    in_actor = ray.get(actor.loaded_after_unpickling.remote(gen), timeout=90)
    ray.kill(actor)
    task = ray.remote(num_cpus=0)(torch_loaded_after_unpickling).options(runtime_env=fresh())
    in_task = ray.get(task.remote(gen), timeout=90)
    assert (in_actor, in_task) == (False, True)
