"""Export folders, written under a temporary name and renamed into place (a failed export leaves
nothing at --out):
  hf           config.json, model.safetensors, generation_config.json, and the tokenizer
               (tokenizer.json + tokenizer_config.json, a PreTrainedTokenizerFast) when the
               model has one: AutoModelForCausalLM/AutoTokenizer.from_pretrained load it.
  safetensors  model.safetensors of our own state dict (names as GPT.state_dict()) with the
               run's config.yaml beside it, and tokenizer.json when the model has one.
"""
from __future__ import annotations

import os
import shutil
from typing import Callable

import torch

from raytrain_llm.core.atomic_io import atomic_write_json
from raytrain_llm.core.errors import UsageError
from raytrain_llm.data.text_codec import TOKENIZER_FILE, ByteCodec, TokenizerCodec
from raytrain_llm.inference.checkpoint_source import TrainedModel
from raytrain_llm.inference.hf_export import architecture, hf_config, weights
from raytrain_llm.inference.weights_file import make_parent_folder

FORMATS = ("hf", "safetensors")


def export(trained: TrainedModel, codec, out: str, fmt: str) -> str:
    """Writes the folder `out` (which must not exist, or be empty); returns the HF architecture
    or 'safetensors'."""
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)} (got {fmt!r})")
    state = {k: v.detach().cpu().contiguous() for k, v in trained.model.state_dict().items()}
    if fmt == "safetensors":
        _write_folder(out, lambda tmp: _write_own(trained, codec, state, tmp))
        return "safetensors"
    arch = architecture.choose(trained.config.model, state)  # refuses before anything is written
    _write_folder(out, lambda tmp: _write_hf(trained, codec, state, arch, tmp))
    return arch


def _write_folder(out: str, write: Callable[[str], None]) -> None:
    out = os.path.abspath(out)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise UsageError(f"--out {out} already exists and is not an empty folder: choose a new folder")
    parent = make_parent_folder(out)
    tmp = os.path.join(parent, f".tmp-{os.path.basename(out)}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        write(tmp)
        if os.path.isdir(out):
            os.rmdir(out)  # empty, checked above
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _save_safetensors(tensors: dict[str, torch.Tensor], path: str) -> None:
    from safetensors.torch import save_file

    # Tied weights share storage, which safetensors refuses: each tensor gets its own copy.
    save_file({k: v.clone().contiguous() for k, v in tensors.items()}, path, metadata={"format": "pt"})


def _write_own(trained: TrainedModel, codec, state: dict, tmp: str) -> None:
    from raytrain_llm.core.config_loader import dump_yaml

    _save_safetensors(state, os.path.join(tmp, "model.safetensors"))
    with open(os.path.join(tmp, "config.yaml"), "w", encoding="utf-8") as fh:
        fh.write(dump_yaml(trained.config))
    if isinstance(codec, TokenizerCodec):
        shutil.copy(codec.path, os.path.join(tmp, TOKENIZER_FILE))


def _write_hf(trained: TrainedModel, codec, state: dict, arch: str, tmp: str) -> None:
    transformers = _transformers()
    cfg = trained.config.model
    mapped = weights.gpt2(cfg, state) if arch == architecture.GPT2 else weights.llama_family(cfg, state, arch)
    _save_safetensors(mapped, os.path.join(tmp, "model.safetensors"))
    config = hf_config.hf_config(cfg, arch, codec.eod_id)
    config.architectures = [_CLASSES[arch]]
    config.dtype = "float32"
    config.save_pretrained(tmp)
    generation = transformers.GenerationConfig(bos_token_id=codec.eod_id, eos_token_id=codec.eod_id,
                                               pad_token_id=codec.eod_id, max_length=cfg.seq_len)
    generation.save_pretrained(tmp)
    if isinstance(codec, TokenizerCodec):
        shutil.copy(codec.path, os.path.join(tmp, TOKENIZER_FILE))
        eod = codec.tokenizer.id_to_token(codec.eod_id) if codec.eod_id is not None else None
        _write_tokenizer_config(eod, cfg.seq_len, tmp)
    elif isinstance(codec, ByteCodec):  # bytes as a tokenizers BPE with no merges: id = byte value
        codec.as_tokenizer().save(os.path.join(tmp, TOKENIZER_FILE))
        _write_tokenizer_config(None, cfg.seq_len, tmp)


def _write_tokenizer_config(eod, max_length: int, tmp: str) -> None:
    """A tokenizer_config.json naming PreTrainedTokenizerFast, the class every transformers
    version (and vLLM) loads a bare tokenizer.json with."""
    special = {name: eod for name in ("bos_token", "eos_token", "pad_token")} if eod is not None else {}
    atomic_write_json(os.path.join(tmp, "tokenizer_config.json"),
                      {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_length,
                       "clean_up_tokenization_spaces": False, **special})


_CLASSES = {architecture.GPT2: "GPT2LMHeadModel", architecture.LLAMA: "LlamaForCausalLM",
            architecture.MIXTRAL: "MixtralForCausalLM", architecture.QWEN2_MOE: "Qwen2MoeForCausalLM"}


def _transformers():
    try:
        import transformers
    except ImportError:
        raise UsageError("--format hf needs the transformers package: pip install 'raytrain_llm[export]'") from None
    return transformers
