"""Command line: `python train.py --task NAME [--config F.yaml] [--set k=v ...] [--print-config]`.

Exit status: 0 success, 2 usage or config error, 1 failure during training. User mistakes
print one line; unexpected errors print one line too and leave the traceback in
`<logging.dir>/error.log` (or on stderr with RAYTRAIN_DEBUG=1).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from typing import Optional, Sequence

from raytrain_llm.core.command_exit import INTERRUPTED_EXIT, debug_enabled, unexpected_line
from raytrain_llm.core.errors import RaytrainError, UsageError, clip


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, like every other usage error
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="train.py", description="Train a model with raytrain_llm.")
    p.add_argument("--task", help="registered task (regression, lm) or package.module:ClassName")
    p.add_argument("--config", help="YAML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override one config value (repeatable)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("--tune", metavar="SWEEP.yaml", help="run a Ray Tune sweep described by this file")
    return p


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """argparse's, with a hint for `--set key value` (a space for the '='): the value is left over."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = build_parser().parse_known_args(argv)
    if extra:
        hint = next((f" (did you mean --set {key}={value}?)" for flag, key, value in zip(argv, argv[1:], argv[2:])
                     if flag == "--set" and "=" not in key and value == extra[0]), "")
        raise UsageError(clip(f"unrecognized arguments: {' '.join(extra)}{hint}"))
    return args


def launch(config):
    from raytrain_llm.core.output_dirs import check_output_dirs

    check_output_dirs(config)  # before any worker or Ray starts
    launcher = config.distributed.launcher
    if launcher == "local":
        from raytrain_llm.launchers.local.in_process import run_in_process

        return run_in_process(config)
    if launcher == "spawn":
        from raytrain_llm.launchers.local.spawn import run_spawn

        return run_spawn(config)
    from raytrain_llm.launchers.ray_train.trainer import run_ray

    return run_ray(config)


def _print_result(result) -> None:
    if not isinstance(result, dict):
        return
    short = {k: result.get(k) for k in ("step", "val", "best_checkpoint") if result.get(k) is not None}
    print("result: " + json.dumps(short, default=str))


def main(argv: Optional[Sequence[str]] = None) -> int:
    config = None
    try:
        args = _parse_args(argv)
        from raytrain_llm.core.config_loader import dump_yaml, load_config_and_keys

        config, cli_keys = load_config_and_keys(args.config, args.overrides, task=args.task)
        if args.tune:  # what the trials start from: the sweep's base_config under the command line
            from raytrain_llm.launchers.tune.sweep_spec import load_sweep, merge_base

            config = merge_base(config, load_sweep(args.tune).base_config, cli_keys)
        # Imported after the config is checked: it pulls in torch, and a config typo should
        # be reported in a blink, not after seconds of imports.
        from raytrain_llm.launchers.task_resolution import resolve_task

        task_cls = resolve_task(config.task)  # an unknown task is a usage error before anything starts
        from raytrain_llm.core.task_options import options_dict, parse_task_options

        # Checked here too (a typo is an error before Ray starts), and written out in full and
        # typed, so config.yaml records every option the run used.
        config.task_options = options_dict(parse_task_options(task_cls.Options, config.task_options, config.task))
        from raytrain_llm.core.step_checks import check_monitor_settings
        from raytrain_llm.core.task import declared_validation_metrics

        # A misspelt val/ monitor is caught now, not at the first validation minutes later (a
        # sweep's trials differ: its plan checks each one).
        if not args.tune:
            check_monitor_settings(config, declared_validation_metrics(task_cls, config), config.task)
        if args.print_config:
            sys.stdout.write(dump_yaml(config))
            return 0
        if args.tune:
            from raytrain_llm.launchers.tune.runner import run_sweep

            run_sweep(config, args.tune, cli_keys)
            return 0
        from raytrain_llm.core import interruption

        result = launch(config)
        from raytrain_llm.launchers.run_report import interrupted_line, print_end_of_run

        print_end_of_run(config, result)  # the same block whichever launcher ran
        _print_result(result)
        # Stopped by SIGTERM / Ctrl-C after saving: the shell's status for it. What the ranks agreed
        # on decides, not what arrived: a signal after the last step leaves a finished run (exit 0).
        signum = interruption.signal_number(result.get("interrupted")) if isinstance(result, dict) else 0
        if signum:
            print(interrupted_line(config, interruption.signal_name(signum)), file=sys.stderr)
            return interruption.exit_code(signum)
        return 0
    except RaytrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"error: {_interrupted(config)}", file=sys.stderr)
        return INTERRUPTED_EXIT
    except ModuleNotFoundError as exc:
        if (exc.name or "raytrain_llm").partition(".")[0] == "raytrain_llm":  # a missing module of ours is a bug
            return _unexpected(exc, config)
        # A usage error, not a bug: no error.log (the fix is an install, and --print-config writes nothing).
        print(f"error: {missing_dependency(exc.name)}", file=sys.stderr)
        return UsageError.exit_code
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, details in a file
        return _unexpected(exc, config)


def _interrupted(config) -> str:
    """The step reached, the newest checkpoint and the resume command, as far as they are known."""
    try:
        from raytrain_llm.launchers.run_report import interrupted_line

        return interrupted_line(config, "SIGINT")
    except Exception:  # noqa: BLE001 - e.g. torch missing: the message must not fail
        return "interrupted"


# The optional extras of pyproject.toml, by the module each one provides.
_EXTRAS = {"mlflow": "mlflow", "wandb": "wandb", "transformers": "export"}


def missing_dependency(name: str) -> str:
    """One line for a package this Python lacks: the usual cause is the system Python instead of
    the project's .venv (which `make train` creates)."""
    top = name.partition(".")[0]
    if top in _EXTRAS:
        return (f"this Python ({sys.executable}) lacks {top!r}: pip install -e '.[{_EXTRAS[top]}]' "
                f"(the .venv that `make train` creates has every extra)")
    return (f"this Python ({sys.executable}) lacks {top!r}, a dependency of raytrain_llm: use the project's "
            f"environment (`make train` creates .venv; then `source .venv/bin/activate` or run .venv/bin/python), "
            f"or pip install -e . into this Python")


def _unexpected(exc: Exception, config) -> int:
    if debug_enabled():
        traceback.print_exc()
    where = _save_traceback(config)
    print(unexpected_line(exc) + (f" (traceback in {where})" if where else ""), file=sys.stderr)
    return 1


def _save_traceback(config) -> Optional[str]:
    if config is None:
        return None
    try:
        path = os.path.join(config.logging.dir, "error.log")
        os.makedirs(config.logging.dir, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            traceback.print_exc(file=fh)
        return path
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main())
