"""YAML as manifests and job files are read: PyYAML's safe loader, without aliases.

An alias (``*a``) stands for a node written once elsewhere (``&a``), so a file can say far
more than it holds: eight levels of ten aliases each make a 12-line file of 10^8 values, and
whatever walks them (the walk that finds every value's line, pydantic, a ``repr`` in a
message) exhausts memory before any check. A manifest or job file has no use for aliases:
each value is written where it applies, and overrides say what differs. So an alias is
refused where the parser meets it, before any value is built, naming its line; anchors
alone (``&a``) repeat nothing and are let be.
"""

from __future__ import annotations

from typing import Any

import yaml


class AliasRefused(yaml.MarkedYAMLError):
    """An alias in a manifest or job file; ``problem`` says so, ``problem_mark`` where."""


class NoAliasLoader(yaml.SafeLoader):
    """The safe loader (plain values only: nothing executed or unpickled) that refuses aliases."""

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise AliasRefused(
                problem=f"an alias (*{event.anchor}): manifests and job files take none; write the value out",
                problem_mark=event.start_mark,
            )
        return super().compose_node(parent, index)


def problem_of(exc: yaml.YAMLError) -> tuple[int | None, str]:
    """(line, what is wrong) of a YAML error: its first line, without PyYAML's context lines."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return (mark.line + 1 if mark is not None else None), problem
