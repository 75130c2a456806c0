"""Code for tests and benchmarks, kept out of the product.

- ``models``: tiny DeAR-shaped models and tokenizers built offline, from the demo's
  stand-in (``dear_udf.demo.standin``), plus LoRA adapters and broken models;
- ``reference``: DeAR's own inference written plainly, the oracle the scorer is tested
  against (``DearReference``);
- ``baselines``: the padded loops the scorer is compared with (``bench/``);
- ``faults``: fault injection behind the product's one seam, ``dear_udf.hooks``.
"""

from .models import BOS, EOS, SPECIALS, build_broken_model, build_lora_adapter, build_tiny_dear, build_tokenizer, vocabulary

__all__ = ["BOS", "EOS", "SPECIALS", "build_broken_model", "build_lora_adapter", "build_tiny_dear", "build_tokenizer", "vocabulary"]
