"""The scorer against DeAR's own inference, written plainly in ``dear_udf.testing.reference``.

The reference follows DeAR's ``pointwise_reranker`` code under transformers 4.45 semantics
(``prepare_for_model`` with the reserved special tokens, the pair padded alone to 228,
``first-pad`` pooling) and shares no code with the layout or the scorer. Every variant of
the tiny model is covered: ``config.pad_token_id=0`` (DeAR's) and ``= eos``, each as a full
model and as a LoRA adapter applied unmerged in the reference; both pooling rules; both
special-token modes.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from dear_udf.exceptions import ConfigError
from dear_udf.tokenization import POOLING_RULES, SPECIAL_TOKEN_MODES, Layout
from dear_udf.model import ModelSpec, load_model
from dear_udf.testing.reference import DearReference
from dear_udf.scorer import Scorer, plan_batches
from dear_udf.testing import BOS, EOS, vocabulary

from .probes import record_shapes

TOL = 1e-4  # max |scorer - reference| in float32
VARIANTS = ["index227", "last", "index227-lora", "last-lora"]
BANG = 0  # "!" in the test tokenizer, as in Llama-3


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
        # "!" at the document's first token, in the middle, and only beyond the 193-token cut.
        ("q1", "what is a llama", "!", "bang as the first document token"),
        ("q1", "what is a llama", "", "!wow a bang right after the template"),
        ("q1", "what is a llama", "", "two bangs! here! " + _words(20, seed=18)),
        ("q1", "what is a llama", "", long_doc + " tail!"),
        # Empty, null and NaN queries.
        ("q2", "", "", None),
        ("q2", "", "", "a short passage"),
        ("q2", "", "", long_doc),
        ("q3", None, None, None),
        ("q3", None, "", "x"),
        ("q3", None, "", _words(40, seed=13)),
        ("q4", float("nan"), "", float("nan")),
        ("q4", float("nan"), "title only", ""),
        # A query past 32 tokens: with a long doc the pair hits the 226-id cap.
        ("q5", long_query, "", long_doc),
        ("q5", long_query, "", ""),
        ("q5", long_query, "", _words(60, seed=14)),
        ("q5", long_query, "", _words(150, seed=15) + "!"),
        # Unicode and special-token strings in the query.
        ("q6", "東京 café 🙂 ñandú", "", "河 river"),
        ("q6", "東京 café 🙂 ñandú", "", _words(90, seed=16)),
        ("q7", f"{BOS} what {EOS}", "", "control tokens in the query"),
        ("q7", f"{BOS} what {EOS}", "", _words(30, seed=17)),
        # "!" in the query: under first-pad every candidate is pooled inside the query.
        ("q8", "what is a llama!", "", "The llama is a domesticated camelid."),
        ("q8", "what is a llama!", "", _words(50, seed=19)),
        ("q8", "what is a llama!", "", long_doc),
    ]
    qids, queries, titles, texts = (list(col) for col in zip(*rows))
    return qids, queries, titles, texts


BATTERY = _battery()


def _doc_ending_in_bang(tokenizer) -> str:
    """A text whose document ids are exactly 193 tokens with "!" as the last one."""
    words = _words(400, seed=21).split()
    for k in range(60, 400):
        text = " ".join(words[:k]) + "!"
        ids = tokenizer("document:  " + text, add_special_tokens=False)["input_ids"]
        if len(ids) == 193 and ids[-1] == BANG:
            return text
    raise AssertionError("no prefix gives 193 tokens ending in '!'")


@pytest.fixture(scope="module")
def full_battery(tiny_models):
    """BATTERY plus a document whose 193rd token is "!": kept after a short query, cut by
    the 226-id cap after a 32-token query."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_models["index227"]))
    text = _doc_ending_in_bang(tokenizer)
    qids, queries, titles, texts = (list(c) for c in BATTERY)
    long_query = queries[qids.index("q5")]
    for qid, query in (("q1", queries[0]), ("q5", long_query)):
        qids.append(qid), queries.append(query), titles.append(""), texts.append(text)
    return qids, queries, titles, texts


def _load(tiny_models, variant: str, dtype: str = "float32"):
    if variant.endswith("-lora"):
        # No model: the base comes from the adapter's adapter_config.json.
        return load_model(ModelSpec(model=None, adapter=str(tiny_models[variant]), dtype=dtype))
    return load_model(ModelSpec(model=str(tiny_models[variant]), dtype=dtype))


def _reference(tiny_models, variant: str, **kwargs) -> DearReference:
    if variant.endswith("-lora"):
        return DearReference.load(None, tiny_models[variant], **kwargs)
    return DearReference.load(tiny_models[variant], **kwargs)


def _assert_same_order(qids, got: np.ndarray, want: np.ndarray) -> None:
    for qid in sorted(set(qids)):
        idx = np.array([i for i, q in enumerate(qids) if q == qid])
        got_order = idx[np.argsort(-got[idx], kind="stable")]
        want_order = idx[np.argsort(-want[idx], kind="stable")]
        assert got_order.tolist() == want_order.tolist(), f"candidate order differs for {qid}"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module", params=VARIANTS)
def variant(request, tiny_models):
    return request.param, _load(tiny_models, request.param)


@pytest.fixture(scope="module")
def index227(tiny_models):
    loaded = _load(tiny_models, "index227")
    _, queries, titles, texts = BATTERY
    reference = _reference(tiny_models, "index227", special_tokens="split")
    return loaded, reference.score(queries, titles, texts)


# -- parity with DeAR's own inference ----------------------------------------------------


def test_battery_hits_the_boundaries(tiny_models, full_battery):
    reference = _reference(tiny_models, "index227", special_tokens="split")
    qids, queries, titles, texts = full_battery
    ids = [reference.input_ids(q, t, x) for q, t, x in zip(queries, titles, texts)]
    lengths = [len(x) for x in ids]
    assert max(lengths) == 226  # 228 minus the 2 reserved special tokens
    assert sum(1 for n in lengths if n == 226) >= 2
    tok = reference.tokenizer
    empty = 2 + sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in ("query: ", "document:  "))
    assert min(lengths) == empty  # empty query and document: only the templates
    # The "!" cases land where the battery says: in every q8 query, as the document's
    # first token after its template, beyond the cut of the long doc, and as the 193rd
    # token, kept after a short query and cut by the 226 cap after a 32-token one.
    assert all(BANG in ids[i][:12] for i, q in enumerate(qids) if q == "q8")
    assert ids[9][ids[9].index(tok.bos_token_id, 1) + 4] == BANG
    assert BANG not in ids[12]
    assert ids[-2][-1] == BANG and len(ids[-2]) < 226
    assert len(ids[-1]) == 226 and BANG not in ids[-1]


@pytest.mark.parametrize("special_tokens", SPECIAL_TOKEN_MODES)
@pytest.mark.parametrize("pooling", POOLING_RULES)
def test_scores_match_dear_reference_and_order(variant, tiny_models, full_battery, pooling, special_tokens):
    name, loaded = variant
    qids, queries, titles, texts = full_battery
    reference = _reference(tiny_models, name, pooling=pooling, special_tokens=special_tokens)
    ref = reference.score(queries, titles, texts)
    scorer = Scorer(loaded, layout=Layout(pooling=pooling, special_tokens=special_tokens), batch_size=8)
    got = scorer.score(queries, titles, texts)
    assert got.dtype == np.float32 and got.shape == (len(qids),)
    assert np.all(np.isfinite(got))
    assert float(np.max(np.abs(got - ref))) <= TOL, (name, pooling, special_tokens)
    _assert_same_order(qids, got, ref)
    # Distinct documents of a query really are scored differently (the order test bites).
    assert len(np.unique(ref[[i for i, q in enumerate(qids) if q == "q1"]])) >= 8
    q8 = [i for i, q in enumerate(qids) if q == "q8"]
    in_query = scorer.encoder.encode(queries, titles, texts).pooled_in_query
    assert scorer.stats.pooled_in_query == sum(in_query)
    if pooling == "first-pad" and name.startswith("index227"):
        # Pooled before the query's "!": every candidate of q8 gets one score.
        assert np.ptp(ref[q8]) == 0 and all(in_query[i] for i in q8)
        assert scorer.stats.pooled_early > len(q8)
    else:
        assert np.ptp(ref[q8]) > 0 and not any(in_query[i] for i in q8)


def test_the_pooling_rules_differ_on_bangs(tiny_models, full_battery):
    """Without this the parity test could not tell first-pad from last-non-pad."""
    _, queries, titles, texts = full_battery
    first = _reference(tiny_models, "index227", pooling="first-pad").score(queries, titles, texts)
    last = _reference(tiny_models, "index227", pooling="last-non-pad").score(queries, titles, texts)
    assert float(np.max(np.abs(first - last))) > 100 * TOL
    assert np.array_equal(first[:3], last[:3])  # no "!" in these pairs: the same position


@pytest.mark.parametrize("pooling", POOLING_RULES)
def test_ids_of_every_length_from_1_to_227(variant, tiny_models, pooling):
    name, loaded = variant
    rng = np.random.default_rng(0)
    # Ordinary ids, with a "!" (id 0) forced into every fifth sequence.
    ids = [rng.integers(1, 1200, size=n).tolist() for n in range(1, 228)]
    for n, seq in enumerate(ids):
        if n % 5 == 2:
            seq[int(rng.integers(0, len(seq)))] = BANG
    scorer = Scorer(loaded, layout=Layout(pooling=pooling), batch_size=128)
    pool = [scorer.encoder.pool_index(seq) for seq in ids]
    got = scorer.score_ids(ids, pool)
    ref = _reference(tiny_models, name, pooling=pooling).score_ids(ids)
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
    name, loaded = variant
    _, queries, titles, texts = BATTERY
    scorer = Scorer(loaded, batch_size=8)
    scorer.score(queries, titles, texts)
    n = len(queries)
    assert scorer.stats.pairs == n
    assert scorer.stats.computed_tokens < 228 * n / 2
    # Each pair computed whole costs at least its ids; sharing a query's prefix costs less
    # (tests/test_prefix.py), so the lower bound holds without it only.
    whole = Scorer(loaded, batch_size=8, prefix_min_pairs=None)
    whole.score(queries, titles, texts)
    assert scorer.stats.real_tokens == whole.stats.real_tokens < whole.stats.computed_tokens
    assert scorer.stats.computed_tokens < whole.stats.computed_tokens


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


def test_a_pair_pooled_at_a_real_token_is_computed_up_to_it(tiny_models):
    loaded = _load(tiny_models, "index227")
    scorer = Scorer(loaded, batch_size=4)
    ids = [[5] * 10 + [BANG] + [6] * 39]  # "!" at index 10: pooled at 9
    pool = [scorer.encoder.pool_index(seq) for seq in ids]
    assert pool == [9]
    got = scorer.score_ids(ids, pool)
    assert scorer.stats.computed_tokens == 10  # nothing after the pooled position
    ref = _reference(tiny_models, "index227").score_ids(ids)
    assert abs(float(got[0] - ref[0])) <= TOL


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


def test_repeated_pairs_and_query_pooled_candidates_share_one_forward_pass(index227):
    loaded, _ = index227
    scorer = Scorer(loaded, batch_size=2)
    queries = ["a llama!"] * 5 + ["plain"] * 4
    texts = ["one", "two", "three " * 50, "four", "five", "same", "same", "other", "same"]
    got = scorer.score(queries, None, texts)
    # The five candidates of the "!" query are pooled before the "!": one forward pass,
    # one score, an exact tie (so the first-stage order decides), whatever the batches.
    assert len(set(got[:5].tolist())) == 1
    assert got[5] == got[6] == got[8] != got[7]
    assert scorer.stats.pairs == 9 and scorer.stats.pooled_in_query == 5
    computed = scorer.stats.computed_tokens
    alone = Scorer(loaded, batch_size=2)
    alone.score(["a llama!", "plain", "plain"], None, ["one", "same", "other"])
    assert computed == alone.stats.computed_tokens


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
    shapes = record_shapes(scorer)
    got = scorer.score(queries, titles, texts)
    assert float(np.max(np.abs(got - ref))) <= TOL
    # Every distinct computed sequence exactly once (repeats share a forward pass).
    pairs = scorer.encoder.encode(queries, titles, texts)
    assert sum(rows for rows, _ in shapes) == len({(p, tuple(x[: p + 1])) for x, p in zip(pairs.ids, pairs.pool)})
    assert all(rows * width <= 600 or rows == 1 for rows, width in shapes)
    unlimited = Scorer(loaded, batch_size=128, max_tokens=128 * 228)  # no tighter than the batch
    unlimited.score(queries, titles, texts)
    assert unlimited.stats.batches == 1 < scorer.stats.batches == len(shapes)


def test_cpu_default_token_budget(index227):
    from dear_udf.scorer import CPU_TOKEN_BUDGET

    loaded, ref = index227
    _, queries, titles, texts = BATTERY
    scorer = Scorer(loaded, batch_size=128)
    assert scorer.max_tokens == CPU_TOKEN_BUDGET
    shapes = record_shapes(scorer)
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
    with pytest.raises(ConfigError, match=r"max_tokens must be a positive integer or None \(the device's budget\), got 0\."):
        Scorer(loaded, max_tokens=0)


def test_custom_layout_is_used(index227, tiny_models):
    loaded, _ = index227
    # DeAR's q_max_len=4, p_max_len=13: 4 query and 10 document tokens, padded to 17,
    # so the pair cap (17 - 2 = 15) cuts one document token from the longest pairs.
    short = Layout(query_max_tokens=4, doc_max_tokens=10, padded_length=17)
    scorer = Scorer(loaded, layout=short)
    _, queries, titles, texts = BATTERY
    got = scorer.score(queries, titles, texts)
    reference = _reference(tiny_models, "index227", special_tokens="split", q_max_len=4, p_max_len=13)
    ref = reference.score(queries, titles, texts)
    assert scorer.stats.real_tokens <= len(queries) * 15
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
    rows = [*range(12), 13, 14, 15, 17]  # 16 distinct pairs: none shares a forward pass
    q, t, x = ([col[i] for i in rows] for col in (queries, titles, texts))
    scorer = Scorer(loaded, batch_size=16)
    calls: list[int] = []
    _oom_above(scorer, 4, calls)
    got = scorer.score(q, t, x)
    # One batch of 16 -> 8 + 8 -> four batches of 4: three splits.
    assert scorer.stats.oom_splits == 3
    assert calls == [4, 4, 4, 4]
    assert scorer.stats.batches == 4
    assert float(np.max(np.abs(got - ref[rows]))) <= TOL
    _assert_same_order([BATTERY[0][i] for i in rows], got, ref[rows])


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
