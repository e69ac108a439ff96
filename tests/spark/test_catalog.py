"""The offline catalog file (``spark_jobs.catalog``): entries, overrides, and errors that say where and how to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from spark_jobs.catalog import (
    CatalogError,
    SparkTable,
    load_catalog,
    parse_catalog,
    parse_table_flags,
    resolve_sources,
)


def test_short_long_and_table_forms(tmp_path: Path) -> None:
    f = tmp_path / "conf" / "catalog.toml"
    f.parent.mkdir()
    f.write_text(
        """# offline tables
[sources]
payments = "data/payments.parquet"
labels = { table = "warehouse.fraud_labels" }

[sources.refunds]
path = "/mnt/lake/refunds"
"""
    )
    got = load_catalog(f)
    assert got == {
        "payments": str(f.parent.resolve() / "data" / "payments.parquet"),
        "labels": SparkTable("warehouse.fraud_labels"),
        "refunds": "/mnt/lake/refunds",
    }


def test_flags_override_catalog_override_defaults(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[sources]\npayments = "/a/p.parquet"\nlabels = "/a/l.parquet"\n')
    got = resolve_sources(
        f,
        parse_table_flags(["labels=table:db.labels"]),
        {"payments": "/default/p.parquet", "other": "/default/o.parquet"},
    )
    assert got == {
        "payments": "/a/p.parquet",
        "labels": SparkTable("db.labels"),
        "other": "/default/o.parquet",
    }


@pytest.mark.parametrize(
    ("text", "line", "hint"),
    [
        ('[sources]\npayments = "p.parquet"\nlabels = { pth = "l.parquet" }\n', 3, "unknown key 'pth'"),
        ('[sources]\n\n[sources.labels]\npath = "l"\ntable = "db.l"\n', 3, "exactly one of path"),
        ("[sources]\npayments = 3\n", 2, "expected a path string or a table"),
        ('[sources]\npayments = ""\n', 2, "non-empty string"),
        ('[sources]\npayments = "p.parquet"\npayments = "q"\n', 3, "not valid TOML"),
        ('[source]\npayments = "p.parquet"\n', 1, "unknown top-level key 'source'"),
        ("# nothing here\n", 1, "no [sources] table"),
    ],
)
def test_errors_name_file_line_and_fix(tmp_path: Path, text: str, line: int, hint: str) -> None:
    f = tmp_path / "catalog.toml"
    f.write_text(text)
    with pytest.raises(CatalogError) as e:
        load_catalog(f)
    msg = str(e.value)
    assert msg.startswith(f"{f}:{line}: "), msg
    assert hint in msg, msg
    assert ' = "' in msg, msg  # the fix shows the expected form


def test_missing_file_and_bad_flag(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=r"cannot read the catalog.*--catalog"):
        load_catalog(tmp_path / "nope.toml")
    with pytest.raises(CatalogError, match="NAME=PATH"):
        parse_table_flags(["payments"])


def test_parse_without_base_keeps_relative_paths() -> None:
    assert parse_catalog('[sources]\np = "x/p.parquet"\n') == {"p": "x/p.parquet"}


def test_upload_reads_the_catalog_and_flags_override(tmp_path: Path) -> None:
    from spark_jobs.upload import _parse_tables

    data = tmp_path / "data"
    data.mkdir()
    (data / "payments.parquet").write_bytes(b"")
    f = tmp_path / "catalog.toml"
    f.write_text('[sources]\npayments = "/lake/payments"\nlabels = { table = "db.labels" }\n')
    got = _parse_tables(["labels=/lake/labels.parquet"], str(data), str(f))
    assert got == {"payments": "/lake/payments", "labels": "/lake/labels.parquet"}
    f.write_text('[sources]\npayments = { paht = "x" }\n')
    with pytest.raises(SystemExit, match=rf"{f}:2: source 'payments': unknown key 'paht'"):
        _parse_tables([], None, str(f))
