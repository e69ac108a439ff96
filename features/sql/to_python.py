"""Typed tree -> Python source for a row function, compiled once with ``compile()``.

The generated code is straight-line statements over local temporaries; NULL (None) propagation and
three-valued logic are emitted inline, Spark semantics live in :mod:`features.sql.runtime`. User text is
never evaluated: literals are emitted with ``repr`` (or bound as named constants), names are not taken
from the user (columns are read with ``r.get(<repr of the name>)``).
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from features.sql import runtime as _rt
from features.sql import types as T
from features.sql.ir import Node
from features.sql.types import SqlType

CastEmit = Callable[[str, SqlType], str]


def _ps(t: SqlType) -> str:
    return f"{t.precision!r}, {t.scale!r}"


# (from, to) -> emitter; the allowed explicit CASTs are exactly these keys.
CASTS: dict[tuple[str, str], CastEmit] = {}
for _i in ("int", "long"):
    CASTS[(_i, "int")] = lambda a, t: f"_rt.wrap32({a})"
    CASTS[(_i, "long")] = lambda a, t: a
    CASTS[(_i, "double")] = lambda a, t: f"float({a})"
    CASTS[(_i, "decimal")] = lambda a, t: f"_rt.dec_fit(_Decimal({a}), {_ps(t)})"
    CASTS[(_i, "string")] = lambda a, t: f"str({a})"
    CASTS[(_i, "boolean")] = lambda a, t: f"({a} != 0)"
CASTS.update(
    {
        ("double", "int"): lambda a, t: f"_rt.d2i({a}, 32)",
        ("double", "long"): lambda a, t: f"_rt.d2i({a}, 64)",
        ("double", "decimal"): lambda a, t: f"_rt.dec_from_float({a}, {_ps(t)})",
        ("double", "string"): lambda a, t: f"_rt.java_double_str({a})",
        ("double", "boolean"): lambda a, t: f"({a} != 0.0)",
        ("decimal", "int"): lambda a, t: f"_rt.dec_to_long({a}, 32)",
        ("decimal", "long"): lambda a, t: f"_rt.dec_to_long({a}, 64)",
        ("decimal", "double"): lambda a, t: f"float({a})",
        ("decimal", "decimal"): lambda a, t: f"_rt.dec_fit({a}, {_ps(t)})",
        ("decimal", "string"): lambda a, t: f"_rt.dec_str({a})",
        ("decimal", "boolean"): lambda a, t: f"({a} != 0)",
        ("string", "int"): lambda a, t: f"_rt.str_to_long({a}, 32)",
        ("string", "long"): lambda a, t: f"_rt.str_to_long({a}, 64)",
        ("string", "double"): lambda a, t: f"_rt.str_to_double({a})",
        ("string", "decimal"): lambda a, t: f"_rt.str_to_dec({a}, {_ps(t)})",
        ("string", "boolean"): lambda a, t: f"_rt.str_to_bool({a})",
        ("string", "date"): lambda a, t: f"_rt.str_to_date({a})",
        ("boolean", "int"): lambda a, t: f"int({a})",
        ("boolean", "long"): lambda a, t: f"int({a})",
        ("boolean", "double"): lambda a, t: f"float({a})",
        ("boolean", "decimal"): lambda a, t: f"_rt.dec_fit(_Decimal(int({a})), {_ps(t)})",
        ("boolean", "string"): lambda a, t: f"('true' if {a} else 'false')",
        ("date", "string"): lambda a, t: f"_rt.date_str({a})",
        ("date", "timestamp"): lambda a, t: f"({a} * 86400000000)",
        ("timestamp", "date"): lambda a, t: f"({a} // 86400000000)",
        ("timestamp", "long"): lambda a, t: f"({a} // 1000000)",
    }
)
# Casts that can produce NULL from a non-NULL input.
_NULLABLE_CASTS = {("string", x) for x in ("int", "long", "double", "decimal", "boolean", "date")} | {
    (x, "decimal") for x in ("int", "long", "double", "decimal", "boolean")
}

_INT_BOUNDS = {"int": (-2147483648, 2147483647), "long": (-9223372036854775808, 9223372036854775807)}
_CMP = {"eq": "==", "neq": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}


class _Gen:
    """Emits statements into ``lines``; ``expr`` returns an atom (a local name or a literal)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.consts: dict[str, Any] = {}
        self.n = 0
        self.nonnull: set[str] = set()
        self.cols: dict[str, str] = {}

    def tmp(self) -> str:
        self.n += 1
        return f"t{self.n}"

    def const(self, value: Any) -> str:
        name = f"_K{len(self.consts)}"
        self.consts[name] = value
        return name

    def emit(self, ind: int, line: str) -> None:
        self.lines.append("    " * ind + line)

    def assign(self, ind: int, code: str, nullable: Sequence[str], can_be_null: bool = False) -> str:
        t = self.tmp()
        checks = [a for a in nullable if a not in self.nonnull and a != "None" and not _is_literal(a)]
        if checks:
            cond = " or ".join(f"{a} is None" for a in checks)
            self.emit(ind, f"{t} = None if ({cond}) else {code}")
        else:
            self.emit(ind, f"{t} = {code}")
            if not can_be_null:
                self.nonnull.add(t)
        return t

    # ---- expressions -----------------------------------------------------------------------------------
    def expr(self, n: Node, ind: int) -> str:
        op = n.op
        if op == "col":
            return self.cols[n.value]
        if op == "lit":
            return self.literal(n)
        if op in ("and", "or"):
            return self.bool_op(n, ind)
        if op == "case":
            return self.case(n, ind)
        if op == "coalesce":
            return self.coalesce(n, ind)
        if op == "nseq":
            return self.nseq(n, ind)
        args = [self.expr(a, ind) for a in n.args]
        if op == "isnull":
            return self.assign(ind, f"({args[0]} is None)", [])
        if op == "isnotnull":
            return self.assign(ind, f"({args[0]} is not None)", [])
        if op == "not":
            return self.assign(ind, f"(not {args[0]})", args)
        if op == "cast":
            src = n.args[0].type
            code = CASTS[(src.name, n.type.name)](args[0], n.type)
            return self.assign(ind, code, args, (src.name, n.type.name) in _NULLABLE_CASTS)
        if op in _CMP:
            return self.compare(op, n.args[0].type, args, ind)
        if op in ("add", "sub", "mul", "neg"):
            return self.arith(op, n.type, args, ind)
        if op == "div":
            if n.type == T.DOUBLE:
                nulls = [a for a in args if a not in self.nonnull and not _is_literal(a)]
                cond = " or ".join([f"{a} is None" for a in nulls] + [f"{args[1]} == 0.0"])
                t = self.tmp()
                self.emit(ind, f"{t} = None if ({cond}) else {args[0]} / {args[1]}")
                return t
            return self.assign(ind, f"_rt.dec_div({args[0]}, {args[1]}, {_ps(n.type)})", args, True)
        if op == "intdiv":
            return self.assign(ind, f"_rt.int_div({args[0]}, {args[1]})", args, True)
        if op == "mod":
            if n.type.is_integral:
                return self.assign(ind, f"_rt.int_mod({args[0]}, {args[1]})", args, True)
            if n.type == T.DOUBLE:
                return self.assign(ind, f"_rt.float_mod({args[0]}, {args[1]})", args, True)
            return self.assign(ind, f"_rt.dec_mod({args[0]}, {args[1]}, {_ps(n.type)})", args, True)
        if op == "in":
            return self.in_(n, args, ind)
        if op == "like":
            pat = n.args[1]
            if pat.op == "lit" and pat.value is not None:
                rx = self.const(_rt.like_regex(pat.value, n.value))
                return self.assign(ind, f"({rx}.fullmatch({args[0]}) is not None)", [args[0]])
            return self.assign(ind, f"_rt.like({args[0]}, {args[1]}, {n.value!r})", args)
        if op == "fn":
            from features.sql.functions import FUNCTIONS

            name, _consts = n.value
            spec = FUNCTIONS[name]
            code = spec.py(args, n)
            can_null = name in ("ln", "log10") or n.type.name == "decimal"
            return self.assign(ind, code, args if spec.strict else [], can_null or not spec.strict)
        raise ValueError(f"cannot emit {op!r} as Python")

    def literal(self, n: Node) -> str:
        v = n.value
        if v is None:
            return "None"
        if isinstance(v, bool | int | str):
            self.nonnull.add(repr(v))
            return repr(v)
        if isinstance(v, float) and math.isfinite(v):
            r = repr(v)
            self.nonnull.add(r)
            return f"({r})" if v < 0 else r
        name = self.const(Decimal(v) if n.type.name == "decimal" else v)
        self.nonnull.add(name)
        return name

    def arith(self, op: str, t: SqlType, args: list[str], ind: int) -> str:
        if op == "neg":
            code = f"_DC.minus({args[0]})" if t.name == "decimal" else f"(-{args[0]})"
        elif t.name == "decimal":
            fn = {"add": "add", "sub": "subtract", "mul": "multiply"}[op]
            return self.assign(ind, f"_rt.dec_fit(_DC.{fn}({args[0]}, {args[1]}), {_ps(t)})", args, True)
        else:
            code = f"{args[0]} {'+-*'[['add', 'sub', 'mul'].index(op)]} {args[1]}"
        tv = self.assign(ind, code, args)
        if t.name in _INT_BOUNDS:
            lo, hi = _INT_BOUNDS[t.name]
            w = "wrap32" if t.name == "int" else "wrap64"
            self.emit(ind, f"if {tv} is not None and not {lo} <= {tv} <= {hi}: {tv} = _rt.{w}({tv})")
        return tv

    def compare(self, op: str, t: SqlType, args: list[str], ind: int) -> str:
        a, b = args
        lit_a, lit_b = self._finite_literal(a), self._finite_literal(b)
        if t == T.DOUBLE and (lit_a or lit_b):
            # Against a non-NaN constant only ">"/">=" differ from Python (Spark orders NaN above all).
            x = b if lit_a else a
            flipped = {"lt": "gt", "gt": "lt", "le": "ge", "ge": "le"}.get(op, op) if lit_a else op
            code = f"({a} {_CMP[op]} {b})"
            if flipped in ("gt", "ge"):
                code = f"({a} {_CMP[op]} {b} or {x} != {x})"
        elif t == T.DOUBLE:
            code = {
                "eq": f"_rt.d_eq({a}, {b})",
                "neq": f"(not _rt.d_eq({a}, {b}))",
                "lt": f"_rt.d_lt({a}, {b})",
                "le": f"_rt.d_le({a}, {b})",
                "gt": f"_rt.d_lt({b}, {a})",
                "ge": f"_rt.d_le({b}, {a})",
            }[op]
        else:
            code = f"({a} {_CMP[op]} {b})"
        return self.assign(ind, code, args)

    def _finite_literal(self, atom: str) -> bool:
        try:
            return math.isfinite(float(atom.strip("()")))
        except ValueError:
            return False

    def nseq(self, n: Node, ind: int) -> str:
        a, b = (self.expr(x, ind) for x in n.args)
        eq = f"_rt.d_eq({a}, {b})" if n.args[0].type == T.DOUBLE else f"{a} == {b}"
        return self.assign(
            ind, f"(({a} is None and {b} is None) or ({a} is not None and {b} is not None and {eq}))", []
        )

    def in_(self, n: Node, args: list[str], ind: int) -> str:
        items = n.args[1:]
        is_double = n.args[0].type == T.DOUBLE
        if not is_double and all(i.op == "lit" and i.value is not None for i in items):
            s = self.const(frozenset(i.value for i in items))
            return self.assign(ind, f"({args[0]} in {s})", [args[0]])
        tup = "(" + "".join(f"{a}, " for a in args[1:]) + ")"
        return self.assign(ind, f"_rt.in_list({args[0]}, {tup}, {is_double!r})", [args[0]], True)

    def bool_op(self, n: Node, ind: int) -> str:
        """Three-valued AND/OR with short-circuit on the deciding value (FALSE for AND, TRUE for OR)."""
        decide = "False" if n.op == "and" else "True"
        other = "True" if n.op == "and" else "False"
        t = self.tmp()
        a = self.expr(n.args[0], ind)
        self.emit(ind, f"if {a} is {decide}:")
        self.emit(ind + 1, f"{t} = {decide}")
        self.emit(ind, "else:")
        saved = set(self.nonnull)
        b = self.expr(n.args[1], ind + 1)
        self.nonnull = saved
        self.emit(
            ind + 1,
            f"{t} = {decide} if {b} is {decide} else (None if ({a} is None or {b} is None) else {other})",
        )
        return t

    def case(self, n: Node, ind: int) -> str:
        t = self.tmp()
        args = n.args
        depth = ind
        saved = set(self.nonnull)
        for i in range(0, len(args) - 1, 2):
            c = self.expr(args[i], depth)
            self.emit(depth, f"if {c} is True:")
            r = self.expr(args[i + 1], depth + 1)
            self.emit(depth + 1, f"{t} = {r}")
            self.emit(depth, "else:")
            depth += 1
        e = self.expr(args[-1], depth)
        self.emit(depth, f"{t} = {e}")
        self.nonnull = saved
        return t

    def coalesce(self, n: Node, ind: int) -> str:
        t = self.tmp()
        saved = set(self.nonnull)
        depth = ind
        for i, a in enumerate(n.args):
            v = self.expr(a, depth)
            self.emit(depth, f"{t} = {v}")
            if i < len(n.args) - 1:
                self.emit(depth, f"if {t} is None:")
                depth += 1
        self.nonnull = saved
        return t

    # ---- columns ---------------------------------------------------------------------------------------
    def load_column(self, name: str, t: SqlType) -> str:
        var = f"c{len(self.cols)}"
        self.cols[name] = var
        self.emit(1, f"{var} = r.get({name!r})")
        if t == T.DOUBLE:
            self.emit(1, f"if {var} is not None and {var}.__class__ is not float: {var} = float({var})")
        elif t.name == "decimal":
            self.emit(
                1, f"if {var} is not None and {var}.__class__ is not _Decimal: {var} = _rt.as_decimal({var})"
            )
        elif t == T.DATE:
            self.emit(1, f"if {var} is not None: {var} = _rt.date_days({var})")
        return var


def output_value(t: SqlType, atom: str) -> str:
    """Python expression converting an internal value to its boundary form (dates -> datetime.date)."""
    if t == T.DATE:
        return f"(None if {atom} is None else _rt.to_date_obj({atom}))"
    return atom


def build_row_function(
    schema: Mapping[str, SqlType],
    outputs: Sequence[tuple[str, Node | None]],
    where: Node | None,
    fn_name: str = "row_fn",
) -> tuple[Callable[[Mapping[str, Any]], dict[str, Any] | None], str]:
    """Compile ``outputs`` (name, tree; None = pass the column through) and an optional ``where``.

    Returns the function and its source (for debugging and golden tests).
    """
    g = _Gen()
    g.emit(0, f"def {fn_name}(r):")
    needed: list[str] = []
    trees = ([where] if where is not None else []) + [n for _, n in outputs if n is not None]
    for tree in trees:
        _collect_cols(tree, needed)
    needed += [name for name, n in outputs if n is None and name not in needed]
    for name in needed:
        g.load_column(name, schema[name])
    if where is not None:
        w = g.expr(where, 1)
        g.emit(1, f"if {w} is not True:")
        g.emit(2, "return None")
    items = []
    for name, node in outputs:
        if node is None:
            items.append(f"{name!r}: {output_value(schema[name], g.cols[name])}")
        else:
            atom = g.expr(node, 1)
            items.append(f"{name!r}: {output_value(node.type, atom)}")
    g.emit(1, "return {" + ", ".join(items) + "}")
    source = "\n".join(g.lines) + "\n"
    namespace: dict[str, Any] = {"_rt": _rt, "_DC": _rt.DEC_CTX, "_Decimal": Decimal, **g.consts}
    code = compile(source, f"<tessera-sql:{fn_name}>", "exec")
    exec(code, namespace)  # generated source only; user text never reaches it except through repr()
    fn = namespace[fn_name]
    return fn, source


def build_expression_function(
    schema: Mapping[str, SqlType], node: Node
) -> tuple[Callable[[Mapping[str, Any]], Any], str]:
    """Compile one expression into ``fn(row) -> value`` (dates as datetime.date)."""
    g = _Gen()
    g.emit(0, "def expr_fn(r):")
    needed: list[str] = []
    _collect_cols(node, needed)
    for name in needed:
        g.load_column(name, schema[name])
    atom = g.expr(node, 1)
    g.emit(1, f"return {output_value(node.type, atom)}")
    source = "\n".join(g.lines) + "\n"
    namespace: dict[str, Any] = {"_rt": _rt, "_DC": _rt.DEC_CTX, "_Decimal": Decimal, **g.consts}
    exec(compile(source, "<tessera-sql:expr_fn>", "exec"), namespace)
    return namespace["expr_fn"], source


def _collect_cols(n: Node, out: list[str]) -> None:
    if n.op == "col" and n.value not in out:
        out.append(n.value)
    for a in n.args:
        _collect_cols(a, out)


def _is_literal(code: str) -> bool:
    """True for generated code that is a non-null Python literal (``1``, ``(-1.0)``, ``'x'``): never None."""
    try:
        return ast.literal_eval(code) is not None
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False
