"""Precision guard: refuse a prompt on which the model's dtype cannot deliver the promised accuracy.

The promise (``PROMISED_RTOL``): a prediction p̂ of a Newton network agrees with exact Iterative
Newton p = x_qᵀ M_k Xᵀy on the same (dtype-cast) prompt to

    |p̂ − p| ≤ rtol · ‖x_q‖·‖w_k‖,      w_k = M_k Xᵀy,   rtol = 1e-10 (float64), 1e-4 (float32),

a *normwise* relative error: ‖x_q‖‖w_k‖ is the size of the prediction before any cancellation
in the final inner product (|p| itself can be 0 when x_q ⟂ w_k, which no algorithm controls).
:func:`precision_estimate` bounds the error to first order; the model raises
:class:`PrecisionError` (or warns) where that bound exceeds rtol, and always where the output is
NaN/inf.

**Derivation.**  Write S = Σ s_i q_i q_iᵀ (eigendecomposition, float64), x̃ = Qᵀx_q, b̃ = QᵀXᵀy,
and m(s) = (1 − (1 − αs²)^(2^k))/s, so M_k = m(S) and w̃_i = m(s_i) b̃_i.

1. *Perturbing S.*  The network never forms S; it sums x_l⟨x_l, ·⟩ over tokens, and every such
   sum, like rounding the inputs to the dtype, is exact for a data matrix perturbed by
   |δS| ≲ γ·u·λ_max(S), γ = N + d (N tokens, d coordinates per inner product), u the unit
   round-off.  By the Daleckii–Krein formula, δM = Q (D ∘ Qᵀ δS Q) Qᵀ with D_il the divided
   differences (m(s_i) − m(s_l))/(s_i − s_l) (D_ii = m'(s_i)), so
   |δp| ≤ γ·u·λ_max · Σ_il |x̃_i| |D_il| |b̃_l|.
   For k → ∞, D_il → −1/(s_i s_l) and this is the usual κ(S)·u sensitivity of least squares;
   for small k, |m'(s)| ≤ 2^k α: few steps are well conditioned whatever κ(S).
2. *Perturbing Xᵀy* (rounding y, X and the sum): |δp| ≤ γ·u·Σ_i |x̃_i| m(s_i) ‖b‖.
3. *Merged form, slot c.*  The merged form carries c = S M_j z separately and updates it by
   c ← (2I − S M_j) c.  Rounding junk of size u‖c‖ that lands on an eigendirection s_l not yet
   converged (αs_l²·2^j < 1) is doubled every step, while c's true value there stays ∝ s_l²:
   the gain is ∏_j (1 + (1 − αs_l²)^(2^j)) = (1 − r_l^(2^k))/(αs_l²) ≤ min(2^k, 2/(αs_l²)).  The
   read-out contracts c_q with w, so |δp| ≤ γ·u·‖x_q‖·Σ_l min(2^k, 2/(αs_l²))·|w̃_l|.  The default
   form has no such term (this is why merged k ≥ 20 on κ(S) ≳ 10⁴ misses 1e-10 while the
   default form does not).
4. *Null space.*  Eigenvalues ≤ d·eps₆₄·λ_max are exact zeros of S (b̃ has no component there in
   exact arithmetic, as in a pseudo-inverse).  Newton–Schulz doubles round-off on a token's own
   null-space component every step (Söderström & Stewart 1974): the query's slot u grows as
   2^j·u·‖x_q‖ when rank S < d.  The default form's read-out never reads the query's u, so its
   prediction stays accurate until that slot overflows (k ≈ 1070 in float64, ≈ 100 in float32),
   which the non-finite check catches.  The merged read-out reads it: its prediction gets a
   2^k·u²‖x_q‖‖w‖ term (4 below).
   The matrix form (``form="matrix"``: the float64 references, which form S = XᵀX and iterate the
   d×d matrix) meets a second effect: the computed S is exact only to δ = d·eps₆₄·λ_max, so its
   "null" eigenvalues are ±δ-sized, not 0, and M₀ = αS starts with a null block of size up to αδ.
   Newton doubles it every step (m ↦ 2m − s m², s ≈ 0; order 3 triples it) until it saturates at
   1/δ: m_null,t = min(q^t·αδ, 1/δ).  Each step's products M S M are then rounded against that
   block, so the step injects γu·max(|m|_range, m_null,t)·(size of the step's terms) into every
   component, the range ones included, where x_q and b live.  Relative to the answer this is
   ≈ γ·d·u²·2^t·αλ_max²: negligible for t ≲ 50 in float64, of order one at t ≈ 100 (measured on
   rank-1 data X = g vᵀ with rounded rows, α = "code": the batched recurrence is 5.5e-3 off the
   closed form at k = 100, and the null block's diagonal grows exactly ×2 per step from 1e-17).

5. *Per-token slots* (the networks, not the matrix reference).  Train (and ridge prefix) tokens
   carry u_l = M z_l, the columns of U = M X̄ᵀ (X̄ = [X; √λI], n + P token columns), and the
   default read-out is x_qᵀ Û ȳ (ȳ = [y; 0]).  Rounding gives U errors δU of *any* form, not only
   δM X̄ᵀ: linearising the Newton step u_l ← 2u_l − Σ_m u_m⟨x_m, u_l⟩,

       δU' = 2δU − M S δU − δU H,      H = X̄ M X̄ᵀ (token × token),

   so on a d-eigendirection i (M S = 1 − r_i^P) and a token direction a (H = 1 − r_a^P on the n'
   directions paired with S's range by the SVD X̄ = Ū Σ Qᵀ, H = 0 off range(X̄), i.e. r_a := 1) the
   factor is r_i^P + r_a^P — the same form as 1, with the token null space playing the part of
   S's null space.  Two consequences the matrix analysis (1) cannot see: (i) junk on a d-null row
   and an off-range token column is **doubled every step** (1 + 1), and the default read-out
   meets it through x_q's null component and y_⊥ = the part of ȳ off range(X̄) (the least-squares
   residual, nonzero when n > rank X or with ridge prefix tokens); measured on the fuzz's
   rank-deficient prompts with n > rank: the relative error grows as 2^k·u (float64, d = 32,
   n = 5, rank 1, k = 27: 1.5e-10; float32, d = 3, n = 10, k = 21: 4e-3), which the matrix
   estimate put at 1e-12 / 7e-5; (ii) on range rows it accumulates linearly (factor 1 per step
   once converged).  The bound: step t injects δU_t with ‖δU_t‖_F ≤ γu·‖U_t‖_F·(the step's term
   size), ‖U‖_F = (Σ_i s_i m_i²)^½; the later steps multiply its (i, a) component by
   G_t(i, a) = ∏ |g(r_i^P, r_a^P)|, and the read-out contracts with |x̃_i| and |ỹ_a| (ỹ_a = b̃_a/σ_a
   on range(X̄), ‖y_⊥‖ for the off-range part — from an SVD of X̄, accurate to u‖ȳ‖, so that an
   exact y_⊥ = 0 (duplicate tokens with equal y) is not turned into u·κ‖ȳ‖ and doubled 2^k times;
   the off-range directions are one aggregate direction, they share r_a = 1), so by Cauchy–Schwarz
   step t's share is ≤ ‖δU_t‖_F·‖(|x̃_i| G_t(i, a) |ỹ_a|)_ia‖_F (computed backwards over the step
   schedule).  The steps' round-off is independent, so the shares are summed as √(Σ_t share_t²):
   the random-walk assumption that also gives the √γ below (for a doubling component the first
   steps dominate either way).  The merged and hyperpower read-outs read U only
   through c_q = S M x_q (range rows, |c̃_i| ≤ 2|x̃_i|); their query slots' own errors follow 1.
   The read-out's sum Σ_l ⟨x_q, u_l⟩ y_l is rounded against its terms:
   γu·‖X̄ M x_q‖·‖y‖ (×3 for the two-part merged read-out) — large against ‖x_q‖‖w‖ when y is
   mostly y_⊥.
6. *Order-3 steps* (hyperpower, ``orders``).  M' = 3M − 3MSM + MSMSM has I − SM' = R³ with
   R = I − SM.  With δR = −S δM, δ(R³) = δR R² + R δR R + R² δR, so an error component between
   directions with residual factors a, b is multiplied by g₃(a, b) = a² + ab + b² (Newton:
   g₂(a, b) = a + b): 3 on null-null (or null/off-range) components, 1 on null-range once
   converged, 0 on converged range-range.  Injected per step: γu·|m|·(3 + 3s|m| + (s|m|)²), the
   size of the step's terms.  The hyperpower network is one Newton step, j order-3 steps and the
   read-out's Newton step (residual power 4·3^j).  It replaces a Newton-k stand-in (2^k ≥ 4·3^j
   Newton steps, matrix form), with which the 10,000-case fuzz found 4 silent float32 hyperpower
   cases (all with ridge prefix tokens, i.e. y_⊥ ≠ 0, term 5).
6b. *Order-p steps, any p ≥ 2* (``orders`` entries p ≥ 4; the references'
   ``verify.newton_predictions(order=p)``).  M' = M Σ_{i<p} (I − SM)^i = Σ_{j<p} (−1)^j C(p, j+1)·M(SM)^j
   has I − SM' = R^p (S M' = (I − R) Σ_{i<p} R^i = I − R^p), so on an eigenvalue s,
   m' = m Σ_{i<p} (1 − sm)^i and 1 − sm' = (1 − sm)^p.  With δR = −S δM,
   δ(R^p) = Σ_{i+j=p−1} R^i δR R^j, so an error component between directions with residual factors
   a, b is multiplied by g_p(a, b) = Σ_{i+j=p−1} a^i b^j (= (a^p − b^p)/(a − b); g₂ = a + b,
   g₃ = a² + ab + b²): g_p(1, 1) = p on null-null, so the matrix form's null block grows ×p per
   step, m_null,t = min(p^t·αδ, 1/δ) (term 4); g_p(1, 0) = 1 on null-range (or off-range) once
   converged; g_p(0, 0) = 0 on converged range-range.  The query's slots (8) take g_p(r, 1) =
   1 + r + … + r^(p−1); α's derivative (7) the residual power P = ∏ p over the steps.  Injected per
   step: γu·|m|·Σ_{j<p} C(p, j+1)(s|m|)^j = γu·|m|·((1 + s|m|)^p − 1)/(s|m|), the size of the step's
   terms (2 + s|m| for Newton, 3 + 3s|m| + (s|m|)² for order 3); on converged directions
   (s|m| = 1) 2^p − 1: the converged tail's constants 3 (Newton), 7 (order 3), 15 (order 4), 31
   (order 5).  p = 2 and 3 keep their own expressions, bit for bit.
   *The rounded products in the standard basis (matrix form, every p).*  The references form a
   product of M with S in the standard basis and multiply it by M again; the rounding of that product
   is an error of *any* shape in S's eigenbasis: |δ(MS)| ≤ γu·|M||S| entrywise, so every
   eigen-component of it can be as large as γu·λ_max·max|m| (= γu·κ once the slowest direction has
   converged), not γu·s|m| ≤ 2γu as the term sizes above assume (they model errors of the form δM
   scaled by the step's terms, which is what the per-direction sizes can see).  Which product, per p:
   - *Newton* (p = 2): M' = 2M − (MS)·M (:func:`verify.reference._newton_step`, one ``baddbmm``;
     the ``"loop"`` path's ``M @ S @ M`` is the same left-to-right product; ``newton_predict`` takes
     the batched iterates).  δ(MS) stands **left** of M, so it enters as δ(MS)·M: component (i, l)
     scaled by |m_l| (columns), fan-out 1.
   - *Order p ≥ 3*: M' = Σ_{j<p} M E^j with E = I − SM formed first
     (:func:`verify.reference._hyperpower_step`, and the ``"loop"`` path in numpy the same way).
     |δE| ≤ γu·|S||M| enters M E^a δE E^b (a + b = j − 1), i.e. M stands **left** of δE: component
     (i, l) scaled by |m_i| (rows) and by Σ_{j<p} g_j(|r_i^P|, |r_l^P|) (g_1 = 1; ≤ p(p − 1)/2, 1 once
     converged; 1 + |r_i| + |r_l| for p = 3).
   Per step: e_il += γu·λ_max·max|m|·(|m_l| Newton, |m_i|·Σ_{j<p} g_j for p ≥ 3), with m_null on the
   null rows/columns; beyond 200 steps 1 (Newton) or p(p − 1)/2 per step.  Measured without this
   term: Newton ``verify.newton_predict`` on a d = 4 prefix with κ(S) = 2.2e7, k = 54: 7.8e-10
   against a bound of 3.8e-11 (the error sits in the (max, min) eigen-component, ≈ κu/6 relative to
   max|m|; tests/test_order_p.py::test_newton_predict_full_rank_kappa_2e7_is_refused_or_accurate);
   p ≥ 4: errors up to 296× the bound.  The networks never form these products (their slots carry
   per-token vectors, term 5, and their sums are rounded against ‖x_m‖‖u_l‖ per token pair); their
   bound has no such term and needs none in this regime: 400 full-rank prompts with κ(S) = 1e6–2e7
   after convergence, all four network forms, against tests/test_fuzz.py's longdouble reference: 0
   silent of 1,600 float64 and 400 float32 cases (README, "Accuracy promise").
   *Price*: a full-rank prompt's bound now carries ≈ γu·κ·‖x̃‖₁‖w̃‖₁/(‖x_q‖‖w‖) once converged, so the
   references refuse κ(S) ≳ 1e4 after convergence (Gaussian d = 10, n = 30: from k ≈ 30), where the
   measured errors are 2e-13 (κ = 1e4) … 1.2e-10 (κ = 1e7): needed at 1e7, over-cautious below.  The
   slack is the entrywise worst case (every eigen-component at once, ℓ1 sums); the measured error is
   ≈ 0.1–1·uκ.
   *Calibration* (tests/test_order_p.py, ``python tests/test_order_p.py 300``): the matrix-form bound
   against the float64 batched recurrences of ``newton_predictions`` and a longdouble order-p
   recurrence, 300 random float64 prompts (κ(S) up to 1e7, rank-deficient prefixes, ridge, α a rule
   or 1e-4…0.999 of the convergent range), 3 prefixes each, k = 0 … 36 (p = 4) / 30 (p = 5):
   p = 4: 30,710 cases, 0 silent, measured / bound median 2.3e-4, q99 0.020, max 0.22 (at k = 0, a
   single rounded product of 4e-16 against the estimate every order shares there; k ≥ 1: max 0.037,
   q99 0.013); p = 5: 25,730 cases, 0 silent, median 1.7e-4, q99 0.019, max 0.22 (k ≥ 1: max 0.044,
   q99 0.007).  Refused although the number would have met 1e-10: 18 % (p = 4), 19 % (p = 5) of the
   cases.  The same prompts with p = 2 / 3 (K = 70 / 45): before the rounded-product term for them,
   11 / 13 silent cases (every one full rank, κ(S) ≈ 1e6–2e7, errors ≤ 1.3e-9), max ratio 20 / 562;
   with it, 58,930 / 38,180 cases, **0 / 0 silent**, needed 100 / 972, measured / bound median
   5.3e-4 / 3.3e-4, q99 0.048 / 0.026, max (k ≥ 1) 0.15 / 0.048; refused although fine 11 % / 17 % of
   the cases (8 % / 9 % before).
7. *Adaptive α* (``alpha_rtol``).  The network computes α itself: τ̂_p by sums of products
   (relative error ≤ γ_τ u, γ_τ = p·γ) and the PL function f (:mod:`construct.adaptive`; its K
   non-negative terms add (K + 1)u).  On the active tangent piece j, τ|f'(τ)|/f(τ) ≤
   (2/p)(b_j/t_j)^(1+2/p)/g ≤ (2/p)·ρ^(1+2/p)/g =: κ_f (ρ = 2^(p·h) the node ratio, g the PL
   floor f/φ), so |α̂/α − 1| ≤ ε_α = (κ_f γ_τ + K + 1)u.  The promise is Newton with the exact
   α = ``model.alpha_of(X)``, and ∂m/∂α·α = P·αs²·r^(P−1)/s, so the term is
   ε_α·Σ_i |x̃_i|·|P α s_i² r_i^(P−1)/s_i|·|b̃_i| (= ε_α|p| at k = 0, where all of α's error goes
   into the prediction; → 0 on converged directions).  *Before* (until this term and the fix of
   the PL unit scaling, :mod:`construct.blocks.trace_alpha`) the float32 α MLP's slopes underflowed
   for τ_3^(1/3) ≳ 2^25 and the network's α was wrong (down to 0): 27 of the 31 silent float32
   adaptive cases in 10,000 (the other 4 were term 5).

8. *The query's own slots* (merged and hyperpower read-outs read u_q = M x_q as 2⟨u_q, Xᵀy⟩).  The
   query is no key, so its slots update like an off-range token column: Newton
   u_q ← 2u_q − M S u_q gives δu_q' = (1 + r_i^P)·δu_q on direction i (order 3: 1 + r + r²), which
   does **not** self-correct once converged (factor 1, not 0 as for M itself in 1).  Round-off
   injected while a direction is far from converged — e.g. the first Newton step at α s² ≈ 2,
   M₁ = M₀(2 − αs²) with 2 − αs² = 2e-5, relative error 1e5·u — stays in the prediction: float64
   hyperpower d = n = 1, αs² = 1.99998, k = 23 measured 3e-12 against a bound of 1e-14 without
   this term.  Bound: √Σ_t (‖δu_q,t‖·‖(G_t(i, ⊥)·2|b̃_i|)_i‖)², ‖δu_q,t‖ ≤ γu·max|m|·‖x_q‖·(term
   size).
   (The default form's read-out x_qᵀ Û ȳ uses x_q itself, never its u.)

The estimate is C·(sum of 1–3, plus 4 for the merged form, 5 for the networks, 7 for adaptive α,
8 for the merged and hyperpower read-outs) / (‖x_q‖‖w_k‖) with C = ``PRECISION_C``; C is a safety
factor over first-order analysis, checked by the fuzz suite (tests/test_fuzz.py): no returned
prediction may miss rtol.

*Calibration (Newton and hyperpower networks)*: measured error / estimate on 1,970 valid cases of
the fuzz strategy drawn outside the fuzz's own sample (non-GD forms, both dtypes, /tmp scripts of
the fuzz-precision note): max 0.089 (float32, 917 cases; q99 0.042) and 0.070 (float64, 1,053; q99
0.040), i.e. the bound is ≥ 11× above every measured error; 0 silent. The estimate before terms 5–8
(and the order-3 gains 6) gave, on the same cases and networks, ratios up to 433 (float32) and 1.8e4
(float64) and 4 silent cases. The price is caution: median ratio 6e-4; of these valid cases 617
float32 and 106 float64 are refused although the raw number would have met rtol (before: 548 and
78). The slack is mostly in the injected sizes (γu·‖terms‖ per step against a measured ≈ u per step
on the per-token slots).

**GD networks** (:func:`gd_precision_estimate`).  Same promise, w_k the exact k-step GD iterate
w_k = m_k(S) Xᵀy, m_k(s) = (1 − r^k)/s, r = 1 − η s (η = lr_eff).  The network
(:mod:`construct.blocks.gd`) keeps the residuals r⁽ᵗ⁾ = (I − ηXXᵀ)^t y on the train tokens and
accumulates out += η x_qᵀXᵀr⁽ᵗ⁾ on the query.  With X = UΣQᵀ, s_i = σ_i², x̃ = Qᵀx_q, c = Uᵀy:

1. *Read-out, step t.*  Σ_l ⟨x_q, x_l⟩ r_l is rounded against its terms' sizes:
   |δout_t| ≤ γ·u·η·‖x_q‖·‖X‖_F·‖r⁽ᵗ⁾‖, ‖r⁽ᵗ⁾‖² = Σ_i r_i^(2t) c_i² + ‖y off range X‖² (exact).
2. *Residual update, step t.*  r ← r − ηXXᵀr injects ‖δr_t‖ ≤ γ·u·(η‖X‖_F² + 1)·‖r⁽ᵗ⁾‖.  It is
   carried by I − ηXXᵀ, whose factor per direction is r_i, |r_i| ≤ 1 on a convergent prompt
   (no growth, unlike Newton's doubling), and read by the m = k − 1 − t later read-outs:
   η x_qᵀXᵀ Σ_{j<m} (I − ηXXᵀ)^j δr_t, gain |1 − r_i^m|/σ_i on direction i
   (≤ min(mησ_i, 2/σ_i): linear in the steps on slow directions, 1/σ_i ≈ κ-like on fast ones),
   so |δp| ≤ ‖(|1 − r_i^m|/σ_i · |x̃_i|)_i‖·‖δr_t‖.
3. *The sum out itself:* u per step against ‖x_q‖‖w_k‖.

Summed over the k steps, the error grows about linearly with the steps times u·(‖X‖_F²/λ-like)
terms, and the normwise scale ‖x_q‖‖w_k‖ can be far below the iterates' sizes when η s ≈ 2
(r ≈ −1: w_k = (1 − r^k)/s·b̃ nearly cancels for even k) — the class the 10,000-case fuzz found
silent in float32 before this estimate (tests/test_fuzz.py::test_gd_float32_silent_case_now_refused).
Estimate: ``GD_PRECISION_C``·(1 + 2 + 3)/√γ / (‖x_q‖‖w_k‖), γ = N + d, with the same √γ
accumulation and C = 4 as the Newton estimate.  *Calibration* (GD cases of the fuzz strategy,
measured error / estimate): max 0.07 in float32 (68 valid cases) and 0.05 in float64 (71), i.e. the
bound is ≥ 14× above every measured error.  GD-only float32 fuzz (``run_fuzz(n, forms=("gd",),
dtypes=(torch.float32,))``): 30 silent in 3,000 cases without this estimate, 0 in 1,500 with it.
"""

from __future__ import annotations

import math
import operator
import warnings

import torch

F64 = torch.float64
PROMISED_RTOL = {torch.float64: 1e-10, torch.float32: 1e-4}
PRECISION_C = 4.0  # safety factor over the first-order bound (module doc); fuzz-checked
GD_PRECISION_C = 4.0  # the same for GD networks (module doc, "GD networks"); fuzz-checked
CHECK_MODES = ("raise", "warn", "ignore")


class PrecisionError(ArithmeticError, ValueError):
    """The model's dtype cannot deliver the promised accuracy on a prompt (or produced NaN/inf)."""


class PrecisionWarning(RuntimeWarning):
    """Warning form of :class:`PrecisionError`."""


def _m_and_dm(s: torch.Tensor, a: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """m(s) = (1 − r^P)/s and m'(s), r = 1 − a s², P = 2^k, for s ≥ 0 (m(0) = 0, m'(0) = P a)."""
    P = 2.0 ** min(k, 1023)
    x = a * s * s
    logr = torch.where(x <= 1, torch.log1p(-x.clamp(max=1.0)), torch.log((x - 1).clamp(min=1e-300)))
    logr = logr.clamp(min=-1e300)
    neg = (x > 1) & (k == 0)  # r^P with P = 2^k even for k ≥ 1
    rP = torch.exp(P * logr) * torch.where(neg, -1.0, 1.0)  # r^P
    rP1 = torch.exp((P - 1) * logr) * torch.where(x > 1, -1.0, 1.0)  # r^(P−1), P − 1 odd for k ≥ 1
    if k == 0:
        rP1 = torch.ones_like(x)
    pos = s > 0
    s1 = torch.where(pos, s, torch.ones_like(s))
    om = -torch.expm1(P * logr) if k else x  # 1 − r^P (accurate for small x)
    om = torch.where(x > 1, 1 - rP, om)
    m = torch.where(pos, om / s1, torch.zeros_like(s))
    dm = torch.where(pos, -m / s1 + 2 * a * P * rP1, a * P)  # d/ds (1 − r^P)/s
    return m, dm


FORMS = ("default", "merged", "matrix", "hyperpower")


def _gain(q: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|g_q(a, b)|: the linearised factor of one order-q step on an error component between two
    directions with residual factors a, b (module doc, 5, 6, 6b): a + b (Newton), a² + ab + b²
    (order 3), g_q(a, b) = Σ_{i+j=q−1} a^i b^j (order q, by Horner: g_q = a·g_{q−1} + b^(q−1))."""
    if q == 2:
        return (a + b).abs()
    if q == 3:
        return (a * a + a * b + b * b).abs()
    g, bp = torch.ones_like(a + b), torch.ones_like(b)  # g_1 = 1, b^0
    for _ in range(q - 1):
        bp = bp * b
        g = a * g + bp
    return g.abs()


def _size(q: int, sm: torch.Tensor) -> torch.Tensor:
    """The size of one order-q step's terms over |m| (module doc, 6b): M' = Σ_{j<q} (−1)^j C(q, j+1)·M(SM)^j,
    so Σ_j C(q, j+1)·(s|m|)^j = ((1 + s|m|)^q − 1)/(s|m|): 2 + s|m| (Newton), 3 + 3s|m| + (s|m|)² (order 3)."""
    if q == 2:
        return 2 + sm
    if q == 3:
        return 3 + 3 * sm + sm * sm
    out = torch.zeros_like(sm)
    for j in range(q - 1, -1, -1):  # Horner over the binomial coefficients
        out = out * sm + math.comb(q, j + 1)
    return out


def _row_m(m: torch.Tensor, null: torch.Tensor, mnull: torch.Tensor) -> torch.Tensor:
    """|m_i| per eigendirection (B, d), the matrix form's null block (B,) on the null directions."""
    return torch.where(null, mnull[:, None].expand_as(m), m.abs())


def _step_m(q: int, s: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """m' of one order-q step on an eigenvalue s: m' = m·Σ_{i<q} (1 − s m)^i, so 1 − s m' = (1 − s m)^q."""
    if q == 2:
        return 2 * m - s * m * m
    if q == 3:
        return 3 * m - 3 * s * m * m + s * s * m * m * m
    E, acc, P = 1 - s * m, m, m
    for _ in range(q - 1):
        P = P * E
        acc = acc + P
    return acc


def precision_estimate(X, y, x_query, alpha_eff, k: int, *, lam: float = 0.0, dtype: torch.dtype = F64,
                       form: str = "default", orders: tuple[int, ...] | None = None,
                       alpha_rtol: float = 0.0) -> torch.Tensor:
    """First-order bound on the normwise relative error of a Newton prediction (B,).

    ``X`` (B, n, d), ``y`` (B, n), ``x_query`` (B, d); ``alpha_eff`` a float or (B,) (α/N² under
    1/N normalisation); ``dtype`` the arithmetic.  ``form``: the network's form ("default",
    "merged", "hyperpower"), or "matrix" for the reference that forms M_k as a matrix
    (:func:`verify.newton_predict`), whose null-null block doubles round-off (term 4) but which
    has no slot c and no per-token slots (term 5).  ``orders``: the orders of the steps after
    M₀ = αS (2 = Newton, 3 = order-3 hyperpower, p ≥ 4 the order-p hyperpower step of term 6b);
    None means k Newton steps.  ``alpha_rtol``:
    relative error of α as the network computes it (adaptive α, :func:`adaptive_alpha_rtol`; 0 for
    a fixed α, which is exact in the weights).  See the module docstring.
    """
    if form not in FORMS:
        form = "merged"  # unknown (newer) forms: the most conservative estimate
    orders = tuple(orders) if orders is not None else (2,) * int(k)
    _check_orders(orders, "orders")
    orders = tuple(operator.index(q) for q in orders)
    X = torch.as_tensor(X).to(F64)
    y = torch.as_tensor(y).to(F64)
    B, n, d = X.shape
    S = X.transpose(1, 2) @ X + lam * torch.eye(d, dtype=F64)  # (B, d, d)
    b = (X.transpose(1, 2) @ y[..., None])[..., 0]  # (B, d)
    return _estimate(S, b, x_query, alpha_eff, orders, n, dtype, form, lam, alpha_rtol, X, y)


def _check_orders(orders: tuple, name: str) -> None:
    """Each step's order must be an integer p ≥ 2 (2 = Newton, 3 = order 3, p = the order-p hyperpower step)."""
    for q in orders:
        if isinstance(q, bool) or not hasattr(q, "__index__") or operator.index(q) < 2:
            what = "integers" if name == "orders" else "an integer"
            raise ValueError(f"{name} must be {what} >= 2 (2 = Newton, 3 = order 3, p = order-p hyperpower "
                             f"steps), got {q!r}")


def precision_estimate_stats(S, b, x_query, alpha_eff, steps, *, n, dtype: torch.dtype = F64, order: int = 2,
                             ridge: bool = False) -> torch.Tensor:
    """:func:`precision_estimate` for the matrix form (``form="matrix"``) at every step count in
    ``steps`` at once -> (len(steps), B), from the prompt statistics S = XᵀX + λI (B, d, d) and
    b = Xᵀy (B, d), with ``n`` (int or (B,)) examples per prompt (``ridge``: λ > 0, d more terms
    per sum): what :func:`verify.newton_predictions` has for every prefix, without re-forming X.
    ``order``: any p ≥ 2 (2 = Newton, 3 = order 3, p the order-p hyperpower step, module doc 6b)."""
    steps = [int(k) for k in steps]
    _check_orders((order,), "order")
    order = operator.index(order)
    S = torch.as_tensor(S).to(F64)
    return _estimate(S, torch.as_tensor(b).to(F64), x_query, alpha_eff, (order,) * max(steps, default=0), n, dtype,
                     "matrix", 1.0 if ridge else 0.0, 0.0, None, None, ks=steps)


def _estimate(S, b, x_query, alpha_eff, orders, n, dtype, form, lam, alpha_rtol, X, y, ks=None) -> torch.Tensor:
    """The bound of :func:`precision_estimate` from S (B, d, d) and b (B, d); X, y only for the
    per-token terms (form != "matrix").  ``ks``: step counts (prefixes of ``orders``) at which to
    read the bound, giving (len(ks), B); None: after all of ``orders``, (B,)."""
    xq = torch.as_tensor(x_query).to(F64)
    B, d = b.shape
    u = float(torch.finfo(dtype).eps) / 2
    a = torch.as_tensor(alpha_eff, dtype=F64).reshape(-1).expand(B)[:, None]  # (B, 1)
    s, Q = torch.linalg.eigh(S)  # (B, d), (B, d, d)
    smax = s[:, -1:].clamp(min=0)
    null = s <= d * float(torch.finfo(F64).eps) * smax  # exact zeros of S (module doc, 4)
    s = torch.where(null, torch.zeros_like(s), s)
    bn = b.norm(dim=-1, keepdim=True)
    xt = (Q.transpose(1, 2) @ xq[..., None])[..., 0].abs()  # |x̃| (B, d)
    bt = (Q.transpose(1, 2) @ b[..., None])[..., 0].abs()  # |b̃|
    if form == "default":
        bt = torch.where(null, torch.zeros_like(bt), bt)  # the network applies M only to x_l ∈ range S
    else:  # M (or the query's u) meets Xᵀy's rounded null component, ≈ u‖b‖
        bt = torch.where(null, torch.maximum(bt, u * bn), bt)
    gamma = torch.as_tensor(n, dtype=F64).reshape(-1).expand(B) + 1 + d + (d if lam > 0 else 0)  # (B,)
    gamma1 = gamma[:, None]
    tokens = form != "matrix"
    rng = ~null
    if tokens:
        # token side (module doc, 5): X̄ = [X; √λ I] = Ū Σ Qᵀ; ỹ_l = ū_lᵀ ȳ = b̃_l/σ_l on the range, and
        # the part of ȳ = [y; 0] off range(X̄), ‖y_⊥‖, from a least-squares residual computed directly
        # (‖y_⊥‖ from an SVD of X̄: orthonormal to round-off, so y_⊥ = 0 (duplicate tokens with equal y, n ≤ rank)
        # comes out ≈ u‖y‖, not u·κ(X)‖y‖ as from a least-squares residual; the null-row term doubles it 2^k times)
        sig = s.sqrt()
        Xb, yb = X, y
        if lam > 0:
            Xb = torch.cat([X, math.sqrt(lam) * torch.eye(d, dtype=F64).expand(B, d, d)], 1)  # X̄ (B, n + d, d)
            yb = torch.cat([y, torch.zeros(B, d, dtype=F64)], 1)
        Ub, sv, _ = torch.linalg.svd(Xb, full_matrices=False)  # (B, n', r), (B, r)
        keep = sv * sv > d * float(torch.finfo(F64).eps) * (sv[:, :1] * sv[:, :1])  # range(X̄), as ~null above
        Ur = Ub * keep[:, None, :].to(F64)
        yperp = (yb - (Ur @ (Ur.transpose(1, 2) @ yb[..., None]))[..., 0]).norm(dim=-1)  # ‖ȳ off range(X̄)‖
        yt = torch.where(rng, bt / torch.where(rng, sig, torch.ones_like(sig)), torch.zeros_like(sig))  # |ỹ_l|
        yn = y.norm(dim=-1)
    x = a * s * s  # (B, d) = α s²
    r = torch.where(null, torch.ones_like(s), 1 - x)  # per-direction residual factor
    m = a * s  # m_0(s) = α s on the range
    one = torch.ones(B, 1, dtype=F64)
    # e(i, l): bound on |Q^T (M̂_t − M_t) Q|_il; injected γu·(size of the step's terms) per step,
    # propagated by the linearised step: ×|g_q(r_i^P, r_l^P)| (module doc, 1 and 5)
    # matrix form: the computed S's null block (module doc, 4): m_null,t = min(q^t·αδ, 1/δ), δ = d·eps·λ_max
    dnull = d * float(torch.finfo(F64).eps) * smax[:, 0]  # (B,)
    has_null = null.any(-1) & (form == "matrix")
    mnull = torch.where(has_null, a[:, 0] * dnull, torch.zeros_like(dnull))  # (B,)
    mcap = torch.where(has_null, 1 / dnull.clamp(min=1e-300), torch.zeros_like(dnull))
    e = (gamma * u * torch.maximum(m.abs().amax(-1), mnull))[:, None, None].expand(B, d, d).clone()
    g = (2 * gamma1 * u).expand(B, d).clone()  # merged slot c: ×(1 + r_l^(2^t)) per step, injected 2γu
    # eU(i, a): the same for the per-token slots U = [u_l] (module doc, 5): token directions a = the
    # d range directions (paired by the SVD of X̄) and one for ȳ's part off range(X̄) (factor 1)
    # The per-token slots (5) and the query's own slots (8) are bounded step by step by the size of
    # the whole injected error (‖δU_t‖_F, ‖δu_q,t‖), carried to the read-out by the remaining steps'
    # gains, read by Cauchy–Schwarz (see ``backward``): the schedule of r^P and injections is kept.
    Un = ((m * m * s).sum(-1)).sqrt()  # ‖U‖_F = ‖M X̄ᵀ‖_F
    qslots = form in ("merged", "hyperpower")
    sched = [(None, gamma * u * Un, gamma * u * m.abs().amax(-1))]  # (order, ‖δU‖_F, ‖δu_q‖/‖x_q‖) injected
    rps = []  # r^P before each step
    rp = r.clone()  # r^P, P the residual power so far
    xn = xq.norm(dim=-1)

    def backward(wx, wy, wq):
        """Σ_t ‖δU_t‖_F·‖(wx_i G_t(i, a) wy_a)_ia‖_F + Σ_t ‖δu_q,t‖·‖(G_t(i, ⊥) wq_i)_i‖ with G_t the
        product of the later steps' factors |g_q(r_i^P, r_a^P)| (token side: range directions paired
        by the SVD of X̄, then one off-range direction with r = 1; the query's slots are off-range)."""
        tot = torch.zeros(B, dtype=F64)
        Gp = torch.ones(B, d, d + 1, dtype=F64)
        conv = torch.where(null, torch.ones_like(s), torch.zeros_like(s))  # r^P once converged
        T = len(orders)
        for t in range(T, -1, -1):
            q, iU, iq = sched[t] if t < len(sched) else (orders[t - 1], *sched[-1][1:])
            if t >= len(sched):  # converged tail (beyond 200 steps): terms of size 2^q − 1 (3 Newton, 7 order 3)
                iU = gamma * u * Un_k * (2 ** q - 1)
                iq = gamma * u * mmax_k * (2 ** q - 1)
            if tokens:  # squared: the steps' round-off is independent, summed as √Σ (module doc, 5)
                tot = tot + iU.pow(2) * (wx[:, :, None] * Gp * wy[:, None, :]).pow(2).sum((-2, -1))
            if qslots:
                tot = tot + (iq * xn).pow(2) * (Gp[:, :, -1] * wq).pow(2).sum(-1)
            if t == 0:
                break
            rpt = rps[t - 1] if t - 1 < len(rps) else conv
            rpa = torch.cat([rpt, one], -1)
            Gp = Gp * _gain(orders[t - 1], rpt[:, :, None], rpa[:, None, :])
        return tot.sqrt()

    def finish(e, g, m, done):
        """The bound after the steps ``done`` (module doc: read e, g, eU against x̃, b̃, ỹ)."""
        mk = torch.where(null, torch.zeros_like(m), m)  # m_k(s), 0 on the null space
        w = mk * bt  # |w̃|
        wn = w.norm(dim=-1)
        err = torch.einsum("bi,bil,bl->b", xt, e, bt)  # recurrence round-off
        err = err + gamma * u * (xt * mk).sum(-1) * bn[:, 0]  # rounding Xᵀy (module doc, 2)
        if form == "merged":
            err = err + xn * (g * w).sum(-1)  # slot c (module doc, 3)
        if tokens or qslots:
            # default: x_qᵀ Û ȳ reads every row of U; merged / hyperpower read U through c_q = S M x_q
            # (range rows only, module doc 5) and their query slots as 2⟨u_q, Xᵀy⟩ (module doc, 8)
            xr = xt if form == "default" else torch.where(null, torch.zeros_like(xt), 2 * xt)
            ya = torch.cat([yt, yperp[:, None]], -1) if tokens else None  # (B, d + 1)
            err = err + backward(xr, ya, 2 * bt)
        if tokens:  # the read-out's sum over tokens (module doc, 5)
            uxq = (s * mk * mk * xt * xt).sum(-1).sqrt()  # ‖X̄ M x_q‖: the read-out's terms ⟨x_q, u_l⟩
            err = err + gamma * u * (1 if form == "default" else 3) * uxq * yn
        if alpha_rtol:  # the network's own α (module doc, 7): ε_α·Σ |x̃_i|·|α ∂m/∂α (s_i)|·|b̃_i|
            P = 1.0
            for q in done:
                P = min(P * q, 1e300)
            xr = (a * s * s).clamp(max=4.0)
            rr = torch.where(null, torch.zeros_like(s), (1 - xr).abs())
            logpow = (P - 1) * torch.log(rr.clamp(min=1e-300)) if P > 1 else torch.zeros_like(s)
            dlog = P * xr * torch.exp(logpow.clamp(max=700.0)) / torch.where(rng, s, torch.ones_like(s))
            dlog = torch.where(rng, dlog, torch.zeros_like(dlog))
            err = err + alpha_rtol * (xt * dlog * bt).sum(-1)
        scale = xn * wn
        # every term above carries one factor γ (the worst case, errors of one sign); round-off
        # accumulates like √γ in practice, which the fuzz suite measures (module doc, "Calibration")
        err = err / gamma.sqrt()
        # NaN only from inf·0: a term overflowed (thousands of steps on a null direction), so the bound is
        # unknown, not met; inf refuses as the same prompt's finite-but-huge bound at fewer steps does
        err = torch.where(torch.isnan(err), torch.full_like(err, math.inf), err)
        est = PRECISION_C * err / torch.where(scale > 0, scale, torch.ones_like(scale))
        return torch.where(scale > 0, est, torch.zeros_like(est))

    Un_k = mmax_k = None  # the converged tail's term sizes (backward), set after the loop
    want = sorted(set(ks)) if ks is not None else [len(orders)]
    out = {}
    steps = min(max(want), 200)
    if (tokens or qslots) and ks is not None:
        raise ValueError("several step counts at once (ks) are for the matrix form only")
    if 0 in want:
        out[0] = finish(e, g, m, ())
    for t, q in enumerate(orders[:steps]):
        sm = (s * m.abs()).amax(-1)  # max s|m| = max|1 − r^P| ≤ 2
        size = _size(q, sm)  # the step's terms, over |m| (or ‖U‖)
        inj = gamma * u * torch.maximum(m.abs().amax(-1), mnull) * size
        e = _gain(q, rp[:, :, None], rp[:, None, :]) * e + inj[:, None, None]
        if form == "matrix":  # the rounded (MS)·M (Newton) / E = I − SM (p ≥ 3), standard basis (module doc, 6b)
            top = (gamma * u * smax[:, 0] * torch.maximum(m.abs().amax(-1), mnull))[:, None]  # (B, 1)
            mi = _row_m(m, null, mnull)  # (B, d)
            if q == 2:  # δ(MS)·M: columns ×|m_l|, fan-out 1
                e = e + (top * mi)[:, None, :]
            else:  # M·δE·…: rows ×|m_i|, fan-out Σ_{j<p} g_j(|r_i|, |r_l|), g_1 = 1
                ra, rb = rp[:, :, None].abs(), rp[:, None, :].abs()
                fan = sum(_gain(j, ra, rb) for j in range(2, q)) + 1
                e = e + (top * mi)[:, :, None] * fan
        mnull = torch.minimum(q * mnull, mcap)
        if q == 2 and form == "merged":
            g = (1 + rp.abs()) * g + 2 * gamma1 * u
        if tokens or qslots:
            rps.append(rp)
            sched.append((q, gamma * u * Un * size, inj))
        m = _step_m(q, s, m)
        rp = rp ** q
        Un = ((m * m * s).sum(-1)).sqrt()
        if t + 1 in want:
            out[t + 1] = finish(e, g, m, orders[:t + 1])
    Un_k, mmax_k = Un, m.abs().amax(-1)
    for k in want:
        if k <= steps:
            continue
        # beyond 200 steps every r^P is 0 (range) or 1 (null): closed form
        rest = orders[steps:k]
        R = len(rest)
        Rs = sum(2 ** q - 1 for q in rest)  # Σ the converged steps' term sizes ((1 + 1)^q − 1: 2 + 1, 3 + 3 + 1)
        log2g = sum(math.log2(q) for q in rest)  # null-null gain g_q(1, 1) = q per step (2 Newton, 3 order 3)
        G = 2.0 ** log2g if log2g < 1024 else math.inf  # (a Python float power past 2^1023 raises OverflowError)
        nn = null[:, :, None] & null[:, None, :]
        # the null block of the matrix form has saturated at 1/δ long before 200 steps (module doc, 4)
        ek = torch.where(nn, e * G, e + (Rs * gamma * u * torch.maximum(m.abs().amax(-1), mcap))[:, None, None])
        if form == "matrix":  # the rounded (MS)·M / E = I − SM (6b), fan-out ≤ p(p − 1)/2 (1 Newton, 3 order 3)
            mi = _row_m(m, null, mcap)
            top = (gamma * u * smax[:, 0] * torch.maximum(m.abs().amax(-1), mcap))[:, None, None]
            fan2 = sum(1 for q in rest if q == 2)  # Newton: columns ×|m_l|
            fanp = sum(q * (q - 1) / 2 for q in rest if q > 2)  # p ≥ 3: rows ×|m_i|
            ek = ek + top * (fan2 * mi[:, None, :] + fanp * mi[:, :, None])
        gk = torch.where(null, g * G, g + R * 2 * gamma1 * u)
        out[k] = finish(ek, gk, m, orders[:k])
    if ks is None:
        return out[len(orders)]
    return torch.stack([out[k] for k in ks])


def adaptive_alpha_rtol(pl, gamma: int, dtype: torch.dtype) -> float:
    """ε_α: bound on the relative error of an adaptive network's own α (module doc, 7).

    ``pl`` the model's :class:`construct.adaptive.PLAlpha`, ``gamma`` = N + d (terms per sum).
    κ_f = max over tangent pieces of τ|f'(τ)|/f(τ), taken at the piece's right end (f falls
    linearly on a piece, so the ratio grows with τ), the last piece cut at the valid range's end.
    """
    import numpy as np

    b = np.asarray(pl.kinks)
    W = np.cumsum(np.asarray(pl.weights)[::-1])[::-1]  # |f'| on piece j = Σ_{i≥j} w_i
    ends = np.minimum(b, pl.tau_hi)
    f = pl(ends)
    ok = f > 0
    kappa = float(np.max(ends[ok] * W[ok] / f[ok])) if ok.any() else math.inf
    u = float(torch.finfo(dtype).eps) / 2
    return (kappa * pl.p * gamma + len(b) + 1) * u


PROGRAMS = ("newton", "gd", "reference")


def check_precision(estimate: torch.Tensor, dtype: torch.dtype, on_fail: str = "raise", what: str = "prompt",
                    rtol: float | None = None, program: str = "newton") -> torch.Tensor:
    """Raise / warn where ``estimate`` (from :func:`precision_estimate` or :func:`gd_precision_estimate`)
    exceeds the promised rtol.  ``program``: "newton" (Newton / hyperpower networks), "gd" (GD networks)
    or "reference" (:mod:`verify.reference`'s float64 recurrences), for the message."""
    if on_fail not in CHECK_MODES:
        raise ValueError(f"check_precision must be one of {CHECK_MODES}, got {on_fail!r}")
    if program not in PROGRAMS:
        raise ValueError(f"program must be one of {PROGRAMS}, got {program!r}")
    rtol = PROMISED_RTOL[dtype] if rtol is None else rtol
    bad = estimate > rtol
    if bad.any() and on_fail != "ignore":
        i = int(torch.nonzero(bad.reshape(-1))[0])
        if program == "gd":
            cause = ("ill-conditioned S = XᵀX, many GD steps on slowly converging directions, or a learning rate "
                     "close to the divergence boundary (lr_eff·λ_max(S) near 2)")
            fix = "fewer GD steps, a smaller learning rate"
        else:
            cause = ("ill-conditioned S = XᵀX, many Newton steps on slowly converging directions, or alpha close "
                     "to the divergence boundary")
            fix = "fewer steps k, a ridge lam > 0"
        if program == "reference":
            use = f"Use {fix}, the closed form (method='spectral' in newton_predictions)"
        elif dtype == torch.float64:  # already the most precise model dtype
            use = f"Use {fix}"
        else:
            use = f"Use a float64 model, {fix}"
        msg = (
            f"{str(dtype).removeprefix('torch.')} cannot deliver the promised relative accuracy {rtol:g} on "
            f"{int(bad.sum())} {what}(s) (first index {i}): the first-order error bound is "
            f"{float(estimate.max()):.3g} ({cause}). {use}, or check_precision='ignore' "
            "to get the number anyway (see construct.precision for the bound)."
        )
        if on_fail == "raise":
            raise PrecisionError(msg)
        warnings.warn(msg, PrecisionWarning, stacklevel=3)
    return bad


def check_finite(name: str, out: torch.Tensor, hint: str = "") -> torch.Tensor:
    """Raise :class:`PrecisionError` if ``out`` holds NaN/inf (never hand them back silently)."""
    if out.numel() and not torch.isfinite(out).all():
        bad = int((~torch.isfinite(out)).sum())
        raise PrecisionError(
            f"{name} produced {bad} NaN/inf value(s) from finite input: the computation overflowed "
            f"in {str(out.dtype).removeprefix('torch.')}." + (f" {hint}" if hint else "")
        )
    return out


def gd_precision_estimate(X, y, x_query, lr_eff, steps: int, *, dtype: torch.dtype = F64) -> torch.Tensor:
    """First-order bound on the normwise relative error of a GD network's prediction (B,).

    ``X`` (B, n, d), ``y`` (B, n), ``x_query`` (B, d); ``lr_eff`` a float or (B,) (lr/N under 1/N
    normalisation); ``steps`` the number of GD steps; ``dtype`` the arithmetic.  The promise is
    the Newton one with w_k the exact k-step GD iterate (see "GD networks" in the module doc).
    """
    X = torch.as_tensor(X).to(F64)
    y = torch.as_tensor(y).to(F64)
    xq = torch.as_tensor(x_query).to(F64)
    B, n, d = X.shape
    u = float(torch.finfo(dtype).eps) / 2
    eta = torch.as_tensor(lr_eff, dtype=F64).reshape(-1).expand(B)[:, None]  # (B, 1)
    S = X.transpose(1, 2) @ X  # (B, d, d)
    s, Q = torch.linalg.eigh(S)  # (B, d), (B, d, d)
    smax = s[:, -1:].clamp(min=0)
    null = s <= d * float(torch.finfo(F64).eps) * smax
    s = torch.where(null, torch.zeros_like(s), s)
    sig = s.sqrt()
    sig1 = torch.where(null, torch.ones_like(sig), sig)
    b = (X.transpose(1, 2) @ y[..., None])[..., 0]  # (B, d)
    bt = (Q.transpose(1, 2) @ b[..., None])[..., 0]  # b̃ = Σ c, c = Uᵀy on the range
    c = torch.where(null, torch.zeros_like(bt), bt / sig1)
    yperp2 = (y.pow(2).sum(-1, keepdim=True) - c.pow(2).sum(-1, keepdim=True)).clamp(min=0)  # ‖y‖² off range X
    xt = (Q.transpose(1, 2) @ xq[..., None])[..., 0].abs()  # |x̃| (B, d)
    xn = xq.norm(dim=-1)
    fro = X.pow(2).sum((-2, -1)).sqrt()[:, None]  # ‖X‖_F (B, 1)
    r = torch.where(null, torch.ones_like(s), 1 - eta * s)  # per-direction factor of I − ηXXᵀ, |r| ≤ 1
    gamma = n + 1 + d
    # ‖r⁽ᵗ⁾‖ for t = 0..k−1 and the residual round-off injected at step t, ‖δr_t‖
    err = torch.zeros(B, dtype=F64)
    rp = torch.ones_like(s)  # r^t
    steps_run = int(steps)
    inj = []  # (t, ‖δr_t‖)
    for t in range(steps_run):
        rn = ((rp * c).pow(2).sum(-1, keepdim=True) + yperp2).sqrt()[:, 0]  # ‖r⁽ᵗ⁾‖
        # query read-out: out += η Σ_l ⟨x_q, x_l⟩ r_l (products rounded against ‖x_q‖‖x_l‖|r_l|)
        err = err + gamma * u * eta[:, 0] * xn * fro[:, 0] * rn
        inj.append(gamma * u * (eta[:, 0] * fro[:, 0] ** 2 + 1) * rn)
        rp = rp * r
    # propagate δr_t to the read-out: gain |1 − r_i^m|/σ_i on direction i, m = k − 1 − t steps read it
    rm = torch.ones_like(s)
    for m in range(1, steps_run):  # δr_{k-1-m}
        rm = rm * r
        g = torch.where(null, torch.zeros_like(s), (1 - rm).abs() / sig1)
        err = err + (g * xt).norm(dim=-1) * inj[steps_run - 1 - m]
    # the accumulated out itself: rounding ≈ u per step against |x_qᵀ w_t| ≤ ‖x_q‖‖w_t‖
    mk = torch.where(null, torch.zeros_like(s), (1 - rp) / sig1)  # m_k(s)·σ = (1 − r^k)/σ
    wn = (mk * c).norm(dim=-1)  # ‖w_k‖ = ‖(1 − r^k)/s · b̃‖
    err = err + steps_run * u * xn * wn
    scale = xn * wn
    est = GD_PRECISION_C * err / math.sqrt(gamma) / torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.where(scale > 0, est, torch.zeros_like(est))
