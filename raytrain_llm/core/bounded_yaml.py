"""YAML reading with bounds, for every YAML the package reads (config and sweep files, `--set`
and environment values).

`yaml.SafeLoader` builds plain data only, but a few hundred bytes can still exhaust a machine:
nested aliases (a "billion laughs" file) expand to billions of values once anything walks them
(a repr, a copy, a dump), and thousands of nested brackets overflow Python's recursion limit.
`BoundedLoader` refuses, as a `yaml.YAMLError` with the line and column, a document

- nested deeper than MAX_DEPTH levels (checked while scanning and composing, before any
  recursion is deep),
- whose aliases expand to more than MAX_NODES values or refer to a value that contains them
  (checked on the node graph, each shared node counted once per use without expanding it),
- holding an integer too long for Python to convert (over 4300 digits).

Configs are a few KB, two levels deep, and rarely use an alias: the bounds only refuse
what no config needs.
"""
from __future__ import annotations

from typing import Any, TextIO, Union

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.scanner import ScannerError

MAX_BYTES = 1 << 20  # a YAML file's size (read_yaml)
MAX_DEPTH = 64  # nested mappings and lists
MAX_NODES = 100_000  # values in the document with every alias expanded


class BoundedLoader(yaml.SafeLoader):
    """SafeLoader with the bounds above."""

    def __init__(self, stream: Union[str, TextIO]):
        super().__init__(stream)
        self._depth = 0

    def fetch_flow_collection_start(self, TokenClass):
        # Checked by the scanner too: it looks ahead over a line's open brackets, each a possible
        # key, which takes seconds for thousands of them before the composer sees the first.
        if self.flow_level >= MAX_DEPTH:
            raise ScannerError(None, None, f"nested deeper than {MAX_DEPTH} levels", self.get_mark())
        super().fetch_flow_collection_start(TokenClass)

    def compose_node(self, parent, index):
        if self._depth >= MAX_DEPTH:
            raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                self.peek_event().start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self):
        node = super().compose_document()
        check_expansion(node)
        return node

    def construct_yaml_int(self, node):
        try:
            return super().construct_yaml_int(node)
        except ValueError:  # Python refuses int() of more than 4300 digits
            raise ConstructorError(None, None, f"integer too long ({len(node.value)} characters)",
                                   node.start_mark) from None


BoundedLoader.add_constructor("tag:yaml.org,2002:int", BoundedLoader.construct_yaml_int)


def _children(node: yaml.Node) -> list:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def check_expansion(root: yaml.Node | None) -> None:
    """Raise ComposerError if `root` expanded (aliases followed) has more than MAX_NODES values, is
    deeper than MAX_DEPTH, or contains itself. Iterative, each distinct node visited once."""
    if root is None:
        return
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            kids = _children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            if size[key] > MAX_NODES:
                raise ComposerError(None, None, f"aliases expand to more than {MAX_NODES} values",
                                    node.start_mark)
            if depth[key] > MAX_DEPTH:
                raise ComposerError(None, None, f"aliases nest deeper than {MAX_DEPTH} levels", node.start_mark)
            continue
        if key in size:
            continue
        if key in on_path:
            raise ComposerError(None, None, "an alias refers to a value that contains it", node.start_mark)
        on_path.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in _children(node) if id(k) not in size)


def load_text(text: str) -> Any:
    """`yaml.safe_load` of a short text (a `--set` or environment value), within the bounds."""
    loader = BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
