"""Weight blocks of the Newton construction, one kind per file; each docstring derives its weights."""

from .base import BlockSpec, Head, MLPSpec, doubling_mlp, eye, heads_for, relu_pair
from .init import init_block
from .gram import gram_block, gram_heads
from .merged import adaptive_c_init_block, c_init_block, merged_readout_block
from .newton import newton_block
from .readout import readout_block
from .scale import scale_block
from .trace_alpha import alpha_mlp, trace_alpha_block, trace_heads

__all__ = [
    "BlockSpec", "Head", "MLPSpec", "doubling_mlp", "eye", "heads_for", "relu_pair",
    "init_block", "newton_block", "readout_block", "c_init_block", "merged_readout_block",
    "gram_block", "gram_heads", "trace_alpha_block", "trace_heads", "alpha_mlp", "scale_block",
    "adaptive_c_init_block",
]
