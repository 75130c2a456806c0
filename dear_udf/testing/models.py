"""Tiny DeAR-shaped models built offline, for tests, the demo and CPU benchmarks.

No weights are downloaded: a byte-level BPE tokenizer is trained with ``tokenizers`` on
generated text, with Llama-3's special tokens and pair template, and a small Llama
sequence classifier with one label is initialised from a seed. Two pooling variants:

- ``"index227"``: ``config.pad_token_id = 0`` as DeAR's training code sets it, so the
  classifier pools index 227, a pad position;
- ``"last"``: ``config.pad_token_id = eos``, so it pools the last real token.

``build_lora_adapter`` saves a PEFT LoRA adapter (``task_type=SEQ_CLS``, non-zero init) over
such a model, the shape of ``dear-3b-reranker-ce-lora-v1``.

``build_broken_model`` copies such a model broken one way, for the refusals of ``model.py``.

Example:
    >>> paths = build_tiny_dear("/tmp/tiny", pooling="index227")
    >>> adapter = build_lora_adapter(paths, "/tmp/tiny-lora")
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Literal

Pooling = Literal["index227", "last"]
Broken = Literal["two-labels", "two-rows", "custom-code", "no-head"]

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
SPECIALS = [BOS, EOS, "<|reserved_special_token_0|>", "<|start_header_id|>", "<|end_header_id|>"]

_SYLLABLES = [
    "ka", "lo", "mi", "ra", "te", "su", "no", "vi", "pe", "da", "gu", "ze", "fo", "hi", "ba",
    "qu", "xi", "wo", "ly", "cha", "tri", "sto", "plen", "gar", "mon",
]
_ENGLISH = (
    "the of and to in is was for on that with as by at from this which it are be or an "
    "what when where who how why did does llama camelid thomas edison light bulb invented "
    "coffee diet lightning strike seoul university machine learning search query document "
    "passage relevant answer river mountain city history science music health water energy"
).split()
_UNICODE = ["café", "naïve", "Zürich", "東京", "Ελληνικά", "русский", "🙂", "ß", "ñandú", "עברית", "१२३"]


def vocabulary(size: int = 600, seed: int = 7) -> list[str]:
    """Deterministic pseudo-words (plus some English) used by the tokenizer and the demo data."""
    rng = random.Random(seed)
    words = set(_ENGLISH)
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


def build_tokenizer(directory: str | Path, *, vocab_size: int = 1200):
    """Train and save a byte-level BPE tokenizer shaped like Llama-3's (no pad token)."""
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


def build_tiny_dear(
    directory: str | Path,
    *,
    pooling: Pooling = "index227",
    seed: int = 0,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate_size: int = 128,
    initializer_range: float = 0.08,
) -> Path:
    """Build and save a tiny DeAR-shaped model directory (safetensors). Returns its path."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    if pooling not in ("index227", "last"):
        raise ValueError(f"pooling must be 'index227' or 'last', got {pooling!r}.")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(directory)
    eos_id = tokenizer.eos_token_id
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
        eos_token_id=eos_id,
        pad_token_id=0 if pooling == "index227" else eos_id,
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


def build_lora_adapter(
    base_dir: str | Path,
    directory: str | Path,
    *,
    seed: int = 1,
    with_score_head: bool = True,
    rank: int = 4,
) -> Path:
    """Save a LoRA adapter over ``base_dir`` whose weights change the scores.

    ``with_score_head=False`` saves it without ``task_type=SEQ_CLS``, so it carries no
    ``score`` weights: the broken shape the loader must refuse.
    """
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    directory = Path(directory)
    base = AutoModelForSequenceClassification.from_pretrained(str(base_dir), num_labels=1)
    torch.manual_seed(seed)
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS if with_score_head else None,
        r=rank,
        lora_alpha=2 * rank,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        init_lora_weights=False,
    )
    peft_model = get_peft_model(base, config)
    if with_score_head:
        head = peft_model.base_model.model.score.modules_to_save["default"]
        with torch.no_grad():
            head.weight.add_(0.05 * torch.randn_like(head.weight))
    peft_model.save_pretrained(str(directory))
    # Record the base by path, as an adapter trained on a local base would.
    cfg_path = directory / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = str(Path(base_dir).resolve())
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return directory


def build_broken_model(source: str | Path, directory: str | Path, kind: Broken) -> Path:
    """Copy the model at ``source`` to ``directory``, broken one way; returns ``directory``.

    - ``"two-labels"``: saved as ``LlamaForSequenceClassification(num_labels=2)`` would be;
    - ``"two-rows"``: the config says one label, the score head has two outputs;
    - ``"custom-code"``: a ``model_type`` transformers does not know, with an ``auto_map`` to
      shipped code that exits the process if it ever runs;
    - ``"no-head"``: no ``score`` weights, as a base language model.
    """
    import shutil

    from safetensors.torch import load_file, save_file

    if kind not in ("two-labels", "two-rows", "custom-code", "no-head"):
        raise ValueError(f"kind must be one of two-labels, two-rows, custom-code, no-head; got {kind!r}.")
    directory = Path(directory)
    shutil.copytree(source, directory)
    config = json.loads((directory / "config.json").read_text())
    state = load_file(str(directory / "model.safetensors"))
    if kind == "two-labels":
        config["id2label"] = {"0": "LABEL_0", "1": "LABEL_1"}
        config["label2id"] = {"LABEL_0": 0, "LABEL_1": 1}
    if kind in ("two-labels", "two-rows"):
        state["score.weight"] = state["score.weight"].repeat(2, 1)
    elif kind == "custom-code":
        config["model_type"] = "custom-llama"
        config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_custom.M"}
        (directory / "modeling_custom.py").write_text("raise SystemExit('shipped code ran')\n")
    elif kind == "no-head":
        del state["score.weight"]
    (directory / "config.json").write_text(json.dumps(config))
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory
