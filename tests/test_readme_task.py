"""The README's "Writing a task" example, run verbatim through the real command line: it must
learn, to the accuracy the README states."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys

import pytest

from rt_testing import REPO, cli_env

README = (REPO / "README.md").read_text()


def _example() -> tuple[str, list[str]]:
    """(the code block under "## Writing a task", the arguments its first line says to run it with)."""
    section = README[README.index("## Writing a task"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    command = re.match(r"# mypkg/tasks\.py — run with: python train\.py (.*?) \(from the folder holding mypkg/\)\n",
                       code).group(1)
    return code, shlex.split(command)


@pytest.mark.timeout(180)
def test_the_readme_task_learns_to_the_stated_accuracy(tmp_path):
    code, args = _example()
    stated = float(re.search(r"holds it\s+to `val/acc` ≥ (\d\.\d+)", README).group(1))
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "tasks.py").write_text(code)  # no __init__.py: the README names none
    p = subprocess.run([sys.executable, str(REPO / "train.py"), *args, "--set", "distributed.launcher=local",
                        "--set", "logging.progress_bar=off"],
                       cwd=tmp_path, env=cli_env(PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=150)
    assert p.returncode == 0, p.stderr[-2000:]
    result = json.loads(p.stdout.strip().splitlines()[-1].removeprefix("result: "))
    assert result["step"] == 192 and result["val"]["val/acc"] >= stated >= 0.95, result
    assert (tmp_path / "runs" / "default" / "summary.json").exists()  # the default logging.dir
