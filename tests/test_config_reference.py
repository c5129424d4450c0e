"""The config reference in README.md is generated from the fields' `setting(...)`, and those
settings are what the loader checks."""
from __future__ import annotations

import dataclasses

import pytest

from raytrain_llm.core import config_reference
from raytrain_llm.core.config import (
    CHOICES,
    MAXIMUMS,
    MINIMUMS,
    SECTIONS,
    section_fields,
    setting,
)
from raytrain_llm.core.config_checks import value_errors


def test_readme_holds_the_generated_reference():
    with open(config_reference.README, encoding="utf-8") as fh:
        text = fh.read()
    assert config_reference.with_reference(text) == text, \
        "README.md is out of date: run python -m raytrain_llm.core.config_reference"
    for key, _ in section_fields():  # every field has its row
        assert f"| `{key.partition('.')[2]}` |" in config_reference.render()


def test_check_fails_on_a_stale_readme_and_the_generator_fixes_it(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{config_reference.BEGIN}\n| old | table |\n{config_reference.END}\n\nafter\n")
    assert config_reference.main(["--check", "--readme", str(readme)]) == 1
    assert config_reference.main(["--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# x\n\n") and text.endswith("\n\nafter\n") and "| old |" not in text
    assert "| `top_k` | int | `2` | >= 1 |" in text
    assert config_reference.main(["--check", "--readme", str(readme)]) == 0


def test_a_field_without_setting_is_refused(monkeypatch):
    @dataclasses.dataclass
    class NewSection:
        documented: int = setting(1, "has its doc", ge=0)
        plain: int = 3  # the old style: no doc, no rules

    monkeypatch.setattr(config_reference, "SECTIONS", {**SECTIONS, "new": NewSection})
    with pytest.raises(ValueError, match=r"NewSection: declare plain with setting\(default, doc"):
        config_reference.render()


@pytest.mark.parametrize("kwargs", [{"doc": ""}, {"doc": "two\nlines"}, {"doc": "x", "ge": 0, "gt": 0}])
def test_setting_needs_a_one_line_doc_and_one_lower_bound(kwargs):
    with pytest.raises(ValueError):
        setting(1, **kwargs)


def test_the_rules_the_loader_checks_come_from_the_settings():
    fields = dict(section_fields())
    for key, (low, inclusive) in MINIMUMS.items():
        meta = fields[key].metadata
        assert (meta["ge"] if inclusive else meta["gt"]) == low
        below = low - 1 if inclusive else low
        assert value_errors(key, below) == [f"{key}: must be {'>=' if inclusive else '>'} {low} (got {below!r})"]
        assert value_errors(key, low if inclusive else low + 0.5) == []
    for key, high in MAXIMUMS.items():
        assert fields[key].metadata["le"] == high
        assert value_errors(key, high * 2) == [f"{key}: must be <= {high} (got {high * 2!r})"]
    for key, choices in CHOICES.items():
        assert fields[key].metadata["choices"] == choices
        assert all(value_errors(key, c) == [] for c in choices)
        assert value_errors(key, "nope") == [f"{key}: must be one of {', '.join(choices)} (got 'nope')"]
    # Every field the table shows a rule for is checked, and only those.
    ruled = {k for k, f in fields.items() if f.metadata["choices"] or f.metadata["ge"] is not None
             or f.metadata["gt"] is not None or f.metadata["le"] is not None}
    assert ruled == set(CHOICES) | set(MINIMUMS) | set(MAXIMUMS)
