"""The README's config reference, generated from the fields' `setting(...)` in core/config.py.

    python -m raytrain_llm.core.config_reference          # rewrite the tables in README.md
    python -m raytrain_llm.core.config_reference --check  # exit 1 if README.md is out of date

The tables sit between BEGIN and END below in README.md; everything else in the file is left as
it is. tests/test_config_reference.py checks that README.md holds what this renders.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from typing import Any, Optional, Sequence

from raytrain_llm.core.config import SECTIONS, Config

BEGIN = ("<!-- BEGIN config reference: generated from raytrain_llm/core/config.py by "
         "`python -m raytrain_llm.core.config_reference`; edit the fields there, not here -->")
END = "<!-- END config reference -->"
README = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "README.md")

_TYPE_NAMES = {int: "int", float: "float", bool: "bool", str: "str", tuple: "list"}


def _type(tp: Any) -> str:
    if tp in _TYPE_NAMES:
        return _TYPE_NAMES[tp]
    return "mapping" if (typing.get_origin(tp) or tp) is dict else getattr(tp, "__name__", str(tp))


def _yaml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{}" if not value else repr(value)
    if value == "":
        return '""'
    return str(value)


def _default(f: dataclasses.Field) -> str:
    value = f.default_factory() if f.default is dataclasses.MISSING else f.default
    return f"`{_yaml_value(value)}`"


def _allowed(meta: typing.Mapping[str, Any]) -> str:
    if meta["choices"]:
        return ", ".join(f"`{c}`" for c in meta["choices"])
    bounds = []
    if meta["ge"] is not None:
        bounds.append(f">= {meta['ge']}")
    if meta["gt"] is not None:
        bounds.append(f"> {meta['gt']}")
    if meta["le"] is not None:
        bounds.append(f"<= {meta['le']}")
    return ", ".join(bounds)


def _cell(text: str) -> str:
    """Markdown table cell: a `|` would end the cell, a `<x>` would be read as an HTML tag."""
    return text.replace("|", "\\|").replace("<", "\\<")


def _table(title: str, cls: type, skip: tuple = ()) -> list[str]:
    hints = typing.get_type_hints(cls)
    rows = [f"**{title}**", "", "| key | type | default | allowed | meaning |", "| --- | --- | --- | --- | --- |"]
    undocumented = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        if "doc" not in f.metadata:
            undocumented.append(f.name)
            continue
        rows.append(f"| `{f.name}` | {_type(hints[f.name])} | {_default(f)} | {_allowed(f.metadata)} "
                    f"| {_cell(f.metadata['doc'])} |")
    if undocumented:
        raise ValueError(f"{cls.__name__}: declare {', '.join(undocumented)} with setting(default, doc, ...) "
                         "(core/config.py)")
    return rows + [""]


def render() -> str:
    """The generated block, markers included."""
    lines = [BEGIN, ""]
    lines += _table("top level", Config, skip=tuple(SECTIONS))
    for name, cls in SECTIONS.items():
        lines += _table(f"`{name}`", cls)
    return "\n".join(lines + [END])


def with_reference(text: str) -> str:
    """`text` (README.md) with the block between the markers replaced by `render()`."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README.md has no config reference markers ({BEGIN!r} ... {END!r})")
    return text[:start] + render() + text[end + len(END):]


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m raytrain_llm.core.config_reference", description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if the README's tables are not what the fields say")
    p.add_argument("--readme", default=README, help="the file holding the markers (default: the repo's README.md)")
    args = p.parse_args(argv)
    with open(args.readme, encoding="utf-8") as fh:
        text = fh.read()
    updated = with_reference(text)
    if args.check:
        if updated != text:
            print(f"{args.readme}: the config reference is out of date; run python -m "
                  "raytrain_llm.core.config_reference", file=sys.stderr)
            return 1
        return 0
    if updated != text:
        with open(args.readme, "w", encoding="utf-8") as fh:
            fh.write(updated)
        print(f"{args.readme}: config reference updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
