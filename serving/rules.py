"""Decision rules: blocklists and velocity limits over the fetched feature vector, declared in a TOML file.

The file (see ``serving/rules_default.toml``) has ``[[blocklist]]`` tables (``name``, ``column``, ``values``,
``action``, ``reason``) and ``[[rule]]`` tables (``name``, ``when``, ``action``, ``reason``). ``when`` is a
Spark SQL boolean expression over the Join's scalar columns, compiled with :func:`features.sql.compile_expression`
(kind ``where``): the same SQL path as the Join's derivations, so a rule means online what it means offline.
A NULL result does not fire. Every problem in a file is reported at load time, at once.

>>> rules = Rules.from_dict(
...     {"rule": [{"name": "fast", "when": "n > 8", "action": "decline", "reason": "too fast"}]},
...     {"n": "long"},
... )
>>> [h.name for h in rules.evaluate({"n": 9})], rules.evaluate({"n": None})
(['fast'], [])
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from features.sql import SqlError, compile_expression

Action = Literal["approve", "review", "decline"]
RuleAction = Literal["review", "decline"]

DEFAULT_RULES_PATH = Path(__file__).resolve().parent / "rules_default.toml"
SEVERITY: dict[str, int] = {"approve": 0, "review": 1, "decline": 2}
_ACTIONS = ("review", "decline")


class RulesError(ValueError):
    """A rules file that does not load; ``problems`` lists every one."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid rules:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class RuleHit:
    """A rule that fired: its name, action and reason text."""

    name: str
    action: RuleAction
    reason: str


@dataclass(frozen=True)
class Blocklist:
    name: str
    column: str
    values: frozenset[str]
    action: RuleAction
    reason: str


@dataclass(frozen=True)
class Rule:
    name: str
    when: str
    action: RuleAction
    reason: str
    fn: Callable[[Mapping[str, Any]], Any]


def scalar_schema(output_schema: Mapping[str, str]) -> dict[str, str]:
    """The columns a rule may use: every non-map, non-array column of the Join output."""
    return {c: t for c, t in output_schema.items() if not t.strip().lower().startswith(("map<", "array<"))}


class Rules:
    """Compiled rules; :meth:`evaluate` returns the hits on one feature vector, declines first."""

    def __init__(self, blocklists: list[Blocklist], rules: list[Rule]):
        self.blocklists = blocklists
        self.rules = rules

    @classmethod
    def empty(cls) -> Rules:
        return cls([], [])

    @classmethod
    def load(cls, path: str | Path, output_schema: Mapping[str, str]) -> Rules:
        """Load a TOML rules file against a Join's ``output_schema``."""
        with open(path, "rb") as f:
            data = tomllib.load(f)
        return cls.from_dict(data, output_schema, source=str(path))

    @classmethod
    def default(cls, output_schema: Mapping[str, str]) -> Rules:
        return cls.load(DEFAULT_RULES_PATH, output_schema)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], output_schema: Mapping[str, str], *, source: str = "<rules>"
    ) -> Rules:
        problems: list[str] = []
        unknown = set(data) - {"blocklist", "rule"}
        if unknown:
            problems.append(
                f"{source}: unknown top-level keys {sorted(unknown)} (use [[blocklist]] and [[rule]])"
            )
        schema = scalar_schema(output_schema)
        names: set[str] = set()

        def common(kind: str, i: int, entry: Any, keys: set[str]) -> tuple[str, RuleAction, str] | None:
            where = f"{source}: {kind} #{i + 1}"
            if not isinstance(entry, Mapping):
                problems.append(f"{where}: must be a table")
                return None
            name = entry.get("name")
            where = f"{source}: {kind} {name!r}" if isinstance(name, str) else where
            ok = True
            extra = set(entry) - keys
            if extra:
                problems.append(f"{where}: unknown keys {sorted(extra)}; allowed: {sorted(keys)}")
                ok = False
            if not isinstance(name, str) or not name:
                problems.append(f"{where}: needs a non-empty string 'name'")
                ok = False
            elif name in names:
                problems.append(f"{where}: duplicate name")
                ok = False
            else:
                names.add(name)
            action = entry.get("action")
            if action not in _ACTIONS:
                problems.append(f"{where}: action must be one of {list(_ACTIONS)}, got {action!r}")
                ok = False
            reason = entry.get("reason")
            if not isinstance(reason, str) or not reason:
                problems.append(f"{where}: needs a non-empty string 'reason'")
                ok = False
            return (name, action, reason) if ok else None  # type: ignore[return-value]

        blocklists: list[Blocklist] = []
        for i, entry in enumerate(data.get("blocklist", [])):
            head = common("blocklist", i, entry, {"name", "column", "values", "action", "reason"})
            column, values = (
                (entry.get("column"), entry.get("values", [])) if isinstance(entry, Mapping) else ("", [])
            )
            if head is None:
                continue
            if not isinstance(column, str) or column not in output_schema:
                problems.append(
                    f"{source}: blocklist {head[0]!r}: column {column!r} is not in the Join output"
                )
                continue
            if not isinstance(values, list) or not all(isinstance(v, str | int) for v in values):
                problems.append(f"{source}: blocklist {head[0]!r}: values must be a list of strings")
                continue
            blocklists.append(Blocklist(head[0], column, frozenset(str(v) for v in values), head[1], head[2]))

        rules: list[Rule] = []
        for i, entry in enumerate(data.get("rule", [])):
            head = common("rule", i, entry, {"name", "when", "action", "reason"})
            if head is None:
                continue
            when = entry.get("when")
            if not isinstance(when, str) or not when.strip():
                problems.append(f"{source}: rule {head[0]!r}: needs a 'when' expression")
                continue
            try:
                fn = compile_expression(when, schema, kind="where")
            except SqlError as e:
                problems.append(f"{source}: rule {head[0]!r}: {e}")
                continue
            rules.append(Rule(head[0], when, head[1], head[2], fn))
        if problems:
            raise RulesError(problems)
        return cls(blocklists, rules)

    def evaluate(self, vector: Mapping[str, Any], errors: list[str] | None = None) -> list[RuleHit]:
        """The rules that fire on ``vector``, declines first (then file order). A rule that raises does not
        fire; its name goes to ``errors`` when given."""
        hits: list[RuleHit] = []
        for b in self.blocklists:
            value = vector.get(b.column)
            if value is not None and str(value) in b.values:
                hits.append(RuleHit(b.name, b.action, b.reason))
        for r in self.rules:
            try:
                fired = r.fn(vector) is True
            except Exception:
                if errors is not None:
                    errors.append(r.name)
                continue
            if fired:
                hits.append(RuleHit(r.name, r.action, r.reason))
        hits.sort(key=lambda h: -SEVERITY[h.action])
        return hits
