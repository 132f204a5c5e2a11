"""Verification of the hand-built Newton transformers, and the reference algorithms they are checked against."""

from .reference import (
    PrefixSpectrum, cg_predictions, gd_predictions, newton_auto_method, newton_matrices, newton_matrix,
    newton_predict, newton_predictions, ols_predict, ols_predictions, online_gd_predictions, prefix_spectrum,
    prefix_stats, residual_power_matrix, residual_power_predict, residual_power_predictions, ridge_predictions,
)

__all__ = [
    "newton_predictions", "gd_predictions", "online_gd_predictions", "cg_predictions",
    "ols_predictions", "ridge_predictions", "newton_matrix", "newton_predict", "ols_predict",
    "prefix_stats", "prefix_spectrum", "PrefixSpectrum", "newton_matrices", "newton_auto_method",
    "residual_power_matrix", "residual_power_predict", "residual_power_predictions",
]

# numeric verification of hand-built networks (verify/numeric.py; CLI: python -m verify DIR).
# verify.strategies (hypothesis strategies) is imported on demand: it needs the test extra.
from .numeric import (  # noqa: E402
    AlphaCheck, Failure, PredictionCheck, Report, SlotError, expected_streams, verify_model,
)

__all__ += [
    "verify_model", "expected_streams", "Report", "SlotError", "PredictionCheck", "AlphaCheck", "Failure",
]

# exact checks (verify/exact.py): the stored weights in exact rational arithmetic, and the
# network on polynomials in sympy's sparse ring (the ReLU pairs collapsed by the case lemma).
from .exact import (  # noqa: E402
    ExactResult, SymbolicResult, exact_check, random_rational_prompt, symbolic_check,
)

__all__ += ["exact_check", "symbolic_check", "random_rational_prompt", "ExactResult", "SymbolicResult"]

# look-alike solvers (verify/lookalikes.py): preconditioned CG, Chebyshev, heavy ball, GD++,
# all prefixes at once, for telling Newton apart from algorithms with similar layer-wise fits.
from .lookalikes import (  # noqa: E402
    LOOKALIKES, chebyshev_predictions, gdpp_predictions, heavy_ball_predictions, pcg_predictions,
)

__all__ += ["pcg_predictions", "chebyshev_predictions", "heavy_ball_predictions", "gdpp_predictions", "LOOKALIKES"]

# the polynomial certificate (verify/certificate.py): the built weights compute the program for
# every d and n, read off the weights (CLI: python -m verify DIR --certify).
from .certificate import Certificate, certify  # noqa: E402

__all__ += ["certify", "Certificate"]
