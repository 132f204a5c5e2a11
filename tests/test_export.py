"""Export to TransformerLens and Hugging Face, and Garg et al.'s checkpoint format.

.ci/run installs the ``lens`` and ``hf`` extras, so these run in CI; ``importorskip`` only spares
users who installed without them.
"""

import math
from pathlib import Path

import pytest
import torch

from construct import build_newton_transformer, gpt2_scale, load_model, to_gpt2
from construct.export import from_garg_state_dict, to_garg_state_dict
from construct.regressor import GargConfig, GargRegressor

CPU = Path(__file__).resolve().parents[1] / "benchmarks" / "checkpoints" / "cpu"


def prompts(B=3, n=8, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(B, n, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    y = torch.randn(B, n, generator=g, dtype=torch.float64)
    xq = torch.randn(B, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    return X, y, xq


def garg_config(m: GargRegressor) -> dict:
    c = m.cfg
    return {"n_dims": c.d, "n_positions": c.n_points, "n_embd": c.d_model, "n_layer": c.n_layers, "n_head": c.n_heads}


# ------------------------------------------------------------------------------ no extras needed
def test_shipped_checkpoints_use_exact_gelu():
    m = load_model(CPU)
    assert m.cfg.activation == "gelu" and m.transformer.cfg.mlp == "gelu"


def test_gelu_new_is_a_different_model():
    import dataclasses

    a = load_model(CPU)
    b = GargRegressor(dataclasses.replace(a.cfg, activation="gelu_new"))
    b.load_state_dict(a.state_dict())
    assert b.transformer.cfg.mlp == "gelu_new"
    X, y, _ = prompts(n=11, d=a.d)
    diff = (a.predict_all(X.float(), y.float()) - b.predict_all(X.float(), y.float())).abs().max()
    assert diff > 1e-4  # the tanh approximation changes the shipped model's numbers
    with pytest.raises(ValueError, match="activation"):
        GargConfig(d=3, n_points=6, n_layers=2, n_heads=2, d_model=16, activation="swish")


def test_garg_format_roundtrip_and_errors():
    m = load_model(CPU)
    sd = to_garg_state_dict(m)
    back = from_garg_state_dict(sd, garg_config(m), activation="gelu")
    X, y, _ = prompts(n=6, d=m.d)
    assert torch.equal(back.predict_all(X.float(), y.float()), m.predict_all(X.float(), y.float()))
    with pytest.raises(ValueError, match="lacks"):
        from_garg_state_dict(sd, {"n_dims": m.d})
    bad = dict(sd)
    bad.pop("_read_out.bias")
    with pytest.raises(ValueError, match="_read_out.bias"):
        from_garg_state_dict(bad, garg_config(m))


# ------------------------------------------------------------------------------ Hugging Face
def test_trained_checkpoint_in_transformers():
    pytest.importorskip("transformers")
    m = load_model(CPU)
    hf = m.to_hf()
    assert type(hf._backbone).__name__ == "GPT2Model"
    X, y, _ = prompts(B=4, n=11, d=m.d, seed=1)
    ours = m.predict_all(X.float(), y.float())
    assert (hf.predict_all(X.float(), y.float()) - ours).abs().max() <= 1e-5
    m64, hf64 = m.double(), m.double().to_hf()
    assert (hf64.predict_all(X, y) - m64.predict_all(X, y)).abs().max() <= 1e-12 * ours.abs().max()


def test_garg_import_from_synthetic_released_state_dict():
    """A state dict in Garg et al.'s layout (made here from transformers' GPT2Model) imports exactly."""
    pytest.importorskip("transformers")
    from construct.export import HFRegressor

    torch.manual_seed(3)
    cfg = GargConfig(d=4, n_points=7, n_layers=2, n_heads=2, d_model=16, activation="gelu_new")
    ref = HFRegressor(cfg).double()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.3)
    sd = ref.state_dict()  # includes HF's own buffers, as a released checkpoint does
    m = from_garg_state_dict(sd, {"n_dims": 4, "n_positions": 7, "n_embd": 16, "n_layer": 2, "n_head": 2}).double()
    X, y, _ = prompts(B=3, n=7, d=4, seed=2)
    want = ref.predict_all(X, y)
    assert (m.predict_all(X, y) - want).abs().max() <= 1e-12 * want.abs().max()


# ------------------------------------------------------------------------------ TransformerLens
@pytest.fixture(scope="module")
def tl():
    return pytest.importorskip("transformer_lens")


@pytest.mark.parametrize("kw", [dict(), dict(form="merged", looped=True), dict(lam=0.5), dict(alpha=0.25, normalize=True)])
def test_compiled_newton_in_transformer_lens(tl, kw):
    from construct.export import tl_predict, tl_residual, to_transformer_lens

    kw = {"alpha": 0.02, **kw}
    m = build_newton_transformer(3, 3, **kw)
    X, y, xq = prompts()
    R = gpt2_scale(m, X, y, xq)
    g = to_gpt2(m, scale=R)
    bridge = to_transformer_lens(g)
    assert bridge.cfg.attention_dir == "bidirectional" and bridge.cfg.normalization_type == "LN"
    ours = g.predict(X, y, xq)
    sN = 1.0 if m.spec.normalize else math.sqrt(8 + 1 + m.spec.n_prefix)
    # same prediction: to 1e-9 of the compiled model's scale (its residual holds ±c ≈ 1e5,
    # so round-off in a different summation order is ~u·c)
    assert (tl_predict(bridge, g, X, y, xq) - ours).abs().max() * sN <= 1e-9 * R
    # run_with_cache reproduces our residual streams and attention patterns, layer by layer
    _, cache = bridge.run_with_cache(tl_residual(g, X, y, xq), start_at_layer=0)
    res = g.residual_streams(X, y, xq)  # (L+1, B, 2M, D+2)
    _, ourc = g.run_with_cache(X, y, xq)
    our_pats = [v for k_, v in ourc.items() if k_.endswith("hook_pattern")]
    for l in range(g.n_layers):
        assert (cache[f"blocks.{l}.hook_resid_post"] - res[l + 1]).abs().max() <= 1e-13 * res[l + 1].abs().max()
        assert (cache[f"blocks.{l}.attn.hook_pattern"] - our_pats[l]).abs().max() <= 1e-9


def test_trained_checkpoint_in_transformer_lens(tl):
    from construct.export import tl_predict, to_transformer_lens

    m = load_model(CPU).double()
    bridge = to_transformer_lens(m)
    assert bridge.cfg.attention_dir == "causal"
    X, y, xq = prompts(B=3, n=6, d=m.d)
    ours = m.predict(X, y, xq)
    assert (tl_predict(bridge, m, X, y, xq) - ours).abs().max() <= 1e-9 * ours.abs().max()


def test_exact_model_must_be_compiled_first(tl):
    from construct.export import to_transformer_lens

    with pytest.raises(TypeError, match="to_gpt2"):
        to_transformer_lens(build_newton_transformer(3, 2, 0.02))


def test_lens_figure_data(tl, tmp_path):
    """``python -m benchmarks.lens`` writes the README figure and its strict-JSON data."""
    import json

    from benchmarks.lens import main

    assert main(["--out", str(tmp_path), "--n", "4"]) == 0
    data = json.loads((tmp_path / "patterns.json").read_text())
    assert (tmp_path / "patterns.png").stat().st_size > 1000
    for name, m in data["models"].items():
        assert abs(m["prediction_tl"] - m["prediction_ours"]) <= 1e-6 * max(1.0, abs(m["prediction_ours"]))
        assert all(abs(sum(row) - 1) < 1e-9 for pat in m["patterns"] for row in pat)
