"""The scorer against the plainly written reference (each pair padded alone to 228, fp32).

Every variant of the tiny model is covered: index-227 pooling (``config.pad_token_id=0``,
DeAR's training quirk) and last-real-token pooling (pad id == EOS), each as a full model and
as a LoRA adapter whose base comes from ``adapter_config.json``.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from dear_udf.baselines import reference_scores
from dear_udf.exceptions import ConfigError
from dear_udf.layout import Layout
from dear_udf.model import ModelSpec, load_model
from dear_udf.scorer import Scorer, plan_batches
from dear_udf.testing import BOS, EOS, vocabulary

TOL = 1e-4  # max |scorer - reference| in float32
VARIANTS = ["index227", "last", "index227-lora", "last-lora"]


def _words(n: int, seed: int) -> str:
    rng = random.Random(seed)
    words = vocabulary()
    return " ".join(rng.choice(words) for _ in range(n))


def _battery() -> tuple[list[str], list, list, list]:
    """(query_id, query, title, text) rows with every awkward input, distinct docs per query."""
    megabyte = (_words(250_000, seed=10) + " ")[:1_000_000]
    long_doc = _words(600, seed=11)  # > 193 tokens
    long_query = _words(120, seed=12)  # > 32 tokens
    rows = [
        # A plain query with every kind of document.
        ("q1", "what is a llama", "Llama", "The llama is a domesticated camelid."),
        ("q1", "what is a llama", "", ""),
        ("q1", "what is a llama", None, "Short."),
        ("q1", "what is a llama", float("nan"), "Short!"),
        ("q1", "what is a llama", "", long_doc),
        ("q1", "what is a llama", "Big", megabyte),
        ("q1", "what is a llama", "東京", "café naïve Zürich Ελληνικά русский 🙂 ß ñandú עברית १२३"),
        ("q1", "what is a llama", "", f"{EOS} injected {BOS} control {EOS}"),
        ("q1", "what is a llama", "", f"ends with the eos string {EOS}"),
        # Empty, null and NaN queries.
        ("q2", "", "", None),
        ("q2", "", "", "a short passage"),
        ("q2", "", "", long_doc),
        ("q3", None, None, None),
        ("q3", None, "", "x"),
        ("q3", None, "", _words(40, seed=13)),
        ("q4", float("nan"), "", float("nan")),
        ("q4", float("nan"), "title only", ""),
        # A query past 32 tokens: with the long doc this is the 227-id boundary.
        ("q5", long_query, "", long_doc),
        ("q5", long_query, "", ""),
        ("q5", long_query, "", _words(60, seed=14)),
        ("q5", long_query, "", _words(150, seed=15)),
        # Unicode and special-token strings in the query.
        ("q6", "東京 café 🙂 ñandú", "", "河 river"),
        ("q6", "東京 café 🙂 ñandú", "", _words(90, seed=16)),
        ("q7", f"{BOS} what {EOS}", "", "control tokens in the query"),
        ("q7", f"{BOS} what {EOS}", "", _words(30, seed=17)),
    ]
    qids, queries, titles, texts = (list(col) for col in zip(*rows))
    return qids, queries, titles, texts


BATTERY = _battery()


def _load(tiny_models, variant: str, dtype: str = "float32"):
    if variant.endswith("-lora"):
        # No model: the base comes from the adapter's adapter_config.json.
        return load_model(ModelSpec(model=None, adapter=str(tiny_models[variant]), dtype=dtype))
    return load_model(ModelSpec(model=str(tiny_models[variant]), dtype=dtype))


def _reference_ids(loaded, ids: list[list[int]]) -> np.ndarray:
    """Each id sequence padded alone to 228 with the pad id, through the HF model as is."""
    import torch

    out = np.empty(len(ids), dtype=np.float32)
    with torch.inference_mode():
        for r, seq in enumerate(ids):
            input_ids = torch.full((1, 228), loaded.pad_id, dtype=torch.long)
            input_ids[0, : len(seq)] = torch.tensor(seq)
            mask = (torch.arange(228) < len(seq)).long()[None]
            out[r] = loaded.model(input_ids=input_ids, attention_mask=mask).logits.float()[0, 0]
    return out


def _assert_same_order(qids, got: np.ndarray, want: np.ndarray) -> None:
    for qid in sorted(set(qids)):
        idx = np.array([i for i, q in enumerate(qids) if q == qid])
        got_order = idx[np.argsort(-got[idx], kind="stable")]
        want_order = idx[np.argsort(-want[idx], kind="stable")]
        assert got_order.tolist() == want_order.tolist(), f"candidate order differs for {qid}"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run faster on one thread, and a shared 2-core machine under load makes
    OpenMP's spinning threads cost 100x on small matmuls (measured: 0.07 ms -> 8 ms)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=VARIANTS)
def variant(request, tiny_models):
    loaded = _load(tiny_models, request.param)
    _, queries, titles, texts = BATTERY
    ref = reference_scores(loaded, queries, titles, texts)
    return request.param, loaded, ref


@pytest.fixture(scope="module")
def index227(tiny_models):
    loaded = _load(tiny_models, "index227")
    _, queries, titles, texts = BATTERY
    return loaded, reference_scores(loaded, queries, titles, texts)


# -- parity with the reference -------------------------------------------------------


def test_battery_hits_the_boundaries(index227):
    loaded, _ = index227
    scorer = Scorer(loaded)
    _, queries, titles, texts = BATTERY
    ids, pool = scorer.encoder.encode(queries, titles, texts)
    lengths = [len(x) for x in ids]
    assert max(lengths) == 227  # 1 + 32 + 1 + 193
    assert sum(1 for n in lengths if n == 227) == 1
    tok = loaded.tokenizer
    empty = 2 + sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in ("query: ", "document:  "))
    assert min(lengths) == empty  # empty query and document: only the templates


def test_scores_match_reference_and_order(variant):
    name, loaded, ref = variant
    qids, queries, titles, texts = BATTERY
    scorer = Scorer(loaded, batch_size=8)
    got = scorer.score(queries, titles, texts)
    assert got.dtype == np.float32 and got.shape == (len(qids),)
    assert np.all(np.isfinite(got))
    assert float(np.max(np.abs(got - ref))) <= TOL, name
    _assert_same_order(qids, got, ref)
    # Distinct documents of a query really are scored differently (the order test bites).
    assert len(np.unique(ref[[i for i, q in enumerate(qids) if q == "q1"]])) >= 8


def test_ids_of_every_length_from_1_to_227(variant):
    name, loaded, _ = variant
    rng = np.random.default_rng(0)
    # Ordinary (non-special) ids, so the reference pools exactly where the layout says.
    ids = [rng.integers(0, 1200, size=n).tolist() for n in range(1, 228)]
    scorer = Scorer(loaded, batch_size=128)
    pool = [scorer.encoder.pool_index(seq) for seq in ids]
    got = scorer.score_ids(ids, pool)
    ref = _reference_ids(loaded, ids)
    assert float(np.max(np.abs(got - ref))) <= TOL, name
    qids = [f"q{n % 9}" for n in range(1, 228)]
    _assert_same_order(qids, got, ref)


def test_titles_none_equals_empty_titles(index227):
    loaded, _ = index227
    _, queries, _, texts = BATTERY
    scorer = Scorer(loaded)
    a = scorer.score(queries, None, texts)
    b = scorer.score(queries, [""] * len(texts), texts)
    assert np.array_equal(a, b)


# -- computed positions --------------------------------------------------------------


def test_computes_fewer_positions_than_padding_to_228(variant):
    name, loaded, _ = variant
    _, queries, titles, texts = BATTERY
    scorer = Scorer(loaded, batch_size=8)
    scorer.score(queries, titles, texts)
    n = len(queries)
    assert scorer.stats.pairs == n
    assert scorer.stats.real_tokens < scorer.stats.computed_tokens < 228 * n / 2


@pytest.mark.parametrize("name,extra", [("index227", 1), ("last", 0)])
def test_exact_positions_for_equal_lengths(tiny_models, name, extra):
    loaded = _load(tiny_models, name)
    scorer = Scorer(loaded, batch_size=4)
    ids = [[5 + r] * 50 for r in range(10)]
    pool = [scorer.encoder.pool_index(seq) for seq in ids]
    scorer.score_ids(ids, pool)
    # Index-227 pooling costs one masked pooling token per pair; last-token pooling none.
    assert scorer.stats.real_tokens == 500
    assert scorer.stats.computed_tokens == 10 * (50 + extra)
    assert scorer.stats.batches == 3


# -- batch composition and input order -----------------------------------------------


def test_shuffled_input_gives_bit_identical_scores(index227):
    loaded, ref = index227
    qids, queries, titles, texts = BATTERY
    base = Scorer(loaded, batch_size=4).score(queries, titles, texts)
    perm = list(range(len(queries)))
    for seed in (1, 2, 3):
        random.Random(seed).shuffle(perm)
        shuffled = Scorer(loaded, batch_size=4).score(
            [queries[i] for i in perm], [titles[i] for i in perm], [texts[i] for i in perm]
        )
        # Row k of the shuffled call is row perm[k] of the original: order restored, and
        # the same batches formed, so not merely close but bit-identical.
        assert np.array_equal(shuffled, base[perm])
    assert float(np.max(np.abs(base - ref))) <= TOL


def test_batches_depend_only_on_row_content():
    ids = [[3, 1], [2], [3, 1, 4], [2], [9, 9], [1, 1, 1]]
    pool = [227] * len(ids)
    batches = plan_batches(ids, pool, batch_size=2)
    as_rows = [[tuple(ids[i]) for i in b] for b in batches]
    perm = [5, 3, 0, 4, 1, 2]
    shuffled = plan_batches([ids[i] for i in perm], pool, batch_size=2)
    assert [[tuple(ids[perm[i]]) for i in b] for b in shuffled] == as_rows
    # Sorted by length, so each batch holds similar lengths.
    assert [[len(r) for r in b] for b in as_rows] == [[1, 1], [2, 2], [3, 3]]


# -- options ---------------------------------------------------------------------------


def test_max_tokens_caps_each_micro_batch(index227):
    loaded, ref = index227
    _, queries, titles, texts = BATTERY
    scorer = Scorer(loaded, batch_size=128, max_tokens=600)
    shapes: list[tuple[int, int]] = []
    inner = scorer.forward

    def recording(input_ids, *rest):
        shapes.append(tuple(input_ids.shape))
        return inner(input_ids, *rest)

    scorer.forward = recording
    got = scorer.score(queries, titles, texts)
    assert float(np.max(np.abs(got - ref))) <= TOL
    assert sum(rows for rows, _ in shapes) == len(queries)
    assert all(rows * width <= 600 or rows == 1 for rows, width in shapes)
    unlimited = Scorer(loaded, batch_size=128, max_tokens=None)
    unlimited.score(queries, titles, texts)
    assert unlimited.stats.batches == 1 < scorer.stats.batches == len(shapes)


def test_cpu_default_token_budget(index227):
    from dear_udf.scorer import CPU_TOKEN_BUDGET

    loaded, ref = index227
    _, queries, titles, texts = BATTERY
    scorer = Scorer(loaded, batch_size=128)
    assert scorer.max_tokens == CPU_TOKEN_BUDGET
    shapes: list[tuple[int, int]] = []
    inner = scorer.forward

    def recording(input_ids, *rest):
        shapes.append(tuple(input_ids.shape))
        return inner(input_ids, *rest)

    scorer.forward = recording
    got = scorer.score(queries * 40, titles * 40, texts * 40)
    assert float(np.max(np.abs(got - np.tile(ref, 40)))) <= TOL
    assert len(shapes) > 1 and all(rows * width <= CPU_TOKEN_BUDGET for rows, width in shapes)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "8", None])
def test_batch_size_validation_message(index227, bad):
    loaded, _ = index227
    with pytest.raises(ConfigError, match=rf"batch_size must be a positive integer, got {bad!r}\."):
        Scorer(loaded, batch_size=bad)


def test_max_tokens_validation_message(index227):
    loaded, _ = index227
    with pytest.raises(ConfigError, match=r"max_tokens must be a positive integer, None or 'auto', got 0\."):
        Scorer(loaded, max_tokens=0)


def test_custom_layout_is_used(index227):
    loaded, _ = index227
    short = Layout(query_max_tokens=4, doc_max_tokens=10, padded_length=228)
    scorer = Scorer(loaded, layout=short)
    _, queries, titles, texts = BATTERY
    got = scorer.score(queries, titles, texts)
    ref = reference_scores(loaded, queries, titles, texts, layout=short)
    assert scorer.stats.real_tokens <= len(queries) * 16
    assert float(np.max(np.abs(got - ref))) <= TOL


# -- CUDA out-of-memory backoff (injected) ---------------------------------------------


def _oom_above(scorer: Scorer, limit: int, calls: list[int], message: str = "CUDA out of memory"):
    import torch

    inner = scorer.forward

    def forward(input_ids, *rest):
        if input_ids.shape[0] > limit:
            raise torch.OutOfMemoryError(message)
        calls.append(int(input_ids.shape[0]))
        return inner(input_ids, *rest)

    scorer.forward = forward


def test_oom_halves_the_batch_and_scores_stay_equal(index227):
    loaded, ref = index227
    _, queries, titles, texts = BATTERY
    rows = slice(0, 16)
    q, t, x = queries[rows], titles[rows], texts[rows]
    scorer = Scorer(loaded, batch_size=16)
    calls: list[int] = []
    _oom_above(scorer, 4, calls)
    got = scorer.score(q, t, x)
    # One batch of 16 -> 8 + 8 -> four batches of 4: three splits.
    assert scorer.stats.oom_splits == 3
    assert calls == [4, 4, 4, 4]
    assert scorer.stats.batches == 4
    assert float(np.max(np.abs(got - ref[rows]))) <= TOL
    _assert_same_order(BATTERY[0][rows], got, ref[rows])


def test_oom_as_runtime_error_message_is_also_backed_off(index227):
    loaded, ref = index227
    _, queries, titles, texts = BATTERY
    scorer = Scorer(loaded, batch_size=32)
    inner = scorer.forward

    def forward(input_ids, *rest):
        if input_ids.shape[0] > 8:
            # Older torch raised a plain RuntimeError for CUDA OOM.
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return inner(input_ids, *rest)

    scorer.forward = forward
    got = scorer.score(queries, titles, texts)
    assert scorer.stats.oom_splits >= 2
    assert float(np.max(np.abs(got - ref))) <= TOL


def test_non_oom_error_propagates(index227):
    loaded, _ = index227
    _, queries, titles, texts = BATTERY
    scorer = Scorer(loaded, batch_size=16)

    def broken(*_):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    scorer.forward = broken
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        scorer.score(queries, titles, texts)
    assert scorer.stats.oom_splits == 0


def test_oom_at_a_single_pair_reraises(index227):
    import torch

    loaded, _ = index227
    _, queries, titles, texts = BATTERY
    scorer = Scorer(loaded, batch_size=8)
    calls: list[int] = []
    _oom_above(scorer, 0, calls)
    with pytest.raises(torch.OutOfMemoryError, match="CUDA out of memory"):
        scorer.score(queries[:8], titles[:8], texts[:8])
    assert calls == []
    # 8 -> 4 -> 2 -> 1 along the first branch before giving up.
    assert scorer.stats.oom_splits == 3
    assert scorer.stats.pairs == 0  # a failed call counts nothing as scored
