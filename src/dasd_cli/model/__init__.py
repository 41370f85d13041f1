"""What inference (backends/) and training (training/) share about a model.

- ``load``: find and load models and tokenizers: local folders, .gguf files, the
  embedded default; the content-keyed conversion cache.
- ``packed``: packed sequences through a causal LM with every sample isolated.
- ``attention``: the ``segmented`` attention kernel packed sequences use on CPU.
- ``tokens``: character offsets of tokens, end-of-turn ids.
"""
