"""`CheckpointManager`: atomic checkpoint folders, latest/periodic/best-K retention, safe loading.

Each checkpoint is a folder `step-XXXXXXXX/` holding `state.pt` (model, optimizer,
scheduler, scaler, progress, RNG, callback state, config), `meta.json` and `config.yaml`; a
sharded one (`distributed.strategy=fsdp`, or `distributed.expert_parallel` > 1) keeps model
and optimizer in `sharded/` instead (`core/sharded/layout.py`).
A folder is written under a temporary name and renamed into place, so a kill during a save
never leaves a half-written checkpoint that looks complete; the folder format is also what
Ray's `Checkpoint.from_directory` takes as is.
"""
from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import time
from collections import Counter, OrderedDict
from typing import Any, Optional

import numpy as np
import torch

from raytrain_llm.core.atomic_io import atomic_write_json, atomic_write_text, fsync_dir
from raytrain_llm.core.errors import CheckpointError, UsageError
from raytrain_llm.core.sharded.layout import PATH_KEY, SHARDED_DIR, check_shards, is_sharded

STATE_FILE = "state.pt"
META_FILE = "meta.json"
_NAME = re.compile(r"^step-(\d{8,})$")
# What a save leaves behind if its process dies mid-way: the folder being written, and the
# previous copy of a step saved twice while the new one is swapped in (see `save`).
_TMP = re.compile(r"^\.tmp-(step-\d{8,})-(\d+)$")
_OLD = re.compile(r"^(step-\d{8,})\.old-(\d+)$")
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
REQUIRED_KEYS = ("model", "optimizer", "progress")


def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the `_orig_mod.` (torch.compile) and `module.` (DDP) prefixes so any run can load it."""
    out = {}
    for key, value in state.items():
        # Whole path components only: a submodule named e.g. `submodule` keeps its name.
        parts = [p for p in key.split(".") if p != "_orig_mod"]  # compile wrappers, at any depth
        while len(parts) > 1 and parts[0] == "module":  # DDP wraps the root only
            parts.pop(0)
        out[".".join(parts)] = value
    return out


_PLAIN = (type(None), bool, int, float, complex, str, bytes, torch.Size, torch.device, torch.dtype)
_MAPPINGS = (dict, OrderedDict, Counter)


def loadable_state(obj: Any, where: str) -> Any:
    """`obj` in the types a weights-only load accepts. Numpy values (what sklearn metrics and
    many user callbacks hold) become Python numbers and tensors; anything else is a UsageError
    naming where it sits. Without this the save succeeds and every later resume fails."""
    kind = type(obj)
    if kind in _PLAIN or isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, np.generic) and not isinstance(obj, (np.object_, np.void)):
        value = obj.item()  # a datetime64 gives a datetime: refused below, by name
        if isinstance(value, np.generic):  # longdouble: no Python type holds it exactly
            value = complex(value) if np.iscomplexobj(value) else float(value)
        return loadable_state(value, where)
    if isinstance(obj, np.ndarray) and obj.dtype.kind in "biufc":
        native = obj.astype(obj.dtype.newbyteorder("="))  # a copy, in this machine's byte order
        if native.dtype.kind in "fc" and native.dtype.itemsize > (16 if native.dtype.kind == "c" else 8):
            native = native.astype(np.complex128 if native.dtype.kind == "c" else np.float64)  # no long double in torch
        return torch.from_numpy(native)
    if kind in _MAPPINGS:
        return kind((loadable_state(k, f"{where} key {k!r}"), loadable_state(v, f"{where}[{k!r}]"))
                    for k, v in obj.items())
    if kind in (list, tuple, set):
        return kind(loadable_state(v, f"{where}[{i}]") for i, v in enumerate(obj))
    raise UsageError(f"checkpoint state {where} is a {kind.__module__}.{kind.__qualname__}, which a checkpoint cannot hold "
                     f"(it is loaded weights-only): keep state to numbers, strings, tensors, lists and dicts")


def _load_failure(exc: Exception) -> str:
    """One short line. torch's weights-only message leads with advice to retry with
    weights_only=False, which is wrong (and unsafe) for a garbled file: keep only the cause."""
    text = str(exc).strip()
    marker = "WeightsUnpickler error:"
    if marker in text:
        after = [line.strip() for line in text.split(marker, 1)[1].splitlines() if line.strip()]
        cause = after[0].split(". Please")[0].rstrip(".") if after else "unpickling failed"
        return f"not a valid weights-only checkpoint ({cause})"
    if isinstance(exc, KeyError):  # torch's legacy reader on a file that is not a checkpoint at all
        return f"not a torch checkpoint (KeyError {text})"
    first = text.splitlines()[0] if text else type(exc).__name__
    return first.split(". ")[0][:300]  # the first sentence: torch appends general advice


def read_meta(path: str) -> Optional[dict[str, Any]]:
    """A checkpoint folder's meta.json (step, epoch, metrics), or None if it cannot be read."""
    try:
        with open(os.path.join(path, META_FILE), encoding="utf-8") as fh:
            meta = json.load(fh)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and "step" in meta else None


def non_finite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    return [k for k, v in state.items()
            if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def non_finite_optimizer_state(optimizer_state: dict[str, Any]) -> list[str]:
    """`optimizer param <i> <name>` for each non-finite floating tensor of an optimizer's
    state_dict (Adam's moments, ...): a resumed run would turn them into NaN weights at once."""
    per_param = (optimizer_state or {}).get("state") or {}
    return [f"optimizer param {index} {name}" for index, values in per_param.items()
            for name in non_finite_tensors(values if isinstance(values, dict) else {})]


def _os_error(exc: BaseException) -> Optional[OSError]:
    """The OSError behind `exc`: torch.save raises its own RuntimeError ("unexpected pos") while
    the file's OSError (ENOSPC) propagates, leaving the OSError as its context."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


class CheckpointManager:
    def __init__(self, directory: str, *, keep_last: int = 2, keep_best: int = 1,
                 monitor: str = "val/loss", mode: str = "min", is_main: bool = True, logger=None):
        self.directory = os.path.abspath(directory)
        self.keep_last, self.keep_best = keep_last, keep_best
        self.monitor, self.mode = monitor, mode
        self.is_main = is_main
        self.logger = logger
        self.extra_files: dict[str, str] = {}  # name in each checkpoint folder -> source path (e.g. tokenizer.json)
        if is_main:
            os.makedirs(self.directory, exist_ok=True)
            self.clean_stale()

    def clean_stale(self) -> None:
        """What saves of dead processes left here: `.tmp-step-*` folders are removed; a
        `step-N.old-*` is removed when step-N exists, else (the process died between the two
        renames of a swap) renamed back to step-N. Folders of a live process here are left alone."""
        for name in sorted(os.listdir(self.directory)):
            path = os.path.join(self.directory, name)
            tmp, old = _TMP.match(name), _OLD.match(name)
            match = tmp or old
            if match is None or _pid_alive(int(match.group(2))):
                continue
            final = os.path.join(self.directory, match.group(1))
            if old and not os.path.exists(final):
                os.replace(path, final)
                what = f"restored {match.group(1)} from {name}"
            else:
                shutil.rmtree(path, ignore_errors=True)
                what = f"removed {name}"
            if self.logger:
                self.logger.warning(f"{what}, left in {self.directory} by a save that did not finish")

    # --- listing ---
    def checkpoints(self) -> list[dict[str, Any]]:
        """Complete checkpoints, oldest first, each as its meta.json plus its `path`."""
        found = []
        if not os.path.isdir(self.directory):
            return found
        for name in os.listdir(self.directory):
            if not _NAME.match(name):
                continue
            path = os.path.join(self.directory, name)
            meta = read_meta(path) or {"step": int(_NAME.match(name).group(1)), "metrics": {}}
            meta["path"] = path
            found.append(meta)
        return sorted(found, key=lambda m: m["step"])

    def refuse_earlier_run(self) -> None:
        """A fresh run must not share a folder with an earlier run's checkpoints: rotation would
        delete the new run's checkpoints in favour of the older run's higher steps."""
        if self.checkpoints():
            raise UsageError(
                f"checkpoint.dir {self.directory} already holds checkpoints of an earlier run: set "
                "checkpoint.resume=auto to continue it, or use another logging.dir/checkpoint.dir")

    def refuse_later_checkpoints(self, step: int) -> None:
        """A run resumed from an explicit step-`step` checkpoint must not share a folder with
        checkpoints past it: rotation would keep those and delete the new run's own."""
        later = [m for m in self.checkpoints() if m["step"] > step]
        if later:
            raise UsageError(
                f"checkpoint.dir {self.directory} holds checkpoints past the resume point (step {step}), up to "
                f"{os.path.basename(later[-1]['path'])}: resume the newest with checkpoint.resume=auto, "
                "or write this run to another logging.dir/checkpoint.dir")

    def latest_path(self) -> Optional[str]:
        ckpts = self.checkpoints()
        return ckpts[-1]["path"] if ckpts else None

    def best_path(self) -> Optional[str]:
        ranked = self._ranked()
        return ranked[0]["path"] if ranked else None

    def _score(self, meta: dict[str, Any]) -> Optional[float]:
        value = meta.get("metrics", {}).get(self.monitor)
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None

    def _ranked(self, ckpts: Optional[list[dict[str, Any]]] = None) -> list[dict[str, Any]]:
        scored = [(score, m) for m in (self.checkpoints() if ckpts is None else ckpts)
                  if (score := self._score(m)) is not None]
        scored.sort(key=lambda sm: sm[0], reverse=self.mode == "max")
        return [m for _, m in scored]

    # --- saving ---
    def make_temp(self, step: int) -> str:
        """The empty temporary folder of step `step`'s checkpoint, for parts that all ranks write
        into it before `save(..., prepared=it)` (main rank only)."""
        tmp = self._temp_name(step)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        return tmp

    def _temp_name(self, step: int) -> str:
        return os.path.join(self.directory, f".tmp-step-{step:08d}-{os.getpid()}")

    def save(self, state: dict[str, Any], *, step: int, epoch: int, metrics: dict[str, float],
             config_yaml: str = "", prepared: Optional[str] = None) -> Optional[str]:
        """Write a checkpoint (main rank only) and rotate; returns its folder. `prepared`: the
        `make_temp` folder already holding the checkpoint's sharded part (`state` has no model)."""
        if not self.is_main:
            return None
        if state["model"] is not None:
            bad = non_finite_tensors(state["model"]) + non_finite_optimizer_state(state.get("optimizer"))
            if bad:
                raise CheckpointError(f"refusing to save step {step}: non-finite values in {', '.join(bad[:3])}")
        name = f"step-{step:08d}"
        final = os.path.join(self.directory, name)
        tmp = prepared or self._temp_name(step)
        try:
            if not prepared:
                self.make_temp(step)
            self._write(tmp, state, step, epoch, metrics, config_yaml)
        except BaseException as exc:
            # A partial checkpoint would keep the disk full and count against the quota; the
            # checkpoints saved before are untouched (nothing was renamed yet).
            shutil.rmtree(tmp, ignore_errors=True)
            os_error = _os_error(exc)
            if os_error is not None:
                cause = "no space left on device" if os_error.errno in _NO_SPACE else (os_error.strerror or str(os_error))
                raise CheckpointError(f"cannot save checkpoint {final}: {cause} (the partial checkpoint was "
                                      f"removed; earlier checkpoints in {self.directory} are intact)") from None
            raise
        if os.path.exists(final):
            # Same step saved twice (e.g. epoch end and every-N coincide): swap in the newer.
            old = final + f".old-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(self.directory)
        self._rotate()
        return final

    def _write(self, tmp: str, state: dict[str, Any], step: int, epoch: int, metrics: dict[str, float],
               config_yaml: str) -> None:
        # Through a Python file: a full disk is then an OSError(ENOSPC), where torch.save(path)
        # reports "[enforce fail at inline_container.cc] unexpected pos".
        with open(os.path.join(tmp, STATE_FILE), "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        clean_metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        atomic_write_json(os.path.join(tmp, META_FILE), {"step": step, "epoch": epoch, "metrics": clean_metrics})
        if config_yaml:
            atomic_write_text(os.path.join(tmp, "config.yaml"), config_yaml)
        for extra_name, src in self.extra_files.items():
            shutil.copyfile(src, os.path.join(tmp, extra_name))

    def _rotate(self) -> None:
        ckpts = self.checkpoints()
        keep = {m["path"] for m in ckpts[-self.keep_last:]} if self.keep_last else {m["path"] for m in ckpts}
        keep |= {m["path"] for m in self._ranked(ckpts)[: self.keep_best]}
        for meta in ckpts:
            if meta["path"] not in keep:
                shutil.rmtree(meta["path"], ignore_errors=True)

    # --- loading ---
    @staticmethod
    def load(path: str, map_location: Any = "cpu") -> dict[str, Any]:
        """Load and sanity-check one checkpoint; `CheckpointError` names what is wrong."""
        file = os.path.join(path, STATE_FILE) if os.path.isdir(path) else path
        if not os.path.exists(file):
            inner = CheckpointManager(os.path.join(path, "checkpoints"), is_main=False).latest_path() \
                if os.path.isdir(path) else None
            hint = f" (a run folder: its newest checkpoint is {inner})" if inner else ""
            raise CheckpointError(f"checkpoint not found: {file}{hint}")
        try:
            state = torch.load(file, map_location=map_location, weights_only=True)
        except Exception as exc:  # torch raises many types for truncated or garbled files
            raise CheckpointError(f"checkpoint {file} is corrupt or unreadable: {_load_failure(exc)}") from None
        if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
            raise CheckpointError(f"checkpoint {file} is missing model/optimizer/progress state")
        if is_sharded(state):
            shards = os.path.join(os.path.dirname(file), SHARDED_DIR)
            check_shards(shards)
            state[PATH_KEY] = shards
        return state

    def load_latest_valid(self, map_location: Any = "cpu") -> tuple[Optional[str], Optional[dict[str, Any]]]:
        """Newest checkpoint that loads; corrupt ones are reported and skipped, never deleted.
        Those newer than the one that loads are moved aside (`unloadable-step-…`): left in place,
        they would count as the latest (and maybe the best) and rotation would delete good
        checkpoints in their favour. (None, None) when there are none; a UsageError when there
        are some but none loads: starting afresh would overwrite them, and files that a torch
        upgrade or a storage hiccup made unreadable are not necessarily lost."""
        found = list(reversed(self.checkpoints()))
        for i, meta in enumerate(found):
            try:
                state = self.load(meta["path"], map_location)
            except CheckpointError as exc:
                if self.logger:
                    older = "falling back to an older checkpoint" if i + 1 < len(found) else "no older checkpoint"
                    self.logger.warning(f"{exc}; {older}")
                continue
            for skipped in found[:i]:
                self._move_aside(skipped["path"])
            return meta["path"], state
        if found:
            raise UsageError(f"checkpoint.resume=auto: none of the {len(found)} checkpoints in {self.directory} "
                             f"can be loaded (see the warnings above); move them aside to start afresh")
        return None, None

    def _move_aside(self, path: str) -> None:
        """Rank 0 renames an unloadable checkpoint out of the step-… namespace (other ranks find it
        gone or unloadable alike, and fall back to the same older one)."""
        if not self.is_main:
            return
        aside = os.path.join(self.directory, f"unloadable-{os.path.basename(path)}")
        if os.path.exists(aside):
            aside += f"-{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            os.replace(path, aside)
        except OSError:
            return  # already gone: nothing is listed there any more
        if self.logger:
            self.logger.warning(f"moved the unloadable {os.path.basename(path)} aside to {aside}: it is kept, but "
                                "is no longer the latest, the best or counted by rotation")
