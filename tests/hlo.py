"""Reading compiled programs' HLO text in tests."""
from __future__ import annotations

import re


def dot_types(program: str) -> list[tuple[str, str, str]]:
    """(result, lhs, rhs) element types of every dot in a compiled program's HLO text (XLA names values
    module-wide, so an operand's type is found by its name)."""
    types = dict(re.findall(r"%([\w.-]+) = (\w+)\[", program))
    dots = re.findall(r" = (\w+)\[[^ ]* dot\(%([\w.-]+), %([\w.-]+)\)", program)
    return [(result, types[lhs], types[rhs]) for result, lhs, rhs in dots]
