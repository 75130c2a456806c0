"""A query's prefix computed once: the same scores as the pairs computed whole, and as DeAR.

The scorer computes the ids every pair of a query begins with (``[bos] q [bos]`` and the
document template's first tokens) once per call, and lets each pair attend to their key
and value states (``dear_udf.scorer`` module docstring). The scores are checked against
two things: the scorer with reuse off (``prefix_min_pairs=None``, today's path) and
``dear_udf.testing.reference.DearReference`` (DeAR's inference written plainly, each pair padded
alone to 228), on the battery of ``tests/test_scorer.py`` plus queries with one and with
many candidates. ``prefix_min_pairs=1`` forces reuse on every query, even one pair alone.
"""

from __future__ import annotations

import numpy as np
import pytest

from dear_udf.exceptions import ConfigError
from dear_udf.scorer import PREFIX_MIN_PAIRS, Scorer, plan_batches, shared_prefix_lengths
from dear_udf.tokenization import POOLING_RULES, SPECIAL_TOKEN_MODES, Layout
from tests.test_scorer import BATTERY, VARIANTS, _assert_same_order, _doc_ending_in_bang, _load, _reference, _words
from tests.probes import record_shapes

TOL = 1e-5  # max |difference| in float32, against today's path and against the reference

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _rows() -> tuple[list[str], list, list, list]:
    """The scorer battery, plus a query with one candidate and one with many."""
    qids, queries, titles, texts = (list(col) for col in BATTERY)
    rows = [("q9", "a query with one candidate", "", "its only document, no bang")]
    rows += [("q10", "many candidates here", "", _words(5 + 7 * d, seed=100 + d)) for d in range(24)]
    for qid, query, title, text in rows:
        qids.append(qid), queries.append(query), titles.append(title), texts.append(text)
    return qids, queries, titles, texts


@pytest.fixture(scope="module")
def rows(tiny_models):
    """``_rows()`` plus a document whose 193rd token is "!", after a short query and after a
    32-token one (cut by the 226-id cap there), as in test_scorer's full battery."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_models["index227"]))
    text = _doc_ending_in_bang(tokenizer)
    qids, queries, titles, texts = _rows()
    long_query = queries[qids.index("q5")]
    for qid, query in (("q1", queries[0]), ("q5", long_query)):
        qids.append(qid), queries.append(query), titles.append(""), texts.append(text)
    return qids, queries, titles, texts


@pytest.fixture(scope="module", params=VARIANTS)
def variant(request, tiny_models):
    return request.param, _load(tiny_models, request.param)


def _queries_past_their_query(scorer: Scorer, queries, titles, texts) -> int:
    """Distinct query parts with at least one pair computing positions past them."""
    pairs = scorer.encoder.encode(queries, titles, texts)
    return len({tuple(x[: s + 1]) for x, p, s in zip(pairs.ids, pairs.pool, pairs.doc_start) if p > s})


# -- the same scores -------------------------------------------------------------------


@pytest.mark.parametrize("special_tokens", SPECIAL_TOKEN_MODES)
@pytest.mark.parametrize("pooling", POOLING_RULES)
def test_reuse_matches_todays_path_and_dear_reference(variant, tiny_models, rows, pooling, special_tokens):
    name, loaded = variant
    qids, queries, titles, texts = rows
    layout = Layout(pooling=pooling, special_tokens=special_tokens)
    ref = _reference(tiny_models, name, pooling=pooling, special_tokens=special_tokens).score(queries, titles, texts)
    whole = Scorer(loaded, layout=layout, batch_size=8, prefix_min_pairs=None)
    today = whole.score(queries, titles, texts)
    for min_pairs in (1, PREFIX_MIN_PAIRS):
        scorer = Scorer(loaded, layout=layout, batch_size=8, prefix_min_pairs=min_pairs)
        got = scorer.score(queries, titles, texts)
        assert got.dtype == np.float32 and np.all(np.isfinite(got))
        assert float(np.max(np.abs(got - today))) <= TOL, (name, pooling, special_tokens, min_pairs)
        assert float(np.max(np.abs(got - ref))) <= TOL, (name, pooling, special_tokens, min_pairs)
        _assert_same_order(qids, got, ref)
        _assert_same_order(qids, got, today)
        # Reuse really ran, and saved positions: one prefix per query with pairs past it
        # (q9 has one pair: it shares only when forced).
        sharing = _queries_past_their_query(scorer, queries, titles, texts) - (0 if min_pairs == 1 else 1)
        assert scorer.stats.shared_prefixes == sharing > 5
        assert scorer.stats.computed_tokens < whole.stats.computed_tokens
        assert scorer.stats.pooled_in_query == whole.stats.pooled_in_query
        assert scorer.stats.pooled_early == whole.stats.pooled_early
    # Distinct documents of a query really are scored differently (the order test bites).
    assert len(np.unique(ref[[i for i, q in enumerate(qids) if q == "q10"]])) == 24
    q8 = [i for i, q in enumerate(qids) if q == "q8"]
    if pooling == "first-pad" and name.startswith("index227"):
        assert np.ptp(got[q8]) == 0  # pooled before the query's "!": one score for all


def test_reuse_with_eager_attention(tiny_models, rows):
    from dear_udf.model import ModelSpec, load_model

    loaded = load_model(ModelSpec(model=str(tiny_models["index227"]), attn_implementation="eager"))
    qids, queries, titles, texts = rows
    ref = _reference(tiny_models, "index227", special_tokens="split").score(queries, titles, texts)
    today = Scorer(loaded, batch_size=8, prefix_min_pairs=None).score(queries, titles, texts)
    scorer = Scorer(loaded, batch_size=8, prefix_min_pairs=1)
    got = scorer.score(queries, titles, texts)
    assert scorer.stats.shared_prefixes > 5
    assert float(np.max(np.abs(got - ref))) <= TOL
    assert float(np.max(np.abs(got - today))) <= TOL
    _assert_same_order(qids, got, ref)


def test_the_battery_covers_every_kind_of_pair(tiny_models, rows):
    """The pairs the parity test needs: pooled inside the query, at a "!" in the document
    (one position past the prefix, and further), at a pad; 32-token queries whose prefix
    is 34 ids or more; queries with 1, 2 and many pairs."""
    loaded = _load(tiny_models, "index227")
    scorer = Scorer(loaded)
    qids, queries, titles, texts = rows
    pairs = scorer.encoder.encode(queries, titles, texts)
    query_lengths = [s + 1 for s in pairs.doc_start]
    shared = shared_prefix_lengths(pairs.ids, pairs.pool, query_lengths, min_pairs=2)
    kinds = set()
    for q, x, p, s, n in zip(qids, pairs.ids, pairs.pool, pairs.doc_start, shared):
        if p <= s:
            kinds.add("in query")
            assert n == 0
        elif p < len(x):
            kinds.add("one past the prefix" if p == n else "at a '!' in the document")
        else:
            kinds.add("at a pad")
        if q == "q5":
            assert s == 33 and n >= 34  # a 32-token query: 34 ids before the document
    assert kinds == {"in query", "one past the prefix", "at a '!' in the document", "at a pad"}
    assert max(len(x) for x in pairs.ids) == 226
    sizes = {q: qids.count(q) for q in set(qids)}
    assert sizes["q9"] == 1 and sizes["q4"] == 2 and sizes["q10"] == 24


# -- ties, order, batches ----------------------------------------------------------------


def test_pairs_dear_ties_still_tie_exactly(tiny_models):
    loaded = _load(tiny_models, "index227")
    scorer = Scorer(loaded, batch_size=3, prefix_min_pairs=1)
    base = "alpha beta gamma"
    queries = ["tied pairs"] * 6 + ["a llama!"] * 3
    texts = [
        base + "! one tail",  # pooled before the "!": these two see the same positions
        base + "! another, longer tail " + _words(30, seed=3),
        base,  # the same document twice
        base,
        _words(40, seed=4),
        _words(12, seed=5),
        "one", "two", _words(50, seed=6),  # pooled inside the query
    ]
    got = scorer.score(queries, None, texts)
    assert got[0] == got[1] and got[2] == got[3]
    assert len({got[0], got[2], got[4], got[5]}) == 4
    assert got[6] == got[7] == got[8]
    ref = _reference(tiny_models, "index227", special_tokens="split").score(queries, None, texts)
    assert float(np.max(np.abs(got - ref))) <= TOL
    assert ref[0] == ref[1] and ref[6] == ref[7] == ref[8]


def test_shuffled_input_gives_bit_identical_scores(tiny_models, rows):
    loaded = _load(tiny_models, "index227")
    _, queries, titles, texts = rows
    base = Scorer(loaded, batch_size=5).score(queries, titles, texts)
    perm = np.random.default_rng(7).permutation(len(queries)).tolist()
    shuffled = Scorer(loaded, batch_size=5).score(
        [queries[i] for i in perm], [titles[i] for i in perm], [texts[i] for i in perm]
    )
    # Prefixes, chunks and batches depend on row content only: the same computation.
    assert np.array_equal(shuffled, base[perm])


def test_prefix_states_beyond_the_memory_bound_are_held_in_turns(tiny_models, rows, monkeypatch):
    """``PREFIX_STATE_BYTES`` bounds the prefix states held at once: with room for 40
    positions, the call's prefixes are computed a few at a time (each chunk scoring its
    own queries' pairs), each once, and the scores do not change."""
    import dear_udf.scorer as scorer_module

    loaded = _load(tiny_models, "index227")
    per_id = scorer_module.state_bytes_per_id(loaded.model.config, 4)
    assert per_id == 2 * 2 * 2 * 16 * 4  # tiny model: layers x (k, v) x kv_heads x head_dim x fp32
    monkeypatch.setattr(scorer_module, "PREFIX_STATE_BYTES", 40 * per_id)
    qids, queries, titles, texts = rows
    ref = _reference(tiny_models, "index227", special_tokens="split").score(queries, titles, texts)
    scorer = Scorer(loaded, batch_size=128, prefix_min_pairs=1)
    calls = record_shapes(scorer, "prefix_forward")
    got = scorer.score(queries, titles, texts)
    assert float(np.max(np.abs(got - ref))) <= TOL
    _assert_same_order(qids, got, ref)
    assert len(calls) > 3 and sum(n for n, _ in calls) == scorer.stats.shared_prefixes
    # A chunk's prefixes times its longest prefix fit the bound (one alone may exceed it).
    assert all(n * width <= 40 or n == 1 for n, width in calls)


def test_max_tokens_caps_the_positions_each_micro_batch_computes(tiny_models, rows):
    loaded = _load(tiny_models, "index227")
    _, queries, titles, texts = rows
    scorer = Scorer(loaded, batch_size=128, max_tokens=300)
    shapes = record_shapes(scorer)
    got = scorer.score(queries, titles, texts)
    ref = _reference(tiny_models, "index227", special_tokens="split").score(queries, titles, texts)
    assert float(np.max(np.abs(got - ref))) <= TOL
    assert len(shapes) > 3 and all(rows * width <= 300 or rows == 1 for rows, width in shapes)


# -- computed positions ------------------------------------------------------------------


@pytest.mark.parametrize("name,extra", [("index227", 1), ("last", 0)])
def test_the_prefix_is_computed_once_and_counted_once(tiny_models, name, extra):
    loaded = _load(tiny_models, name)
    scorer = Scorer(loaded, batch_size=4)
    # Query part [bos 5 6 7 bos] (5 ids), then two document ids all four pairs share,
    # then 20 ids of each pair's own.
    ids = [[1, 5, 6, 7, 1, 9, 9] + [10 + r] * 20 for r in range(4)]
    pool = [scorer.encoder.pool_index(seq) for seq in ids]
    got = scorer.score_ids(ids, pool, query_lengths=[5] * 4)
    assert scorer.stats.shared_prefixes == 1
    assert scorer.stats.real_tokens == 4 * 27
    # The 7 shared ids once, then each pair's 20 (and its pooling token for index 227).
    assert scorer.stats.computed_tokens == 7 + 4 * (20 + extra)
    assert scorer.stats.batches == 1
    whole = Scorer(loaded, batch_size=4, prefix_min_pairs=None)
    want = whole.score_ids(ids, pool, query_lengths=[5] * 4)
    assert whole.stats.computed_tokens == 4 * (27 + extra) and whole.stats.shared_prefixes == 0
    assert float(np.max(np.abs(got - want))) <= TOL
    assert float(np.max(np.abs(got - _reference(tiny_models, name).score_ids(ids)))) <= TOL


def test_a_query_with_too_few_pairs_keeps_todays_path(tiny_models):
    loaded = _load(tiny_models, "index227")
    queries, texts = ["one pair only"], ["its document"]
    assert PREFIX_MIN_PAIRS >= 2
    default, whole = Scorer(loaded), Scorer(loaded, prefix_min_pairs=None)
    # Not merely close: the very same forward pass.
    assert np.array_equal(default.score(queries, None, texts), whole.score(queries, None, texts))
    assert default.stats.shared_prefixes == 0
    assert default.stats.computed_tokens == whole.stats.computed_tokens
    forced = Scorer(loaded, prefix_min_pairs=1)
    got = forced.score(queries, None, texts)
    assert forced.stats.shared_prefixes == 1
    assert float(np.max(np.abs(got - whole.score(queries, None, texts)))) <= TOL


def test_score_ids_without_query_lengths_computes_each_row_whole(tiny_models):
    loaded = _load(tiny_models, "index227")
    scorer = Scorer(loaded, prefix_min_pairs=1)
    ids = [[1, 5, 6, 7, 1] + [10 + r] * 20 for r in range(4)]
    pool = [scorer.encoder.pool_index(seq) for seq in ids]
    scorer.score_ids(ids, pool)
    assert scorer.stats.shared_prefixes == 0 and scorer.stats.computed_tokens == 4 * 26


def test_shared_prefix_lengths():
    ids = [
        [1, 5, 6, 1, 8, 8, 2],  # query [1 5 6 1]: these three share [1 5 6 1 8]
        [1, 5, 6, 1, 8, 3],
        [1, 5, 6, 1, 8, 8, 8, 8],
        [1, 5, 6, 1, 0, 4],  # "!" right after the query's bos: pooled at it, inside the query
        [1, 9, 1, 4, 4],  # a query with one pair
        [1, 7, 1, 4, 4, 4],  # a query whose pairs share all but the pooled position
        [1, 7, 1, 4, 4, 5],
    ]
    pool = [227, 227, 227, 3, 227, 227, 227]
    query_lengths = [4, 4, 4, 4, 3, 3, 3]
    assert shared_prefix_lengths(ids, pool, query_lengths, min_pairs=2) == [5, 5, 5, 0, 0, 5, 5]
    assert shared_prefix_lengths(ids, pool, query_lengths, min_pairs=1) == [5, 5, 5, 0, 5, 5, 5]
    assert shared_prefix_lengths(ids, pool, query_lengths, min_pairs=4) == [0] * 7
    # Pooled at a real position: the pair keeps that position to itself, so the shared
    # prefix stops before it even where the ids go on agreeing.
    assert shared_prefix_lengths(ids[:3], [227, 227, 4], query_lengths[:3], min_pairs=2) == [4, 4, 4]
    # Pooled at a pad just past all its ids: the shared prefix may be all of them.
    assert shared_prefix_lengths([[1, 5, 1, 8], [1, 5, 1, 8, 9]], [227, 227], [3, 3], min_pairs=2) == [4, 4]


def test_plan_batches_counts_the_positions_past_the_prefix():
    ids = [[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 7], [9, 9, 9]]
    pool = [227, 227, 227]
    # Without the prefix the two long rows are 7 positions each; with 4 ids shared, 3.
    assert plan_batches(ids, pool, batch_size=8, max_tokens=8) == [[2], [0], [1]]
    assert plan_batches(ids, pool, batch_size=8, max_tokens=8, skip=[4, 4, 0]) == [[0, 1], [2]]


# -- precision, OOM, settings ------------------------------------------------------------


def test_bfloat16_reuse_stays_near_and_ties_exactly(tiny_models, rows):
    """bf16 scores depend on how the positions are batched (FIELD-NOTES 2), so reuse is
    compared with the fp32 reference at bf16's tolerance; ties stay exact."""
    loaded = _load(tiny_models, "index227", dtype="bfloat16")
    qids, queries, titles, texts = rows
    ref = _reference(tiny_models, "index227", special_tokens="split").score(queries, titles, texts)
    scorer = Scorer(loaded, batch_size=8, prefix_min_pairs=1)
    got = scorer.score(queries, titles, texts)
    today = Scorer(loaded, batch_size=8, prefix_min_pairs=None).score(queries, titles, texts)
    assert scorer.stats.shared_prefixes > 5 and np.all(np.isfinite(got))
    bf16_error = float(np.max(np.abs(today - ref)))
    assert float(np.max(np.abs(got - ref))) <= max(0.1, 2 * bf16_error)
    q8 = [i for i, q in enumerate(qids) if q == "q8"]
    assert np.ptp(got[q8]) == 0


def test_oom_in_the_prefix_and_suffix_passes_halves_and_scores_stay_equal(tiny_models, rows):
    import torch

    loaded = _load(tiny_models, "index227")
    qids, queries, titles, texts = rows
    ref = _reference(tiny_models, "index227", special_tokens="split").score(queries, titles, texts)
    scorer = Scorer(loaded, batch_size=16, prefix_min_pairs=1)
    prefix_calls: list[int] = []
    forward_calls: list[int] = []
    inner_prefix, inner_forward = scorer.prefix_forward, scorer.forward

    def prefix_forward(input_ids, *rest):
        if input_ids.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        prefix_calls.append(int(input_ids.shape[0]))
        return inner_prefix(input_ids, *rest)

    def forward(input_ids, *rest):
        if input_ids.shape[0] > 4:
            raise torch.OutOfMemoryError("CUDA out of memory")
        forward_calls.append(int(input_ids.shape[0]))
        return inner_forward(input_ids, *rest)

    scorer.prefix_forward, scorer.forward = prefix_forward, forward
    got = scorer.score(queries, titles, texts)
    assert float(np.max(np.abs(got - ref))) <= TOL
    _assert_same_order(qids, got, ref)
    assert max(prefix_calls) == 2 and sum(prefix_calls) == scorer.stats.shared_prefixes
    assert max(forward_calls) <= 4 and scorer.stats.oom_splits > 3


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_prefix_min_pairs_validation_message(tiny_models, bad):
    loaded = _load(tiny_models, "index227")
    with pytest.raises(ConfigError, match=rf"prefix_min_pairs must be a positive integer or None \(no prefix reuse\), got {bad!r}\."):
        Scorer(loaded, prefix_min_pairs=bad)


def test_a_pair_of_one_position_past_the_prefix(tiny_models):
    """Pairs that agree on every id but their last, pooled one: each computes that single
    position, at its own RoPE position, attending to the shared prefix's states."""
    loaded = _load(tiny_models, "last")
    scorer = Scorer(loaded, batch_size=8, prefix_min_pairs=1)
    ids = [[1, 5, 6, 1, 9, 9, 20 + r] for r in range(5)]
    pool = [scorer.encoder.pool_index(seq) for seq in ids]
    assert pool == [6] * 5  # "last" model: pooled at the last id
    assert shared_prefix_lengths(ids, pool, [4] * 5, min_pairs=1) == [6] * 5
    got = scorer.score_ids(ids, pool, query_lengths=[4] * 5)
    assert scorer.stats.computed_tokens == 6 + 5
    ref = _reference(tiny_models, "last").score_ids(ids)
    assert float(np.max(np.abs(got - ref))) <= TOL
    assert len(set(got.tolist())) == 5
