"""The package's imports point one way, form no cycle and keep Ray out of the core.

Every module of `raytrain_llm` is read with `ast` (nothing is imported); every import counts,
those inside functions too, since a function-local import is still a dependency and a cycle
through one only waits for the call. Each module has a layer (its folder); a layer may import
only the layers listed for it in MAY_IMPORT:

    core        (nothing of the package)    config, engine, task contract, callbacks, checkpoints
    models      core (its config)           the model zoo: blocks, attention, MoE
    data        core                        data modules and samplers
    tasks       core, data, models          the built-in tasks
    launchers   everything below            task resolution, train_worker; then local/ and
                                            ray_train/, then tune/ (which runs Ray Train trials)
    cli         everything                  the command line

`RAYTRAIN_LAYERS_ROOT=/path/to/checkout` checks another tree (e.g. main before this test).
"""
from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

PACKAGE = "raytrain_llm"
ROOT = Path(os.environ.get("RAYTRAIN_LAYERS_ROOT") or Path(__file__).resolve().parents[1])

# A module's layer is its longest matching prefix here.
LAYER_OF_PREFIX = {
    "raytrain_llm": "package",
    "raytrain_llm.models": "models",
    "raytrain_llm.core": "core",
    "raytrain_llm.data": "data",
    "raytrain_llm.tasks": "tasks",
    "raytrain_llm.launchers": "launchers",
    "raytrain_llm.launchers.local": "launchers.local",
    "raytrain_llm.launchers.ray_train": "launchers.ray_train",
    "raytrain_llm.launchers.tune": "launchers.tune",
    "raytrain_llm.inference": "inference",
    "raytrain_llm.prepare": "prepare",
    "raytrain_llm.cli": "cli",
    "raytrain_llm.sample": "cli",
    "raytrain_llm.evaluate": "cli",
    "raytrain_llm.export": "cli",
    "raytrain_llm.consolidate": "cli",
}
BELOW_LAUNCHERS = {"models", "core", "data", "tasks"}
MAY_IMPORT = {
    "package": set(),
    "core": set(),
    "models": {"core"},
    "data": {"core"},
    "tasks": {"core", "data", "models"},
    "launchers": BELOW_LAUNCHERS,
    "launchers.local": BELOW_LAUNCHERS | {"launchers"},
    "launchers.ray_train": BELOW_LAUNCHERS | {"launchers"},
    "launchers.tune": BELOW_LAUNCHERS | {"launchers", "launchers.ray_train"},
    "inference": BELOW_LAUNCHERS | {"launchers"},
    "prepare": {"core", "data"},
    "cli": BELOW_LAUNCHERS | {"launchers", "launchers.local", "launchers.ray_train", "launchers.tune", "inference"},
}
# Layers that run without Ray installed (a GPU box, a notebook, the in-process and spawn launchers).
NO_RAY = {"models", "core", "data", "tasks", "launchers", "launchers.local", "inference"}


def package_modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package under `root`."""
    out = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def layer_of(module: str) -> str:
    """The layer of the longest prefix that names the module or a package holding it; "?" for a
    module outside every layer's folder (a new top-level module needs a row above)."""
    matches = [p for p in LAYER_OF_PREFIX if module == p or (p != PACKAGE and module.startswith(p + "."))]
    return LAYER_OF_PREFIX[max(matches, key=len)] if matches else "?"


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported name, line) for every import in the file, at any depth. A package-internal
    name is the module it loads: `from pkg import sub` is pkg.sub when that is a module."""
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, up level - 1 more
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub if sub in modules else base, node.lineno))
    return found


def import_graph(root: Path) -> tuple[dict[str, set[str]], list[str]]:
    """Module -> the package modules it imports, and a line per import that breaks a rule."""
    modules = package_modules(root)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    problems = []
    for module, path in modules.items():
        layer = layer_of(module)
        where = f"{path.relative_to(root)}"
        for name, line in imports_of(module, path, modules):
            if name == "ray" or name.startswith("ray."):
                if layer in NO_RAY:
                    problems.append(f"{where}:{line}: imports {name}: layer {layer} runs without Ray")
                continue
            if name != PACKAGE and not name.startswith(PACKAGE + "."):
                continue
            target = name
            while target not in modules and "." in target:  # `import pkg.mod.attr` style names
                target = target.rsplit(".", 1)[0]
            if target == module:
                continue
            graph[module].add(target)
            target_layer = layer_of(target)
            if target_layer != layer and target_layer not in MAY_IMPORT.get(layer, ()):
                allowed = ", ".join(sorted(MAY_IMPORT.get(layer, ()))) or "nothing of the package"
                problems.append(f"{where}:{line}: {module} ({layer}) imports {target} ({target_layer}): "
                                f"{layer} may import only {allowed}")
    return graph, list(dict.fromkeys(problems))  # `from m import a, b` is one problem, not two


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_every_module_has_a_layer_with_rules():
    modules = package_modules(ROOT)
    assert len(modules) > 40, f"found only {len(modules)} modules under {ROOT / PACKAGE}"
    outside = [m for m in modules if layer_of(m) not in MAY_IMPORT]
    assert not outside, f"modules in no layer: {outside}; give each a row in LAYER_OF_PREFIX (tests/test_layers.py)"


def test_imports_point_down_the_layers_and_keep_ray_out_of_the_core():
    _, problems = import_graph(ROOT)
    assert not problems, "imports against the layers (see tests/test_layers.py):\n" + "\n".join(problems)


def test_no_import_cycles_also_counting_imports_inside_functions():
    graph, _ = import_graph(ROOT)
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_checker_finds_what_it_is_for(tmp_path):
    """On a small package with one of each mistake, every one is reported (the checks can fail)."""
    files = {
        "__init__.py": "",
        "core/__init__.py": "",
        "core/config.py": "def load():\n    from raytrain_llm.core import loader\n    return loader\n",
        "core/loader.py": "from raytrain_llm.core.config import load\n",
        "core/engine.py": "from . import config\n\ndef run():\n    import ray.train\n"
                          "    from ..tasks.lm import LM\n",
        "tasks/__init__.py": "",
        "tasks/lm.py": "import raytrain_llm.core.engine\n",
        "launchers/__init__.py": "",
        "launchers/ray_train/__init__.py": "",
        "launchers/ray_train/trainer.py": "import ray\nfrom raytrain_llm.launchers.tune import runner\n",
        "launchers/tune/__init__.py": "",
        "launchers/tune/runner.py": "from raytrain_llm.launchers.ray_train.trainer import ray\n",
    }
    for name, text in files.items():
        (tmp_path / PACKAGE / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / PACKAGE / name).write_text(text)
    graph, problems = import_graph(tmp_path)
    text = "\n".join(problems)
    assert "core/engine.py:4: imports ray.train: layer core runs without Ray" in text
    assert "raytrain_llm.core.engine (core) imports raytrain_llm.tasks.lm (tasks)" in text
    assert ("raytrain_llm.launchers.ray_train.trainer (launchers.ray_train) imports "
            "raytrain_llm.launchers.tune.runner") in text
    assert len(problems) == 3, text  # ray in a Ray launcher, and imports down the layers, are fine
    assert graph["raytrain_llm.core.engine"] == {"raytrain_llm.core.config", "raytrain_llm.tasks.lm"}
    assert sorted(cycles(graph)) == [
        ["raytrain_llm.core.config", "raytrain_llm.core.loader"],  # one side inside a function
        ["raytrain_llm.core.engine", "raytrain_llm.tasks.lm"],
        ["raytrain_llm.launchers.ray_train.trainer", "raytrain_llm.launchers.tune.runner"],
    ]


@pytest.mark.parametrize("module, layer", [("raytrain_llm.core.task", "core"), ("raytrain_llm.cli", "cli"),
                                           ("raytrain_llm", "package"), ("raytrain_llm.newthing", "?"),
                                           ("raytrain_llm.launchers.worker", "launchers"),
                                           ("raytrain_llm.launchers.tune.runner", "launchers.tune")])
def test_layer_of_a_module_is_its_folder(module, layer):
    assert layer_of(module) == layer
