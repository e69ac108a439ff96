"""The typed expression tree both backends read (built by ``analyze`` from sqlglot's AST).

Implicit conversions are explicit ``cast`` nodes, so Spark SQL and Python see the same operand types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from features.sql.types import SqlType


@dataclass(frozen=True, eq=False)
class Node:
    """``op`` names the operation; ``value`` holds a column name, a literal value or constant parameters."""

    op: str
    type: SqlType
    args: tuple[Node, ...] = ()
    value: Any = None
    span: tuple[int, int] = field(default=(0, 0), compare=False)

    @property
    def is_null_literal(self) -> bool:
        return self.op == "lit" and self.value is None


def cast(node: Node, to: SqlType) -> Node:
    """``node`` converted to ``to``: no-op for the same type, a typed NULL for a NULL literal."""
    if node.type == to:
        return node
    if node.is_null_literal:
        return Node("lit", to, value=None, span=node.span)
    if node.op == "lit" and node.type.is_integral:
        # Lossless conversions of integer literals are folded (Spark's result is the same value).
        v = int(node.value)
        if to.name == "long" or (to.name == "int" and -(2**31) <= v < 2**31):
            return Node("lit", to, value=v, span=node.span)
        if to.name == "double" and abs(v) <= 2**53:
            return Node("lit", to, value=float(v), span=node.span)
        if to.name == "decimal" and len(str(abs(v))) <= to.precision - to.scale:
            from decimal import Decimal

            return Node("lit", to, value=Decimal(v).scaleb(-to.scale).scaleb(to.scale), span=node.span)
    return Node("cast", to, (node,), span=node.span)
