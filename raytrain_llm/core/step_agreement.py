"""What the ranks agree on after every optimizer step, in one collective.

After each step every rank must take the same turn: whether the run ends here (a callback's
`request_stop` on any rank), whether the end-of-run validation is skipped, which stop signal
any rank received and whether any rank has notice of its node's coming preemption
(core/interruption). One all_reduce (MAX) of four int32 carries all of it, once per step: with
gloo on CPU a collective costs about as much as a tiny model's step, so there is never a second.
"""
from __future__ import annotations

import dataclasses

import torch

from raytrain_llm.core import interruption


@dataclasses.dataclass(frozen=True)
class StepAgreement:
    """The same on every rank after `agree`."""

    stop: bool  # some rank asked to end the run after this step
    validate_at_stop: bool  # no rank asked to skip the end-of-run validation
    signum: int  # the stop signal some rank received (the highest number if several), 0 if none
    notice: bool  # some rank was told that its node will soon be taken away


def agree(dist, device, *, stop: bool, validate_at_stop: bool) -> StepAgreement:
    """Collective when a process group exists (every rank calls it after every step); else this
    process's own flags."""
    signum, notice = interruption.pending()
    flags = [int(stop), int(not validate_at_stop), signum, int(notice)]
    if dist.enabled:
        reduced = torch.tensor(flags, dtype=torch.int32, device=device or "cpu")
        torch.distributed.all_reduce(reduced, op=torch.distributed.ReduceOp.MAX)
        flags = [int(v) for v in reduced.tolist()]  # the one host sync
    interruption.record_agreed(flags[2])
    return StepAgreement(stop=bool(flags[0]), validate_at_stop=not flags[1], signum=flags[2], notice=bool(flags[3]))
