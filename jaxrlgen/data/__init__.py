"""Tokenizers, TFDS datasets and stateless per-host batching."""

from jaxrlgen.data.arithmetic import ArithmeticBuilder
from jaxrlgen.data.arithmetic import ArithmeticConfig
from jaxrlgen.data.arithmetic import load_arithmetic
from jaxrlgen.data.pipeline import batch_indices
from jaxrlgen.data.pipeline import collate_arithmetic
from jaxrlgen.data.pipeline import get_batch
from jaxrlgen.data.tokenizer import ByteTokenizer

__all__ = [
    'ArithmeticBuilder',
    'ArithmeticConfig',
    'ByteTokenizer',
    'batch_indices',
    'collate_arithmetic',
    'get_batch',
    'load_arithmetic',
]
