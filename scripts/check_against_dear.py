"""Compare ``dear-rerank score`` with DeAR's own ``inference.py`` in DeAR's environment.

Not part of the test suite: it needs a checkout of DeAR (GitHub
``DataScienceUIBK/DeAR-Reranking``, commit c31c739) and a Python environment holding what
DeAR was trained and evaluated with (transformers 4.45.2, peft 0.14.0, datasets < 3, torch),
for example::

    python -m venv /tmp/dear-env
    /tmp/dear-env/bin/pip install torch==2.13.0 transformers==4.45.2 peft==0.14.0 datasets==2.21.0
    .venv/bin/python scripts/check_against_dear.py --dear /path/to/DeAR-Reranking \\
        --dear-python /tmp/dear-env/bin/python

It builds tiny LoRA rerankers offline (both ``config.pad_token_id`` variants), writes awkward
pairs ("!" in queries and documents, 32-token queries with long documents, special-token
strings, unicode, empty fields), runs DeAR's ``pointwise_reranker/inference.py`` unchanged
on CPU in fp32, and compares each score with ``dear-rerank score``:

- default flags, on the pairs without special-token strings;
- ``--special-tokens parse``, on all pairs;
- ``--pooling last-non-pad --special-tokens parse``, expected to differ (the check can fail).

Exits 1 when a comparison that must agree differs by more than ``--tol`` (1e-4).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

SPECIAL_STRINGS = ("<|end_of_text|>", "<|begin_of_text|>")


def write_pairs(path: Path, seed: int) -> list[dict]:
    """Awkward (query, document) pairs as DeAR's JSONL input and as a Parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dear_udf.testing import BOS, EOS, vocabulary

    rng = random.Random(seed)
    words = vocabulary()

    def w(n: int) -> str:
        return " ".join(rng.choice(words) for _ in range(n))

    queries = {"q1": "what is a llama", "q2": "what is a llama!", "q3": w(60), "q4": "東京 café 🙂!",
               "q5": f"control {EOS} in query", "q6": "a", "q7": w(25) + "!", "q8": "!bang first"}
    docs = [("", w(rng.randint(5, 40))), ("Title", w(rng.randint(150, 400))), ("", "!" + w(10)), ("!", w(20)),
            ("", w(30) + "!"), ("", w(400) + " end!"), ("", f"inject {EOS} and {BOS} here"),
            ("Zürich", "naïve ñandú עברית १२३ " + w(8) + "! wow!"), ("", ""), ("", w(rng.randint(100, 200)) + "!!")]
    rows = []
    for qid, query in queries.items():
        for i in rng.sample(range(4 * len(docs)), 20):
            title, text = docs[i % len(docs)]
            rows.append({"query_id": qid, "query": query, "docid": f"d{i}", "title": title, "text": text})
    with open(path.with_suffix(".jsonl"), "w") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    columns = {"query_id": "query_id", "doc_id": "docid", "query": "query", "title": "title", "text": "text"}
    pq.write_table(pa.table({k: [r[v] for r in rows] for k, v in columns.items()}), path.with_suffix(".parquet"))
    return rows


def run_dear(args: argparse.Namespace, base: Path, adapter: Path, pairs: Path, out: Path) -> dict:
    command = [
        args.dear_python, "inference.py", "--output_dir", str(out.parent / "dear-tmp"),
        "--model_name_or_path", str(adapter), "--tokenizer_name", str(base),
        "--teacher_model_name_or_path", str(base), "--encode_in_path", str(pairs.with_suffix(".jsonl")),
        "--per_device_eval_batch_size", "8", "--q_max_len", "32", "--p_max_len", "196",
        "--dataset_name", "json", "--dataset_proc_num", "1", "--use_cpu", "--encoded_save_path", str(out),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run(command, cwd=Path(args.dear) / "pointwise_reranker", env=env, check=True, capture_output=True)
    scores = {}
    for line in out.read_text().splitlines():
        qid, docid, score = line.split("\t")
        scores[(qid, docid)] = float(score)
    return scores


def run_ours(adapter: Path, pairs: Path, out: Path, flags: list[str]) -> dict:
    import pyarrow.parquet as pq

    command = [sys.executable, "-m", "dear_udf.cli", "score", "--adapter", str(adapter),
               "--pairs", str(pairs.with_suffix(".parquet")), "--out", str(out), *flags]
    subprocess.run(command, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=True, capture_output=True)
    table = pq.read_table(out).to_pylist()
    return {(r["query_id"], r["doc_id"]): r["score"] for r in table}


def compare(ours: dict, dear: dict, keys: list) -> dict:
    diff = max(abs(ours[k] - dear[k]) for k in keys)
    by_query: dict[str, list] = {}
    for k in keys:
        by_query.setdefault(k[0], []).append(k)
    # A query is out of order when sorting by our scores does not sort DeAR's.
    out_of_order = sum(
        1 for ks in by_query.values()
        if [dear[k] for k in sorted(ks, key=lambda k: -ours[k])] != sorted((dear[k] for k in ks), reverse=True)
    )
    return {"pairs": len(keys), "max_abs_diff": diff, "queries_out_of_order": out_of_order}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dear", required=True, help="checkout of DataScienceUIBK/DeAR-Reranking")
    parser.add_argument("--dear-python", required=True, help="python with transformers 4.45.2, peft 0.14.0")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--tol", type=float, default=1e-4)
    args = parser.parse_args(argv)

    from dear_udf.testing import build_lora_adapter, build_tiny_dear

    failed = False
    with tempfile.TemporaryDirectory(prefix="dear-check-") as tmp:
        root = Path(tmp)
        pairs = root / "pairs"
        rows = write_pairs(pairs, args.seed)
        plain = [(r["query_id"], r["docid"]) for r in rows
                 if not any(s in r["query"] + r["title"] + r["text"] for s in SPECIAL_STRINGS)]
        every = [(r["query_id"], r["docid"]) for r in rows]
        for pooling, seed in (("index227", 3), ("last", 4)):
            base = build_tiny_dear(root / pooling, pooling=pooling, seed=seed)
            adapter = build_lora_adapter(base, root / f"{pooling}-lora", seed=seed + 10)
            dear = run_dear(args, base, adapter, pairs, root / f"dear-{pooling}.txt")
            checks = [
                ("default flags, pairs without special-token strings", [], plain, True),
                ("--special-tokens parse, all pairs", ["--special-tokens", "parse"], every, True),
                ("--pooling last-non-pad --special-tokens parse (may differ)",
                 ["--pooling", "last-non-pad", "--special-tokens", "parse"], every, False),
            ]
            for i, (label, flags, keys, must_agree) in enumerate(checks):
                result = compare(run_ours(adapter, pairs, root / f"ours-{pooling}-{i}.parquet", flags), dear, keys)
                ok = result["max_abs_diff"] <= args.tol and result["queries_out_of_order"] == 0
                failed |= must_agree and not ok
                print(json.dumps({"model": f"{pooling}-lora", "check": label, **result, "agrees": ok}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
