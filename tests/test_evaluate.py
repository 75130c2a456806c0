"""Metrics come from ir-measures: checked against ir_measures called directly on the same files."""

from __future__ import annotations

import json
from pathlib import Path

import ir_measures
import pyarrow as pa
import pytest

from dear_udf import cli
from dear_udf.config import InputSpec
from dear_udf.evaluate import compare, evaluate
from dear_udf.exceptions import ConfigError
from dear_udf.io import read_local, read_run, replace_partition

# Three judged queries; q3 is judged but absent from the reranked run, q9 judged but never
# retrieved by the first stage.
QRELS = """q1 0 d1 1
q1 0 d4 2
q2 0 d7 1
q3 0 d9 1
q9 0 d1 1
"""
FIRST_STAGE = """q1 Q0 d2 1 9.0 bm25
q1 Q0 d3 2 8.0 bm25
q1 Q0 d1 3 7.0 bm25
q1 Q0 d4 4 6.0 bm25
q2 Q0 d7 1 5.0 bm25
q2 Q0 d8 2 4.0 bm25
q3 Q0 d5 1 3.0 bm25
q3 Q0 d9 2 2.0 bm25
"""
RERANKED = """q1 Q0 d4 1 0.9 dear
q1 Q0 d1 2 0.8 dear
q2 Q0 d8 1 0.7 dear
q2 Q0 d7 2 0.6 dear
"""
MEASURES = ["nDCG@10", "RR@10", "R@2", "AP"]


@pytest.fixture
def files(tmp_path) -> dict[str, str]:
    out = {}
    for name, text in (("qrels.txt", QRELS), ("bm25.trec", FIRST_STAGE), ("dear.trec", RERANKED)):
        (tmp_path / name).write_text(text)
        out[name] = str(tmp_path / name)
    return out


def _direct(measures, qrels_path, run_path, *, drop_queries=()):
    qrels = [q for q in ir_measures.read_trec_qrels(qrels_path) if q.query_id not in drop_queries]
    parsed = [ir_measures.parse_measure(m) for m in measures]
    agg = ir_measures.calc_aggregate(parsed, qrels, list(ir_measures.read_trec_run(run_path)))
    return {str(m): v for m, v in agg.items()}


def test_evaluate_matches_ir_measures_on_the_same_files(files):
    result = evaluate(read_run(files["dear.trec"]), read_local(InputSpec(files["qrels.txt"]), "qrels"), MEASURES)
    assert result["aggregate"] == pytest.approx(_direct(MEASURES, files["qrels.txt"], files["dear.trec"]))
    assert list(result["aggregate"]) == MEASURES  # in the order asked
    parsed = [ir_measures.parse_measure(m) for m in MEASURES]
    direct = {
        (m.query_id, str(m.measure)): m.value
        for m in ir_measures.iter_calc(parsed, ir_measures.read_trec_qrels(files["qrels.txt"]), ir_measures.read_trec_run(files["dear.trec"]))
    }
    ours = {(q, m): v for q, values in result["per_query"].items() for m, v in values.items()}
    assert ours == pytest.approx(direct)


def test_csv_run_and_qrels_evaluate_as_their_trec_files(files, tmp_path):
    """A run as ``dear-rerank score --out scores.csv`` writes it, and qrels with a header."""
    run = tmp_path / "scores.csv"
    run.write_text("query_id,doc_id,score\n" + "".join(f"{q},{d},{s}\n" for q, _, d, _, s, _ in (line.split() for line in RERANKED.splitlines())))
    qrels = tmp_path / "qrels.csv"
    qrels.write_text("query-id,corpus-id,score\n" + "".join(f"{q},{d},{r}\n" for q, _, d, r in (line.split() for line in QRELS.splitlines())))
    result = evaluate(read_run(str(run)), read_local(InputSpec(str(qrels)), "qrels"), MEASURES)
    assert result["aggregate"] == pytest.approx(_direct(MEASURES, files["qrels.txt"], files["dear.trec"]))


def test_known_values_by_hand(files):
    # q1: d4 (rel 2) first, d1 (rel 1) second -> RR 1; q2: d7 at rank 2 -> RR 0.5; q3, q9: 0.
    result = evaluate(read_run(files["dear.trec"]), read_local(InputSpec(files["qrels.txt"]), "qrels"), ["RR@10"])
    assert result["per_query"]["q1"]["RR@10"] == 1.0
    assert result["per_query"]["q2"]["RR@10"] == 0.5
    assert result["aggregate"]["RR@10"] == pytest.approx((1.0 + 0.5 + 0 + 0) / 4)


def test_rank_only_run_is_ordered_by_rank(files):
    # Scores null, ranks given: d1 at rank 1 must come first (score = -rank), not last.
    run = pa.table(
        {
            "query_id": ["q1", "q1"],
            "doc_id": ["d1", "d2"],
            "first_stage_rank": pa.array([1, 2], pa.int32()),
            "first_stage_score": pa.array([None, None], pa.float64()),
        }
    )
    qrels = pa.table({"query_id": ["q1"], "doc_id": ["d1"], "relevance": [1]})
    assert evaluate(run, qrels, ["RR@10"])["aggregate"]["RR@10"] == 1.0


def test_compare_first_stage_vs_reranked(files):
    first = read_local(InputSpec(files["bm25.trec"]), "candidates")
    reranked = read_run(files["dear.trec"])
    result = compare(first, reranked, read_local(InputSpec(files["qrels.txt"]), "qrels"), k=2)
    assert result["measures"] == ["nDCG@10", "RR@10", "R@2"]
    # q9 was never retrieved by the first stage: left out of both; q3 counts 0 when reranked.
    assert result["queries"] == 3
    assert result["first_stage"] == pytest.approx(_direct(result["measures"], files["qrels.txt"], files["bm25.trec"], drop_queries={"q9"}))
    assert result["reranked"] == pytest.approx(_direct(result["measures"], files["qrels.txt"], files["dear.trec"], drop_queries={"q9"}))
    for m in result["measures"]:
        assert result["delta"][m] == pytest.approx(result["reranked"][m] - result["first_stage"][m])
    # By hand: first stage q1 1/3, q2 1, q3 1/2; reranked q1 1, q2 1/2, q3 0 (dropped).
    assert result["first_stage"]["RR@10"] == pytest.approx((1 / 3 + 1 + 0.5) / 3)
    assert result["reranked"]["RR@10"] == pytest.approx(1.5 / 3)


def test_compare_with_no_judged_query_gives_none_not_nan(files):
    run = pa.table({"query_id": ["zz"], "doc_id": ["d1"], "score": [1.0]})
    result = compare(run, run, read_local(InputSpec(files["qrels.txt"]), "qrels"), k=10)
    assert result["queries"] == 0
    assert result["first_stage"] == {"nDCG@10": None, "RR@10": None, "R@10": None}
    json.dumps(result, allow_nan=False)


def test_null_relevance_is_refused():
    from dear_udf.exceptions import InputError

    run = pa.table({"query_id": ["q"], "doc_id": ["d"], "score": [1.0]})
    qrels = pa.table({"query_id": ["q"], "doc_id": ["d"], "relevance": pa.array([None], pa.int32())})
    with pytest.raises(InputError, match=r"qrels: column 'relevance' holds 1 null"):
        evaluate(run, qrels)


def test_unknown_measure_is_named():
    run = pa.table({"query_id": ["q"], "doc_id": ["d"], "score": [1.0]})
    qrels = pa.table({"query_id": ["q"], "doc_id": ["d"], "relevance": [1]})
    with pytest.raises(ConfigError, match=r"measures: 'nDGC@10' is not an ir-measures measure"):
        evaluate(run, qrels, ["nDGC@10"])


def test_eval_cli_prints_one_line_per_measure_and_writes_json(files, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    code = cli.main(["eval", "--run", files["dear.trec"], "--qrels", files["qrels.txt"], "--measures", "nDCG@10", "RR@10", "--json", str(out)])
    assert code == 0
    direct = _direct(["nDCG@10", "RR@10"], files["qrels.txt"], files["dear.trec"])
    assert capsys.readouterr().out.splitlines() == [f"nDCG@10 {direct['nDCG@10']:.4f}", f"RR@10 {direct['RR@10']:.4f}"]
    payload = json.loads(out.read_text())
    assert payload["aggregate"] == pytest.approx(direct)
    assert payload["per_query"]["q1"]["RR@10"] == 1.0


def test_eval_cli_reads_one_run_of_a_delta_output_table(files, tmp_path, capsys):
    import pyarrow.parquet as pq

    from dear_udf.schema import OUTPUT_ARROW_SCHEMA

    uri = tmp_path / "out"
    for run_id, text in (("good", RERANKED), ("bad", RERANKED.replace("0.9", "0.1"))):
        t = read_local(InputSpec(_write_text(tmp_path / f"{run_id}.trec", text)), "candidates")
        n = t.num_rows
        data = pa.table(
            {
                "query_id": t["query_id"],
                "doc_id": t["doc_id"],
                "rank": t["first_stage_rank"],
                "score": t["first_stage_score"].cast(pa.float32()),
                "first_stage_rank": pa.nulls(n, pa.int32()),
                "first_stage_score": pa.nulls(n, pa.float64()),
                "run_id": [run_id] * n,
                "model": ["m"] * n,
                "adapter": pa.nulls(n, pa.string()),
            },
            schema=OUTPUT_ARROW_SCHEMA,
        ).drop_columns(["run_id"])
        (uri / f"run_id={run_id}").mkdir(parents=True)
        pq.write_table(data, uri / f"run_id={run_id}" / "part-0.parquet")
        replace_partition(str(uri), run_id, [f"run_id={run_id}/part-0.parquet"])
    assert cli.main(["eval", "--run", str(uri), "--qrels", files["qrels.txt"], "--measures", "RR@10"]) == 2
    assert "choose one with run_id" in capsys.readouterr().err
    assert cli.main(["eval", "--run", str(uri), "--run-id", "good", "--qrels", files["qrels.txt"], "--measures", "RR@10"]) == 0
    assert capsys.readouterr().out.strip() == f"RR@10 {_direct(['RR@10'], files['qrels.txt'], files['dear.trec'])['RR@10']:.4f}"


def test_eval_cli_missing_file_is_an_error_not_a_traceback(files, tmp_path, capsys):
    assert cli.main(["eval", "--run", str(tmp_path / "nope.trec"), "--qrels", files["qrels.txt"]]) == 2
    assert "nope.trec: no such file" in capsys.readouterr().err


def _write_text(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)
