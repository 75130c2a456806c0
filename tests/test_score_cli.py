"""``dear-rerank score`` end to end: Parquet pairs in, one score per row out."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dear_udf.testing.reference import DearReference
from dear_udf.cli import main
from dear_udf.testing import BOS, EOS

TOL = 1e-4

ROWS = [
    # query_id, doc_id, query, title, text
    ("q1", "d3", "what is a llama", "Llama", "The llama is a domesticated camelid."),
    ("q1", "d1", "what is a llama", None, ""),
    ("q1", "d2", "what is a llama", "", "café 東京 🙂 " * 40),
    ("q2", "d1", "", "", None),
    ("q2", "d9", "", "Edison", f"light bulb {EOS} invented {BOS}"),
    ("q3", "d7", None, None, "coffee diet " * 300),
    ("q1", "d4", "what is a llama", "", "camelid " * 5),
    ("q4", "d5", "bang! in the query", "", "and in the doc! too"),
    ("q1", "d6", "what is a llama", "", "a bang! in the document"),
]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _write_pairs(path: Path, *, with_title: bool = True, int_ids: bool = False) -> Path:
    qids, dids, queries, titles, texts = (list(c) for c in zip(*ROWS))
    columns = {
        "query_id": list(range(len(qids))) if int_ids else qids,
        "doc_id": dids,
        "query": pa.array(queries, type=pa.string()),
        "text": pa.array(texts, type=pa.string()),
        "first_stage_rank": list(range(1, len(qids) + 1)),  # extra columns are ignored
    }
    if with_title:
        columns["title"] = pa.array(titles, type=pa.string())
    pq.write_table(pa.table(columns), path)
    return path


def _reference(model: Path | None, adapter: Path | None = None, *, with_title: bool = True, **kwargs) -> np.ndarray:
    _, _, queries, titles, texts = (list(c) for c in zip(*ROWS))
    reference = DearReference.load(model, adapter, **{"special_tokens": "split", **kwargs})
    return reference.score(queries, titles if with_title else None, texts)


def _check_output(out: Path, ref: np.ndarray) -> None:
    table = pq.read_table(out)
    assert table.column_names == ["query_id", "doc_id", "score"]
    assert table.schema.field("score").type == pa.float32()
    assert table.schema.field("query_id").type == pa.string()
    # One row per input row, in input order.
    assert table.num_rows == len(ROWS)
    assert table.column("query_id").to_pylist() == [r[0] for r in ROWS]
    assert table.column("doc_id").to_pylist() == [r[1] for r in ROWS]
    scores = table.column("score").to_numpy()
    assert float(np.max(np.abs(scores - ref))) <= TOL


@pytest.mark.parametrize("name", ["index227", "last"])
def test_score_full_model(tiny_models, tmp_path, capsys, name):
    pairs = _write_pairs(tmp_path / "pairs.parquet")
    out = tmp_path / "out" / "scores.parquet"  # parent folder created by the command
    argv = ["score", "--model", str(tiny_models[name]), "--pairs", str(pairs), "--out", str(out),
            "--dtype", "float32", "--device", "cpu", "--batch-size", "3"]
    assert main(argv) == 0
    _check_output(out, _reference(tiny_models[name]))
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["pairs"] == len(ROWS)
    assert summary["batches"] >= 3  # batch size 3 over 9 rows
    assert summary["computed_tokens"] < 228 * len(ROWS)


@pytest.mark.parametrize("pooling", ["first-pad", "last-non-pad"])
@pytest.mark.parametrize("special_tokens", ["split", "parse"])
def test_pooling_and_special_token_flags(tiny_models, tmp_path, capsys, pooling, special_tokens):
    pairs = _write_pairs(tmp_path / "pairs.parquet")
    out = tmp_path / "scores.parquet"
    argv = ["score", "--model", str(tiny_models["index227"]), "--pairs", str(pairs), "--out", str(out),
            "--pooling", pooling, "--special-tokens", special_tokens]
    assert main(argv) == 0
    _check_output(out, _reference(tiny_models["index227"], pooling=pooling, special_tokens=special_tokens))
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # The "!" of q4's query pools its pair inside the query under first-pad only; the
    # document's "!" of d6 pools that pair early too.
    assert summary["pooled_in_query"] == (1 if pooling == "first-pad" else 0)
    assert summary["pooled_early"] == (2 if pooling == "first-pad" else 0)


def test_default_flags_are_first_pad_and_split(tiny_models, tmp_path):
    pairs = _write_pairs(tmp_path / "pairs.parquet")
    out = tmp_path / "scores.parquet"
    assert main(["score", "--model", str(tiny_models["index227"]), "--pairs", str(pairs), "--out", str(out)]) == 0
    _check_output(out, _reference(tiny_models["index227"], pooling="first-pad", special_tokens="split"))
    other = _reference(tiny_models["index227"], pooling="last-non-pad", special_tokens="split")
    assert float(np.max(np.abs(pq.read_table(out).column("score").to_numpy() - other))) > 10 * TOL


def test_score_with_adapter(tiny_models, tmp_path):
    pairs = _write_pairs(tmp_path / "pairs.parquet")
    out = tmp_path / "scores.parquet"
    base, adapter = tiny_models["last"], tiny_models["last-lora"]
    argv = ["score", "--model", str(base), "--adapter", str(adapter), "--pairs", str(pairs), "--out", str(out)]
    assert main(argv) == 0
    ref = _reference(base, adapter)
    _check_output(out, ref)
    assert float(np.max(np.abs(ref - _reference(base)))) > 1e-2  # the adapter mattered


def test_score_without_title_column_and_integer_ids(tiny_models, tmp_path):
    pairs = _write_pairs(tmp_path / "pairs.parquet", with_title=False, int_ids=True)
    out = tmp_path / "scores.parquet"
    assert main(["score", "--model", str(tiny_models["index227"]), "--pairs", str(pairs), "--out", str(out)]) == 0
    table = pq.read_table(out)
    assert table.column("query_id").to_pylist() == [str(i) for i in range(len(ROWS))]
    ref = _reference(tiny_models["index227"], with_title=False)
    assert float(np.max(np.abs(table.column("score").to_numpy() - ref))) <= TOL


def test_missing_columns_are_named(tiny_models, tmp_path, capsys):
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"query_id": ["q"], "doc_id": ["d"], "query": ["x"]}), bad)
    rc = main(["score", "--model", str(tiny_models["index227"]), "--pairs", str(bad), "--out", str(tmp_path / "o.parquet")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "dear-rerank score: error:" in err and "missing columns ['text']" in err
    assert not (tmp_path / "o.parquet").exists()


def test_missing_pairs_file_and_model_are_named(tiny_models, tmp_path, capsys):
    rc = main(["score", "--model", str(tiny_models["index227"]), "--pairs", str(tmp_path / "none.parquet"),
               "--out", str(tmp_path / "o.parquet")])
    assert rc == 2 and f"{tmp_path / 'none.parquet'}: no such file" in capsys.readouterr().err
    pairs = _write_pairs(tmp_path / "pairs.parquet")
    rc = main(["score", "--model", "/no/such/model", "--pairs", str(pairs), "--out", str(tmp_path / "o.parquet")])
    assert rc == 2 and "/no/such/model: no such directory" in capsys.readouterr().err


def test_console_script_in_a_subprocess(tiny_models, tmp_path):
    pairs = _write_pairs(tmp_path / "pairs.parquet")
    out = tmp_path / "scores.parquet"
    script = Path(sys.executable).with_name("dear-rerank")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "dear_udf.cli"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*command, "score", "--model", str(tiny_models["index227"]), "--pairs", str(pairs), "--out", str(out),
         "--device", "cpu", "--batch-size", "4"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stderr
    _check_output(out, _reference(tiny_models["index227"]))
    # Not a terminal: no progress bar frames in a log.
    assert "scoring:" not in result.stderr and "\r" not in result.stderr


def test_progress_bar_with_rate_and_eta_on_a_terminal(tiny_models, tmp_path, monkeypatch, capsys):
    """With stderr on a pseudo-terminal, the bar shows pairs done/total, elapsed<remaining, pairs/s."""
    import fcntl
    import pty
    import struct
    import termios
    import threading

    pairs = tmp_path / "pairs.parquet"
    table = pq.read_table(_write_pairs(tmp_path / "seed.parquet"))
    pq.write_table(pa.concat_tables([table] * 100), pairs)
    n = 100 * table.num_rows
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))  # rows, columns
    received: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(controller, 4096)
            except OSError:  # the terminal side closed
                return
            if not data:
                return
            received.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    with os.fdopen(terminal, "w", buffering=1, closefd=True) as tty:
        monkeypatch.setattr(sys, "stderr", tty)
        assert main(["score", "--model", str(tiny_models["index227"]), "--pairs", str(pairs),
                     "--out", str(tmp_path / "scores.parquet"), "--batch-size", "64"]) == 0
        monkeypatch.undo()
    reader.join(timeout=30)
    os.close(controller)
    err = b"".join(received).decode(errors="replace")
    frames = [f for f in err.replace("\n", "\r").split("\r") if f.startswith("scoring:")]
    assert re.search(rf"^scoring: +0%\| +\| 0/{n} \[00:00<\?, \? pairs/s\]$", frames[0]), frames
    # elapsed<remaining (the ETA), then the rate.
    assert all(re.search(rf"\| \d+/{n} \[\d\d:\d\d<\d\d:\d\d, +[\d.]+ pairs/s\]$", f) for f in frames[1:]), frames
    assert len(frames) >= 2 and frames[-1].startswith("scoring: 100%|")
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["pairs"] == n


# -- the model cards' batch script: a row per query in, a ranked row per document out ------

import csv  # noqa: E402
import gzip  # noqa: E402

WIDE = [
    # query_id, query, documents (texts, or [title, text] pairs)
    ("q1", "what is a llama, really?", ["The llama is a domesticated camelid.", ["Llama", "camelid " * 5], "", 'a "quoted"\ntwo-line text']),
    ("q2", "bang! in the query", ["one", "two", ["T", "three"]]),  # pooled inside the query: all tie under first-pad
    ("q3", "empty list", []),
    ("q4", "coffee", ["coffee diet " * 300, "coffee diet " * 300, "tea"]),  # the same text twice: a tie
]


def _wide_rows() -> list[tuple[str, int, str, str | None, str]]:
    """(query_id, doc_index, query, title, text) per document, as the card's list gives them."""
    out = []
    for qid, query, documents in WIDE:
        for index, doc in enumerate(documents):
            title, text = (None, doc) if isinstance(doc, str) else doc
            out.append((qid, index, query, title, text))
    return out


def _write_wide(path: Path, fmt: str) -> Path:
    if fmt == "csv":
        with open(path, "w", encoding="utf-8", newline="") as fh:  # as pandas' to_csv would write it
            writer = csv.writer(fh)
            writer.writerow(["query_id", "query", "documents"])
            writer.writerows((qid, query, json.dumps(docs)) for qid, query, docs in WIDE)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps({"query_id": q, "query": t, "documents": d}) + "\n" for q, t, d in WIDE))
    else:  # Parquet: a JSON text per query (a list column holds one kind of item)
        pq.write_table(pa.table({"query_id": [w[0] for w in WIDE], "query": [w[1] for w in WIDE], "documents": [json.dumps(w[2]) for w in WIDE]}), path)
    return path


def _read_out(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize(("pairs_name", "out_name"), [("queries_docs.csv", "reranked.csv"), ("queries_docs.jsonl", "reranked.csv.gz"), ("queries_docs.parquet", "reranked.parquet")])
def test_card_script_wide_layout_ranks_each_querys_documents(tiny_models, tmp_path, capsys, pairs_name, out_name):
    pairs = _write_wide(tmp_path / pairs_name, pairs_name.rsplit(".", 1)[1])
    out = tmp_path / out_name
    assert main(["score", "--model", str(tiny_models["index227"]), "--pairs", str(pairs), "--out", str(out), "--batch-size", "2"]) == 0
    rows = _read_out(out)
    assert list(rows[0]) == ["query_id", "doc_index", "rank", "score"]
    expected = _wide_rows()
    assert len(rows) == len(expected)
    reference = DearReference.load(tiny_models["index227"], None, special_tokens="split")
    ref = reference.score([r[2] for r in expected], [r[3] for r in expected], [r[4] for r in expected])
    ref_by_doc = {(r[0], r[1]): float(s) for r, s in zip(expected, ref)}
    got = {(r["query_id"], int(r["doc_index"])): (int(r["rank"]), float(r["score"])) for r in rows}
    assert set(got) == set(ref_by_doc)  # every document once
    assert max(abs(got[key][1] - ref_by_doc[key]) for key in got) <= TOL
    # Each query's documents best first, ranks from 1; equal scores keep list order.
    for qid, _, documents in WIDE:
        by_hand = sorted(range(len(documents)), key=lambda i: (-got[(qid, i)][1], i))
        assert [got[(qid, i)][0] for i in by_hand] == list(range(1, len(documents) + 1))
    # Rows go query by query in input order, best first within each.
    assert [(r["query_id"], int(r["rank"])) for r in rows] == [(q, k) for q, _, d in WIDE for k in range(1, len(d) + 1)]
    # DeAR's ties are kept exactly: q2 pools inside its query, q4 repeats a text.
    assert len({got[("q2", i)][1] for i in range(3)}) == 1 and [got[("q2", i)][0] for i in range(3)] == [1, 2, 3]
    assert got[("q4", 0)][1] == got[("q4", 1)][1] and got[("q4", 0)][0] < got[("q4", 1)][0]
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["pairs"] == len(expected) and summary["layout"] == "wide"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_long_layout_csv_in_and_out(tiny_models, tmp_path):
    pairs = tmp_path / "pairs.csv"
    with open(pairs, "w", encoding="utf-8-sig", newline="") as fh:  # with a BOM, as Excel writes it
        writer = csv.writer(fh, lineterminator="\r\n")
        writer.writerow(["query_id", "doc_id", "query", "title", "text"])
        writer.writerows(("" if v is None else v for v in row) for row in ROWS)
    out = tmp_path / "scores.csv"
    assert main(["score", "--model", str(tiny_models["index227"]), "--pairs", str(pairs), "--out", str(out)]) == 0
    rows = _read_out(out)
    assert [(r["query_id"], r["doc_id"]) for r in rows] == [(r[0], r[1]) for r in ROWS]  # input order
    # A CSV cell cannot say null: None is written as "", which DeAR's layout reads alike.
    ref = _reference(tiny_models["index227"])
    assert float(np.max(np.abs(np.array([float(r["score"]) for r in rows]) - ref))) <= TOL
    # The score written reads back to the very float32 the Parquet output holds.
    parquet = tmp_path / "scores.parquet"
    assert main(["score", "--model", str(tiny_models["index227"]), "--pairs", str(pairs), "--out", str(parquet)]) == 0
    assert [np.float32(r["score"]) for r in rows] == pq.read_table(parquet).column("score").to_pylist()


@pytest.mark.parametrize(
    ("body", "where", "reason"),
    [
        ('q1,x,"[""a"", 3]"\n', "line 2", "documents[1] must be a text or a [title, text] pair, got 3"),
        ('q1,x,"[[""t"", ""a"", ""b""]]"\n', "line 2", 'documents[0] must be a text or a [title, text] pair, got ["t", "a", "b"]'),
        ('q1,x,"{""a"": 1}"\n', "line 2", "documents must be a JSON list of texts or [title, text] pairs, got dict"),
        ('q1,x,"[""a"",\n""b"""\n', "line 2", "documents is not JSON (Expecting ',' delimiter: line 2 column 4 (char 9))"),
        ('q1,x,[]\nq2,y,\n', "line 3", "documents is empty; write [] for a query without documents"),
        ('q1,x,[]\n  ,y,[]\n', "line 3", "query_id is empty"),
        ('q1,"x\ny",[]\nq1,z,[]\n', "line 4", "query_id 'q1' again (first at line 2); give each query one row"),
        ('q1,x,[]\nq2,"y,[]\n', "line 3", "a quoted field is not closed before the end of the file"),
        ('q1,x\n', "line 2", "expected 3 fields (query_id,query,documents), got 2"),
    ],
)
def test_malformed_wide_rows_are_named_by_file_and_line(tiny_models, tmp_path, capsys, body, where, reason):
    pairs = tmp_path / "queries_docs.csv"
    pairs.write_text("query_id,query,documents\n" + body, encoding="utf-8")
    out = tmp_path / "reranked.csv"
    assert main(["score", "--model", str(tiny_models["index227"]), "--pairs", str(pairs), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"dear-rerank score: error: {pairs}, {where}: {reason}."
    assert list(tmp_path.iterdir()) == [pairs]  # nothing written, no temporary file


def test_a_failed_score_leaves_the_old_output_and_no_temporary_file(tiny_models, tmp_path, capsys):
    pairs = _write_wide(tmp_path / "queries_docs.csv", "csv")
    out = tmp_path / "reranked.csv"
    out.write_text("yesterday's\n")
    assert main(["score", "--model", "/no/such/model", "--pairs", str(pairs), "--out", str(out)]) == 2
    assert "/no/such/model: no such directory" in capsys.readouterr().err
    assert out.read_text() == "yesterday's\n" and sorted(p.name for p in tmp_path.iterdir()) == ["queries_docs.csv", "reranked.csv"]
