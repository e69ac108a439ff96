"""The offline catalog: where each source table of a feature repository lives, for the Spark jobs.

A small TOML file read by ``tessera upload`` and ``tessera backfill`` (``--catalog FILE``); CLI flags
(``--table NAME=PATH``) override its entries. Each entry under ``[sources]`` is either a parquet path (relative
paths are relative to the catalog file) or a Spark table (a metastore name, e.g. on a cluster)::

    [sources]
    payments = "data/payments.parquet"            # short form: a parquet file or folder
    labels = { table = "warehouse.fraud_labels" }  # a Spark table

    [sources.refunds]                             # long form
    path = "/mnt/lake/refunds"

Errors name the file and line and say how to fix the entry.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SparkTable:
    """A source read with ``spark.table(name)`` instead of a parquet path."""

    name: str

    def __str__(self) -> str:
        return f"table:{self.name}"


Source = str | SparkTable
"""A resolved source: a parquet path (str) or a Spark table."""


class CatalogError(ValueError):
    """A catalog file that cannot be used; the message says where (file:line) and how to fix it."""


_EXAMPLE = 'e.g. payments = "data/payments.parquet" or labels = { table = "db.labels" }'


def _line_of(text: str, name: str) -> int:
    """The line (1-based) declaring source ``name`` (``name = ...`` or ``[sources.name]``), else 1."""
    key = re.escape(name)
    patterns = [rf"^\s*\[\s*sources\s*\.\s*\"?{key}\"?\s*\]", rf"^\s*\"?{key}\"?\s*="]
    for i, line in enumerate(text.splitlines(), start=1):
        if any(re.match(p, line) for p in patterns):
            return i
    return 1


def parse_catalog(text: str, where: str = "<catalog>", base: Path | None = None) -> dict[str, Source]:
    """Parse catalog TOML ``text`` (``where`` names it in errors; relative paths resolve against ``base``)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"line (\d+)", str(e))
        line = m.group(1) if m else "1"
        raise CatalogError(f"{where}:{line}: not valid TOML ({e}); {_EXAMPLE}") from None
    unknown = sorted(set(doc) - {"sources"})
    if unknown:
        line = _line_of(text, unknown[0])
        raise CatalogError(
            f"{where}:{line}: unknown top-level key {unknown[0]!r}; a catalog holds only a [sources] table "
            f"({_EXAMPLE})"
        )
    sources = doc.get("sources")
    if not isinstance(sources, dict) or not sources:
        raise CatalogError(f"{where}:1: no [sources] table; add one, {_EXAMPLE}")
    out: dict[str, Source] = {}
    for name, value in sources.items():
        line = _line_of(text, name)
        at = f"{where}:{line}: source {name!r}"
        if isinstance(value, str):
            value = {"path": value}
        if not isinstance(value, dict):
            raise CatalogError(
                f"{at}: expected a path string or a table, got {type(value).__name__}; {_EXAMPLE}"
            )
        extra = sorted(set(value) - {"path", "table"})
        if extra:
            raise CatalogError(f'{at}: unknown key {extra[0]!r}; use path = "..." or table = "..."')
        if ("path" in value) == ("table" in value):
            raise CatalogError(f'{at}: give exactly one of path = "..." (parquet) or table = "..." (Spark)')
        key = "path" if "path" in value else "table"
        spec = value[key]
        if not isinstance(spec, str) or not spec.strip():
            raise CatalogError(f"{at}: {key} must be a non-empty string; {_EXAMPLE}")
        if key == "table":
            out[name] = SparkTable(spec.strip())
        else:
            p = Path(spec).expanduser()
            if base is not None and not p.is_absolute():
                p = base / p
            out[name] = str(p)
    return out


def load_catalog(path: str | Path) -> dict[str, Source]:
    """Read a catalog file; raises :class:`CatalogError` (file:line and the fix) on any problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise CatalogError(f"{p}: cannot read the catalog ({e.strerror}); check the --catalog path") from None
    return parse_catalog(text, str(p), p.resolve().parent)


def parse_table_flags(specs: list[str] | tuple[str, ...]) -> dict[str, Source]:
    """``--table NAME=PATH`` / ``--table NAME=table:DB.NAME`` flags as catalog entries."""
    out: dict[str, Source] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise CatalogError(
                f"--table {spec!r} must look like NAME=PATH or NAME=table:DB.NAME "
                "(e.g. payments=data/payments.parquet)"
            )
        value = value.strip()
        out[name.strip()] = SparkTable(value[6:]) if value.startswith("table:") else value
    return out


def resolve_sources(
    catalog: str | Path | None = None,
    flags: Mapping[str, Source] | None = None,
    defaults: Mapping[str, Source] | None = None,
) -> dict[str, Source]:
    """Sources by table name: ``defaults``, overridden by the catalog file's entries, overridden by flags."""
    out: dict[str, Source] = dict(defaults or {})
    if catalog is not None:
        out.update(load_catalog(catalog))
    out.update(flags or {})
    return out


def read_source(spark: Any, source: Any) -> Any:
    """A Spark DataFrame of ``source``: a parquet path, a :class:`SparkTable`, or a DataFrame as is."""
    if isinstance(source, SparkTable):
        return spark.table(source.name)
    if isinstance(source, str | Path):
        return spark.read.parquet(str(source))
    return source
