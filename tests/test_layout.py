"""The DeAR input layout: templates, truncation, ids and the pooled position.

Expected ids are built here straight from the tokenizer, the way DeAR's
``pointwise_reranker/data.py`` builds them, and compared with ``PairEncoder``.
"""

from __future__ import annotations

import random
import string

import pytest

from dear_udf.exceptions import ConfigError
from dear_udf.layout import Layout, PairEncoder, doc_text, query_text
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
    (with_space,), _ = encoder.encode(["q"], [""], ["camelid"])
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
    ids, _ = encoder.encode(queries, titles, texts)
    for got, q, t, x in zip(ids, queries, titles, texts):
        assert got == _expected(tokenizer, q, t or "", x)
        bos_positions = [i for i, v in enumerate(got) if v == tokenizer.bos_token_id]
        assert bos_positions[0] == 0 and len(bos_positions) == 2


def test_titles_none_means_empty_titles(encoder):
    with_none, _ = encoder.encode(["q1", "q2"], None, ["a", "b"])
    with_empty, _ = encoder.encode(["q1", "q2"], ["", ""], ["a", "b"])
    assert with_none == with_empty


def test_truncation_lengths_are_32_and_193(encoder, tokenizer):
    long_query = _words(200, seed=1)
    long_doc = _words(2000, seed=2)
    assert len(_tok(tokenizer, "query: " + long_query)) > 32
    assert len(_tok(tokenizer, "document:  " + long_doc)) > 193
    (ids,), _ = encoder.encode([long_query], [""], [long_doc])
    assert len(ids) == 227 == LAYOUT.max_ids
    assert ids == _expected(tokenizer, long_query, "", long_doc)
    # The second bos sits right after the 32 query tokens.
    assert ids[33] == tokenizer.bos_token_id


def test_long_query_does_not_shorten_the_document(encoder, tokenizer):
    (ids,), _ = encoder.encode([_words(200, seed=3)], [""], ["short doc"])
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
    (ids,), _ = encoder.encode(["q"], ["title"], [text])
    # Reference: the whole megabyte through the tokenizer, truncated after tokenizing.
    assert ids == _expected(tokenizer, "q", "title", text)
    assert len(ids) == 2 + len(_tok(tokenizer, "query: q")) + 193


def test_special_token_strings_in_text_are_split_by_default(tokenizer):
    text = f"before {EOS} middle {BOS} after"
    split = PairEncoder(tokenizer, LAYOUT, pool_pad_id=0, pad_id=tokenizer.eos_token_id)
    (ids,), _ = split.encode([f"q {BOS}"], [""], [text])
    # Only the two layout bos tokens are special; the user's strings are plain text.
    assert ids.count(tokenizer.bos_token_id) == 2
    assert tokenizer.eos_token_id not in ids

    parse = PairEncoder(
        tokenizer, Layout(special_tokens_in_text="parse"), pool_pad_id=0, pad_id=tokenizer.eos_token_id
    )
    (parsed,), _ = parse.encode([f"q {BOS}"], [""], [text])
    assert parsed.count(tokenizer.bos_token_id) == 4
    assert tokenizer.eos_token_id in parsed


def test_unequal_column_lengths_are_refused(encoder):
    with pytest.raises(ConfigError, match="equal lengths, got 2, None and 1"):
        encoder.encode(["a", "b"], None, ["x"])


# -- pooled position -----------------------------------------------------------------


def test_pool_index_is_227_when_config_pad_differs_from_the_pad_id(tokenizer):
    eos = tokenizer.eos_token_id
    for pool_pad_id in (0, None):
        enc = PairEncoder(tokenizer, LAYOUT, pool_pad_id=pool_pad_id, pad_id=eos)
        ids, pool = enc.encode(["q", _words(100, 6)], [""] * 2, ["", _words(1000, 7)])
        assert pool == [227, 227]
        assert enc.pool_index([1, 2, 3]) == 227


def test_pool_index_is_the_last_real_token_when_config_pad_is_the_pad_id(tokenizer):
    eos = tokenizer.eos_token_id
    enc = PairEncoder(tokenizer, LAYOUT, pool_pad_id=eos, pad_id=eos)
    ids, pool = enc.encode(["q", _words(100, 6)], [""] * 2, ["", _words(1000, 7)])
    assert pool == [len(ids[0]) - 1, 226]
    # Hugging Face skips every id equal to config.pad_token_id, trailing ones included.
    assert enc.pool_index([5, 6, eos, eos]) == 1
    assert enc.pool_index([eos, eos]) == 0


def test_pool_index_follows_a_custom_padded_length(tokenizer):
    eos = tokenizer.eos_token_id
    enc = PairEncoder(tokenizer, Layout(padded_length=300), pool_pad_id=0, pad_id=eos)
    assert enc.pool_index([1, 2]) == 299


# -- layout validation ---------------------------------------------------------------


def test_layout_validation_names_the_field_and_value():
    with pytest.raises(ConfigError, match=r"doc_max_tokens must be a positive integer, got 0"):
        Layout(doc_max_tokens=0)
    with pytest.raises(ConfigError, match=r"padded_length must be at least .* = 228, got 227"):
        Layout(padded_length=227)
    with pytest.raises(ConfigError, match=r"special_tokens_in_text must be 'split' or 'parse', got 'keep'"):
        Layout(special_tokens_in_text="keep")
    assert Layout().max_ids == 227


def test_tokenizer_without_bos_is_refused(tokenizer):
    class NoBos:
        bos_token_id = None

    with pytest.raises(ConfigError, match="no bos token"):
        PairEncoder(NoBos(), LAYOUT, pool_pad_id=0, pad_id=tokenizer.eos_token_id)
