"""Config: precedence, typed parsing, lossless round trips, and every bad input through the real CLI."""
from __future__ import annotations

import dataclasses
import typing
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from raytrain_llm.core.config import CHOICES, MAXIMUMS, MINIMUMS, SECTIONS, Config
from raytrain_llm.core.config_checks import cross_field_errors
from raytrain_llm.core.config_loader import config_from_mapping, dump_yaml, load_config, parse_text
from raytrain_llm.core.errors import ConfigError
from rt_testing import cli_env, run_cli


# ----------------------------------------------------------------------------- precedence
def test_precedence_defaults_yaml_env_set(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("training:\n  lr: 0.1\n  epochs: 5\n  batch_size: 7\nmodel:\n  hidden_dim: 11\n")
    env = {"RAYTRAIN_TRAINING__LR": "0.2", "RAYTRAIN_TRAINING__EPOCHS": "6", "UNRELATED": "x"}
    cfg = load_config(str(f), ["training.lr=0.3"], environ=env)
    assert cfg.training.lr == 0.3  # --set beats env and YAML
    assert cfg.training.epochs == 6  # env beats YAML
    assert cfg.training.batch_size == 7 and cfg.model.hidden_dim == 11  # YAML beats defaults
    assert cfg.training.grad_clip == 1.0 and cfg.model.input_dim == 16  # defaults otherwise
    # Each layer alone.
    assert load_config(None, [], environ={}).training.lr == 1e-3
    assert load_config(str(f), [], environ={}).training.lr == 0.1
    assert load_config(str(f), [], environ=env).training.lr == 0.2


def test_precedence_through_cli(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("training:\n  lr: 0.1\n  epochs: 5\n  batch_size: 7\n")
    env = cli_env(RAYTRAIN_TRAINING__LR="0.2", RAYTRAIN_TRAINING__EPOCHS="6")
    p = run_cli(["--config", str(f), "--set", "training.lr=0.3", "--print-config"], env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    t = yaml.safe_load(p.stdout)["training"]
    assert (t["lr"], t["epochs"], t["batch_size"], t["grad_clip"]) == (0.3, 6, 7, 1.0)


def test_later_set_wins_and_task_flag_wins_over_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("task: lm\n")
    cfg = load_config(str(f), ["training.lr=0.3", "training.lr=0.4"], environ={}, task="regression")
    assert cfg.training.lr == 0.4 and cfg.task == "regression"
    assert load_config(str(f), [], environ={}).task == "lm"


# ----------------------------------------------------------------------------- typed parsing
@pytest.mark.parametrize("text,tp,expected", [
    ("true", bool, True), ("Yes", bool, True), ("1", bool, True), ("on", bool, True),
    ("false", bool, False), ("NO", bool, False), ("0", bool, False), ("off", bool, False),
    ("42", int, 42), (" 7 ", int, 7), ("-3", int, -3),
    ("1e-3", float, 1e-3), ("2", float, 2.0), (".5", float, 0.5),
    ("0.8,0.99", tuple, (0.8, 0.99)), ("[0.8, 0.99]", tuple, (0.8, 0.99)),
    ("runs/x y", str, "runs/x y"), ("123", str, "123"),
])
def test_parse_text(text, tp, expected):
    value = parse_text(text, tp)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("text,tp", [("maybe", bool), ("2", bool), ("1.5", int), ("1e3", int), ("ten", int),
                                     ("fast", float), ("[0.9", tuple), ("a,b", tuple)])
def test_parse_text_rejects(text, tp):
    with pytest.raises((ValueError, TypeError, yaml.YAMLError)):
        parse_text(text, tp)


def test_typed_values_from_set_env_and_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("training:\n  lr: 1\n  betas: [0.8, 0.9]\nlogging:\n  tensorboard: no\n")
    cfg = load_config(str(f), ["training.epochs=4", "checkpoint.enabled=false", "training.betas=0.7,0.8"],
                      environ={"RAYTRAIN_DATA__NOISE_STD": "0.25", "RAYTRAIN_LOGGING__DIR": "out/x"})
    assert cfg.training.lr == 1.0 and isinstance(cfg.training.lr, float)  # YAML int widens to float
    assert cfg.training.epochs == 4 and isinstance(cfg.training.epochs, int)
    assert cfg.checkpoint.enabled is False and cfg.logging.tensorboard is False
    assert cfg.training.betas == (0.7, 0.8)
    assert cfg.data.noise_std == 0.25 and cfg.logging.dir == "out/x"


def test_yaml_reads_exponents_without_a_dot_as_numbers(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("training:\n  lr: 3e-4\n  weight_decay: 1E-2\ndata:\n  noise_std: 2e0\n")
    cfg = load_config(str(f), [], environ={})
    assert (cfg.training.lr, cfg.training.weight_decay, cfg.data.noise_std) == (3e-4, 1e-2, 2.0)


@pytest.mark.parametrize("body,key", [
    ("training:\n  lr: '1e-3'\n", "training.lr"),  # quoted: a string, as any quoted number
    ("training:\n  epochs: 3.0\n", "training.epochs"),  # no float -> int narrowing
    ("training:\n  epochs: true\n", "training.epochs"),  # bools are not ints
    ("training:\n  lr: '0.1'\n", "training.lr"),  # strings are not numbers in YAML
    ("logging:\n  tensorboard: 1\n", "logging.tensorboard"),
    ("training:\n  betas: [0.9, x]\n", "training.betas"),
    ("logging:\n  dir: 5\n", "logging.dir"),
])
def test_yaml_types_are_strict(tmp_path, body, key):
    f = tmp_path / "c.yaml"
    f.write_text(body)
    with pytest.raises(ConfigError) as err:
        load_config(str(f), [], environ={})
    assert len(err.value.problems) == 1 and err.value.problems[0].startswith(key)


def test_all_errors_reported_at_once(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("training:\n  epochs: many\nbogus: {}\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(f), ["model.dropout=2", "optimization.amp=fp8", "training.lrr=1", "nokey"],
                    environ={"RAYTRAIN_TRAINING__LR": "-1"})
    msg = str(err.value)
    for key in ("training.epochs", "bogus", "model.dropout", "optimization.amp", "training.lrr",
                "--set nokey", "training.lr"):
        assert key in msg, key
    assert len(err.value.problems) == 7 and "\n" not in msg


def test_range_errors_say_where_the_value_was_set(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  num_experts: 4\n  dropout: 1.5\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(f), ["model.use_moe=true", "model.top_k=5"], environ={"RAYTRAIN_TRAINING__LR": "0"})
    problems = {p.partition(":")[0]: p for p in err.value.problems}
    assert problems["model.dropout"].endswith(f"in {f}")
    assert problems["model.top_k"].endswith("(from --set)")
    assert problems["training.lr"].endswith("(from $RAYTRAIN_TRAINING__LR)")
    with pytest.raises(ConfigError) as err:  # a default that breaks a cross-field rule has no source
        load_config(None, ["model.use_moe=true", "model.num_experts=1"], environ={})
    assert err.value.problems == ["model.top_k: must be <= model.num_experts (1) (got 2)"]


# ----------------------------------------------------------------------------- round trips
def _field_strategy(key: str, tp):
    if key in CHOICES:
        return st.sampled_from(CHOICES[key])
    low, inclusive = MINIMUMS.get(key, (None, True))
    high = MAXIMUMS.get(key)
    if tp is bool:
        return st.booleans()
    if tp is int:
        lo = None if low is None else (low if inclusive else low + 1)
        return st.integers(min_value=lo if lo is not None else -10**6, max_value=high or 10**6)
    if tp is float:
        return st.floats(min_value=low if low is not None else -1e6, max_value=high if high is not None else 1e6,
                         exclude_min=not inclusive, allow_nan=False, allow_infinity=False)
    if tp is tuple:
        return st.tuples(st.floats(0, 0.999), st.floats(0, 0.999))
    if key == "logging.trackers":  # names of installed trackers (the dev extra has them all)
        return st.lists(st.sampled_from(["tensorboard", "mlflow", "wandb"]), unique=True)
    if key in ("logging.dir", "checkpoint.dir"):
        # Checked against the file system (a file there is an error); hypothesis also draws string
        # constants from the code, such as /proc/self/stat.
        return st.text(alphabet="abcxyz_-", min_size=1, max_size=12).map(lambda s: f"runs/pbt/{s}")
    return st.text(min_size=1, max_size=20).filter(lambda s: s.strip())


@st.composite
def configs(draw):
    sections = {}
    for name, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):
            if draw(st.booleans()):  # about half the fields keep their defaults
                values[f.name] = draw(_field_strategy(f"{name}.{f.name}", hints[f.name]))
        sections[name] = cls(**values)
    cfg = Config(task=draw(st.sampled_from(["regression", "lm", "pkg.mod:Task"])), **sections)
    # Satisfy the cross-field rules so the config is valid.
    m = cfg.model
    m.top_k = min(m.top_k, m.num_experts)
    m.n_heads = draw(st.integers(1, 8))
    m.d_model = m.n_heads * 2 * draw(st.integers(1, 16))
    cfg.optimization.amp = "bf16" if cfg.optimization.amp == "fp16" else cfg.optimization.amp
    cfg.distributed.use_gpu = cfg.distributed.use_gpu or cfg.distributed.gpus_per_worker > 0 \
        or cfg.distributed.backend == "nccl"
    m.moe_every_n_layers = min(m.moe_every_n_layers, m.n_layers)
    m.vocab_size = 2 if m.vocab_size == 1 else m.vocab_size
    dist = cfg.distributed  # no option of the other strategy
    if dist.strategy == "ddp":
        dist.fsdp_reshard_after_forward, dist.fsdp_cpu_offload = True, False
    else:
        dist.find_unused_parameters = False
        dist.fsdp_cpu_offload = dist.fsdp_cpu_offload and cfg.training.device != "cpu" and dist.num_workers >= 2
    cfg.distributed.expert_parallel = 1  # its cross-field rules: tests/test_moe_expert_parallel.py
    cfg.training.validate = cfg.training.validate or cfg.callbacks.early_stopping
    cfg.checkpoint.enabled = cfg.checkpoint.enabled or cfg.checkpoint.resume == "auto"
    d = cfg.data
    if d.val_tokens or d.train_tokens:  # token files: both, or train alone without validation
        d.train_tokens = d.train_tokens or d.val_tokens
        if not d.val_tokens:
            cfg.training.validate = cfg.callbacks.early_stopping = False
    return cfg


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_to_dict_from_dict_lossless(cfg):
    assert cross_field_errors(cfg) == []
    d = cfg.to_dict()
    back = config_from_mapping(d)
    assert back == cfg and back.to_dict() == d
    # Through YAML text too (what --print-config and checkpoints store).
    assert config_from_mapping(yaml.safe_load(dump_yaml(cfg))) == cfg


def test_print_config_reloads_to_same_config(tmp_path):
    env = cli_env(RAYTRAIN_DATA__NOISE_STD="0.3")
    p = run_cli(["--task", "lm", "--set", "training.lr=0.0123", "--set", "model.d_model=96",
                 "--set", "training.betas=0.8,0.9", "--set", "logging.dir=some dir/x: y", "--print-config"],
                env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    f = tmp_path / "printed.yaml"
    f.write_text(p.stdout)
    reloaded = load_config(str(f), [], environ={})
    expected = load_config(None, ["training.lr=0.0123", "model.d_model=96", "training.betas=0.8,0.9",
                                  "logging.dir=some dir/x: y"], environ={"RAYTRAIN_DATA__NOISE_STD": "0.3"},
                           task="lm")
    # The printed config holds the task's options resolved (the lm task's defaults filled in).
    from raytrain_llm.core.task_options import options_dict, parse_task_options
    from raytrain_llm.tasks.lm_task import LanguageModelingTask
    expected.task_options = options_dict(parse_task_options(LanguageModelingTask.Options, {}, "lm"))
    assert reloaded == expected and reloaded.task == "lm" and reloaded.data.noise_std == 0.3


# ----------------------------------------------------------------------------- bad input via the CLI
def _bad_cases(d):
    """(id, argv, extra env, text the one-line message must contain)."""
    files = {
        "syntax.yaml": "training:\n  lr: [0.1, 0.2\n",
        "list.yaml": "- 1\n- 2\n",
        "wrongtype.yaml": "training:\n  epochs: three\n",
        "section.yaml": "trainer:\n  lr: 0.1\n",
        "key.yaml": "training:\n  learning_rate: 0.1\n",
        "task.yaml": "task: 5\n",
        "bool_for_string.yaml": "logging:\n  progress_bar: off\n",
        "duplicate.yaml": "training:\n  lr: 0.1\n  epochs: 2\n  lr: 0.2\n",
        "scalar.yaml": "0\n",
        "empty_list.yaml": "[]\n",
        "a_file": "not a folder\n",
    }
    (d / "config_dir").mkdir(exist_ok=True)
    for name, text in files.items():
        (d / name).write_text(text)
    corrupt = d / "corrupt_ckpt"
    corrupt.mkdir(exist_ok=True)
    (corrupt / "state.pt").write_bytes(b"PK\x03\x04 definitely not a checkpoint" * 10)
    run = ["--set", "distributed.launcher=local", "--set", f"logging.dir={d / 'run'}",
           "--set", "logging.progress_bar=off", "--set", "data.num_train_samples=64"]
    return [
        ("unknown_key", ["--set", "training.lrr=0.1"], {}, "training.lrr"),
        ("unknown_section", ["--set", "trainer.lr=0.1"], {}, "trainer.lr"),
        ("too_many_dots", ["--set", "training.lr.x=1"], {}, "training.lr.x"),
        ("yaml_wrong_type", ["--config", str(d / "wrongtype.yaml")], {}, "training.epochs"),
        ("yaml_unknown_section", ["--config", str(d / "section.yaml")], {}, "trainer"),
        ("yaml_unknown_key", ["--config", str(d / "key.yaml")], {}, "training.learning_rate"),
        ("yaml_bad_task", ["--config", str(d / "task.yaml")], {}, "task"),
        ("set_wrong_type", ["--set", "training.epochs=three"], {}, "training.epochs"),
        ("set_bad_bool", ["--set", "logging.tensorboard=maybe"], {}, "logging.tensorboard"),
        ("negative_lr", ["--set", "training.lr=-0.1"], {}, "training.lr"),
        ("zero_lr", ["--set", "training.lr=0"], {}, "training.lr"),
        ("nan_lr", ["--set", "training.lr=nan"], {}, "training.lr"),
        ("inf_lr", ["--set", "training.lr=inf"], {}, "training.lr"),
        ("top_k_gt_experts", ["--set", "model.use_moe=true", "--set", "model.num_experts=4", "--set", "model.top_k=5"],
         {}, "model.top_k"),
        ("unknown_task", ["--task", "nosuchtask"], {}, "--task"),
        ("task_empty_module", ["--task", ":Foo"], {}, "--task"),
        ("task_relative_module", ["--task", ".foo:Bar"], {}, "--task"),
        ("moe_but_no_moe_block", ["--task", "lm", "--set", "model.use_moe=true", "--set", "model.n_layers=2",
                                  "--set", "model.moe_every_n_layers=3"], {}, "model.moe_every_n_layers"),
        ("early_stopping_without_validation", ["--set", "callbacks.early_stopping=true",
                                               "--set", "training.validate=false"], {}, "callbacks.early_stopping"),
        ("resume_auto_without_checkpoints", ["--set", "checkpoint.resume=auto", "--set", "checkpoint.enabled=false"],
         {}, "checkpoint.resume"),
        ("batch_larger_than_data", [*run, "--set", "training.batch_size=1000"], {}, "training.batch_size"),
        ("unreachable_ray_address", ["--set", "distributed.address=127.0.0.1:1"], {},
         "distributed.address: cannot reach a Ray cluster at 127.0.0.1:1"),
        ("unreachable_ray_address_env", [], {"RAY_ADDRESS": "127.0.0.1:1"}, "RAY_ADDRESS: cannot reach"),
        ("job_server_url_as_ray_address", [], {"RAY_ADDRESS": "http://127.0.0.1:8265"},
         "RAY_ADDRESS: http://127.0.0.1:8265 is a job server (dashboard) address"),
        ("gpus_this_machine_lacks", ["--set", "distributed.use_gpu=true", "--set", f"logging.dir={d / 'gpu'}",
                                     "--set", f"distributed.storage_path={d / 'gpu_ray'}"], {},
         "this machine cannot place the run: distributed.use_gpu: 1 worker(s) x 1 GPU, the cluster has 0 GPU"),
        ("strict_spread_on_one_machine", ["--set", "distributed.num_workers=2", "--set",
                                          "distributed.placement_strategy=STRICT_SPREAD"], {},
         "distributed.placement_strategy: STRICT_SPREAD puts 2 workers on 2 nodes, the cluster has 1"),
        ("bad_task_module", ["--task", "no_such_pkg.mod:Task"], {}, "--task"),
        ("bad_task_class", ["--task", "rt_helpers:NoSuchTask"], {}, "--task"),
        ("task_not_a_task", ["--task", "collections:OrderedDict"], {}, "--task"),
        ("bad_yaml_syntax", ["--config", str(d / "syntax.yaml")], {}, str(d / "syntax.yaml")),
        ("yaml_not_mapping", ["--config", str(d / "list.yaml")], {}, str(d / "list.yaml")),
        ("missing_config", ["--config", str(d / "nope.yaml")], {}, str(d / "nope.yaml")),
        ("bad_env_value", [], {"RAYTRAIN_TRAINING__LR": "fast"}, "RAYTRAIN_TRAINING__LR"),
        ("bad_env_key", [], {"RAYTRAIN_TRAINING__NOPE": "1"}, "training.nope"),
        ("env_value_out_of_range", [], {"RAYTRAIN_TRAINING__BATCH_SIZE": "0"}, "$RAYTRAIN_TRAINING__BATCH_SIZE"),
        ("bad_choice_amp", ["--set", "optimization.amp=fp8"], {}, "optimization.amp"),
        ("fp16_on_cpu", ["--set", "optimization.amp=fp16", "--set", "training.device=cpu"], {},
         "optimization.amp"),
        ("d_model_not_divisible", ["--set", "model.d_model=30", "--set", "model.n_heads=4"], {}, "model.d_model"),
        ("set_without_equals", ["--set", "training.lr"], {}, "--set training.lr"),
        ("set_empty_key", ["--set", "=3"], {}, "--set =3"),
        ("unknown_flag", ["--bogus"], {}, "--bogus"),
        ("flag_missing_value", ["--config"], {}, "--config"),
        ("dropout_gt_1", ["--set", "model.dropout=1.5"], {}, "model.dropout"),
        ("zero_batch_size", ["--set", "training.batch_size=0"], {}, "training.batch_size"),
        ("bad_betas", ["--set", "training.betas=0.9,1.5"], {}, "training.betas"),
        ("port_out_of_range", ["--set", "distributed.master_port=70000"], {}, "distributed.master_port"),
        ("empty_resume", ["--set", "checkpoint.resume= "], {}, "checkpoint.resume"),
        ("resume_missing", [*run, "--set", f"checkpoint.resume={d / 'no_ckpt'}"], {}, "checkpoint.resume"),
        ("resume_corrupt", [*run, "--set", f"checkpoint.resume={corrupt}"], {}, "checkpoint.resume"),
        # Cases below that could wrongly pass train with the local launcher: no Ray cluster.
        ("empty_logging_dir", [*run, "--set", "logging.dir="], {}, "logging.dir: must not be empty"),
        ("logging_dir_is_a_file", [*run, "--set", f"logging.dir={d / 'a_file'}"], {},
         f"logging.dir: {str(d / 'a_file')!r} is a file, not a folder"),
        ("logging_dir_inside_a_file", [*run, "--set", f"logging.dir={d / 'a_file' / 'run'}"], {},
         f"logging.dir: {str(d / 'a_file' / 'run')!r} is inside {str(d / 'a_file')!r}, a file"),
        ("checkpoint_dir_is_a_file", [*run, "--set", f"checkpoint.dir={d / 'a_file'}"], {},
         f"checkpoint.dir: {str(d / 'a_file')!r} is a file, not a folder"),
        ("yaml_bool_for_string", [*run, "--config", str(d / "bool_for_string.yaml")], {},
         "logging.progress_bar: expected a string, got False (YAML reads unquoted on/off/yes/no as booleans: "
         "quote it)"),
        ("yaml_duplicate_key", [*run, "--config", str(d / "duplicate.yaml")], {},
         f"training.lr: set twice in {d / 'duplicate.yaml'} (lines 2 and 4)"),
        ("yaml_top_level_scalar", [*run, "--config", str(d / "scalar.yaml")], {}, "expected a mapping"),
        ("yaml_top_level_empty_list", [*run, "--config", str(d / "empty_list.yaml")], {}, "expected a mapping"),
        ("config_is_a_directory", ["--config", str(d / "config_dir")], {}, "is a directory"),
        ("env_single_underscore", run, {"RAYTRAIN_TRAINING_LR": "0.5"},
         "$RAYTRAIN_TRAINING_LR: not a config field (expected RAYTRAIN_<SECTION>__<FIELD>, two underscores) "
         "(did you mean RAYTRAIN_TRAINING__LR?)"),
        ("env_no_field", run, {"RAYTRAIN_TRAINING__": "1"}, "$RAYTRAIN_TRAINING__: not a config field"),
        ("negative_port", ["--set", "distributed.master_port=-1"], {}, "distributed.master_port"),
        ("abstract_task", [*run, "--task", "rt_input_tasks:HalfTask"], {},
         "--task: rt_input_tasks:HalfTask does not implement build_data_module, train_step"),
        ("plain_torch_dataset", [*run, "--task", "rt_input_tasks:PlainDatasetTask"], {},
         "PlainDataModule.build_train_dataset returned a TensorDataset, not a raytrain_llm.data.IndexedDataset"),
        # `auto` on a machine without CUDA (hidden here even where there is one) resolves to CPU.
        ("fp16_on_auto_device_without_cuda", [*run, "--set", "optimization.amp=fp16"],
         {"CUDA_VISIBLE_DEVICES": ""}, "optimization.amp: fp16 needs a CUDA device"),
    ]


@pytest.fixture(scope="module")
def bad_results(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    cases = _bad_cases(d)

    def one(case):
        _, argv, env, _ = case
        # A case that wrongly passed validation must not train into the repo's runs/.
        return run_cli(argv, env=cli_env(RAYTRAIN_LOGGING__DIR=str(d / "stray"), **env), timeout=90)

    with ThreadPoolExecutor(max_workers=4) as pool:  # mostly tiny subprocesses; overlap their start-up
        results = list(pool.map(one, cases))
    return {case[0]: (case, p) for case, p in zip(cases, results)}


def _ids():
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        return [c[0] for c in _bad_cases(Path(d))]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("case_id", _ids())
def test_bad_input_exits_2_with_one_line(bad_results, case_id):
    (_, argv, _, needle), p = bad_results[case_id]
    assert p.returncode == 2, (argv, p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr + p.stdout
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("error: ") and needle in lines[0], lines[0]
    assert p.stdout == ""


def test_bad_input_table_rows_are_distinct_and_each_expects_a_message(tmp_path):
    # The results are keyed by id: a repeated id would silently replace an earlier row's run.
    cases = _bad_cases(tmp_path)
    ids = [case[0] for case in cases]
    assert len(ids) == len(set(ids)) >= 20, [i for i in ids if ids.count(i) > 1]
    for case_id, argv, env, needle in cases:
        assert needle.strip() and (argv or env), case_id  # each row checks a message of its own


@pytest.mark.timeout(60)
def test_cli_reports_every_error_in_one_line(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("training:\n  epochs: many\nmodel:\n  d_model: 30\n")
    p = run_cli(["--config", str(f), "--set", "model.dropout=2", "--set", "optimization.amp=fp8",
                 "--set", "training.lr"], env=cli_env(RAYTRAIN_TRAINING__BATCH_SIZE="0"), timeout=60)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    for key in ("training.epochs", "model.d_model", "model.dropout", "optimization.amp", "--set training.lr",
                "training.batch_size"):
        assert key in lines[0], key


def test_a_misspelt_section_is_named_with_the_closest_and_task_points_to_task():
    from raytrain_llm.core.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        load_config(None, ["trainin.lr=1", "task=lm"], environ={})
    assert info.value.problems == [
        "trainin.lr: unknown section 'trainin' (from --set) (did you mean 'training'?)",
        "task: expected section.field (from --set) (the task is chosen with --task or a top-level `task:` in YAML)"]
