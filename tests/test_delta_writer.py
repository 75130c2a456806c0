"""The Delta writer without a JVM (deltalake): one-transaction commits of a run's Parquet files."""

from __future__ import annotations

import json
import multiprocessing
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake

from dear_udf.exceptions import ConfigError, InputError, OutputError
from dear_udf.io.delta_writer import read_table, replace_partition
from dear_udf.schema import OUTPUT_ARROW_SCHEMA


def _rows(run_id: str, n: int, *, tag: str = "") -> pa.Table:
    return pa.table(
        {
            "query_id": [f"q{i % 3}" for i in range(n)],
            "doc_id": [f"d{tag}{i}" for i in range(n)],
            "rank": pa.array([i + 1 for i in range(n)], pa.int32()),
            "score": pa.array([float(n - i) for i in range(n)], pa.float32()),
            "first_stage_rank": pa.array([i + 1 for i in range(n)], pa.int32()),
            "first_stage_score": pa.array([None] * n, pa.float64()),
            "run_id": [run_id] * n,
            "model": ["tiny"] * n,
            "adapter": pa.array([None] * n, pa.string()),
        },
        schema=OUTPUT_ARROW_SCHEMA,
    )


def _write(table_root: Path, run_id: str, n: int, *, tag: str = "", folder: str | None = None, keep_run_id: bool = False) -> str:
    """Write one file the way an executor would; return its path relative to the table."""
    rel = f"{folder or f'run_id={run_id}'}/part-{uuid.uuid4().hex}.parquet"
    data = _rows(run_id, n, tag=tag)
    if not keep_run_id:
        data = data.drop_columns(["run_id"])  # Spark leaves the partition column to the folder
    (table_root / rel).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(data, table_root / rel)
    return rel


def _content(uri: Path) -> list[tuple]:
    t = DeltaTable(str(uri)).to_pyarrow_table()
    return sorted(zip(*(t.column(c).to_pylist() for c in ("run_id", "query_id", "doc_id", "rank"))))


def _expected(*tables: pa.Table) -> list[tuple]:
    out = []
    for t in tables:
        out += list(zip(*(t.column(c).to_pylist() for c in ("run_id", "query_id", "doc_id", "rank"))))
    return sorted(out)


def test_first_commit_creates_partitioned_table_with_output_schema(tmp_path):
    uri = tmp_path / "out"
    f = _write(uri, "A", 4)
    assert replace_partition(str(uri), "A", [f]) == 0
    dt = DeltaTable(str(uri))
    assert dt.metadata().partition_columns == ["run_id"]
    assert pa.schema(dt.schema().to_arrow()).names == OUTPUT_ARROW_SCHEMA.names
    table = dt.to_pyarrow_table()
    assert table.schema.field("rank").type == pa.int32()
    assert table.schema.field("score").type == pa.float32()
    assert _content(uri) == _expected(_rows("A", 4))


def test_recommit_replaces_only_that_runs_partition(tmp_path):
    uri = tmp_path / "out"
    a_old = [_write(uri, "A", 3, tag="old"), _write(uri, "A", 2, tag="old2")]
    assert replace_partition(str(uri), "A", a_old) == 0
    assert replace_partition(str(uri), "B", [_write(uri, "B", 5)]) == 1
    a_new = _write(uri, "A", 4, tag="new")
    assert replace_partition(str(uri), "A", [a_new]) == 2
    # B's rows plus only the new A rows; the old A files are still on disk but removed.
    assert _content(uri) == _expected(_rows("B", 5), _rows("A", 4, tag="new"))
    assert all((uri / p).exists() for p in a_old)
    # The replacement is one commit holding both the removes and the add.
    log = [json.loads(line) for line in (uri / "_delta_log" / f"{2:020d}.json").read_text().splitlines()]
    removed = sorted(a["remove"]["path"] for a in log if "remove" in a)
    added = [a["add"] for a in log if "add" in a]
    assert removed == sorted(a_old)
    assert [a["path"] for a in added] == [a_new]
    assert json.loads(added[0]["stats"])["numRecords"] == 4
    assert added[0]["partitionValues"] == {"run_id": "A"}


def test_rerun_leaves_row_count_unchanged(tmp_path):
    uri = tmp_path / "out"
    replace_partition(str(uri), "B", [_write(uri, "B", 2)])
    for _ in range(3):
        replace_partition(str(uri), "A", [_write(uri, "A", 6)])
        assert DeltaTable(str(uri)).to_pyarrow_table().num_rows == 8


def test_uncommitted_files_are_invisible(tmp_path):
    uri = tmp_path / "out"
    replace_partition(str(uri), "A", [_write(uri, "A", 3)])
    before, version = _content(uri), DeltaTable(str(uri)).version()
    # A job that wrote its files and died before the commit, for a new and an existing run.
    _write(uri, "A", 50, tag="crashed")
    _write(uri, "Z", 50, tag="crashed")
    assert _content(uri) == before
    assert DeltaTable(str(uri)).version() == version


def test_uncommitted_files_without_table_leave_no_table(tmp_path):
    uri = tmp_path / "out"
    _write(uri, "A", 3)
    assert not (uri / "_delta_log").exists()
    with pytest.raises(InputError, match="not a Delta table"):
        read_table(str(uri))


def test_files_holding_the_partition_column_read_the_same(tmp_path):
    uri = tmp_path / "out"
    replace_partition(str(uri), "A", [_write(uri, "A", 3, keep_run_id=True)])
    assert _content(uri) == _expected(_rows("A", 3))


def test_spark_escaped_partition_folder_reads_back_the_run_id(tmp_path):
    uri = tmp_path / "out"
    run_id = "2024-05-01 T03:00"
    # Spark writes ':' in partition folder names as %3A; delta-rs encodes the path again.
    f = _write(uri, run_id, 2, folder="run_id=2024-05-01 T03%3A00")
    replace_partition(str(uri), run_id, [f])
    assert _content(uri) == _expected(_rows(run_id, 2))


def test_empty_files_empties_the_partition(tmp_path):
    uri = tmp_path / "out"
    replace_partition(str(uri), "A", [_write(uri, "A", 3)])
    replace_partition(str(uri), "B", [_write(uri, "B", 2)])
    replace_partition(str(uri), "A", [])
    assert _content(uri) == _expected(_rows("B", 2))


def test_off_schema_file_is_refused_and_table_untouched(tmp_path):
    uri = tmp_path / "out"
    replace_partition(str(uri), "A", [_write(uri, "A", 2)])
    before = _content(uri)
    bad = "run_id=A/bad.parquet"
    pq.write_table(_rows("A", 2).drop_columns(["run_id"]).set_column(2, "rank", pa.array([1, 2], pa.int64())), uri / bad)
    with pytest.raises(OutputError, match=r"bad\.parquet.*wrong types \{'rank': 'int64 \(expected int32\)'\}"):
        replace_partition(str(uri), "A", [bad])
    assert _content(uri) == before


def test_table_with_another_schema_is_refused(tmp_path):
    # delta-rs' overwrite would silently replace the table's schema: refuse instead.
    uri = tmp_path / "out"
    write_deltalake(str(uri), pa.table({"x": [1], "run_id": ["A"]}), partition_by=["run_id"])
    f = _write(uri, "A", 2)
    with pytest.raises(OutputError, match="table schema differs"):
        replace_partition(str(uri), "A", [f])
    assert DeltaTable(str(uri)).to_pyarrow_table().column_names == ["x", "run_id"]


def test_missing_file_is_refused(tmp_path):
    uri = tmp_path / "out"
    _write(uri, "A", 1)
    with pytest.raises(OutputError, match=r"run_id=A/nope\.parquet.*does not exist"):
        replace_partition(str(uri), "A", ["run_id=A/nope.parquet"])


@pytest.mark.parametrize(
    ("run_id", "files", "kwargs", "message"),
    [
        ("A", ["run_id=B/x.parquet"], {}, r"'run_id=B/x.parquet' is not inside the partition folder 'run_id=A/'"),
        ("A", ["/abs/run_id=A/x.parquet"], {}, "relative to the table root"),
        ("A", ["../run_id=A/x.parquet"], {}, "relative to the table root"),
        ("A", "run_id=A/x.parquet", {}, "single string"),
        ("A/B", [], {}, r"run_id must not hold '/'"),
        ("a%2Fb", [], {}, r"run_id must not hold '%'"),
    ],
)
def test_bad_arguments_are_refused_by_name(tmp_path, run_id, files, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        replace_partition(str(tmp_path / "out"), run_id, files, **kwargs)


def test_read_table_reads_current_version(tmp_path):
    uri = tmp_path / "out"
    replace_partition(str(uri), "A", [_write(uri, "A", 3)])
    replace_partition(str(uri), "A", [_write(uri, "A", 2)])
    assert read_table(str(uri)).num_rows == 2


def test_read_table_matches_deltalakes_own_reader_without_its_file_system(tmp_path):
    """read_table reads the listed files with pyarrow's own file system (deltalake's Python
    file system makes a process abort at exit now and then): the same rows, partition
    values from the log (not folder names: '007', 'x é', null), and a column added later
    read as null in older files."""
    import pyarrow.dataset as ds

    from dear_udf.io.delta_writer import as_dataset

    uri = str(tmp_path / "t")
    write_deltalake(uri, pa.table({"a": [1, 2, 3], "p": ["x é", "007", None]}), partition_by=["p"])
    write_deltalake(uri, pa.table({"a": [4], "p": ["007"], "b": ["new"]}), mode="append", schema_mode="merge")
    ours, theirs = read_table(uri), DeltaTable(uri).to_pyarrow_table()
    assert ours.schema == theirs.schema
    assert sorted(ours.to_pylist(), key=str) == sorted(theirs.to_pylist(), key=str)
    assert sorted(ours.to_pylist(), key=lambda r: r["a"]) == [
        {"a": 1, "p": "x é", "b": None}, {"a": 2, "p": "007", "b": None}, {"a": 3, "p": None, "b": None}, {"a": 4, "p": "007", "b": "new"}]
    picked = as_dataset(DeltaTable(uri)).to_table(filter=ds.field("p") == "007", columns=["a"])
    assert sorted(picked.column("a").to_pylist()) == [2, 4]


def test_a_table_whose_files_are_not_its_rows_is_refused(tmp_path):
    from dear_udf.io.delta_writer import as_dataset

    uri = str(tmp_path / "dv")
    write_deltalake(uri, pa.table({"a": [1, 2]}), configuration={"delta.enableDeletionVectors": "true"})
    with pytest.raises(InputError, match=r"uses \[.*'deletionVectors'.*\], which only Spark's Delta reads correctly"):
        as_dataset(DeltaTable(uri), uri)


# -- concurrent runs (issue 13, case 9) ------------------------------------------------------


def _commit_rounds(uri: str, run_id: str, rounds: list[str], barrier, results) -> None:
    """One run's driver: commit one file per round, every round started with the other run."""
    for rel in rounds:
        barrier.wait(timeout=60)
        try:
            replace_partition(uri, run_id, [rel])
            results.put((run_id, rel, None))
        except Exception as exc:  # reported to the test, which names it
            results.put((run_id, rel, f"{type(exc).__name__}: {exc}"))


def test_concurrent_commits_of_different_runs_all_land(tmp_path):
    # Two drivers (processes: deltalake is not meant to be shared across threads at exit)
    # replace runs A and B at the same moment, three times; C must stay as it was.
    uri = tmp_path / "out"
    for run_id in ("A", "B", "C"):
        replace_partition(str(uri), run_id, [_write(uri, run_id, 2, tag="old")])
    rounds = {r: [_write(uri, r, 3 + i, tag=f"r{i}") for i in range(3)] for r in ("A", "B")}
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_commit_rounds, args=(str(uri), r, rounds[r], barrier, results)) for r in rounds]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in range(6)]
    for p in procs:
        p.join(timeout=60)
    assert [o for o in outcomes if o[2] is not None] == []
    # Every round committed (3 setup commits + 6), and the table holds the last round of
    # A and B and the untouched C: nothing lost, nothing doubled.
    assert DeltaTable(str(uri)).version() == 2 + 6
    assert _content(uri) == _expected(_rows("A", 5, tag="r2"), _rows("B", 5, tag="r2"), _rows("C", 2, tag="old"))


def _commit_first(monkeypatch, competitor) -> None:
    """Make the next partition overwrite find that ``competitor()`` committed just before it."""
    original = DeltaTable.create_write_transaction
    pending = [competitor]

    def racing(self, *args, **kwargs):
        if pending:
            pending.pop()()  # lands after this snapshot was read, before its commit
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DeltaTable, "create_write_transaction", racing)


def test_commit_is_retried_when_another_run_replaced_another_partition(tmp_path, monkeypatch):
    uri = tmp_path / "out"
    replace_partition(str(uri), "A", [_write(uri, "A", 2, tag="old")])
    replace_partition(str(uri), "B", [_write(uri, "B", 2, tag="old")])
    b_new = _write(uri, "B", 3, tag="new")
    _commit_first(monkeypatch, lambda: replace_partition(str(uri), "B", [b_new]))
    replace_partition(str(uri), "A", [_write(uri, "A", 4, tag="new")])
    assert _content(uri) == _expected(_rows("A", 4, tag="new"), _rows("B", 3, tag="new"))


def test_concurrent_commit_of_the_same_run_is_refused_not_overwritten(tmp_path, monkeypatch):
    # Two runs of one night at once: the later one must not silently replace the other's rows.
    uri = tmp_path / "out"
    replace_partition(str(uri), "A", [_write(uri, "A", 2, tag="old")])
    other = _write(uri, "A", 3, tag="other")
    _commit_first(monkeypatch, lambda: replace_partition(str(uri), "A", [other]))
    with pytest.raises(OutputError, match=r"another run committed run_id='A' at the same time \(table version 1\)"):
        replace_partition(str(uri), "A", [_write(uri, "A", 4, tag="mine")])
    assert _content(uri) == _expected(_rows("A", 3, tag="other"))
