"""The slot datasets' map function without Ray: the warm-up task (data_shards.warm_slot_process)
leaves in its process the very dataset object that a generating task of the same config uses."""
from raytrain_llm.core.config_loader import load_config
from raytrain_llm.launchers.ray_train import slot_generator
from raytrain_llm.launchers.ray_train.slot_generator import SlotGenerator, config_key, load_task_dataset


def _generator(cfg) -> SlotGenerator:
    return SlotGenerator(cfg, "train", cfg.data.num_train_samples, batch_size=4, world_size=2,
                         batches_per_epoch=8, total_batches=8, seed=0, shuffle=True)


def test_a_warmed_process_gives_the_generating_task_the_dataset_it_already_built(monkeypatch):
    monkeypatch.setattr(slot_generator, "_MODULES", {})
    cfg = load_config(overrides=["data.num_train_samples=64", "data.num_val_samples=16"], environ={}, task="lm")
    assert load_task_dataset(config_key(cfg)) is True
    (warmed,) = (module.train_dataset for module in slot_generator._MODULES.values())
    gen = _generator(cfg)
    assert gen.dataset is warmed  # not rebuilt
    row = gen(({"id": [0]}))
    assert row["_count"].tolist() == [4]


def test_another_config_builds_its_own_dataset_and_a_failed_warm_up_raises_nothing(monkeypatch):
    monkeypatch.setattr(slot_generator, "_MODULES", {})
    cfg = load_config(overrides=["data.num_train_samples=64"], environ={}, task="lm")
    load_task_dataset(config_key(cfg))
    (warmed,) = (module.train_dataset for module in slot_generator._MODULES.values())
    other = load_config(overrides=["data.num_train_samples=64", "data.seed=7"], environ={}, task="lm")
    assert _generator(other).dataset is not warmed
    assert load_task_dataset('{"task": "no_such_task"}') is False
