"""Flax models: the decoder LM with KV cache and value head."""

from jaxrlgen.models.transformer import init_cache
from jaxrlgen.models.transformer import init_params
from jaxrlgen.models.transformer import KVCache
from jaxrlgen.models.transformer import logical_axes
from jaxrlgen.models.transformer import positions_from_mask
from jaxrlgen.models.transformer import repeat_cache
from jaxrlgen.models.transformer import Transformer
from jaxrlgen.models.transformer import TransformerConfig
