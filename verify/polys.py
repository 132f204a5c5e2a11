"""Exact polynomials in the commuting symbols t (for S), m (for an iterate M) and a (an in-network α).

The certificate (:mod:`verify.certificate`) describes what each slot of the residual stream holds
as a polynomial in S applied to the token's own vector.  Every matrix that occurs is a
polynomial in the symmetric S, so all of them commute and univariate algebra suffices; ``m``
stands for the program's current iterate (Newton's M_j, a hyperpower iterate, GD's P_j), which
is itself such a polynomial, so an identity in Q[t, m] proves the layer for every M_j at once.
``a`` stands for an α computed inside the network (a scalar, the same on every token).
Coefficients are exact :class:`~fractions.Fraction` values.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Callable, Iterable

__all__ = ["Poly", "T", "M", "A", "ONE", "ZERO"]

_SUP = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")


class Poly:
    """A polynomial Σ c·t^i·m^j·a^k with exact rational coefficients (immutable)."""

    __slots__ = ("terms",)

    def __init__(self, terms: dict[tuple[int, int, int], Fraction] | None = None):
        self.terms = {e: Fraction(c) for e, c in (terms or {}).items() if c != 0}

    # ------------------------------------------------------------------ constructors
    @classmethod
    def const(cls, c) -> "Poly":
        return cls({(0, 0, 0): Fraction(c)})

    # ------------------------------------------------------------------ arithmetic
    def __add__(self, o: "Poly") -> "Poly":
        out = dict(self.terms)
        for e, c in o.terms.items():
            out[e] = out.get(e, 0) + c
        return Poly(out)

    def __neg__(self) -> "Poly":
        return Poly({e: -c for e, c in self.terms.items()})

    def __sub__(self, o: "Poly") -> "Poly":
        return self + (-o)

    def __mul__(self, o) -> "Poly":
        if not isinstance(o, Poly):
            c = Fraction(o)
            return Poly({e: c * v for e, v in self.terms.items()})
        out: dict[tuple[int, int, int], Fraction] = {}
        for (i, j, k), a in self.terms.items():
            for (i2, j2, k2), b in o.terms.items():
                key = (i + i2, j + j2, k + k2)
                out[key] = out.get(key, 0) + a * b
        return Poly(out)

    __rmul__ = __mul__

    def __pow__(self, p: int) -> "Poly":
        out = ONE
        for _ in range(p):
            out = out * self
        return out

    def __eq__(self, o) -> bool:
        return isinstance(o, Poly) and self.terms == o.terms

    def __hash__(self) -> int:
        return hash(frozenset(self.terms.items()))

    def __bool__(self) -> bool:
        return bool(self.terms)

    def subs_m(self, value: "Poly") -> "Poly":
        """Substitute the iterate symbol m by a polynomial (in t)."""
        out, powers = ZERO, [ONE]
        for (i, j, k), c in self.terms.items():
            while len(powers) <= j:
                powers.append(powers[-1] * value)
            out = out + Poly({(i, 0, k): c}) * powers[j]
        return out

    @property
    def uses_m(self) -> bool:
        return any(j for _, j, _ in self.terms)

    @property
    def nterms(self) -> int:
        return len(self.terms)

    def degree_t(self) -> int:
        return max((i for i, _, _ in self.terms), default=-1)

    # ------------------------------------------------------------------ printing
    def pretty(self, m_name: str = "M", coeff: Callable[[Fraction], str] | None = None, t_name: str = "S") -> str:
        if not self.terms:
            return "0"
        name = coeff or _plain
        parts = []
        for (i, j, k), c in sorted(self.terms.items(), key=lambda kv: (kv[0][2], kv[0][1], kv[0][0])):
            mono = "·".join(_factor(i, j, k, m_name, t_name))
            sign = "−" if c < 0 else "+"
            mag = name(abs(c))
            body = mono if mag == "1" and mono else (f"{mag}·{mono}" if mono else mag)
            parts.append((sign, body))
        s = ("−" if parts[0][0] == "−" else "") + parts[0][1]
        for sign, body in parts[1:]:
            s += f" {sign} {body}"
        return s

    def __repr__(self) -> str:
        return f"Poly({self.pretty()})"


def _plain(c: Fraction) -> str:
    if c.denominator == 1:
        return str(c.numerator)
    if c.denominator < 10 ** 6:
        return f"{c.numerator}/{c.denominator}"
    return f"{float(c):.6g}"


def _factor(i: int, j: int, k: int, m_name: str, t_name: str) -> Iterable[str]:
    """M^j·S^i (all commute: M S M = M²·S), with α(X)^k in front."""
    if k:
        yield "α(X)" + (str(k).translate(_SUP) if k > 1 else "")
    if j:
        yield m_name + (str(j).translate(_SUP) if j > 1 else "")
    if i:
        yield t_name + (str(i).translate(_SUP) if i > 1 else "")


ZERO = Poly()
ONE = Poly.const(1)
T = Poly({(1, 0, 0): Fraction(1)})
M = Poly({(0, 1, 0): Fraction(1)})
A = Poly({(0, 0, 1): Fraction(1)})
