"""Parse, resolve, type-check and reject: Spark SQL text -> typed :class:`~features.sql.ir.Node` tree.

The pass collects every problem in the expression (with character spans) and raises them together as one
:class:`SqlError`. It inserts Spark's implicit conversions as explicit casts (Spark 4 rules with
``spark.sql.ansi.enabled=false``), so both backends see identical operand types.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from features.sql import types as T
from features.sql.errors import SqlError, SqlProblem
from features.sql.functions import FUNCTIONS, NON_DETERMINISTIC, Reject, common, like_pattern_check
from features.sql.ir import Node, cast
from features.sql.to_python import CASTS
from features.sql.to_spark import to_spark
from features.sql.types import SqlType

Kind = Literal["select", "where", "derivation"]
ERR = Node("err", T.ERROR)


@dataclass(frozen=True)
class AnalyzedExpr:
    """A checked expression: ``spark_sql`` (normalized, columns back-quoted, implicit casts explicit),
    ``output_type`` (Spark type name), ``columns`` (referenced schema columns, first use first)."""

    text: str
    kind: str
    node: Node
    output_type: str
    columns: tuple[str, ...]
    spark_sql: str


def parse_schema(schema: Mapping[str, str]) -> dict[str, SqlType]:
    """Column name -> :class:`SqlType`; raises ValueError naming a bad column type."""
    out: dict[str, SqlType] = {}
    for name, tname in schema.items():
        try:
            out[name] = T.parse_type(tname)
        except ValueError as e:
            raise ValueError(f"column {name!r}: {e}") from None
    return out


def analyze_expression(sql: str, schema: Mapping[str, str], *, kind: Kind = "derivation") -> AnalyzedExpr:
    """Check ``sql`` against ``schema`` and type it; raise :class:`SqlError` listing every problem.

    >>> a = analyze_expression("amount * 2", {"amount": "double"}, kind="select")
    >>> a.spark_sql, a.output_type, a.columns
    ('`amount` * 2.0D', 'double', ('amount',))
    """
    if kind not in ("select", "where", "derivation"):
        raise ValueError(f"kind must be 'select', 'where' or 'derivation', got {kind!r}")
    return _Analyzer(sql, parse_schema(schema), kind).run()


_TYPE_NAMES = {
    exp.DataType.Type.BIGINT: T.LONG,
    exp.DataType.Type.INT: T.INT,
    exp.DataType.Type.DOUBLE: T.DOUBLE,
    exp.DataType.Type.TEXT: T.STRING,
    exp.DataType.Type.VARCHAR: T.STRING,
    exp.DataType.Type.BOOLEAN: T.BOOLEAN,
    exp.DataType.Type.DATE: T.DATE,
}
_ARITH: dict[type, str] = {
    exp.Add: "add",
    exp.Sub: "sub",
    exp.Mul: "mul",
    exp.Div: "div",
    exp.Mod: "mod",
    exp.IntDiv: "intdiv",
}
_CMP: dict[type, str] = {
    exp.EQ: "eq",
    exp.NEQ: "neq",
    exp.LT: "lt",
    exp.LTE: "le",
    exp.GT: "gt",
    exp.GTE: "ge",
    exp.NullSafeEQ: "nseq",
}
# sqlglot >= 30 roots its tree at exp.Expr (exp.Expression is a subclass); older versions at exp.Expression.
_AST: type[exp.Expr] = getattr(exp, "Expr", None) or exp.Expression
_SYNTHETIC = (exp.TsOrDsToDate, exp.TimeStrToTime, exp.TsOrDsToTimestamp)
_NONDET_CLASSES: tuple[type, ...] = (exp.Rand, exp.Uuid, exp.CurrentTimestamp, exp.CurrentDate)


class _Analyzer:
    def __init__(self, text: str, schema: dict[str, SqlType], kind: str) -> None:
        self.text = text
        self.low = text.lower()
        self.schema = schema
        self.lower_names = {n.lower(): n for n in schema}
        self.kind = kind
        self.problems: list[SqlProblem] = []
        self.columns: list[str] = []
        self._spans: dict[int, tuple[int, int]] = {}

    # ---- driver -------------------------------------------------------------------------------------
    def run(self) -> AnalyzedExpr:
        tree = self._parse()
        node = ERR if tree is None else self.visit(tree)
        if not self.problems and tree is not None:
            self._check_result(node, tree)
        if self.problems:
            raise SqlError(self.problems, self.text, self.kind)
        return AnalyzedExpr(self.text, self.kind, node, str(node.type), tuple(self.columns), to_spark(node))

    def _parse(self) -> exp.Expr | None:
        if not self.text.strip():
            self.problems.append(
                SqlProblem("empty expression", 0, len(self.text), "write a Spark SQL expression")
            )
            return None
        try:
            trees = sqlglot.parse(self.text, dialect="spark")
        except ParseError as e:
            for err in e.errors[:1]:
                self.problems.append(self._parse_problem(err))
            return None
        except TokenError as e:
            del e
            quote = max(self.text.rfind("'"), self.text.rfind('"'), self.text.rfind("`"))
            start = quote if quote >= 0 else 0
            self.problems.append(
                SqlProblem(
                    "syntax error: unterminated string or quoted name",
                    start,
                    len(self.text),
                    "close every ' \" and ` (write a quote inside a string as \\')",
                )
            )
            return None
        real = [t for t in trees if t is not None]
        if len(real) != 1:
            self.problems.append(
                SqlProblem(
                    "expected exactly one expression",
                    0,
                    len(self.text),
                    "remove the ';' and everything after it",
                )
            )
            return None
        return real[0]

    def _parse_problem(self, err: Mapping[str, Any]) -> SqlProblem:
        line, col = int(err.get("line") or 1), int(err.get("col") or 1)
        highlight = str(err.get("highlight") or "")
        offset = 0
        for _ in range(line - 1):
            nl = self.text.find("\n", offset)
            offset = len(self.text) if nl < 0 else nl + 1
        end = min(len(self.text), offset + col)
        start = max(0, end - max(1, len(highlight)))
        desc = str(err.get("description") or "invalid syntax")
        if "Required keyword" in desc:
            desc = "an operand is missing"
        return SqlProblem(
            f"syntax error: {desc} near {highlight!r}",
            start,
            end,
            "check the expression near the underlined text (Spark SQL syntax)",
        )

    def _check_result(self, node: Node, tree: exp.Expr) -> None:
        lo, hi = self.span(tree)
        t = node.type
        if self.kind == "where":
            if t != T.BOOLEAN:
                self.problems.append(
                    SqlProblem(
                        f"a where must be boolean, this is {t}",
                        lo,
                        hi,
                        "write a predicate, e.g. x <> 0 or status = 'ok'",
                    )
                )
        elif t == T.TIMESTAMP:
            self.problems.append(
                SqlProblem(
                    "a timestamp cannot be an output",
                    lo,
                    hi,
                    "output epoch ms with unix_millis(...) or text with date_format(...)",
                )
            )
        elif t == T.NULL:
            self.problems.append(
                SqlProblem("the output is always NULL and has no type", lo, hi, "write CAST(NULL AS <type>)")
            )

    # ---- spans --------------------------------------------------------------------------------------
    def span(self, e: exp.Expr) -> tuple[int, int]:
        """Character span ``[start, end)`` of ``e`` in the source text (best effort around keywords)."""
        key = id(e)
        hit = self._spans.get(key)
        if hit is not None:
            return hit
        lo, hi = len(self.text), -1
        if "start" in e.meta:
            lo, hi = e.meta["start"], e.meta["end"] + 1
        for child in e.iter_expressions():
            clo, chi = self.span(child)
            if chi > clo or chi > 0:
                lo, hi = min(lo, clo), max(hi, chi)
        if hi < 0:
            lo, hi = 0, len(self.text)
        text = self.text
        if isinstance(e, exp.Case):
            i = self.low.rfind("case", 0, lo + 1)
            lo = i if i >= 0 else lo
            m = re.compile(r"\bend\b").search(self.low, hi)
            hi = m.end() if m else hi
        elif isinstance(e, (exp.Func, exp.Paren)):
            if not isinstance(e, exp.Paren) and "start" in e.meta and e.meta["end"] + 1 >= hi:
                j = _skip_ws(text, hi)
                if j < len(text) and text[j] == "(":
                    hi = j + 1
            j = _skip_ws(text, hi)
            if j < len(text) and text[j] == ")":
                hi = j + 1
            if "start" not in e.meta:
                i = _back_ws(text, lo)
                if i > 0 and text[i - 1] == "(":
                    lo = i - 1
                    if not isinstance(e, exp.Paren):
                        k = _back_ws(text, lo)
                        while k > 0 and (text[k - 1].isalnum() or text[k - 1] == "_"):
                            k -= 1
                        lo = k if k < lo else lo
        elif isinstance(e, (exp.Not, exp.Neg)):
            i = _back_ws(text, lo)
            if i > 0 and text[i - 1] in "!-":
                lo = i - 1
            elif i >= 3 and self.low[i - 3 : i] == "not":
                lo = i - 3
        self._spans[key] = (lo, hi)
        return lo, hi

    def problem(self, e: exp.Expr, message: str, fix: str) -> Node:
        lo, hi = self.span(e)
        self.problems.append(SqlProblem(message, lo, hi, fix))
        return ERR

    # ---- visitors -------------------------------------------------------------------------------------
    def visit(self, e: exp.Expr) -> Node:
        node = self._visit(e)
        if node.span == (0, 0) and node.op != "err":
            node = Node(node.op, node.type, node.args, node.value, self.span(e))
        return node

    def _visit(self, e: exp.Expr) -> Node:
        if isinstance(e, exp.Paren):
            return self.visit(e.this)
        if isinstance(e, _SYNTHETIC) and "start" not in e.meta:
            return self.visit(e.this)  # a conversion sqlglot inserted around an argument, not user text
        if isinstance(e, exp.Column):
            return self._column(e)
        if isinstance(e, exp.Literal):
            return _literal(e)
        if isinstance(e, exp.Boolean):
            return Node("lit", T.BOOLEAN, value=bool(e.this))
        if isinstance(e, exp.Null):
            return Node("lit", T.NULL, value=None)
        if isinstance(e, (exp.Subquery, exp.Select, exp.Exists)) or (
            isinstance(e, exp.In) and e.args.get("query")
        ):
            return self.problem(
                e,
                "subqueries are not allowed in row logic",
                "compute the value in another feature, or join it as a JoinPart",
            )
        if isinstance(e, exp.Window):
            return self.problem(
                e,
                "window functions are not allowed in row logic",
                "declare an Aggregation with windows=[...] on the GroupBy instead",
            )
        if isinstance(e, (exp.AggFunc, exp.Filter)):
            return self.problem(
                e,
                f"aggregate function {self._fname(e).upper()} is not allowed in row logic",
                "row logic maps one event; declare an Aggregation (Op.SUM, Op.COUNT, ...) instead",
            )
        if isinstance(e, exp.Neg):
            return self._neg(e)
        if type(e) in _ARITH:
            return self._arith(e, _ARITH[type(e)])
        if type(e) in _CMP:
            return self._compare(e, _CMP[type(e)], self.visit(e.this), self.visit(e.expression))
        if isinstance(e, (exp.And, exp.Or)):
            return self._bool_op(e, "and" if isinstance(e, exp.And) else "or", [e.this, e.expression])
        if isinstance(e, exp.Not):
            return self._not(e)
        if isinstance(e, exp.Is):
            if isinstance(e.expression, exp.Null):
                return Node("isnull", T.BOOLEAN, (self.visit(e.this),))
            return self.problem(
                e, "IS TRUE / IS FALSE is not supported", "write x <=> TRUE or COALESCE(x, FALSE)"
            )
        if isinstance(e, exp.In):
            return self._in(e)
        if isinstance(e, exp.Between):
            x = self.visit(e.this)
            lo = self._compare(e, "ge", x, self.visit(e.args["low"]))
            hi = self._compare(e, "le", x, self.visit(e.args["high"]))
            return _and(lo, hi)
        if isinstance(e, (exp.Like, exp.Escape)):
            return self._like(e)
        if isinstance(e, exp.ILike):
            return self.problem(e, "ILIKE is not supported", "write LOWER(s) LIKE 'pattern'")
        if isinstance(e, (exp.RegexpLike, exp.RegexpILike)):
            return self.problem(
                e,
                "RLIKE/REGEXP is not supported: Java and Python regexes differ",
                "use LIKE, STARTSWITH, ENDSWITH or INSTR",
            )
        if isinstance(e, exp.Case):
            return self._case(e)
        if isinstance(e, exp.If):
            return self._if_chain(e, [(e.this, e.args["true"])], e.args.get("false"))
        if isinstance(e, exp.Coalesce):
            return self._coalesce(e)
        if isinstance(e, exp.Nullif):
            return self._nullif(e)
        if isinstance(e, (exp.Cast, exp.TryCast)):
            return self._cast(e)
        if isinstance(e, exp.DPipe):
            return self._function(e, "concat", [e.this, e.expression])
        if isinstance(e, exp.Alias):
            return self.problem(
                e, "an alias is not allowed here", "remove 'AS name'; the dict key names the output"
            )
        if isinstance(e, exp.Func):
            return self._func(e)
        return self.problem(
            e,
            f"unsupported syntax: {e.sql(dialect='spark')[:60]}",
            "use columns, literals, operators, CASE, CAST and the supported functions",
        )

    def _column(self, e: exp.Column) -> Node:
        if e.table:
            return self.problem(
                e,
                f"qualified or nested name {e.sql(dialect='spark')!r} is not supported",
                f"write the column name alone: {e.name!r}",
            )
        name = e.name
        real = name if name in self.schema else self.lower_names.get(name.lower())
        if real is None:
            close = difflib.get_close_matches(name, list(self.schema), n=3, cutoff=0.5)
            if not close:
                close = difflib.get_close_matches(name.lower(), list(self.lower_names), n=3, cutoff=0.5)
                close = [self.lower_names[c] for c in close]
            fix = (
                f"did you mean {' or '.join(repr(c) for c in close)}?"
                if close
                else f"columns are: {', '.join(sorted(self.schema))}"
            )
            return self.problem(e, f"unknown column {name!r}", fix)
        if real not in self.columns:
            self.columns.append(real)
        return Node("col", self.schema[real], value=real)

    def _neg(self, e: exp.Neg) -> Node:
        x = self.visit(e.this)
        if x.type == T.ERROR:
            return ERR
        if x.op == "lit" and x.value is not None and x.type.is_numeric:
            v = -x.value
            t = x.type
            if t.is_integral:
                t = T.INT if -(2**31) <= v < 2**31 else T.LONG
            return Node("lit", t, value=v)
        if not (x.type.is_numeric or x.type == T.NULL):
            return self.problem(e, f"cannot negate a {x.type}", "negate a number")
        return Node("neg", x.type if x.type != T.NULL else T.INT, (x,))

    def _arith(self, e: exp.Expr, op: str) -> Node:
        a, b = self.visit(e.this), self.visit(e.expression)
        if T.ERROR in (a.type, b.type):
            return ERR
        sym = {"add": "+", "sub": "-", "mul": "*", "div": "/", "mod": "%", "intdiv": "div"}[op]
        for x in (a, b):
            if not (x.type.is_numeric or x.type == T.NULL):
                if x.type == T.STRING:
                    fix = "CAST the string to a number, e.g. CAST(s AS DOUBLE); concatenate with concat()"
                elif x.type in (T.DATE, T.TIMESTAMP):
                    fix = "do time arithmetic on epoch-ms longs (e.g. ts_ms + 3600000)"
                else:
                    fix = "use numbers on both sides"
                return self.problem(e, f"arithmetic '{sym}' on {x.type} ({a.type} {sym} {b.type})", fix)
        ta = a.type if a.type != T.NULL else b.type
        tb = b.type if b.type != T.NULL else a.type
        if ta == T.NULL:
            ta = tb = T.INT if op != "div" else T.DOUBLE
        if op == "intdiv":
            if not (ta.is_integral and tb.is_integral):
                return self.problem(
                    e,
                    f"'div' needs integers, got {a.type} and {b.type}",
                    "CAST both sides AS BIGINT, or use / for a fractional result",
                )
            return Node(op, T.LONG, (cast(a, T.LONG), cast(b, T.LONG)))
        if T.DOUBLE in (ta, tb) or (op == "div" and ta.is_integral and tb.is_integral):
            return Node(op, T.DOUBLE, (cast(a, T.DOUBLE), cast(b, T.DOUBLE)))
        if ta.name == "decimal" or tb.name == "decimal":
            da, db = _dec_operand(a, ta), _dec_operand(b, tb)
            return Node(op, _decimal_result(op, da, db), (cast(a, da), cast(b, db)))
        t = ta if ta == tb else T.LONG
        return Node(op, t, (cast(a, t), cast(b, t)))

    def _compare(self, e: exp.Expr, op: str, a: Node, b: Node) -> Node:
        if T.ERROR in (a.type, b.type):
            return ERR
        if {a.type, b.type} == {T.DATE, T.STRING}:
            return Node(op, T.BOOLEAN, (cast(a, T.DATE), cast(b, T.DATE)))
        t = T.wider(a.type, b.type)
        if t is None:
            return self.problem(
                e,
                f"cannot compare {a.type} with {b.type}",
                "CAST one side, e.g. CAST(x AS STRING) or CAST(s AS BIGINT)",
            )
        if t == T.NULL:
            t = T.BOOLEAN
        return Node(op, T.BOOLEAN, (cast(a, t), cast(b, t)))

    def _bool_arg(self, e: exp.Expr, what: str) -> Node:
        x = self.visit(e)
        if x.type in (T.BOOLEAN, T.ERROR):
            return x
        if x.type == T.NULL:
            return cast(x, T.BOOLEAN)
        self.problem(e, f"{what} needs a boolean, got {x.type}", "compare explicitly, e.g. x <> 0 or s = 'Y'")
        return ERR

    def _bool_op(self, e: exp.Expr, op: str, parts: list[exp.Expr]) -> Node:
        args = [self._bool_arg(p, op.upper()) for p in parts]
        if any(a.type == T.ERROR for a in args):
            return ERR
        return Node(op, T.BOOLEAN, tuple(args))

    def _not(self, e: exp.Not) -> Node:
        inner = e.this
        if isinstance(inner, exp.Is) and isinstance(inner.expression, exp.Null):
            return Node("isnotnull", T.BOOLEAN, (self.visit(inner.this),))
        x = self._bool_arg(inner, "NOT")
        return ERR if x.type == T.ERROR else Node("not", T.BOOLEAN, (x,))

    def _in(self, e: exp.In) -> Node:
        x = self.visit(e.this)
        items = [self.visit(i) for i in e.expressions]
        if any(n.type == T.ERROR for n in [x, *items]):
            return ERR
        try:
            t = common([x, *items], "IN")
        except Reject as r:
            return self.problem(e, r.message, r.fix)
        if t == T.NULL:
            t = T.BOOLEAN
        return Node("in", T.BOOLEAN, tuple(cast(n, t) for n in [x, *items]))

    def _like(self, e: exp.Expr) -> Node:
        escape = "\\"
        like = e
        if isinstance(e, exp.Escape):
            like = e.this
            esc = e.expression
            if not (isinstance(esc, exp.Literal) and esc.is_string and len(esc.this) == 1):
                return self.problem(esc, "ESCAPE needs a single-character string", "write ESCAPE '!'")
            escape = esc.this
        if not isinstance(like, exp.Like):
            return self.problem(e, "unsupported ESCAPE usage", "write s LIKE 'pattern' ESCAPE '!'")
        s, p = self.visit(like.this), self.visit(like.expression)
        if T.ERROR in (s.type, p.type):
            return ERR
        for n, src in ((s, like.this), (p, like.expression)):
            if n.type not in (T.STRING, T.NULL):
                return self.problem(src, f"LIKE needs strings, got {n.type}", "CAST the value AS STRING")
        if p.op == "lit" and p.value is not None:
            msg = like_pattern_check(p.value, escape)
            if msg:
                return self.problem(like.expression, msg, f"escape only '_', '%' or {escape!r} itself")
        node = Node("like", T.BOOLEAN, (cast(s, T.STRING), cast(p, T.STRING)), value=escape)
        return Node("not", T.BOOLEAN, (node,)) if like.args.get("negate") else node

    def _case(self, e: exp.Case) -> Node:
        base = e.this
        pairs: list[tuple[Node, Node]] = []
        base_node = self.visit(base) if base is not None else None
        whens = [(w.this, w.args["true"]) for w in e.args.get("ifs") or []]
        if base_node is not None:
            vals = [self.visit(c) for c, _ in whens]
            if any(v.type == T.ERROR for v in [base_node, *vals]):
                return ERR
            try:
                ct = common([base_node, *vals], "CASE operand and WHEN values")
            except Reject as rej:
                return self.problem(e, rej.message, rej.fix)
            conds = [Node("eq", T.BOOLEAN, (cast(base_node, ct), cast(v, ct))) for v in vals]
        else:
            conds = [self._bool_arg(c, "WHEN") for c, _ in whens]
        results = [self.visit(r) for _, r in whens]
        default = self.visit(e.args["default"]) if e.args.get("default") is not None else None
        return self._branches(e, list(zip(conds, results)), default, pairs)

    def _if_chain(
        self, e: exp.Expr, whens: list[tuple[exp.Expr, exp.Expr]], default: exp.Expr | None
    ) -> Node:
        conds = [self._bool_arg(c, "IF") for c, _ in whens]
        results = [self.visit(r) for _, r in whens]
        d = self.visit(default) if default is not None else None
        return self._branches(e, list(zip(conds, results)), d, [])

    def _branches(
        self,
        e: exp.Expr,
        pairs: list[tuple[Node, Node]],
        default: Node | None,
        _unused: list[tuple[Node, Node]],
    ) -> Node:
        outs = [r for _, r in pairs] + ([default] if default is not None else [])
        if any(n.type == T.ERROR for n in outs) or any(c.type == T.ERROR for c, _ in pairs):
            return ERR
        try:
            t = common(outs, "the branches")
        except Reject as r:
            return self.problem(e, r.message, r.fix)
        args: list[Node] = []
        for cond, res in pairs:
            args += [cond, cast(res, t)]
        args.append(cast(default, t) if default is not None else Node("lit", t, value=None))
        return Node("case", t, tuple(args))

    def _coalesce(self, e: exp.Coalesce) -> Node:
        parts = [e.this, *e.expressions]
        args = [self.visit(p) for p in parts]
        if any(a.type == T.ERROR for a in args):
            return ERR
        try:
            t = common(args, "COALESCE")
        except Reject as r:
            return self.problem(e, r.message, r.fix)
        if len(args) == 1:
            return args[0]
        return Node("coalesce", t, tuple(cast(a, t) for a in args))

    def _nullif(self, e: exp.Nullif) -> Node:
        a, b = self.visit(e.this), self.visit(e.expression)
        if T.ERROR in (a.type, b.type):
            return ERR
        eq = self._compare(e, "eq", a, b)
        if eq.type == T.ERROR:
            return ERR
        return Node("case", a.type, (eq, Node("lit", a.type, value=None), a))

    def _cast(self, e: exp.Expr) -> Node:
        x = self.visit(e.this)
        to = e.args["to"]
        t = self._datatype(to)
        if t is None:
            return self.problem(
                e,
                f"CAST to {to.sql(dialect='spark')} is not supported",
                "cast to BIGINT, INT, DOUBLE, STRING, BOOLEAN, DECIMAL(p,s) or DATE",
            )
        if x.type == T.ERROR:
            return ERR
        if x.type == T.NULL or x.type == t:
            return cast(x, t) if x.type == T.NULL else x
        if (x.type.name, t.name) not in CASTS:
            return self.problem(
                e,
                f"CAST from {x.type} to {t} is not supported",
                "for time use timestamp_millis / unix_millis / to_date / date_format",
            )
        return Node("cast", t, (x,))

    def _datatype(self, dt: exp.DataType) -> SqlType | None:
        kind = dt.this
        if kind == exp.DataType.Type.DECIMAL:
            params = [int(p.this.this) if isinstance(p.this, exp.Literal) else -1 for p in dt.expressions]
            if not params:
                return T.decimal(10, 0)
            p, s = params[0], params[1] if len(params) > 1 else 0
            if not 1 <= p <= 38 or not 0 <= s <= p:
                return None
            return SqlType("decimal", p, s)
        return _TYPE_NAMES.get(kind)

    def _fname(self, e: exp.Expr) -> str:
        if "start" in e.meta:
            return self.text[e.meta["start"] : e.meta["end"] + 1].lower()
        if isinstance(e, exp.Anonymous):
            return str(e.this).lower()
        return (e.sql_name() if isinstance(e, exp.Func) else type(e).__name__).lower()

    def _func(self, e: exp.Func) -> Node:
        name = self._fname(e)
        if name in NON_DETERMINISTIC or isinstance(e, _NONDET_CLASSES):
            return self.problem(
                e,
                f"{name.upper()} is not deterministic: stream, batch and backfill would disagree",
                "pass the value in as a column of the event (e.g. the event's ts)",
            )
        spec = FUNCTIONS.get(name)
        if spec is None:
            close = difflib.get_close_matches(name, list(FUNCTIONS), n=4, cutoff=0.5)
            fix = (
                f"supported functions with similar names: {', '.join(close)}"
                if close
                else "see features.sql.functions.FUNCTIONS for the supported list"
            )
            if name == "log":
                fix = "use ln(x) or log10(x)"
            elif name in ("locate", "position", "strpos"):
                fix = "use instr(s, substr)"
            return self.problem(e, f"function {name.upper()} is not supported in row logic", fix)
        try:
            raw = self._func_args(e, name)
        except Reject as r:
            return self.problem(e, r.message, r.fix)
        return self._function(e, name, raw)

    def _func_args(self, e: exp.Func, name: str) -> list[exp.Expr]:
        if isinstance(e, exp.Log):
            return [e.expression]
        if isinstance(e, exp.StrPosition):
            return [e.this, e.args["substr"]]
        if isinstance(e, exp.TimeToStr):
            x = e.this.this if isinstance(e.this, exp.TimeStrToTime) else e.this
            return [x, self._source_string(e) or e.args["format"]]
        if isinstance(e, exp.TsOrDsToDate):
            fmt = self._source_string(e) if e.args.get("format") is not None else None
            return [e.this] + ([fmt] if fmt is not None else [])
        if isinstance(e, exp.Trim) and e.args.get("expression") is not None:
            raise Reject("TRIM with characters is not supported", "use TRIM(s) (spaces) or REPLACE")
        out: list[exp.Expr] = []
        for key in e.arg_types:
            v = e.args.get(key)
            if isinstance(v, list):
                out.extend(x for x in v if isinstance(x, _AST))
            elif isinstance(v, _AST) and not isinstance(v, exp.Var):
                out.append(v)
        return out

    def _source_string(self, e: exp.Expr) -> exp.Literal | None:
        """The last string literal of ``e`` as written (sqlglot rewrites date patterns into strftime)."""
        lo, hi = self.span(e)
        try:
            tokens = sqlglot.Dialect.get_or_raise("spark").tokenize(self.text[lo:hi])
        except TokenError:
            return None
        strings = [t for t in tokens if t.token_type == sqlglot.TokenType.STRING]
        if not strings:
            return None
        lit = exp.Literal.string(strings[-1].text)
        lit.meta.update(start=lo + strings[-1].start, end=lo + strings[-1].end)
        return lit

    def _function(self, e: exp.Expr, name: str, raw_args: list[exp.Expr]) -> Node:
        spec = FUNCTIONS[name]
        n = len(raw_args)
        if n < spec.min_args or (spec.max_args is not None and n > spec.max_args):
            want = (
                f"{spec.min_args}"
                if spec.min_args == spec.max_args
                else f"{spec.min_args} to {spec.max_args}"
                if spec.max_args
                else f"at least {spec.min_args}"
            )
            return self.problem(
                e, f"{name.upper()} takes {want} arguments, got {n}", f"{name.upper()}: {spec.doc}"
            )
        args = [self.visit(a) for a in raw_args]
        if any(a.type == T.ERROR for a in args):
            return ERR
        try:
            t, conv, consts = spec.typer(args)
        except Reject as r:
            return self.problem(e, r.message, r.fix)
        return Node("fn", t, tuple(conv), value=(name, consts))


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def _back_ws(text: str, i: int) -> int:
    while i > 0 and text[i - 1].isspace():
        i -= 1
    return i


def _and(a: Node, b: Node) -> Node:
    if T.ERROR in (a.type, b.type):
        return ERR
    return Node("and", T.BOOLEAN, (a, b))


def _literal(e: exp.Literal) -> Node:
    if e.is_string:
        return Node("lit", T.STRING, value=str(e.this))
    text = str(e.this)
    if "e" in text.lower():
        return Node("lit", T.DOUBLE, value=float(text))
    if "." in text:
        d = Decimal(text)
        exp_ = d.as_tuple().exponent
        scale = -exp_ if isinstance(exp_, int) and exp_ < 0 else 0
        digits = len(d.as_tuple().digits)
        return Node("lit", SqlType("decimal", max(digits, scale, 1), scale), value=d)
    v = int(text)
    if -(2**31) <= v < 2**31:
        return Node("lit", T.INT, value=v)
    if -(2**63) <= v < 2**63:
        return Node("lit", T.LONG, value=v)
    return Node("lit", SqlType("decimal", min(len(text), 38), 0), value=Decimal(v))


def _dec_operand(n: Node, t: SqlType) -> SqlType:
    """An integral operand next to a decimal: a literal takes its own digits (Spark's fromLiteral)."""
    if t.name == "decimal":
        return t
    if n.op == "lit" and n.value is not None and t.is_integral:
        return SqlType("decimal", max(1, len(str(abs(int(n.value))))), 0)
    return T.decimal_for(t)


def _decimal_result(op: str, a: SqlType, b: SqlType) -> SqlType:
    p1, s1, p2, s2 = a.precision, a.scale, b.precision, b.scale
    if op in ("add", "sub"):
        s = max(s1, s2)
        return T.adjust(max(p1 - s1, p2 - s2) + s + 1, s)
    if op == "mul":
        return T.adjust(p1 + p2 + 1, s1 + s2)
    if op == "div":
        s = max(6, s1 + p2 + 1)
        return T.adjust(p1 - s1 + s2 + s, s)
    s = max(s1, s2)  # mod
    return T.adjust(min(p1 - s1, p2 - s2) + s, s)
