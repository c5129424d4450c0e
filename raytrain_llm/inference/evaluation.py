"""Loss and perplexity of a trained model on held-out data, computed as the run's validation
computes them: the task's validation_step over the data module's validation batches, each batch
weighted by its samples, then the task's finalize_validation (perplexity = exp(mean loss)).

Data: the run's own validation split, a token file (.bin as data.token_dtype, .npy), a prepared
directory (read by the token-file data module like data.val_tokens), or a text file, tokenized
with the model's codec into a temporary .npy.
"""
from __future__ import annotations

import os
import tempfile
from typing import Optional

import numpy as np
import torch

from raytrain_llm.core.errors import UsageError
from raytrain_llm.core.precision import Precision, to_device
from raytrain_llm.core.task import as_step_output, samples_in_batch
from raytrain_llm.data.text_codec import TokenIdCodec, codec_for
from raytrain_llm.inference.checkpoint_source import TrainedModel

TOKEN_SUFFIXES = (".bin", ".npy")


def evaluate(trained: TrainedModel, data: Optional[str], batch_size: Optional[int] = None,
             limit_batches: int = 0) -> dict[str, float]:
    """The validation metrics (val/loss, val/perplexity, ...) plus `tokens` evaluated."""
    config = trained.config
    if data is None:
        return _validate(trained, batch_size, limit_batches)
    if not os.path.exists(data):
        raise UsageError(f"--data: {data} does not exist")
    if os.path.isdir(data) or data.endswith(TOKEN_SUFFIXES):
        _point_at(config, data)
        return _validate(trained, batch_size, limit_batches)
    with tempfile.TemporaryDirectory(prefix="raytrain-eval-") as tmp:
        path = os.path.join(tmp, "tokens.npy")
        np.save(path, _tokenize_text(trained, data))
        _point_at(config, path)
        return _validate(trained, batch_size, limit_batches)


def _point_at(config, path: str) -> None:
    # The token-file data module reads data.val_tokens; train_tokens only selects that module.
    config.data.val_tokens = config.data.train_tokens = path
    config.data.num_workers = 0


def _tokenize_text(trained: TrainedModel, path: str) -> np.ndarray:
    codec = codec_for(trained.config, trained.checkpoint_dir, trained.run_dir)
    if isinstance(codec, TokenIdCodec):
        raise UsageError(f"--data {path}: this model has no tokenizer and was not trained on bytes, so text cannot "
                         "be evaluated; give a token file (.bin or .npy)")
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--data: cannot read {path} as UTF-8 text: {getattr(exc, 'strerror', None) or exc}") from None
    ids = np.asarray(codec.encode(text), dtype=np.int64)
    if ids.size and ids.max() >= trained.config.model.vocab_size:
        raise UsageError(f"--data {path}: the tokenizer gave id {ids.max()}, outside model.vocab_size "
                         f"({trained.config.model.vocab_size}): the tokenizer is not the model's")
    return ids


@torch.no_grad()
def _validate(trained: TrainedModel, batch_size: Optional[int], limit_batches: int) -> dict[str, float]:
    """engine.ValidationMixin._run_validation_epoch on one process."""
    config, task, model = trained.config, trained.task, trained.model
    device = model.tok_emb.weight.device
    data_module = task.build_data_module()
    data_module.check_data()
    precision, criterion = Precision(config.optimization.amp, device), task.build_criterion()
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    tokens = 0
    batches = data_module.val_batches(batch_size=batch_size or config.training.batch_size, rank=0, world_size=1)
    for i, batch in enumerate(batches):
        if limit_batches and i >= limit_batches:
            break
        batch = to_device(batch, device)
        with precision.autocast():
            out = as_step_output(task.validation_step(model, batch, criterion), "validation_step")
        n = out.num_samples or samples_in_batch(batch)
        tokens += int(out.num_tokens or 0)
        for k, v in {"loss": out.loss, **out.metrics}.items():
            sums[k] = sums.get(k, 0.0) + torch.as_tensor(v, device=device).detach().float() * n
            counts[k] = counts.get(k, 0) + n
    if not counts:
        raise UsageError("the evaluation data holds no sample of model.seq_len + 1 tokens")
    metrics = task.finalize_validation({f"val/{k}": float(sums[k] / counts[k]) for k in sums})
    return {**metrics, "tokens": tokens}
