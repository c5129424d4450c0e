"""One-shot CUDA check: grouped dispatch vs loop (bf16), and a fullgraph-compiled MoE GPT step."""
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from raytrain_llm.core.config import ModelConfig  # noqa: E402
from raytrain_llm.models import GPT  # noqa: E402
from raytrain_llm.models.moe import MoE  # noqa: E402

dev = torch.device("cuda")
print(torch.__version__, torch.cuda.get_device_name())
for mlp in ("gelu", "swiglu"):
    for E, k in [(8, 2), (4, 4)]:
        torch.manual_seed(0)
        ref = MoE(256, 512, E, k, mlp_type=mlp, impl="loop").to(dev)
        torch.nn.init.normal_(ref.router.weight, std=0.5)
        fast = MoE(256, 512, E, k, mlp_type=mlp, impl="auto").to(dev)
        fast.load_state_dict(ref.state_dict())
        x, r = torch.randn(2048, 256, device=dev), torch.randn(2048, 256, device=dev)
        res = []
        for m in (ref, fast):
            xi = x.clone().requires_grad_()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                y, s = m(xi)
            ((y.float() * r).sum() + s["aux_loss"]).backward()
            res.append((y.float(), xi.grad, m.w_in.grad.float(), m.router.weight.grad))
        err = [((a - b).norm() / b.norm()).item() for a, b in zip(res[1], res[0])]
        print(mlp, E, k, "backend", fast.backend(x.bfloat16()), "rel err y,gx,gw,grouter", [f"{e:.1e}" for e in err])
if len(sys.argv) > 1:
    sys.exit()
cfg = ModelConfig(vocab_size=512, d_model=256, n_layers=2, n_heads=4, seq_len=128, use_moe=True, num_experts=8,
                  top_k=2, capacity_factor=0.0, activation_checkpointing=True)
model = GPT(cfg).to(dev)
ids = torch.randint(0, 512, (8, 128), device=dev)
for name, m in (("eager", model), ("compiled", torch.compile(model, fullgraph=True))):
    t = time.time()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        _, aux = m(ids, targets=ids)
    (aux["ce_loss"] + 0.01 * aux["aux_loss"]).backward()
    print(name, "loss", aux["ce_loss"].item(), "aux", aux["aux_loss"].item(), f"{time.time() - t:.1f}s")
