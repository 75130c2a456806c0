"""The report PNG: written, non-empty, and showing the per-query comparison it claims."""

from __future__ import annotations

import pyarrow as pa

from dear_udf import cli
from dear_udf.report import write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _data():
    first = pa.table(
        {
            "query_id": ["q1", "q1", "q2", "q2", "q3"],
            "doc_id": ["a", "b", "c", "d", "e"],
            "first_stage_rank": pa.array([1, 2, 1, 2, 1], pa.int32()),
        }
    )
    reranked = pa.table(
        {
            "query_id": ["q1", "q1", "q2", "q2", "q3"],
            "doc_id": ["b", "a", "c", "d", "e"],
            "score": pa.array([0.9, 0.1, 0.3, 0.8, 0.5], pa.float32()),
        }
    )
    qrels = pa.table({"query_id": ["q1", "q2", "q3"], "doc_id": ["b", "c", "e"], "relevance": [1, 1, 1]})
    return first, reranked, qrels


def test_write_report_writes_png_and_counts_queries(tmp_path):
    path = tmp_path / "report.png"
    stats = write_report(*_data(), path)
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
    # q1 moved its relevant doc up, q2 down, q3 unchanged.
    assert (stats["queries"], stats["improved"], stats["hurt"], stats["tied"]) == (3, 1, 1, 1)


def test_report_cli(tmp_path, capsys):
    first, reranked, qrels = _data()
    (tmp_path / "bm25.trec").write_text(
        "".join(f"{q} Q0 {d} {r} {-r} bm25\n" for q, d, r in zip(*(first[c].to_pylist() for c in ("query_id", "doc_id", "first_stage_rank"))))
    )
    ranked = sorted(zip(*(reranked[c].to_pylist() for c in ("query_id", "doc_id", "score"))), key=lambda t: (t[0], -t[2]))
    (tmp_path / "dear.trec").write_text("".join(f"{q} Q0 {d} {i + 1} {s} dear\n" for i, (q, d, s) in enumerate(ranked)))
    (tmp_path / "qrels.txt").write_text("".join(f"{q} 0 {d} {r}\n" for q, d, r in zip(*(qrels[c].to_pylist() for c in qrels.column_names))))
    out = tmp_path / "r.png"
    argv = ["report", "--run", str(tmp_path / "dear.trec"), "--first-stage", str(tmp_path / "bm25.trec"), "--qrels", str(tmp_path / "qrels.txt"), "--out", str(out)]
    assert cli.main(argv) == 0
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    assert "3 queries, 1 improved, 1 hurt" in capsys.readouterr().out
