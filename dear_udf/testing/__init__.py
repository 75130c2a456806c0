"""Code for tests, the demo and benchmarks, kept out of the product's hot path.

- ``models``: tiny DeAR-shaped models and tokenizers built offline (the demo uses them too);
- ``baselines``: the padded loops the scorer is compared with (``bench/``);
- ``faults``: fault injection behind the product's one seam, ``dear_udf.hooks``.
"""

from .models import BOS, EOS, SPECIALS, build_broken_model, build_lora_adapter, build_tiny_dear, build_tokenizer, vocabulary

__all__ = ["BOS", "EOS", "SPECIALS", "build_broken_model", "build_lora_adapter", "build_tiny_dear", "build_tokenizer", "vocabulary"]
