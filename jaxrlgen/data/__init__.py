"""Tokenizers, datasets and stateless per-host batching.

Modules are imported where they are used (`jaxrlgen.data.arithmetic` pulls in
TFDS), so importing one light module does not load them all.
"""
