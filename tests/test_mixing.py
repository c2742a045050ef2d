"""Mixed classifiers, the mixing network, its run directories, training and adaptive attacks (tiny models)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from robcli.errors import ModelError, UsageError
from robcli.mixing.alphanet import DEFAULT_LAYERS, build_alpha_net, default_layers
from robcli.mixing.mixed import MixedClassifier, check_alpha_range, mix_log_probs
from robcli.models import build, make_card, save_run

DIGITS = (10, (1, 8, 8))
GAUSS = (3, (2,))


def tiny(arch="tiny_cnn", spec=DIGITS, seed=0):
    torch.manual_seed(seed)
    return build(arch, spec[0], spec[1]).eval()


def xs(spec=DIGITS, n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, *spec[1]), generator=g), torch.randint(0, spec[0], (n,), generator=g)


def adaptive(g=None, h=None, arch="tiny_cnn", spec=DIGITS, **kw):
    g = g or tiny(arch, spec, 0)
    h = h or tiny(arch, spec, 1)
    lay = default_layers(g, arch)
    torch.manual_seed(2)
    net = build_alpha_net(g, h, lay, lay, spec[1], width=8)
    return MixedClassifier(g, h, net, layers_g=lay, layers_h=lay, num_classes=spec[0], **kw)


# ---- the fixed-alpha mixture -----------------------------------------------------------------------------


def test_mixture_matches_formula_and_endpoints():
    g, h = tiny(seed=0), tiny(seed=1)
    x, _ = xs()
    pg, ph = torch.softmax(g(x), 1), torch.softmax(h(x), 1)
    for a in (0.0, 0.3, 1.0):
        m = MixedClassifier(g, h, a, input_shape=DIGITS[1])
        want = torch.log((1 - a) * pg + a * ph)
        assert torch.allclose(m(x), want, atol=1e-5)
    # logit scales (App. D.1) and logit mixing
    m = MixedClassifier(g, h, 0.4, scale_g=3.0, scale_h=0.5)
    want = torch.log(0.6 * torch.softmax(3 * g(x), 1) + 0.4 * torch.softmax(0.5 * h(x), 1))
    assert torch.allclose(m(x), want, atol=1e-5)
    m = MixedClassifier(g, h, 0.4, mix_space="logit")
    assert torch.allclose(m(x), 0.6 * g(x) + 0.4 * h(x), atol=1e-6)
    assert torch.allclose(m.alpha(x), torch.full((16,), 0.4))


def test_fixed_alpha_is_applied_in_double_precision():
    import math

    g, h = tiny(seed=0), tiny(seed=1)
    x, _ = xs(n=4)
    m = MixedClassifier(g, h, 0.7)
    assert m.alpha_value == 0.7 and float(m.alpha_fixed) != 0.7  # the float32 buffer is only a mirror
    g, h, x = g.double(), h.double(), x.double()
    zg, zh = g(x), h(x)
    want = torch.logaddexp(math.log1p(-0.7) + F.log_softmax(zg, 1), math.log(0.7) + F.log_softmax(zh, 1))
    m64 = MixedClassifier(g, h, 0.7)
    assert torch.allclose(m64(x), want, rtol=0, atol=1e-12)
    assert m64.alpha(x).dtype == torch.float64 and (m64.alpha(x) == 0.7).all()
    # a state dict whose buffer is the float32 image of 0.7 keeps the exact value; a different one is adopted
    m2 = MixedClassifier(g, h, 0.7)
    m2.load_state_dict(m.state_dict())
    assert m2.alpha_value == 0.7
    m2.load_state_dict({**m.state_dict(), "alpha_fixed": torch.tensor(0.25)})
    assert m2.alpha_value == 0.25


def test_mixture_gradients_are_finite_at_the_endpoints():
    g, h = tiny(seed=0), tiny(seed=1)
    x, y = xs()
    for a in (0.0, 1.0):
        xr = x.clone().requires_grad_(True)
        F.cross_entropy(MixedClassifier(g, h, a)(xr), y).backward()
        assert torch.isfinite(xr.grad).all() and xr.grad.abs().sum() > 0
    z = torch.randn(4, 3)
    out = mix_log_probs(z, z + 1.0, torch.tensor([0.0, 1.0, 0.5, 1e-30]))
    assert torch.isfinite(out).all()


def test_tensor_alpha_endpoints_are_exactly_one_member():
    """Per-example alpha 0 is exactly g's log-probabilities and 1 exactly h's (no 1e-7 / 1e-12 of the other
    member leaks in), as with a float alpha; gradients w.r.t. alpha and the inputs stay finite there."""
    zg = torch.tensor([[8.0, 0.0, -30.0], [8.0, 0.0, -30.0], [1.0, 2.0, 3.0]], dtype=torch.float64)
    zh = torch.tensor([[-30.0, 0.0, 8.0], [-30.0, 0.0, 8.0], [3.0, 2.0, 1.0]], dtype=torch.float64)
    for dtype in (torch.float64, torch.float32):
        g, h = zg.to(dtype), zh.to(dtype)
        a = torch.tensor([0.0, 1.0, 0.25], dtype=dtype, requires_grad=True)
        out = mix_log_probs(g, h, a)
        assert torch.equal(out[0], F.log_softmax(g[0], 0)) and torch.equal(out[1], F.log_softmax(h[1], 0))
        assert torch.equal(out[0], mix_log_probs(g[:1], h[:1], 0.0)[0])  # same as the float path
        assert torch.equal(out[1], mix_log_probs(g[1:2], h[1:2], 1.0)[0])
        want = torch.log(0.75 * torch.softmax(g[2], 0) + 0.25 * torch.softmax(h[2], 0))
        assert torch.allclose(out[2], want, atol=1e-6)
        out.sum().backward()
        assert torch.isfinite(a.grad).all()
    # scaled members: the endpoint is the scaled member exactly
    out = mix_log_probs(zg, zh, torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64), scale_g=3.0, scale_h=0.5)
    assert torch.equal(out[1], F.log_softmax(3.0 * zg[1], 0)) and torch.equal(out[2], F.log_softmax(0.5 * zh[2], 0))


@pytest.mark.parametrize("alpha", [-0.1, 1.01, float("nan"), "x"])
def test_alpha_outside_unit_interval_is_refused(alpha):
    with pytest.raises(UsageError, match=r"\[0, 1\]|not a number"):
        MixedClassifier(tiny(), tiny(seed=1), alpha)


def test_members_with_different_classes_or_shapes_are_refused():
    with pytest.raises(ModelError, match="class counts"):
        MixedClassifier(tiny(spec=DIGITS), tiny(spec=(7, (1, 8, 8))), 0.5, input_shape=(1, 8, 8))
    from robcli.mixing.io import build_mixture
    from robcli.models import LoadedModel

    lg = LoadedModel(tiny("tiny_mlp", GAUSS), make_card("tiny_mlp", 3, (2,)))
    lh = LoadedModel(tiny("tiny_mlp", (3, (4,))), make_card("tiny_mlp", 3, (4,)))
    with pytest.raises(ModelError, match="input shapes"):
        build_mixture(lg, lh, alpha=0.5)
    with pytest.raises(UsageError, match="mix space"):
        MixedClassifier(tiny(), tiny(seed=1), 0.5, mix_space="avg")


def test_base_models_stay_frozen_and_in_eval_mode():
    m = adaptive()
    m.train()
    assert not m.g.training and not m.h.training and m.alpha_net.training
    assert not any(p.requires_grad for p in m.g.parameters())
    assert all(p.requires_grad for p in m.alpha_net.parameters())


# ---- the mixing network ---------------------------------------------------------------------------------


@pytest.mark.parametrize("arch,spec", [("tiny_cnn", DIGITS), ("tiny_mlp", GAUSS), ("resnet18_tiny", (10, (3, 16, 16))),
                                       ("wrn_tiny", (10, (3, 16, 16))), ("small_cnn", DIGITS), ("mlp", GAUSS)])
def test_default_layers_build_an_alpha_network(arch, spec):
    m = adaptive(arch=arch, spec=spec)
    x, _ = xs(spec, n=4)
    m.eval()
    logits, a = m.forward_with_alpha(x)
    assert logits.shape == (4, spec[0]) and a.shape == (4,)
    assert ((a > 0) & (a < 1)).all()


@pytest.mark.parametrize("arch,spec", [("small_cnn", DIGITS), ("resnet18_tiny", (10, (3, 16, 16))),
                                       ("tiny_mlp", GAUSS)])
def test_fast_alpha_path_matches_the_plain_module_composition(arch, spec):
    """The per-part 1x1 products, folded eval-mode BatchNorms and avg-pool resizing change no result: values
    and input gradients equal the plain composition (concatenations, separate BatchNorms, adaptive pooling)."""
    m = adaptive(arch=arch, spec=spec)
    net = m.alpha_net
    with torch.no_grad():  # non-trivial running statistics and affine parameters, so folding is exercised
        for mod in net.modules():
            if isinstance(mod, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                if mod.affine:
                    mod.weight.uniform_(0.5, 1.5)
                    mod.bias.uniform_(-0.3, 0.3)
    x, _ = xs(spec, n=8)
    def logits_and_input_grad(logit_fn):
        xr = x.clone().requires_grad_(True)
        m.g(xr)
        m.h(xr)
        out = logit_fn(m._taps_g.pop() + m._taps_h.pop())
        (grad,) = torch.autograd.grad(out.square().sum(), xr)
        return out, grad

    for mode in (False, True):
        net.train(mode)
        fast, gf = logits_and_input_grad(net.logit)
        ref, gr = logits_and_input_grad(net.logit_reference)
        assert torch.allclose(fast, ref, rtol=1e-4, atol=1e-5), mode
        assert torch.allclose(gf, gr, rtol=1e-4, atol=1e-5), mode
        assert gf.is_contiguous()


def test_default_layer_names_exist_in_the_big_architectures():
    from robcli.models.registry import create_model

    for arch in ("resnet18", "resnet50", "wrn-28-10", "wrn-34-10"):
        with torch.device("meta"):
            net = create_model(arch, 10, (3, 32, 32))
        names = {"net." + n for n, _ in net.named_modules()}
        assert set(DEFAULT_LAYERS[arch]) <= names, arch


def test_unknown_layer_name_lists_the_available_ones():
    g, h = tiny(), tiny(seed=1)
    with pytest.raises(ModelError, match=r"no layer 'net.bogus'; available layers: net, net.features"):
        build_alpha_net(g, h, ("net.bogus", "net.features.6"), DEFAULT_LAYERS["tiny_cnn"], DIGITS[1])
    with pytest.raises(ModelError, match="available layers"):
        default_layers(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)), "custom")


def test_alpha_range_applies_at_evaluation_only_and_is_validated():
    with pytest.raises(UsageError, match="alpha_min 0.9 > alpha_max 0.5"):
        check_alpha_range(0.9, 0.5)
    with pytest.raises(UsageError, match="the range of alpha.x. is empty"):
        adaptive(alpha_range=(0.9, 0.5))
    m = adaptive(alpha_range=(0.96, 1.0)).eval()
    x, _ = xs()
    a = m.alpha(x)
    assert ((a >= 0.96) & (a <= 1.0)).all()
    with m.full_range():
        raw = m.alpha(x)
    assert torch.allclose(a, 0.96 + 0.04 * raw)


def test_features_are_tapped_in_the_same_forward_pass():
    from robcli.mixing.train import MixnetConfig, mixnet_step

    m = adaptive()
    calls = {"g": 0, "h": 0}
    m.g.register_forward_hook(lambda *_: calls.__setitem__("g", calls["g"] + 1))
    m.h.register_forward_hook(lambda *_: calls.__setitem__("h", calls["h"] + 1))
    x, y = xs()
    opt = torch.optim.AdamW(m.alpha_net.parameters(), 1e-3)
    before = [p.clone() for p in m.alpha_net.parameters()]
    mixnet_step(m, opt, x, y, x.flip(0), MixnetConfig(eps=0.1))
    assert calls == {"g": 1, "h": 1}
    assert any(not torch.equal(a, b) for a, b in zip(before, m.alpha_net.parameters()))
    m.eval()
    calls.update(g=0, h=0)
    m.forward_with_alpha(x)
    assert calls == {"g": 1, "h": 1}


def test_gray_box_detaches_alpha_only():
    m = adaptive().eval()
    x, y = xs(n=4)

    def grad():
        xr = x.clone().requires_grad_(True)
        F.cross_entropy(m(xr), y).backward()
        return xr.grad

    full = grad()
    with m.gray_box():
        gray = grad()
    # gray box = the gradient of the mixture with alpha(x) treated as a constant
    a = m.alpha(x)
    xr = x.clone().requires_grad_(True)
    F.cross_entropy(m.mix(m.g(xr), m.h(xr), a), y).backward()
    assert torch.allclose(gray, xr.grad, atol=1e-6)
    assert not torch.allclose(full, gray)


def test_composite_loss_known_values():
    from robcli.mixing.train import composite_loss

    logits = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1]]))
    alpha = torch.tensor([0.2, 0.7])
    y = torch.tensor([0, 0])
    pseudo = torch.tensor([0.0, 1.0])
    ce = torch.tensor([-np.log(0.5), -np.log(0.9)])
    bce = torch.tensor([-np.log(0.8), -np.log(0.7)])
    loss, terms = composite_loss(logits, alpha, y, pseudo, 0.0, 1.5, 0.2)
    assert float(loss) == pytest.approx(float((1.5 * bce + 0.2 * ce * bce).mean()), rel=1e-5)
    loss, _ = composite_loss(logits, alpha, y, pseudo, 1.0, 0.0, 0.0)
    assert float(loss) == pytest.approx(float(ce.mean()), rel=1e-5)


def test_config_defaults_are_the_papers_and_bad_values_refused():
    from robcli.mixing.train import MixnetConfig

    c = MixnetConfig()
    assert (c.c_ce, c.c_bce, c.c_prod, c.sigmoid_scale) == (0.0, 1.5, 0.2, 2.0)
    for bad, msg in ((dict(setting="Z"), "--train-attack 'Z': choose A"), (dict(eps=0), "needs --eps > 0"),
                     (dict(c_bce=-1), "--c-bce -1 must be a finite number >= 0"), (dict(ema=1.0), "must lie in"),
                     (dict(c_ce=0, c_bce=0, c_prod=0), "c_CE, c_BCE, c_prod are all 0")):
        with pytest.raises(UsageError, match=re.escape(msg)):
            MixnetConfig(**bad)


def test_training_learns_to_separate_clean_from_attacked():
    """Two different members + setting A (their gradients): alpha must rise on attacked inputs."""
    from robcli.data.registry import load_split
    from robcli.mixing.train import MixnetConfig, alpha_values, train_mixnet

    tr = load_split("digits", "train")
    x, y = tr.tensors()
    g, h = tiny(seed=0), tiny("tiny_mlp", DIGITS, seed=1)
    torch.manual_seed(0)
    for m in (g, h):  # one quick epoch so that the members carry information
        opt = torch.optim.Adam(m.parameters(), 1e-2)
        m.train()
        for s in range(0, len(x), 64):
            F.cross_entropy(m(x[s:s + 64]), y[s:s + 64]).backward()
            opt.step()
            opt.zero_grad()
        m.eval()
    lay_g, lay_h = DEFAULT_LAYERS["tiny_cnn"], DEFAULT_LAYERS["tiny_mlp"]
    torch.manual_seed(3)
    net = build_alpha_net(g, h, lay_g, lay_h, DIGITS[1], width=8)
    m = MixedClassifier(g, h, net, layers_g=lay_g, layers_h=lay_h, num_classes=10)
    cfg = MixnetConfig(eps=0.3, steps=2, setting="A", epochs=3, batch=128, width=8, lr=3e-3, ema=0.5)
    log = train_mixnet(m, x[:384], y[:384], cfg)
    assert len(log) == 3 and all(np.isfinite(r["loss"]) for r in log)
    assert log[-1]["bce"] < log[0]["bce"]
    from robcli.mixing.attacks import pgd_mix

    xa = pgd_mix(m, x[:256], y[:256], eps=0.3, steps=5)
    assert float(alpha_values(m, xa).mean()) > float(alpha_values(m, x[:256]).mean())


# ---- run directories -------------------------------------------------------------------------------------


def _save_member(path, arch, spec, seed):
    save_run(path, tiny(arch, spec, seed), make_card(arch, spec[0], spec[1]))
    return str(path)


def test_save_and_load_mixnet_roundtrip(tmp_path):
    from robcli.mixing.io import build_mixture, is_mixnet_dir, load_members, load_mixnet, save_mixture

    core = _save_member(tmp_path / "g", "tiny_cnn", DIGITS, 0)
    rob = _save_member(tmp_path / "h", "tiny_cnn", DIGITS, 1)
    lg, lh = load_members(core, rob)
    m = build_mixture(lg, lh, alpha=None, alpha_range=(0.2, 0.9), width=8, scale_g=3.0)
    x, _ = xs()
    m.eval()
    out, a = m.forward_with_alpha(x)
    run = tmp_path / "mix"
    save_mixture(run, m, core=core, robust=rob, lg=lg, lh=lh, training={"loss": "mixnet"})
    card = json.loads((run / "card.json").read_text())
    assert card["arch"] == "mixnet" and card["mixnet"]["layers_g"] == list(DEFAULT_LAYERS["tiny_cnn"])
    assert len(card["mixnet"]["members"]["core"]["files"]["model.safetensors"]) == 64
    assert is_mixnet_dir(run) and not is_mixnet_dir(tmp_path / "g")
    lm = load_mixnet(run)
    assert lm.kind == "mixnet" and lm.num_classes == 10 and len(lm.files) == 3
    out2, a2 = lm.model.forward_with_alpha(x)
    assert torch.allclose(out, out2, atol=1e-6) and torch.allclose(a, a2, atol=1e-6)
    assert torch.allclose(lm.model.alpha(x), a2)
    # fixed alpha exports too
    fixed = build_mixture(lg, lh, alpha=0.7, mix_space="logit")
    save_mixture(tmp_path / "fixed", fixed, core=core, robust=rob, lg=lg, lh=lh)
    lf = load_mixnet(tmp_path / "fixed")
    assert torch.allclose(lf.model(x), fixed(x), atol=1e-6) and lf.model.mix_space == "logit"


def test_changed_member_is_refused(tmp_path):
    from robcli.mixing.io import build_mixture, load_members, load_mixnet, save_mixture

    core = _save_member(tmp_path / "g", "tiny_cnn", DIGITS, 0)
    rob = _save_member(tmp_path / "h", "tiny_cnn", DIGITS, 1)
    lg, lh = load_members(core, rob)
    save_mixture(tmp_path / "mix", build_mixture(lg, lh, alpha=0.6), core=core, robust=rob, lg=lg, lh=lh)
    _save_member(tmp_path / "h", "tiny_cnn", DIGITS, 5)  # retrained robust model
    with pytest.raises(ModelError, match="sha256 mismatch"):
        load_mixnet(tmp_path / "mix")
    with pytest.raises(ModelError, match="not a mixture"):
        load_mixnet(tmp_path / "g")


def test_bad_members_write_nothing(tmp_path):
    from robcli.mixing.io import load_members, save_mixture
    from robcli.models import LoadedModel

    core = _save_member(tmp_path / "g", "tiny_cnn", DIGITS, 0)
    other = _save_member(tmp_path / "k", "tiny_cnn", (7, (1, 8, 8)), 1)
    with pytest.raises(ModelError, match="class counts"):
        load_members(core, other)
    fresh = LoadedModel(tiny(), make_card("tiny_cnn", 10, (1, 8, 8)))
    with pytest.raises(ModelError, match="no weight file"):
        save_mixture(tmp_path / "out", MixedClassifier(fresh.model, fresh.model, 0.5), core="tiny_cnn",
                     robust="tiny_cnn", lg=fresh, lh=fresh)
    assert not (tmp_path / "out").exists()


# ---- attacks ---------------------------------------------------------------------------------------------


def _trained_pair():
    from robcli.data.registry import load_split

    x, y = load_split("digits", "train").tensors()
    x, y = x[:640], y[:640]
    ms = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = build("tiny_cnn", 10, (1, 8, 8))
        opt = torch.optim.Adam(m.parameters(), 1e-2)
        m.train()
        for _ in range(1):
            for s in range(0, len(x), 64):
                F.cross_entropy(m(x[s:s + 64]), y[s:s + 64]).backward()
                opt.step()
                opt.zero_grad()
        ms.append(m.eval())
    xt, yt = load_split("digits", "test").tensors()
    return ms[0], ms[1], xt[:128], yt[:128]


@pytest.fixture(scope="module")
def pair():
    return _trained_pair()


def test_apgd_is_at_least_as_strong_as_pgd_and_close_to_pyautoattack(pair):
    from pyautoattack.autopgd_base import APGDAttack

    from robcli.mixing.attacks import apgd, pgd_mix, robust_mask

    g, _, x, y = pair
    eps = 0.1
    ours = robust_mask(g, apgd(g, x, y, eps=eps, n_iter=30, generator=torch.Generator().manual_seed(0)), y).float().mean()
    pgd = robust_mask(g, pgd_mix(g, x, y, eps=eps, steps=10), y).float().mean()
    ref = APGDAttack(g, n_restarts=1, n_iter=30, eps=eps, norm="Linf", seed=0, device="cpu")
    theirs = robust_mask(g, ref.perturb(x, y), y).float().mean()
    assert ours <= pgd + 0.02
    assert abs(float(ours) - float(theirs)) <= 0.06
    xa = apgd(g, x, y, eps=eps, n_iter=10)
    assert (xa - x).abs().max() <= eps + 1e-6 and xa.min() >= 0 and xa.max() <= 1


def test_attack_settings_on_a_mixnet(pair):
    from robcli.mixing.attacks import attack_mixture, robust_mask

    g, h, x, y = pair
    m = adaptive(g, h).eval()
    x, y = x[:16], y[:16]
    acc = {}
    for s in "ABD":
        xa = attack_mixture(m, x, y, s, eps=0.1, steps=10, n_iter=10, n_targets=2, n_queries=50,
                            generator=torch.Generator().manual_seed(0))
        assert (xa - x).abs().max() <= 0.1 + 1e-6
        acc[s] = float(robust_mask(m, xa, y).float().mean())
    nat = float(robust_mask(m, x, y).float().mean())
    assert all(v <= nat for v in acc.values())
    with pytest.raises(UsageError, match="setting"):
        attack_mixture(m, x, y, "E", eps=0.1)
    with pytest.raises(UsageError, match="fixed alpha"):
        attack_mixture(MixedClassifier(g, h, 0.5), x, y, "D", eps=0.1)


def test_setting_d_alpha_term_pushes_alpha_down(pair):
    from robcli.mixing.attacks import apgd, make_loss

    g, h, x, y = pair
    m = adaptive(g, h).eval()
    x, y = x[:32], y[:32]
    only_alpha = lambda z, a, yy, t: torch.log1p(-a)  # noqa: E731
    xa = apgd(m, x, y, eps=0.1, n_iter=10, loss=only_alpha, generator=torch.Generator().manual_seed(0))
    assert float(m.alpha(xa).mean()) < float(m.alpha(x).mean())
    base = make_loss("ce")(m(x), m.alpha(x), y, None)
    with_term = make_loss("ce", 2.0)(m(x), m.alpha(x), y, None)
    assert torch.allclose(with_term - base, 2.0 * torch.log1p(-m.alpha(x)), atol=1e-5)


def test_setting_d_alpha_term_reaches_both_apgd_parts_then_fab_square_on_survivors(pair, monkeypatch):
    import robcli.mixing.attacks as A

    g, h, x, y = pair
    m = adaptive(g, h).eval()
    x, y = x[:16], y[:16]
    kinds = []
    real_make_loss = A.make_loss

    def recording_make_loss(kind, alpha_weight=0.0):
        kinds.append((kind, alpha_weight))
        return real_make_loss(kind, alpha_weight)

    seen = {}

    def fake_fab_square(model, xs, ys, **kw):
        seen["n"], seen["kw"] = xs.shape[0], kw
        assert bool(A.robust_mask(model, xs, ys).all())  # only the survivors of the APGD parts reach it
        return xs.clone()

    monkeypatch.setattr(A, "make_loss", recording_make_loss)
    monkeypatch.setattr(A, "fab_square", fake_fab_square)
    xa = A.attack_mixture(m, x, y, "D", eps=0.1, n_iter=5, n_targets=2, alpha_weight=0.7, n_queries=11,
                          generator=torch.Generator().manual_seed(0))
    assert ("ce", 0.7) in kinds and ("dlr-targeted", 0.7) in kinds  # the term in BOTH adaptive APGD parts
    assert ("ce", 0.0) in kinds and ("dlr-targeted", 0.0) in kinds  # then the plain APGD cascade
    survivors = int(A.robust_mask(m, xa, y).sum())
    assert seen["n"] == survivors > 0 and seen["kw"]["n_queries"] == 11 and seen["kw"]["n_targets"] == 2


def test_setting_d_includes_fab_t_and_square(pair, monkeypatch):
    """With the APGD parts disabled, D still breaks what FAB-T + Square (pyautoattack) break: D is the
    worst case over AutoAttack's four parts, not only its APGD ones."""
    import robcli.mixing.attacks as A

    g, h, x, y = pair
    m = adaptive(g, h).eval()
    x = x[:24]
    with torch.no_grad():
        y = m(x).argmax(1)  # attack the model's own prediction (these tiny members are weak classifiers)
    monkeypatch.setattr(A, "apgd_suite", lambda model, xs, ys, **kw: xs.clone())
    xa = A.attack_mixture(m, x, y, "D", eps=0.15, n_iter=10, n_targets=2, n_queries=100,
                          generator=torch.Generator().manual_seed(0))
    assert (xa - x).abs().max() <= 0.15 + 1e-6 and xa.min() >= 0 and xa.max() <= 1
    assert int(A.robust_mask(m, xa, y).sum()) < int(A.robust_mask(m, x, y).sum())


class _Bump(torch.nn.Module):
    """1-D, 3 classes: class 0 except on (0.4, 0.49) where class 1 wins; class 2 (the target) is never reached."""

    def forward(self, x):
        s = x[:, 0]
        z1 = -5 + 10 * torch.sigmoid(500 * (s - 0.4)) * torch.sigmoid(500 * (0.49 - s))
        return torch.stack([torch.zeros_like(s), z1, s - 10], 1)


def test_targeted_apgd_counts_any_misclassification_as_success():
    from robcli.mixing.attacks import apgd, make_loss

    model = _Bump()
    # 2-D inputs (the bump reads the first coordinate): APGD's reference random start x + eps * u / |u|_inf puts
    # a 1-D start on the ball's two end points only; in 2-D the first coordinate is uniform half of the time
    x = torch.full((64, 2), 0.5)
    y = torch.zeros(64, dtype=torch.long)
    t = torch.full((64,), 2)
    assert (model(x).argmax(1) == 0).all()
    # the targeted loss grows with s, so its best point is the ball's upper end (class 0 again); the random
    # starts that land in the bump are misclassified (class 1) and must be kept, as AutoAttack's APGD-T does
    xa = apgd(model, x, y, eps=0.1, n_iter=5, loss=make_loss("ce-targeted"), target=t,
              generator=torch.Generator().manual_seed(0))
    pred = model(xa).argmax(1)
    assert (pred != 2).all() and (pred == 1).sum() >= 5


def test_autoattack_setting_c_runs_on_the_mixture(pair):
    from robcli.mixing.attacks import autoattack, robust_mask

    g, h, x, y = pair
    m = MixedClassifier(g, h, 0.7).eval()
    xa = autoattack(m, x[:16], y[:16], eps=0.1, attacks=["apgd-ce", "apgd-t"], n_restarts=1, n_iter=10,
                    generator=torch.Generator().manual_seed(0))
    assert robust_mask(m, xa, y[:16]).float().mean() <= robust_mask(m, x[:16], y[:16]).float().mean()


# ---- fixed-alpha sweep -----------------------------------------------------------------------------------


def test_alpha_sweep_endpoints_match_the_members(pair):
    from robcli.mixing.attacks import pgd_mix, robust_mask
    from robcli.mixing.sweep import alpha_sweep

    g, h, x, y = pair
    df = alpha_sweep(g, h, x, y, [0.0, 0.5, 1.0], eps=0.1, steps=5)
    assert list(df["alpha"]) == [0.0, 0.5, 1.0]
    assert {"nat_acc", "std_acc", "rob_acc", "mix_acc", "robust_acc"} <= set(df.columns)
    assert df.loc[0, "nat_acc"] == pytest.approx(float(robust_mask(g, x, y).float().mean()))
    assert df.loc[2, "nat_acc"] == pytest.approx(float(robust_mask(h, x, y).float().mean()))
    std_on_g = robust_mask(g, pgd_mix(g, x, y, eps=0.1, steps=5), y).float().mean()
    assert df.loc[0, "std_acc"] == pytest.approx(float(std_on_g))
    assert df.loc[0, "mix_acc"] == pytest.approx(float(std_on_g))  # alpha = 0: MIX attack = STD attack
    assert (df["robust_acc"] <= df[["std_acc", "rob_acc", "mix_acc"]].min(axis=1) + 1e-9).all()
    with pytest.raises(UsageError, match=r"alpha 2.0 must lie in \[0, 1\]"):
        alpha_sweep(g, h, x, y, [0.5, 2.0], eps=0.1)


def test_alpha_sweep_std_rob_attacks_target_the_scaled_members(pair, monkeypatch):
    import robcli.mixing.sweep as S

    g, h, x, y = pair
    x, y = x[:8], y[:8]
    seen = []
    real = S.pgd_mix

    def recording_pgd_mix(model, xs, ys, **kw):
        with torch.no_grad():
            seen.append(model(xs))
        return real(model, xs, ys, **kw)

    monkeypatch.setattr(S, "pgd_mix", recording_pgd_mix)
    S.alpha_sweep(g, h, x, y, [0.5], eps=0.1, steps=2, scale_g=3.0, scale_h=0.5, attacks=("std", "rob"))
    with torch.no_grad():
        assert torch.allclose(seen[0], 3.0 * g(x), atol=1e-6)  # STD attacks s_g * g
        assert torch.allclose(seen[1], 0.5 * h(x), atol=1e-6)  # ROB attacks s_h * h
    with pytest.raises(UsageError, match="scale_g"):
        S.alpha_sweep(g, h, x, y, [0.5], eps=0.1, scale_g=0.0)


