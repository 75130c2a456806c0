"""``dear-rerank demo``: the whole job on this machine, on a stand-in model and synthetic data.

- ``command``: the command (``add_arguments``, ``main``, ``run_demo``);
- ``collection``: the synthetic collection (queries, corpus, qrels, a noisy first stage)
  and the files it is written to;
- ``standin``: the stand-in model, a tiny DeAR-shaped Llama and its tokenizer built
  offline (the tests' tiny models are built from it, ``dear_udf.testing.models``);
- ``train``: its short training, the way DeAR trains its pointwise rerankers.

Nothing here imports torch, transformers or pyspark at import time.

Example:
    dear-rerank demo --workdir /tmp/dear-demo
"""
