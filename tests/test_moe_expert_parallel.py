"""Expert parallelism on 2 gloo processes: the MoE layer with its experts split over 2 ranks
computes what the whole layer computes (outputs, input and weight gradients, router statistics),
whatever the routing: dropless, on each rank's tokens; with a capacity limit, on one batch of both
ranks' tokens (rank 0's first), as the capacity is the group's. Each rank holds half of the expert
bytes."""
from __future__ import annotations

import copy
import gc
import itertools
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from raytrain_llm.models.moe import MoE
from raytrain_llm.models.moe_expert_parallel import shard_experts

# experts, top-k, shared experts, skewed routing, capacity factor
DROPLESS = [(*case, 0.0) for case in itertools.product((4, 8), (1, 2), (0, 1), (False, True))]
CAPACITY = [(4, 2, 0, False, 1.0), (8, 1, 1, True, 1.25), (4, 1, 0, False, 1.0), (8, 2, 1, True, 1.5),
            (4, 2, 1, True, 0.5)]


def make_layer(E: int, k: int, shared: int, skewed: bool, capacity: float, d: int = 16, h: int = 24) -> MoE:
    torch.manual_seed(0)
    moe = MoE(d, h, E, k, num_shared_experts=shared, capacity_factor=capacity)
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0, 0.3)
        if skewed:  # a token goes to the experts of its largest coordinates: only 0..k here
            moe.router.weight.copy_(10.0 * torch.eye(d)[:E])
    return moe


def tokens(rank: int, skewed: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + rank)
    x = torch.randn(2, 9 + rank, 16, generator=g)  # unequal token counts per rank
    if skewed:
        x[..., :2] += 8.0  # experts 0 and 1 win: rank 1 of a 4-expert layer gets no row at all
    return x


def output_weights(x: torch.Tensor) -> torch.Tensor:
    return torch.linspace(-1, 1, x.numel()).view_as(x)


def loss_of(moe: MoE, x: torch.Tensor, router_losses: bool = True,
            r: torch.Tensor = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(y * r).sum() (r: output_weights unless given) + the balance losses: y, x's gradient, stats."""
    x = x.clone().requires_grad_()
    y, stats = moe(x)
    loss = (y * (output_weights(y) if r is None else r)).sum()
    if router_losses:
        loss = loss + stats["aux_loss"] + stats["z_loss"]
    loss.backward()
    return y.detach(), x.grad, stats


def compare(name: str, pairs: list, problems: list[str]) -> None:
    for what, a, b in pairs:
        try:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        except AssertionError as exc:
            problems.append(f"{name} {what}: {str(exc).splitlines()[0]}")


def split_layer(full: MoE, name: str, problems: list[str]) -> MoE:
    ep = copy.deepcopy(full)
    bytes_before = sum(p.numel() * p.element_size() for p in (ep.w_in, ep.w_out))
    sharded = shard_experts(ep, dist.group.WORLD)
    if 2 * sum(p.numel() * p.element_size() for p in sharded) != bytes_before:
        problems.append(f"{name}: expert bytes not halved")
    return ep


def expert_grads_of(full: MoE, ep: MoE, rank: int) -> list:
    """(name, ep's gradient, the whole layer's): the experts' for this rank's half."""
    half = slice(rank * full.num_experts // 2, (rank + 1) * full.num_experts // 2)
    grads = dict(full.named_parameters())
    return [(f"{n}.grad", p.grad, grads[n].grad[half] if n in ("w_in", "w_out") else grads[n].grad)
            for n, p in ep.named_parameters()]


def dropless_case(rank: int, case: tuple, problems: list[str]) -> None:
    """Reference: the whole layer on this rank's tokens; its expert gradients summed over the ranks
    (the all-to-all brings every rank's tokens to an expert's owner)."""
    E, k, shared, skewed, capacity = case
    name = f"E={E} k={k} shared={shared} skewed={skewed} capacity={capacity}"
    full = make_layer(*case)
    ep = split_layer(full, name, problems)
    x = tokens(rank, skewed)
    y, gx, stats = loss_of(ep, x)
    y0, gx0, stats0 = loss_of(full, x)
    for p in (full.w_in, full.w_out):
        dist.all_reduce(p.grad)
    if skewed and E == 4 and int(stats0["counts"][2:].sum()) != 0:
        problems.append(f"{name}: the skewed routing reached rank 1's experts")
    compare(name, [("y", y, y0), ("x.grad", gx, gx0)] + expert_grads_of(full, ep, rank) +
            [(f"stats.{s}", stats[s], stats0[s]) for s in ("aux_loss", "z_loss", "load", "counts", "dropped_frac")],
            problems)


def capacity_case(rank: int, case: tuple, problems: list[str]) -> None:
    """Reference: the whole layer on both ranks' tokens in one batch (rank 0's first); this rank's
    rows of its output and input gradient, its replicated weights' gradients summed over the
    ranks. The loss leaves out the balance losses (computed before any drop, so the same
    whatever the capacity; per-rank means, which the one batch would take over all tokens)."""
    E, k, shared, skewed, capacity = case
    name = f"E={E} k={k} shared={shared} skewed={skewed} capacity={capacity}"
    full = make_layer(*case)
    own = copy.deepcopy(full)  # the rule on this rank's tokens alone, which must differ
    ep = split_layer(full, name, problems)
    xs = [tokens(r, skewed).flatten(0, 1) for r in (0, 1)]  # [N_r, d]
    x = xs[rank]
    y, gx, stats = loss_of(ep, x, router_losses=False)
    both = torch.cat(xs)
    y0, gx0, stats0 = loss_of(full, both, router_losses=False, r=torch.cat([output_weights(t) for t in xs]))
    mine = slice(0, len(xs[0])) if rank == 0 else slice(len(xs[0]), len(both))
    for p in ep.parameters():
        if p is not ep.w_in and p is not ep.w_out:
            dist.all_reduce(p.grad)
    # This rank's statistics are its tokens': summed over the ranks (dropped fraction weighted
    # by token count) they are the one batch's.
    counts = stats["counts"].clone()
    dist.all_reduce(counts)
    dropped = stats["dropped_frac"] * len(x) / len(both)
    dist.all_reduce(dropped)
    if float(stats0["dropped_frac"]) == 0:
        problems.append(f"{name}: nothing was dropped")
    if torch.allclose(own(x)[0], y, rtol=0, atol=1e-4):
        problems.append(f"{name}: the capacity of this rank's tokens alone gives the same output")
    compare(name, [("y", y, y0[mine]), ("x.grad", gx, gx0[mine]), ("stats.counts", counts, stats0["counts"]),
                   ("stats.dropped_frac", dropped, stats0["dropped_frac"])] + expert_grads_of(full, ep, rank),
            problems)


def worker(rank: int, store: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    problems = []
    for case in DROPLESS:
        dropless_case(rank, case, problems)
    for case in CAPACITY:
        capacity_case(rank, case, problems)
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as fh:
        fh.write("\n".join(problems))
    gc.collect()  # models in cycles still hold the group (see DistributedManager.cleanup)
    dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_moe_layer_split_over_two_ranks_equals_the_whole_layer(tmp_path):
    mp.spawn(worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    problems = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert problems == ["", ""], "\n".join(problems)


@pytest.mark.parametrize("sets,problem", [
    (["model.use_moe=false"], "distributed.expert_parallel: 2 needs an MoE model (model.use_moe=true)"),
    (["distributed.launcher=local"], "distributed.expert_parallel: 2 needs 2 or more worker processes; "
                                     "distributed.launcher=local runs one (use spawn or ray)"),
    (["distributed.num_workers=3", "model.num_experts=6"],
     "distributed.expert_parallel: must divide distributed.num_workers (3) (got 2)"),
    (["model.num_experts=3"], "distributed.expert_parallel: must divide model.num_experts (3) (got 2)"),
    (["distributed.strategy=fsdp", "distributed.fsdp_cpu_offload=true", "training.device=cuda"],
     "distributed.fsdp_cpu_offload: not supported with distributed.expert_parallel=2 (FSDP leaves the sharded "
     "experts alone)"),
])
def test_expert_parallel_config_errors_name_the_keys(sets, problem):
    from raytrain_llm.core.config_loader import load_config
    from raytrain_llm.core.errors import ConfigError

    base = ["distributed.launcher=spawn", "distributed.num_workers=2", "model.use_moe=true", "model.num_experts=4",
            "distributed.expert_parallel=2"]
    load_config(None, base, environ={}, task="lm")  # valid as it stands
    load_config(None, base + ["distributed.strategy=fsdp"], environ={}, task="lm")  # the rest of the model sharded
    with pytest.raises(ConfigError) as err:
        load_config(None, base + sets, environ={}, task="lm")
    assert err.value.problems == [f"{problem} (from --set)"]


def test_expert_parallel_needs_as_many_validation_batches_on_every_rank(tmp_path):
    from raytrain_llm.core.errors import UsageError
    from raytrain_llm.core.parallel.expert_parallel import check_validation_batches
    from raytrain_llm.tasks.lm_task import LanguageModelingTask
    from rt_testing import make_config

    def check(samples: int, limit: int = 0) -> None:
        cfg = make_config(tmp_path, "lm", **{"data.num_val_samples": samples, "training.batch_size": 8,
                                             "training.limit_val_batches": limit, "model.vocab_size": 16})
        check_validation_batches(cfg, LanguageModelingTask(cfg).build_data_module(), world=2)

    check(32)  # 2 batches each
    check(44)  # 3 each, the last ones short
    with pytest.raises(UsageError, match=r"40 validation samples at training.batch_size=8 give 2 to some and 3"):
        check(40)  # rank 1 gets no third batch
    check(40, limit=2)


def test_a_sweep_point_with_an_expert_parallel_size_that_does_not_fit_is_refused_alone():
    from raytrain_llm.core.config_loader import load_config
    from raytrain_llm.launchers.tune.search_space import point_errors

    base = load_config(None, ["distributed.num_workers=2", "model.use_moe=true", "model.num_experts=4"],
                       environ={}, task="lm")
    assert point_errors(base, {"distributed.expert_parallel": 2}) == []
    assert point_errors(base, {"distributed.expert_parallel": 2, "model.num_experts": 5}) == [
        "distributed.expert_parallel: must divide model.num_experts (5) (got 2)"]
    assert point_errors(base, {"distributed.expert_parallel": 4}) == [
        "distributed.expert_parallel: must divide distributed.num_workers (2) (got 4)"]
