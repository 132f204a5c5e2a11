"""Hand-built transformers that run Iterative Newton for in-context linear regression.

Public API::

    from construct import build_newton_transformer, load_model
    model = build_newton_transformer(d=5, k=3, alpha=0.05)   # a torch.nn.Module
    yhat = model.predict(X, y, x_query)   # X (B,n,d), y (B,n), x_query (B,d) -> (B,)
    model.n_layers                        # k + 2 (default form)
    build_newton_transformer(5, 12, 0.05, form="hyperpower")   # 10 layers, residual power 324 >= 2^12
    build_gd_transformer(d=5, steps=20, lr=0.01)                # 20 steps of GD, 20 layers
    model.save(path); model2 = load_model(path)
"""

from .alpha import (
    AlphaDivergenceError, AlphaDivergenceWarning, alpha_from_rule, check_alpha, check_lr,
    fixed_alpha_for_distribution, safe_alpha,
)
from .adaptive import AlphaRangeError
from .builder import (
    GDSpec, NewtonSpec, build_gd_transformer, build_newton_transformer, layers_table, layers_table_markdown,
    min_layers,
)
from .checkpoint import CheckpointError, load_model
from .gpt2 import GPT2Transformer, Gpt2ToleranceError, NotCompilableError, ScaleError, error_bound, gpt2_scale, to_gpt2
from .layout import ResidualLayout, Slot
from .model import GDTransformer, HandBuiltModel, NewtonTransformer
from .transformer import Transformer, TransformerConfig

__all__ = [
    "build_newton_transformer", "load_model", "NewtonTransformer", "NewtonSpec", "min_layers",
    "build_gd_transformer", "GDTransformer", "GDSpec", "HandBuiltModel", "check_lr",
    "layers_table", "layers_table_markdown",
    "safe_alpha", "fixed_alpha_for_distribution", "check_alpha", "alpha_from_rule",
    "AlphaDivergenceError", "AlphaDivergenceWarning", "AlphaRangeError", "CheckpointError",
    "ResidualLayout", "Slot", "Transformer", "TransformerConfig",
    "to_gpt2", "gpt2_scale", "error_bound", "GPT2Transformer", "ScaleError", "NotCompilableError", "Gpt2ToleranceError",
]
