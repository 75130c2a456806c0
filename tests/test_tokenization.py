"""The DeAR input layout: templates, truncation, ids and the pooled position.

Expected ids are built here straight from the tokenizer, the way DeAR's
``pointwise_reranker/data.py`` builds them, and compared with ``PairEncoder``.
"""

from __future__ import annotations

import random
import string

import pytest

from dear_udf.exceptions import ConfigError
from dear_udf.tokenization import Layout, PairEncoder, doc_text, query_text
from dear_udf.testing import BOS, EOS, vocabulary

LAYOUT = Layout()


@pytest.fixture(scope="module")
def tokenizer(tiny_models):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_models["index227"]), local_files_only=True)
    assert tok.pad_token is None  # Llama-3 shape: the loader has to fall back to EOS
    return tok


@pytest.fixture(scope="module")
def encoder(tokenizer):
    # DeAR's training config: pad with EOS, classifier told pad_token_id = 0.
    return PairEncoder(tokenizer, LAYOUT, pool_pad_id=0, pad_id=tokenizer.eos_token_id)


def _tok(tokenizer, text: str, limit: int | None = None) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return ids if limit is None else ids[:limit]


def _expected(tokenizer, query: str, title: str, text: str) -> list[int]:
    bos = tokenizer.bos_token_id
    q = _tok(tokenizer, "query: " + query, 32)
    d = _tok(tokenizer, "document: " + title + " " + text, 193)
    return [bos, *q, bos, *d]


def _words(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    words = vocabulary()
    return " ".join(rng.choice(words) for _ in range(n))


# -- templates -----------------------------------------------------------------------


def test_templates_keep_the_space_after_an_empty_title():
    assert query_text("what is a llama", LAYOUT) == "query: what is a llama"
    assert doc_text("Llama", "A camelid.", LAYOUT) == "document: Llama A camelid."
    # DeAR concatenates title + " " + text even when the title is empty.
    assert doc_text("", "A camelid.", LAYOUT) == "document:  A camelid."
    assert doc_text(None, "A camelid.", LAYOUT) == "document:  A camelid."
    assert doc_text(float("nan"), None, LAYOUT) == "document:  "


def test_null_and_nan_read_as_empty_text():
    assert query_text(None, LAYOUT) == query_text("", LAYOUT) == query_text(float("nan"), LAYOUT) == "query: "


def test_empty_title_space_reaches_the_ids(encoder, tokenizer):
    (with_space,) = encoder.encode(["q"], [""], ["camelid"]).ids
    assert with_space == _expected(tokenizer, "q", "", "camelid")
    # The double space is tokenized differently from a single one: dropping it would
    # feed the model ids it never saw in training.
    single = [tokenizer.bos_token_id, *_tok(tokenizer, "query: q"), tokenizer.bos_token_id, *_tok(tokenizer, "document: camelid")]
    assert with_space != single


# -- ids and truncation --------------------------------------------------------------


def test_ids_are_bos_query_bos_doc(encoder, tokenizer):
    queries = ["what is a llama", "", "café 東京 🙂"]
    titles = ["Llama", None, "Zürich"]
    texts = ["The llama is a domesticated camelid.", "", "ñandú naïve ß"]
    ids = encoder.encode(queries, titles, texts).ids
    for got, q, t, x in zip(ids, queries, titles, texts):
        assert got == _expected(tokenizer, q, t or "", x)
        bos_positions = [i for i, v in enumerate(got) if v == tokenizer.bos_token_id]
        assert bos_positions[0] == 0 and len(bos_positions) == 2


def test_titles_none_means_empty_titles(encoder):
    with_none = encoder.encode(["q1", "q2"], None, ["a", "b"])
    with_empty = encoder.encode(["q1", "q2"], ["", ""], ["a", "b"])
    assert with_none == with_empty


def test_truncation_lengths_are_32_and_193_then_the_pair_cap_of_226(encoder, tokenizer):
    long_query = _words(200, seed=1)
    long_doc = _words(2000, seed=2)
    assert len(_tok(tokenizer, "query: " + long_query)) > 32
    assert len(_tok(tokenizer, "document:  " + long_doc)) > 193
    (ids,) = encoder.encode([long_query], [""], [long_doc]).ids
    # prepare_for_model reserves the pair template's 2 special tokens out of 228 without
    # adding them: a 32-token query leaves 192 document tokens, not 193.
    assert LAYOUT.max_ids == 227 and tokenizer.num_special_tokens_to_add(pair=True) == 2
    assert len(ids) == 226
    assert ids == _expected(tokenizer, long_query, "", long_doc)[:226]
    # The second bos sits right after the 32 query tokens.
    assert ids[33] == tokenizer.bos_token_id
    # A shorter query leaves the document its 193 tokens.
    (short,) = encoder.encode(["q"], [""], [long_doc]).ids
    assert short == _expected(tokenizer, "q", "", long_doc) and len(short) < 226


def test_the_pair_cap_comes_from_the_tokenizer_not_a_constant(tokenizer):
    class ThreeSpecials:
        """The same tokenizer, with a pair template that would add three special tokens."""

        def __getattr__(self, name):
            return getattr(tokenizer, name)

        def __call__(self, *args, **kwargs):
            return tokenizer(*args, **kwargs)

        def num_special_tokens_to_add(self, pair=False):
            return 3 if pair else 1

    enc = PairEncoder(ThreeSpecials(), LAYOUT, pool_pad_id=0, pad_id=tokenizer.eos_token_id)
    (ids,) = enc.encode([_words(200, seed=1)], [""], [_words(2000, seed=2)]).ids
    assert len(ids) == 225


def test_long_query_does_not_shorten_the_document(encoder, tokenizer):
    (ids,) = encoder.encode([_words(200, seed=3)], [""], ["short doc"]).ids
    assert ids[33] == tokenizer.bos_token_id
    assert ids[34:] == _tok(tokenizer, "document:  short doc")


@pytest.mark.parametrize(
    "make_text",
    [
        pytest.param(lambda: _words(250_000, seed=4)[:1_000_000], id="words"),
        pytest.param(
            lambda: "".join(random.Random(5).choice(string.ascii_lowercase) for _ in range(1_000_000)),
            id="no-whitespace",
        ),
        pytest.param(lambda: ("東京 café 🙂 " * 100_000)[:1_000_000], id="unicode"),
    ],
)
def test_char_cap_gives_the_ids_of_the_whole_text(encoder, tokenizer, make_text):
    text = make_text()
    assert len(text) >= 999_000
    (ids,) = encoder.encode(["q"], ["title"], [text]).ids
    # Reference: the whole megabyte through the tokenizer, truncated after tokenizing.
    assert ids == _expected(tokenizer, "q", "title", text)
    assert len(ids) == 2 + len(_tok(tokenizer, "query: q")) + 193


def test_special_token_strings_in_text_are_split_by_default(tokenizer):
    text = f"before {EOS} middle {BOS} after"
    split = PairEncoder(tokenizer, LAYOUT, pool_pad_id=0, pad_id=tokenizer.eos_token_id)
    (ids,) = split.encode([f"q {BOS}"], [""], [text]).ids
    # Only the two layout bos tokens are special; the user's strings are plain text.
    assert ids.count(tokenizer.bos_token_id) == 2
    assert tokenizer.eos_token_id not in ids

    parse = PairEncoder(tokenizer, Layout(special_tokens="parse"), pool_pad_id=0, pad_id=tokenizer.eos_token_id)
    (parsed,) = parse.encode([f"q {BOS}"], [""], [text]).ids
    assert parsed.count(tokenizer.bos_token_id) == 4
    assert tokenizer.eos_token_id in parsed


def test_unequal_column_lengths_are_refused(encoder):
    with pytest.raises(ConfigError, match="equal lengths, got 2, None and 1"):
        encoder.encode(["a", "b"], None, ["x"])


# -- pooled position -----------------------------------------------------------------
# Expectations are written from the two transformers formulas on the padded ids, by hand.

BANG = 0  # "!" in the test tokenizer, as in Llama-3's vocabulary


def test_test_tokenizer_has_llama3s_id_layout(tokenizer):
    # What the pooling tests rely on: "!" is id 0, the specials come after the vocabulary.
    assert tokenizer.convert_ids_to_tokens(BANG) == "!"
    assert tokenizer.bos_token_id >= 1200 and tokenizer.eos_token_id >= 1200
    assert tokenizer("a!b", add_special_tokens=False)["input_ids"][1] == BANG


def _encoder(tokenizer, pooling, pool_pad_id=0):
    layout = Layout(pooling=pooling)
    return PairEncoder(tokenizer, layout, pool_pad_id=pool_pad_id, pad_id=tokenizer.eos_token_id)


def test_first_pad_pools_index_227_without_a_bang(tokenizer):
    enc = _encoder(tokenizer, "first-pad")
    pairs = enc.encode(["q", _words(100, 6)], [""] * 2, ["", _words(1000, 7)])
    assert pairs.pool == [227, 227]
    assert pairs.pooled_early == [False, False] and pairs.pooled_in_query == [False, False]


def test_first_pad_pools_just_before_the_first_bang(tokenizer):
    enc = _encoder(tokenizer, "first-pad")
    pairs = enc.encode(["what is a llama!", "plain query"], ["", ""], ["no bang", "one!two!"])
    (q_ids, d_ids) = pairs.ids
    first_bang = q_ids.index(BANG)
    assert pairs.pool[0] == first_bang - 1 < pairs.doc_start[0]
    assert pairs.pooled_in_query == [True, False]
    assert pairs.pool[1] == d_ids.index(BANG) - 1 > pairs.doc_start[1]
    assert pairs.pooled_early == [True, True]


def test_last_non_pad_ignores_bangs_and_pools_227(tokenizer):
    enc = _encoder(tokenizer, "last-non-pad")
    pairs = enc.encode(["what is a llama!", "q"], ["", ""], ["a!b", "!"])
    assert pairs.pool == [227, 227]
    assert pairs.pooled_early == [False, False]


def test_pool_index_formulas_on_hand_made_ids(tokenizer):
    first, last = _encoder(tokenizer, "first-pad"), _encoder(tokenizer, "last-non-pad")
    eos = tokenizer.eos_token_id
    # (argmax(ids == 0) - 1) % 228; index 0 when there is no 0, so 227.
    assert first.pool_index([5, 6, 7]) == 227
    assert first.pool_index([5, 0, 7, 0]) == 0
    assert first.pool_index([0, 5]) == 227  # -1 % 228
    assert last.pool_index([5, 0, 7, 0]) == 227
    # config.pad_token_id equal to the pad id: the padding itself is "pad".
    first_eos, last_eos = _encoder(tokenizer, "first-pad", eos), _encoder(tokenizer, "last-non-pad", eos)
    assert first_eos.pool_index([5, 6, 7]) == 2 == last_eos.pool_index([5, 6, 7])
    assert first_eos.pool_index([5, eos, 7]) == 0  # before the first eos
    assert last_eos.pool_index([5, 6, eos, eos]) == 1  # last id that is not eos
    assert last_eos.pool_index([eos, eos]) == 0  # argmax of an all-zero mask
    # No config.pad_token_id: the last index under either rule.
    assert _encoder(tokenizer, "first-pad", None).pool_index([0, 1]) == 227


def test_pool_index_follows_a_custom_padded_length(tokenizer):
    eos = tokenizer.eos_token_id
    enc = PairEncoder(tokenizer, Layout(padded_length=300), pool_pad_id=0, pad_id=eos)
    assert enc.pool_index([1, 2]) == 299
    assert enc.pool_index([1, 0, 2]) == 0


# -- layout validation ---------------------------------------------------------------


def test_layout_validation_names_the_field_and_value():
    with pytest.raises(ConfigError, match=r"doc_max_tokens must be a positive integer, got 0"):
        Layout(doc_max_tokens=0)
    with pytest.raises(ConfigError, match=r"padded_length must be at least .* = 35, got 34"):
        Layout(padded_length=34)
    with pytest.raises(ConfigError, match=r"special_tokens must be one of \('split', 'parse'\), got 'keep'"):
        Layout(special_tokens="keep")
    with pytest.raises(ConfigError, match=r"pooling must be one of \('first-pad', 'last-non-pad'\), got 'last'"):
        Layout(pooling="last")
    assert Layout().max_ids == 227


def test_tokenizer_without_bos_is_refused(tokenizer):
    class NoBos:
        bos_token_id = None

    with pytest.raises(ConfigError, match="no bos token"):
        PairEncoder(NoBos(), LAYOUT, pool_pad_id=0, pad_id=tokenizer.eos_token_id)
