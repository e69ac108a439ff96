"""The pieces of a cluster run that need no cluster: the ``--py-files`` zip, the command, the plan file."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from features.compile import compile_repo
from spark_jobs.session import submitted
from spark_jobs.submit import PACKAGES, build_py_files, load_plan, parser, submit_argv
from tessera.nightly import is_cluster

ROOT = Path(__file__).resolve().parents[2]


def test_the_zip_holds_every_module_of_the_job_packages_and_nothing_else(tmp_path: Path) -> None:
    out = build_py_files(tmp_path / "z" / "tessera.zip")
    names = set(zipfile.ZipFile(out).namelist())
    want = {f.relative_to(ROOT).as_posix() for p in PACKAGES for f in (ROOT / p).rglob("*.py")}
    assert names == want
    assert "spark_jobs/upload.py" in names and "features/ops/base.py" in names
    assert not any(n.startswith(("serving/", "tessera/", "flink_jobs/")) for n in names)


def test_submit_command_and_arguments(tmp_path: Path) -> None:
    argv = submit_argv("spark://127.0.0.1:7077", "upload", ["p.json", "--date", "2024-03-02"], "t.zip")
    assert Path(argv[0]).name == "spark-submit" and Path(argv[0]).exists()
    assert argv[1:5] == ["--master", "spark://127.0.0.1:7077", "--py-files", "t.zip"]
    assert argv[-4:] == ["upload", "p.json", "--date", "2024-03-02"]
    assert argv[-5] == str(ROOT / "spark_jobs" / "submit.py")
    cmd = "consistency p.json --join a --join b --date d --log-dir l --out o"
    args = parser().parse_args(cmd.split())
    assert args.join == ["a", "b"] and args.max_unexplained == 0
    with pytest.raises(SystemExit):
        parser().parse_args(["upload", "p.json"])  # --date and --store are required


def test_a_plan_file_loads_as_the_compiled_plan(tmp_path: Path) -> None:
    plan = compile_repo(ROOT / "features" / "fraud")
    (tmp_path / "plan.json").write_text(plan.to_json())
    assert load_plan(tmp_path / "plan.json").plan_hash == plan.plan_hash


def test_which_masters_need_spark_submit(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not is_cluster("local[2]") and not is_cluster("local[*]") and not is_cluster(None)
    assert is_cluster("spark://127.0.0.1:7077") and is_cluster("yarn") and is_cluster("k8s://https://h:6443")
    monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)
    assert not submitted()
    monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "12345")
    assert submitted()
