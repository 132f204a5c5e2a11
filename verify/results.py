"""What every verification result shares: one pass attribute, ``passed``, and a repr that never raises.

:class:`~verify.numeric.Report`, :class:`~verify.rational.ExactResult`,
:class:`~verify.symbolic.SymbolicResult` and :class:`~verify.certificate.Certificate` all answer
``result.passed`` (and ``bool(result)``).  The exact results used to call it ``equal``; that name
still works and warns (``DeprecationWarning``).

Exact results hold Fractions whose numerators run to 10⁵ bits (d = 5, n = 8, k = 8), and Python
refuses to turn an int of more than 4,300 digits into a string (``sys.get_int_max_str_digits``),
so the dataclass ``repr`` used to raise ``ValueError``.  :func:`safe_repr` prints such numbers as
a float with their size in bits instead.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from fractions import Fraction

__all__ = ["CheckResult", "safe_repr"]

_MAX_DIGITS = 60  # exact numbers longer than this print as ≈float (n bits)


def _short_int(v: int) -> str:
    if v.bit_length() <= 3 * _MAX_DIGITS:  # < ~54 decimal digits: print exactly
        return str(v)
    return f"<int of {v.bit_length()} bits>"


def safe_repr(v) -> str:
    """repr() that never raises and keeps huge exact numbers readable."""
    if isinstance(v, bool) or v is None:
        return repr(v)
    if isinstance(v, Fraction):
        bits = v.numerator.bit_length() + v.denominator.bit_length()
        if bits <= 3 * _MAX_DIGITS:
            return f"Fraction({v.numerator}, {v.denominator})"
        try:
            approx = f"{float(v):.6g}"
        except OverflowError:
            approx = "±huge"
        return f"Fraction(≈{approx}, {bits} bits)"
    if isinstance(v, int):
        return _short_int(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) or math.isnan(v) else repr(v)
    if isinstance(v, tuple):
        inner = ", ".join(safe_repr(x) for x in v)
        return f"({inner}{',' if len(v) == 1 else ''})"
    if isinstance(v, list):
        return "[" + ", ".join(safe_repr(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{safe_repr(a)}: {safe_repr(b)}" for a, b in v.items()) + "}"
    try:
        return repr(v)
    except ValueError:  # e.g. an object holding a huge int
        return f"<{type(v).__name__}>"


class CheckResult:
    """Mixin for the frozen result dataclasses (declare them with ``repr=False``).

    Subclasses define a ``passed`` field or property.  Provides ``bool(result)``, the
    deprecated alias ``equal`` and a :func:`safe_repr`-based ``__repr__``.
    """

    def __bool__(self) -> bool:
        return bool(self.passed)

    @property
    def equal(self) -> bool:
        """Deprecated alias of :attr:`passed`."""
        warnings.warn(f"{type(self).__name__}.equal is deprecated; use .passed", DeprecationWarning, stacklevel=2)
        return bool(self.passed)

    def __repr__(self) -> str:
        if dataclasses.is_dataclass(self):
            parts = [f"{f.name}={safe_repr(getattr(self, f.name))}" for f in dataclasses.fields(self) if f.repr]
        else:
            parts = [f"passed={self.passed!r}"]
        return f"{type(self).__name__}({', '.join(parts)})"
