"""``run_backfill`` (what ``tessera backfill`` runs): sources from a catalog file, parquet and Spark-table output,
the progress bar and the rows/s log — all equal to ``training_set``'s pyarrow Table (the Python callers' path)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.compile import compile_repo
from features.synthetic import generate
from spark_jobs.backfill import run_backfill, training_set

pytestmark = pytest.mark.spark

ROOT = Path(__file__).resolve().parents[2]


def _rows(table: pa.Table) -> list[dict[str, Any]]:
    return sorted(table.to_pylist(), key=lambda r: r["payment_id"])


def test_catalog_parquet_and_table_outputs_equal_the_arrow_table(
    spark: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    d = generate(seed=5, days=2, events_per_day=400)
    data = tmp_path / "lake"
    payments, labels = d.write(data)
    idx = np.arange(0, d.payments.num_rows, 7)
    left = d.payments.take(pa.array(idx)).select(
        list(compile_repo(ROOT / "features" / "fraud").join("fraud_v1").left.schema)
    )
    left_path = (
        tmp_path / "requests" / "left.parquet"
    )  # no <table>.parquet next to it: the catalog says where
    left_path.parent.mkdir()
    pq.write_table(left, left_path)
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(
        '[sources]\npayments = "lake/payments.parquet"\nlabels = { path = "lake/labels.parquet" }\n'
    )

    plan = compile_repo(ROOT / "features" / "fraud")
    expected = training_set(
        plan, "fraud_v1", left, {"payments": str(payments), "labels": str(labels)}, spark=spark
    )
    assert expected is not None
    assert expected.column("payment_id").equals(left.column("payment_id"))  # the left's order

    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="tessera.backfill"):
        stats = run_backfill(
            ROOT / "features" / "fraud",
            "fraud_v1",
            left_path,
            out,
            catalog=catalog,
            out_table="fraud_v1_training",
            keep_order=True,
            progress=True,
            spark=spark,
        )
    assert stats["rows"] == left.num_rows and stats["out_table"] == "fraud_v1_training"
    written = pq.read_table(out)
    assert written.schema.names == expected.schema.names
    assert written.column("payment_id").equals(expected.column("payment_id"))  # keep_order: the left's order
    assert _rows(written) == _rows(expected)
    from_table = spark.table("fraud_v1_training").toArrow()
    assert _rows(from_table) == _rows(expected)
    assert "Spark tasks" in capsys.readouterr().err  # the progress bar
    assert any("rows/s" in r.getMessage() for r in caplog.records)
    spark.sql("DROP TABLE fraud_v1_training")


def test_missing_source_says_how_to_fix(spark: Any, tmp_path: Path) -> None:
    left_path = tmp_path / "left.parquet"
    pq.write_table(pa.table({"ts": pa.array([1], pa.int64())}), left_path)
    with pytest.raises(FileNotFoundError, match=r"--catalog.*--table (payments|labels)=PATH"):
        run_backfill(ROOT / "features" / "fraud", "fraud_v1", left_path, tmp_path / "out", spark=spark)
