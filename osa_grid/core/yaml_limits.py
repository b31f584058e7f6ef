"""A YAML loader with bounds: every YAML text a user or the data gives us is composed by ``BoundedLoader``.

PyYAML composes an alias as a second reference to the anchored node, so a few hundred bytes of nested
aliases ("billion laughs") describe billions of values, and whoever walks the tree (our ``parse_yaml``, a
``json.dumps``, pydantic) expands them: minutes and gigabytes. Deep nesting exhausts Python's stack. The
loader measures both while composing, before anything is expanded, and refuses with the line of the
alias or of the value that goes too far:

- nesting: at most ``MAX_DEPTH`` levels, counted with aliases expanded;
- aliases: the values reached through aliases may outnumber the values written out in the text only up
  to ``ALIAS_NODE_FLOOR`` (a shared ``resources`` block used by every transformation is far below it;
  an exponential expansion is far above it), so the expanded tree stays linear in the size of the text;
- an alias inside the value it names (``&a [*a]``, an endless value) is refused.

The errors are ``yaml.composer.ComposerError`` (a ``yaml.YAMLError`` carrying a ``problem_mark``), so the
callers' existing handling of invalid YAML names the file and line.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.composer import ComposerError

MAX_DEPTH = 100
ALIAS_NODE_FLOOR = 10_000


class BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses too deep nesting, alias bombs and self-referring aliases."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0  # levels of nodes being composed
        self._written = 0  # nodes written out in the text
        self._expanded = 0  # nodes once every alias is replaced by a copy of its value
        self._shape: dict[int, tuple[int, int]] = {}  # id(finished node) -> (expanded size, height)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            self._count_alias(self.peek_event())
            return super().compose_node(parent, index)
        start_mark = self.peek_event().start_mark
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _refusal(f"values are nested more than {MAX_DEPTH} levels deep", start_mark)
        expanded_before = self._expanded
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._written += 1
        self._expanded += 1
        self._shape[id(node)] = (self._expanded - expanded_before, 1 + self._height_of_children(node))
        return node

    def _height_of_children(self, node: yaml.Node | None) -> int:
        if isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        else:
            return 0
        return max((self._shape[id(child)][1] for child in children), default=0)

    def _count_alias(self, event: yaml.AliasEvent) -> None:
        anchored = self.anchors.get(event.anchor)
        if anchored is None:
            return  # PyYAML reports the undefined alias
        shape = self._shape.get(id(anchored))
        if shape is None:
            raise _refusal(
                f"alias *{event.anchor} is inside the value it names (an endless value)", event.start_mark
            )
        size, height = shape
        if self._depth + height > MAX_DEPTH:
            raise _refusal(
                f"values are nested more than {MAX_DEPTH} levels deep (through aliases)", event.start_mark
            )
        self._expanded += size
        budget = max(ALIAS_NODE_FLOOR, self._written)
        if self._expanded - self._written > budget:
            raise _refusal(
                f"aliases expand to more than {budget} values (more than the text writes out): "
                "refused as an alias bomb",
                event.start_mark,
            )


def _refusal(problem: str, mark: Any) -> ComposerError:
    return ComposerError(None, None, problem, mark)


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` within the bounds of ``BoundedLoader``."""
    return yaml.load(text, Loader=BoundedLoader)


def compose(text: str) -> yaml.Node | None:
    """``yaml.compose`` within the bounds of ``BoundedLoader``."""
    return yaml.compose(text, Loader=BoundedLoader)
