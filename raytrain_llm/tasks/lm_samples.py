"""`SampleWriter`: at each validation, rank 0 continues a few fixed prompts with the model being
trained and writes the text to the run's log and to TensorBoard (run `samples`, Text tab), so a
run's progress can be read as well as plotted. The lm task adds it when
`task_options.sample_prompts` is set.

It uses no global random state (its own seeded generator; the model is in eval mode), so a run
with samples trains exactly as one without, and no collective runs (rank 0 alone generates).
"""
from __future__ import annotations

import os

import torch

from raytrain_llm.core.callbacks.base import Callback
from raytrain_llm.core.errors import UsageError, raised_on_every_rank
from raytrain_llm.data.text_codec import codec_for
from raytrain_llm.models.generation import SamplingConfig, generate


class SampleWriter(Callback):
    def __init__(self, prompts: list[str], max_new_tokens: int = 32, temperature: float = 0.0, seed: int = 0,
                 tokenizer_dir: str = ""):
        # tokenizer_dir: the prepared data's folder, readable by every rank from the start (the
        # run folder's copy is rank 0's, made in its own on_train_start).
        self.prompts, self.seed, self.tokenizer_dir = list(prompts), seed, tokenizer_dir
        self.sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature)
        self.codec = None
        self.ids: list[list[int]] = []
        self.events = None

    def on_train_start(self, engine) -> None:
        # Every rank encodes, so a prompt the tokenizer cannot take stops all ranks alike, before step 1.
        config = engine.config
        self.codec = codec_for(config, self.tokenizer_dir, config.logging.dir)
        self.sampling.eod_id = self.codec.eod_id
        try:
            self.ids = [self.codec.encode(p) or ([self.codec.eod_id] if self.codec.eod_id is not None else [])
                        for p in self.prompts]
        except UsageError as exc:
            raise raised_on_every_rank(UsageError(f"task_options.sample_prompts: {exc}")) from None
        bad = [p for p, ids in zip(self.prompts, self.ids) if not ids or len(ids) >= config.model.seq_len
               or max(ids) >= config.model.vocab_size]
        if bad:
            raise raised_on_every_rank(UsageError(
                f"task_options.sample_prompts: {bad[0]!r} gives no tokens, too many for model.seq_len "
                f"({config.model.seq_len}), or ids outside model.vocab_size"))

    @torch.no_grad()
    def on_validation_end(self, engine, metrics: dict[str, float]) -> None:
        if not engine.dist.is_main or not self.ids:
            return
        from raytrain_llm.models.wrappers import unwrap

        model = unwrap(engine.raw_model)
        device = model.tok_emb.weight.device
        was_training = model.training
        model.eval()
        try:
            outputs = generate(model, self.ids, self.sampling, torch.Generator(device=device).manual_seed(self.seed))
        finally:
            model.train(was_training)
        texts = [self.codec.decode(p + new) for p, new in zip(self.ids, outputs)]
        for i, text in enumerate(texts):
            engine.logger.info(f"sample {i} at step {engine.global_step}: {text!r}")
        self._to_tensorboard(engine, texts)

    def _to_tensorboard(self, engine, texts: list[str]) -> None:
        if not engine.config.logging.tensorboard:
            return
        try:
            from tensorboardX.summary import text as text_summary

            from raytrain_llm.core.callbacks.tensorboard_logger import EventFile
        except ImportError:
            return
        if self.events is None:
            self.events = EventFile(os.path.join(engine.config.logging.dir, "tensorboard", "samples"))
        for i, text in enumerate(texts):
            self.events.add(text_summary(f"samples/prompt_{i}", text), engine.global_step)
        self.events.flush()

    def on_train_end(self, engine) -> None:
        self._close()

    def on_exception(self, engine, exc: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        if self.events is not None:
            self.events.close()
            self.events = None
