"""Discovery: load every definition from a folder (or one file) of Python modules.

Each object is named by its module (relative to the folder) and variable, e.g. ``card.card_velocity`` for
``card_velocity = GroupBy(...)`` in ``features/fraud/card.py``. Errors while importing a module (a syntax
error, a wrong argument) become diagnostics with the file and line, and the other modules still load.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from features.definitions import EventSource, GroupBy, Join, location
from features.diagnostics import Diagnostic


@dataclass
class Repo:
    """The definitions found under ``root``, by qualified name (``module.variable``)."""

    root: str
    sources: dict[str, EventSource] = field(default_factory=dict)
    group_bys: dict[str, GroupBy] = field(default_factory=dict)
    joins: dict[str, Join] = field(default_factory=dict)
    diagnostics: list[Diagnostic] = field(default_factory=list)

    def qualified_name(self, obj: object) -> str | None:
        for table in (self.sources, self.group_bys, self.joins):
            for qname, value in table.items():
                if value is obj:
                    return qname
        return None


def _module_name_for(path: Path) -> tuple[str, Path]:
    """The importable dotted name of ``path`` and the sys.path entry that makes it importable."""
    parts = [path.stem] if path.name != "__init__.py" else []
    parent = path.parent
    while (parent / "__init__.py").exists():
        parts.insert(0, parent.name)
        parent = parent.parent
    return ".".join(parts), parent


def _python_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "_")) and d != "tests")
        for name in sorted(filenames):
            if name.endswith(".py") and not name.startswith("test_"):
                files.append(Path(dirpath) / name)
    return files


def _import(path: Path) -> ModuleType:
    name, sys_path_entry = _module_name_for(path)
    if not name:
        raise ImportError(f"cannot name module for {path}")
    if str(sys_path_entry) not in sys.path:
        sys.path.insert(0, str(sys_path_entry))
    return importlib.import_module(name)


def _forget_modules_under(root: Path) -> None:
    """Drop already-imported modules of the repo, so a new load sees the files as they are now and every
    module of one load shares the same objects (a Join and its GroupBys)."""
    base = str(root if root.is_dir() else root.parent)
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and os.path.abspath(file).startswith(base + os.sep):
            del sys.modules[name]


def _error_site(exc: BaseException, files: set[str]) -> tuple[str, int]:
    if isinstance(exc, SyntaxError) and exc.filename:
        return os.path.abspath(exc.filename), exc.lineno or 0
    site = ("<unknown>", 0)
    for frame in traceback.extract_tb(exc.__traceback__):
        if os.path.abspath(frame.filename) in files:
            site = (os.path.abspath(frame.filename), frame.lineno or 0)
    return site


def load_repo(path: str | os.PathLike[str]) -> Repo:
    """Import every module under ``path`` and collect its sources, GroupBys and Joins."""
    root = Path(path).resolve()
    repo = Repo(root=str(root))
    if not root.exists():
        repo.diagnostics.append(
            Diagnostic(
                str(root),
                0,
                "repo-missing",
                f"no such file or folder: {path}",
                fix="pass the folder that holds your feature definitions, e.g. features/fraud",
            )
        )
        return repo
    files = _python_files(root)
    _forget_modules_under(root)
    importlib.invalidate_caches()
    file_set = {str(f) for f in files}
    rel_root = root if root.is_dir() else root.parent
    for file in files:
        try:
            module = _import(file)
        except Exception as exc:  # a user module failed to import: report it, keep going
            where = _error_site(exc, file_set)
            if where[0] == "<unknown>":
                where = (str(file), 0)
            repo.diagnostics.append(
                Diagnostic(
                    where[0],
                    where[1],
                    "import-error",
                    f"{type(exc).__name__}: {exc}",
                    fix="fix the Python error in this module; the other modules were still checked",
                )
            )
            continue
        rel = file.relative_to(rel_root).with_suffix("")
        prefix = ".".join(p for p in rel.parts if p != "__init__")
        for var, value in vars(module).items():
            if var.startswith("_"):
                continue
            table: dict | None = None
            if isinstance(value, GroupBy):
                table = repo.group_bys
            elif isinstance(value, Join):
                table = repo.joins
            elif isinstance(value, EventSource):
                table = repo.sources
            if table is None:
                continue
            # An object imported into another module keeps the name of the module that defined it.
            if location(value)[0] != str(file):
                continue
            qname = f"{prefix}.{var}" if prefix else var
            if any(v is value for v in table.values()):
                continue
            table[qname] = value
    # Objects referenced but defined outside the folder (e.g. a shared source module) are still included.
    for join in list(repo.joins.values()):
        for part in join.parts:
            if not any(v is part.group_by for v in repo.group_bys.values()):
                repo.group_bys[f"<external>.{part.group_by.name}"] = part.group_by
    for gb in list(repo.group_bys.values()):
        if not any(v is gb.source for v in repo.sources.values()):
            repo.sources[f"<external>.{gb.source.table}"] = gb.source
    return repo
