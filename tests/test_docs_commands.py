"""The commands in the docs work as written: they say how to use the project's environment, and
every `ray job submit` uploads the repo without its generated folders, naming none that Ray
already leaves out."""
from __future__ import annotations

import json
import re

from rt_testing import REPO

DOCS = ["README.md", "examples/RAY_WALKTHROUGH.md", "cluster/README.md", "docs/tuning.md"]
# Folders this repo's tools create (make, pytest, hypothesis, ruff, train.py's default logging.dir).
GENERATED = {"runs", ".hypothesis", ".pytest_cache", ".ruff_cache"}


def test_every_doc_says_how_to_use_the_environment():
    for doc in DOCS:
        text = (REPO / doc).read_text()
        assert "source .venv/bin/activate" in text and "make train" in text, doc


def test_ray_job_submit_excludes_the_generated_folders_and_not_rays_own():
    from ray._private.ray_constants import get_runtime_env_default_excludes

    rays_own = set(get_runtime_env_default_excludes())
    assert {".git", ".venv"} <= rays_own  # what Ray 2.60 leaves out itself
    found = 0
    for name in [*DOCS, "cluster/start_local_head.sh", "cluster/ray-cluster.yaml"]:
        text = (REPO / name).read_text().replace('\\"', '"')  # the script echoes the command
        specs = re.findall(r"--runtime-env-json '([^']*)'", text)
        for spec in specs:
            excludes = set(json.loads(spec)["excludes"])
            assert excludes == GENERATED and not excludes & rays_own, (name, spec)
        assert len(specs) >= len(re.findall(r"ray job submit --address", text)), name  # each command has one
        found += len(specs)
    assert found >= 5
