"""Hostile or broken input is refused quickly, in bounded memory, with exit 2 and one line: YAML
bombs and deep nesting (config files, sweep files, `--set` values), huge values in messages, and
bad values of the environment variables the project reads."""
from __future__ import annotations

import resource
import subprocess
import sys
import time
import tracemalloc

import pytest

from raytrain_llm.core.bounded_yaml import MAX_DEPTH, MAX_NODES, load_text
from raytrain_llm.core.config_loader import load_config, read_yaml
from raytrain_llm.core.env_settings import env_setting
from raytrain_llm.core.errors import QUOTE_LIMIT, ConfigError, quote
from rt_testing import REPO, cli_env

# 9 levels of 9 aliases: 9**9 (387 million) strings once expanded; a few hundred bytes.
BOMB = "".join([f"a: &a [{', '.join(['lol'] * 9)}]\n"]
               + [f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi")]
               + ["training: {lr: *i}\n"])
DEEP = "training:\n  betas: " + "[" * 5000 + "]" * 5000 + "\n"
ADDRESS_SPACE = 1 << 30  # bytes: the old loader needed 1.3 GB for BOMB; refusing it needs ~0.1 GB


def _limited():
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def run_limited(args, env=None, timeout=60):
    """`python train.py ARGS` in a process that cannot use more than ADDRESS_SPACE: a blow-up fails
    the test (MemoryError, exit 1) instead of the machine."""
    start = time.monotonic()
    p = subprocess.run([sys.executable, "train.py", *args], cwd=REPO, env=env or cli_env(), capture_output=True,
                       text=True, timeout=timeout, preexec_fn=_limited)
    return p, time.monotonic() - start


def _one_line(p) -> str:
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in p.stderr, p.stderr[-2000:]
    return lines[0]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name,text,needle", [
    ("bomb", BOMB, f"aliases expand to more than {MAX_NODES} values"),
    ("deep_lists", DEEP, f"nested deeper than {MAX_DEPTH} levels"),
    ("deep_mappings", "x: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n", f"nested deeper than {MAX_DEPTH} levels"),
])
def test_a_hostile_config_file_exits_2_in_bounded_time_and_memory(tmp_path, name, text, needle):
    f = tmp_path / f"{name}.yaml"
    f.write_text(text)
    assert f.stat().st_size < 30_000
    p, seconds = run_limited(["--config", str(f)])
    line = _one_line(p)
    assert line.startswith(f"error: invalid config: --config: {f}: {needle} at line ") and len(line) < 400, line
    assert seconds < 30  # generous on a shared machine: the old loader took 42 s on BOMB, and MemoryError


@pytest.mark.timeout(120)
def test_a_hostile_sweep_file_exits_2(tmp_path):
    f = tmp_path / "sweep.yaml"
    f.write_text(BOMB.replace("training: {lr: *i}", "search_space: {training.lr: *i}"))
    line = _one_line(run_limited(["--tune", str(f)])[0])
    assert line.startswith(f"error: invalid config: --tune: {f}: aliases expand to more than"), line


@pytest.mark.timeout(120)
@pytest.mark.parametrize("argv,needle", [
    (["--set", "training.betas=" + "[" * 5000 + "]" * 5000], "training.betas: expected a list, got '[[["),
    (["--task", "rt_helpers:OptionsTask", "--set", "task_options.width=" + "[" * 5000],
     "task_options.width: expected an integer, got '[[["),
    (["--set", "optimization.amp=" + "x" * 100_000], "optimization.amp: must be one of none, bf16, fp16 (got 'xxx"),
    (["--task", "x" * 100_000], "--task: unknown task 'xxx"),
    (["--set", "checkpoint.monitor=val/" + "x" * 100_000], "checkpoint.monitor: 'val/xxx"),
])
def test_hostile_values_on_the_command_line_give_one_bounded_line(argv, needle):
    line = _one_line(run_limited(argv)[0])
    assert needle in line and "..." in line and len(line) < QUOTE_LIMIT + 200, line[:500]


def test_a_bomb_is_refused_without_expanding_it(tmp_path):
    f = tmp_path / "bomb.yaml"
    f.write_text(BOMB)
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError, match="aliases expand to more than"):
            read_yaml(str(f))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5 * 2**20, peak  # bytes: the nodes of a 400-byte file, not 9**9 strings


@pytest.mark.parametrize("text,problem", [
    ("a: &a [1, *a]\n", "an alias refers to a value that contains it"),
    ("training:\n  seed: 1" + "0" * 5000 + "\n", "integer too long"),
    ("".join(" " * i + "k:\n" for i in range(100)) + " " * 100 + "k: 1\n", "nested deeper than"),
])
def test_other_broken_yaml_is_one_config_error(tmp_path, text, problem):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(str(f), [], environ={})
    assert len(err.value.problems) == 1 and problem in err.value.problems[0], err.value.problems


def test_an_oversized_file_is_refused_before_parsing(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("# padding\n" * 200_000)
    with pytest.raises(ConfigError, match=r"longer than 1048576 characters"):
        read_yaml(str(f))


def test_aliases_within_the_bounds_still_load(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("checkpoint: {monitor: &m val/loss, mode: &mode max}\n"
                 "callbacks: {monitor: *m, mode: *mode}\ntraining: {betas: [0.8, 0.9]}\n")
    cfg = load_config(str(f), [], environ={})
    assert (cfg.callbacks.monitor, cfg.callbacks.mode, cfg.checkpoint.mode) == ("val/loss", "max", "max")
    assert load_text("[" * (MAX_DEPTH - 1) + "1" + "]" * (MAX_DEPTH - 1)) is not None  # the limit itself loads


def test_quote_keeps_everyday_values_and_bounds_huge_ones():
    for value in (False, 2, 0.5, "val/loss", [0.9, 1.5], (1,), {"b": 1, "a": [1, 2]}, None, "it's"):
        assert quote(value) == repr(value)
    nested = []
    for _ in range(10_000):  # deeper than repr() could go
        nested = [nested]
    for value in ("x" * 10**6, list(range(10**6)), nested, 10**5000, {i: i for i in range(10**5)}):
        text = quote(value)
        assert len(text) <= QUOTE_LIMIT and "..." in text or text.startswith("<an integer"), text


@pytest.mark.timeout(120)
@pytest.mark.parametrize("env,needle", [
    ({"RAYTRAIN_PEAK_TFLOPS": "fast"}, "$RAYTRAIN_PEAK_TFLOPS: expected a number > 0"),
    ({"RAYTRAIN_PEAK_TFLOPS": "0"}, "$RAYTRAIN_PEAK_TFLOPS: expected a number > 0"),
    ({"RAYTRAIN_PEAK_TFLOPS": "nan"}, "$RAYTRAIN_PEAK_TFLOPS: expected a number > 0"),
    ({"RAYTRAIN_DEBUG": "maybe"}, "$RAYTRAIN_DEBUG: expected true/false"),
])
def test_a_bad_environment_value_exits_2_naming_the_variable(env, needle):
    line = _one_line(run_limited(["--print-config"], env=cli_env(**env))[0])
    assert needle in line, line


def test_good_environment_values_are_parsed():
    assert env_setting("RAYTRAIN_PEAK_TFLOPS", {"RAYTRAIN_PEAK_TFLOPS": " 312.5 "}) == 312.5
    assert env_setting("RAYTRAIN_PEAK_TFLOPS", {}) is None
    assert env_setting("RAYTRAIN_DEBUG", {"RAYTRAIN_DEBUG": "1"}) is True
    assert env_setting("RAYTRAIN_DEBUG", {"RAYTRAIN_DEBUG": "off"}) is False
    with pytest.raises(ConfigError, match=r"^invalid config: \$RAYTRAIN_PEAK_TFLOPS: expected a number > 0"):
        env_setting("RAYTRAIN_PEAK_TFLOPS", {"RAYTRAIN_PEAK_TFLOPS": "-1"})
    assert load_config(None, [], environ={"RAYTRAIN_PEAK_TFLOPS": "989", "RAYTRAIN_DEBUG": "0"}) is not None
