"""The expert group's count exchange, outside compiled graphs.

Its own module, imported only with expert parallelism: `torch.compiler.disable` imports dynamo
(and DTensor with it, ~1 s), which a process importing the model without expert parallelism
should not pay.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


@torch.compiler.disable  # a collective: outside any compiled graph
def gather_counts(counts: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """counts [...] on each rank of `group` -> [P, ...], row p holding group rank p's."""
    out = [torch.empty_like(counts) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, counts.contiguous(), group=group)
    return torch.stack(out)
