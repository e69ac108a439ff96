"""Diagnostics for SQL row logic.

Every problem found in one expression is collected (analysis does not stop at the first one) and raised
together as one :class:`SqlError`. Offsets are character offsets into the text the user gave, ``end``
exclusive, so a CLI can underline the offending span.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SqlProblem:
    """One problem: what is wrong, where (``text[start:end]``), and how to fix it."""

    message: str
    start: int
    end: int
    fix: str = ""


class SqlError(ValueError):
    """Raised with every :class:`SqlProblem` found in one expression.

    >>> e = SqlError([SqlProblem("unknown column 'amout'", 0, 5, "did you mean 'amount'?")], "amout * 2")
    >>> print(e.render())
    amout * 2
    ^^^^^
    error: unknown column 'amout'
    fix: did you mean 'amount'?
    """

    def __init__(self, problems: list[SqlProblem], text: str = "", label: str = "") -> None:
        self.problems = list(problems)
        self.text = text
        self.label = label
        head = f"{label}: " if label else ""
        summary = "; ".join(p.message for p in self.problems)
        super().__init__(f"{head}{summary} in {text!r}" if text else f"{head}{summary}")

    def render(self, text: str | None = None) -> str:
        """The text with each problem's span underlined by ``^`` and its fix, one block per problem."""
        src = self.text if text is None else text
        blocks = [_render_one(src, p) for p in self.problems]
        return "\n\n".join(blocks)


def _render_one(text: str, problem: SqlProblem) -> str:
    start = max(0, min(problem.start, len(text)))
    end = max(start + 1, min(problem.end, max(len(text), start + 1)))
    # Underline on the line that holds `start`; multi-line expressions show only that line.
    line_start = text.rfind("\n", 0, start) + 1
    line_end = text.find("\n", start)
    if line_end < 0:
        line_end = len(text)
    line = text[line_start:line_end]
    width = max(1, min(end, line_end if line_end > start else end) - start)
    out = [line, " " * (start - line_start) + "^" * width, f"error: {problem.message}"]
    if problem.fix:
        out.append(f"fix: {problem.fix}")
    return "\n".join(out)
