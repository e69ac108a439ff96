"""Diagnostics: what is wrong with a definition, where, and how to fix it.

Validation rules collect diagnostics instead of raising, so a user sees every problem at once.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Diagnostic:
    """One problem in a feature repository.

    ``code`` is stable (tests and docs refer to it); ``detail`` may hold a multi-line excerpt such as SQL with
    the offending text underlined.
    """

    file: str
    line: int
    code: str
    message: str
    fix: str = ""
    detail: str = ""
    severity: str = "error"

    def render(self, root: str | None = None) -> str:
        """``file:line: error[code]: message`` then the detail and the fix, indented."""
        path = self.file
        if root and path.startswith(os.path.abspath(root) + os.sep):
            path = os.path.relpath(path, os.path.dirname(os.path.abspath(root)))
        elif root:
            with contextlib.suppress(ValueError):
                path = os.path.relpath(path)
        lines = [f"{path}:{self.line}: {self.severity}[{self.code}]: {self.message}"]
        if self.detail:
            lines.extend("    " + d for d in self.detail.rstrip("\n").splitlines())
        if self.fix:
            lines.append(f"    fix: {self.fix}")
        return "\n".join(lines)


class DefinitionError(Exception):
    """Raised when definitions have errors and something needs a valid repository (compile, run)."""

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = diagnostics
        errors = [d for d in diagnostics if d.severity == "error"]
        super().__init__(
            f"{len(errors)} error(s) in the feature definitions:\n" + "\n".join(d.render() for d in errors)
        )
