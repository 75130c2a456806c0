"""No bad night is ever published: refuse early, commit last (issue 13, part A).

Each test would have passed a bad night through on the code before this change: a Parquet
run deleting a Delta night (case 1), an empty input emptying a good night (case 2), failures
after the commit (case 3), NaN scores published (case 4), bad outputs and foreign tables
refused late or not at all (case 10), and summaries overwritten or private (case 11).

Tables are checked by their contents (``deltalake``, ``pyarrow``), not by exit codes.
Refusals before reading are shown to start no Spark job and not to inspect the model.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dear_udf import schema as S
from dear_udf.exceptions import InputError, OutputError, RunRefusedError

from .jobdata import job_config, write_inputs

pytestmark = [pytest.mark.spark]


def _config(data, model_dir, output, **extra):
    return job_config(data["paths"], model_dir, output, **{"top_k": 3, **extra})


def _delta_rows(path) -> list[tuple]:
    from deltalake import DeltaTable

    return sorted(tuple(r[c] for c in S.OUTPUT_COLUMNS) for r in DeltaTable(str(path)).to_pyarrow_table().to_pylist())


def _parquet_rows(path) -> list[tuple]:
    return sorted(tuple(r[c] for c in S.OUTPUT_COLUMNS) for r in pq.read_table(path).to_pylist())


def _listing(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("inputs"), queries=4, docs=30, per_query=5)


@pytest.fixture(scope="module")
def nights(spark, tiny_models, data, tmp_path_factory):
    """A Delta table holding two good nights, and a Parquet table holding one."""
    from dear_udf.spark.job import run_job

    root = tmp_path_factory.mktemp("nights")
    model = tiny_models["index227"]
    for run_id in ("night-1", "night-2"):
        run_job(_config(data, model, root / "delta", run_id=run_id), spark=spark)
    run_job(_config(data, model, root / "parquet", format="parquet"), spark=spark)
    return root


def _copy(nights, name, tmp_path):
    return shutil.copytree(nights / name, tmp_path / name)


@contextlib.contextmanager
def _nothing_runs(spark, monkeypatch):
    """Fail if the block starts a Spark job or inspects the model (hashes its weights)."""
    import dear_udf.model

    def inspect(*args, **kwargs):
        raise AssertionError("the model was inspected before the refusal")

    monkeypatch.setattr(dear_udf.model, "inspect_model", inspect)
    sc = spark.sparkContext
    group = f"refused-{uuid.uuid4().hex}"
    sc.setJobGroup(group, "a refused run must start no job")
    try:
        yield
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
        sc.setLocalProperty("spark.job.description", None)
    assert list(sc.statusTracker().getJobIdsForGroup(group)) == []


# -- case 1: one format into a folder of the other ------------------------------------------


def test_parquet_run_into_a_delta_table_is_refused_before_reading(spark, tiny_models, data, nights, tmp_path, monkeypatch):
    from dear_udf.spark.job import run_job

    out = _copy(nights, "delta", tmp_path)
    before, files = _delta_rows(out), _listing(out)
    config = _config(data, tiny_models["index227"], out, format="parquet")
    with _nothing_runs(spark, monkeypatch), pytest.raises(OutputError, match=r"holds a Delta table \(_delta_log/\); refusing to write format 'parquet'"):
        run_job(config, spark=spark)
    assert _delta_rows(out) == before and len(before) == 2 * 4 * 3
    assert _listing(out) == files


def test_delta_run_into_a_parquet_table_is_refused_before_reading(spark, tiny_models, data, nights, tmp_path, monkeypatch):
    from dear_udf.spark.job import run_job

    out = _copy(nights, "parquet", tmp_path)
    before, files = _parquet_rows(out), _listing(out)
    config = _config(data, tiny_models["index227"], out, format="delta")
    with _nothing_runs(spark, monkeypatch), pytest.raises(OutputError, match=r"holds a Parquet table \(run_id= folders, no _delta_log/\); refusing to write format 'delta'"):
        run_job(config, spark=spark)
    assert _parquet_rows(out) == before and len(before) == 4 * 3
    assert _listing(out) == files


def test_a_uri_output_is_checked_through_hadoop(spark, tiny_models, data, nights, tmp_path, monkeypatch):
    from dear_udf.spark.job import run_job

    out = _copy(nights, "delta", tmp_path)
    config = _config(data, tiny_models["index227"], f"file://{out}", format="parquet", summary=str(tmp_path / "s.json"))
    with _nothing_runs(spark, monkeypatch), pytest.raises(OutputError, match="holds a Delta table"):
        run_job(config, spark=spark)


# -- cases 3 and 10: every path checked before reading, foreign tables, files ----------------


def _output_is_a_file(tmp_path):
    (tmp_path / "out").write_text("x")
    return {}


def _foreign_folder(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("x")
    return {}


def _foreign_delta(partition_by):
    def prepare(tmp_path):
        from deltalake import write_deltalake

        rows = pa.table({"query_id": ["q"], "doc_id": ["d"], "run_id": ["night-1"]})
        write_deltalake(str(tmp_path / "out"), rows, partition_by=partition_by)
        return {}

    return prepare


def _summary_is_a_folder(tmp_path):
    (tmp_path / "s").mkdir()
    return {"summary": str(tmp_path / "s")}


def _trec_out_under_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    return {"trec_out": str(tmp_path / "f" / "run.trec")}


def _beir_without_qrels(tmp_path):
    folder = tmp_path / "beir"
    folder.mkdir()
    (folder / "corpus.jsonl").write_text('{"_id": "d0", "text": "x"}\n')
    (folder / "queries.jsonl").write_text('{"_id": "q0", "text": "x"}\n')
    return {"qrels": str(folder)}


REFUSED = {
    "output is a file": (_output_is_a_file, OutputError, r"out: is a file; output must be a table folder"),
    "foreign folder": (_foreign_folder, OutputError, r"out: is neither empty nor a table of this job \(found \['notes.txt'\]\)"),
    "Delta table of another schema": (_foreign_delta(["run_id"]), OutputError, r"table schema differs from the output schema: missing \['first_stage_rank'"),
    "Delta table of another partitioning": (_foreign_delta(None), OutputError, r"table is partitioned by \[\], expected \['run_id'\]"),
    "output on a file system Spark lacks": (lambda t: {"output": "nosuch://bucket/out", "summary": str(t / "s.json")}, OutputError, r'nosuch://bucket/out: cannot list the output folder \(.*No FileSystem for scheme "nosuch"\)'),
    "summary is a folder": (_summary_is_a_folder, OutputError, r"summary: .*/s: is a folder; give a file path"),
    "summary inside the table": (lambda t: {"summary": str(t / "out" / "s.json")}, OutputError, r"summary: .*is inside the output table folder"),
    "trec-out under a file": (_trec_out_under_a_file, OutputError, r"trec_out: .*/f is a file, not a folder"),
    "trec-out is the summary": (lambda t: {"trec_out": str(t / "x"), "summary": str(t / "x")}, OutputError, "trec_out and summary are the same file"),
    "qrels BEIR folder without qrels": (_beir_without_qrels, InputError, r"beir: this BEIR folder has no qrels/test.tsv, needed for qrels"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_bad_paths_and_foreign_tables_are_refused_before_any_job_or_model(spark, tiny_models, data, tmp_path, monkeypatch, case):
    from dear_udf.spark.job import run_job

    prepare, error, message = REFUSED[case]
    extra = prepare(tmp_path)
    output = extra.pop("output", tmp_path / "out")
    before = _listing(tmp_path)
    with _nothing_runs(spark, monkeypatch), pytest.raises(error, match=message):
        run_job(_config(data, tiny_models["index227"], output, **extra), spark=spark)
    assert _listing(tmp_path) == before  # nothing written, not even a summary


def test_a_commit_refused_at_write_time_leaves_no_files(spark, tmp_path):
    # Should a foreign table appear between the checks and the commit, the Delta write
    # removes the files it wrote instead of leaving them in someone else's folder.
    from dear_udf.spark.write import write_output

    _foreign_delta(["run_id"])(tmp_path)
    before = _listing(tmp_path)
    row = ("q", "d", 1, 1.0, 1, None, "night-9", "m", None)
    df = spark.createDataFrame([row], S.spark_schema(S.OUTPUT_ARROW_SCHEMA))
    with pytest.raises(OutputError, match="table schema differs"):
        write_output(df, output=str(tmp_path / "out"), fmt="delta", run_id="night-9", spark_delta=False)  # deltalake
    assert _listing(tmp_path) == before


def test_failure_before_the_commit_leaves_table_trec_and_summary_as_they_were(spark, tiny_models, data, nights, tmp_path):
    # The qrels file exists but is malformed: evaluation fails. It used to run after the
    # commit (the night was published, the run reported failure); now it runs before.
    from dear_udf.spark.job import run_job

    out = _copy(nights, "delta", tmp_path)
    before = _delta_rows(out)
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("q0 0 d1 1\nq1 0 d2\n")
    config = _config(data, tiny_models["index227"], out, top_k=2, qrels=str(qrels), trec_out=str(tmp_path / "run.trec"))
    with pytest.raises(InputError, match=r"qrels\.txt, line 2: expected 4 fields \(query_id iteration doc_id relevance\), got 3\.$"):
        run_job(config, spark=spark)
    assert _delta_rows(out) == before
    # No TREC run, summary or temp file; the scores are kept in the scratch cache, so the
    # rerun after the qrels are fixed scores nothing again.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".delta.night-1.score-cache", "delta", "qrels.txt"]


# -- case 2: empty or mostly dropped runs ----------------------------------------------------


def test_empty_candidates_do_not_replace_a_good_night(spark, tiny_models, data, nights, tmp_path):
    from dear_udf.spark.job import run_job

    out = _copy(nights, "delta", tmp_path)
    before = _delta_rows(out)
    empty = tmp_path / "candidates.parquet"
    pq.write_table(data["candidates"].slice(0, 0), empty)
    config = job_config(dict(data["paths"], candidates=str(empty)), tiny_models["index227"], out, top_k=3)
    with pytest.raises(RunRefusedError, match=r"run_id='night-1': nothing to write, 0 of 0 candidates kept \(the candidates input has no rows\); .*--allow-empty"):
        run_job(config, spark=spark)
    assert _delta_rows(out) == before


def test_empty_queries_refuse_the_run_unless_allow_empty(spark, tiny_models, data, nights, tmp_path):
    from dear_udf.spark.job import run_job

    out = _copy(nights, "delta", tmp_path)
    before = _delta_rows(out)
    empty = tmp_path / "queries.tsv"
    empty.write_text("")
    paths = dict(data["paths"], queries=str(empty))
    with pytest.raises(RunRefusedError, match=r"nothing to write, 0 of 20 candidates kept \(dropped: query_id_not_in_queries=20\)"):
        run_job(job_config(paths, tiny_models["index227"], out, top_k=3), spark=spark)
    assert _delta_rows(out) == before
    # Asked for, the empty night is published: night-1 is emptied, night-2 kept.
    summary = run_job(job_config(paths, tiny_models["index227"], out, top_k=3, allow_empty=True), spark=spark)
    assert summary.pairs_scored == 0 and summary.settings["allow_empty"] is True  # the summary says it was asked
    assert _delta_rows(out) == [r for r in before if r[S.OUTPUT_COLUMNS.index(S.RUN_ID)] == "night-2"]


# -- case 4: non-finite scores -----------------------------------------------------------------


@pytest.fixture(scope="module")
def nan_model(tiny_models, tmp_path_factory):
    """The tiny model with one NaN in its score head: every score is NaN."""
    from safetensors.torch import load_file, save_file

    model = shutil.copytree(tiny_models["index227"], tmp_path_factory.mktemp("nan") / "model")
    weights = load_file(model / "model.safetensors")
    weights["score.weight"][0, 0] = float("nan")
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    return model


def test_nan_scores_are_counted_and_never_written(spark, data, nights, nan_model, tmp_path):
    from dear_udf.spark.job import run_job

    out = _copy(nights, "delta", tmp_path)
    before = _delta_rows(out)
    with pytest.raises(RunRefusedError, match=r"run_id='night-1': 20 of 20 scores are NaN or infinite \(e\.g\. q\d+/d\d+=nan"):
        run_job(_config(data, nan_model, out), spark=spark)
    assert _delta_rows(out) == before
    assert not (tmp_path / "delta.night-1.summary.json").exists()


# -- case 11: the summary ----------------------------------------------------------------------


def test_each_night_has_its_own_summary_readable_by_all(nights):
    import json

    for run_id in ("night-1", "night-2"):
        path = nights / f"delta.{run_id}.summary.json"
        assert json.loads(path.read_text())["run_id"] == run_id
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~_umask()
    assert not (nights / "delta.summary.json").exists()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
