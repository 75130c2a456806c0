"""The demo's stand-in model: a tiny DeAR-shaped Llama and its tokenizer, built offline.

No weights are downloaded. A byte-level BPE tokenizer is trained with ``tokenizers`` on
generated text, with Llama-3's special tokens and pair template (id 0 an ordinary token,
``"!"``, as in Llama-3), and a small Llama sequence classifier with one label is
initialised from a seed. ``build_standin`` saves the shape DeAR's models have
(``config.pad_token_id = 0``, so the classifier pools index 227, a pad position); the
demo then trains it (``demo.train``). It is a stand-in that shows the pipeline, not DeAR.

The tests build their tiny models from the same pieces (``dear_udf.testing.models``).

Example:
    >>> path = build_standin("/tmp/standin", seed=0)
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
SPECIALS = [BOS, EOS, "<|reserved_special_token_0|>", "<|start_header_id|>", "<|end_header_id|>"]
DEAR_PAD_ID = 0  # config.pad_token_id as DeAR's modeling.py sets it on Llama bases without one

_SYLLABLES = [
    "ka", "lo", "mi", "ra", "te", "su", "no", "vi", "pe", "da", "gu", "ze", "fo", "hi", "ba",
    "qu", "xi", "wo", "ly", "cha", "tri", "sto", "plen", "gar", "mon",
]
# The English words of the vocabulary: the collection's filler words, never a topic term.
ENGLISH = (
    "the of and to in is was for on that with as by at from this which it are be or an "
    "what when where who how why did does llama camelid thomas edison light bulb invented "
    "coffee diet lightning strike seoul university machine learning search query document "
    "passage relevant answer river mountain city history science music health water energy"
).split()
_UNICODE = ["café", "naïve", "Zürich", "東京", "Ελληνικά", "русский", "🙂", "ß", "ñandú", "עברית", "१२३"]


def vocabulary(size: int = 600, seed: int = 7) -> list[str]:
    """Deterministic pseudo-words (plus some English) used by the tokenizer and the demo data.

    Example:
        >>> "llama" in vocabulary()
        True
    """
    rng = random.Random(seed)
    words = set(ENGLISH)
    while len(words) < size:
        words.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3))))
    return sorted(words)


def _training_text(seed: int = 11, lines: int = 4000) -> list[str]:
    rng = random.Random(seed)
    words = vocabulary() + _UNICODE
    out = []
    for _ in range(lines):
        n = rng.randint(3, 30)
        sent = " ".join(rng.choice(words) for _ in range(n))
        if rng.random() < 0.3:
            sent = sent.capitalize() + rng.choice([".", "?", "!", ",", ";", ":"])
        if rng.random() < 0.2:
            sent = f"query: {sent}"
        elif rng.random() < 0.2:
            sent = f"document: {sent}"
        out.append(sent)
    return out


def build_tokenizer(directory: str | Path, *, vocab_size: int = 1200) -> Any:
    """Train and save a byte-level BPE tokenizer shaped like Llama-3's (no pad token).

    Example:
        >>> build_tokenizer("/tmp/tok").eos_token
        '<|end_of_text|>'
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_text(), trainer=trainer)
    # As in Llama-3, the specials come after the learned vocabulary, and id 0 is an
    # ordinary token ("!"): the id DeAR's training code wrongly took for padding.
    tok.add_special_tokens(SPECIALS)
    bos_id = tok.token_to_id(BOS)
    # Llama-3's template: bos before the single text, and before each text of a pair.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A {BOS}:1 $B:1",
        special_tokens=[(BOS, bos_id)],
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS)
    fast.model_max_length = 131072
    fast.save_pretrained(str(directory))
    return fast


def save_tiny_llama(
    directory: str | Path,
    tokenizer: Any,
    *,
    pad_token_id: int,
    seed: int = 0,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate_size: int = 128,
    initializer_range: float = 0.08,
) -> Path:
    """Initialise a tiny Llama sequence classifier (one label) for ``tokenizer`` from
    ``seed`` and save it (safetensors) into ``directory``, beside the tokenizer.

    ``pad_token_id`` is ``config.pad_token_id``: the id the classifier pools before.

    Example:
        >>> save_tiny_llama("/tmp/tok", build_tokenizer("/tmp/tok"), pad_token_id=DEAR_PAD_ID)
    """
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    directory = Path(directory)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=512,
        rope_theta=500000.0,
        initializer_range=initializer_range,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad_token_id,
        num_labels=1,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(config)
    model.save_pretrained(str(directory))
    _readable_by_transformers_4(directory)
    return directory


def _readable_by_transformers_4(directory: Path) -> None:
    """Let DeAR's own environment (transformers 4.45) load the model as saved here.

    transformers 5 writes ``rope_parameters`` and a ``TokenizersBackend`` tokenizer class;
    transformers 4 reads ``rope_theta`` (silently falling back to 10000) and knows only
    ``PreTrainedTokenizerFast``. Both keys are added; transformers 5 reads the same model.
    """
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    config.setdefault("rope_theta", config.get("rope_parameters", {}).get("rope_theta", 500000.0))
    config_path.write_text(json.dumps(config, indent=2))
    tok_path = directory / "tokenizer_config.json"
    tok_config = json.loads(tok_path.read_text())
    tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok_path.write_text(json.dumps(tok_config, indent=2))


def build_standin(directory: str | Path, *, seed: int = 0) -> Path:
    """Build the untrained stand-in in ``directory``: tokenizer and DeAR-shaped model
    (``config.pad_token_id = 0``, so it pools index 227). Returns ``directory``.

    Example:
        >>> build_standin("/tmp/standin", seed=0)
        PosixPath('/tmp/standin')
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(directory)
    return save_tiny_llama(directory, tokenizer, pad_token_id=DEAR_PAD_ID, seed=seed)
