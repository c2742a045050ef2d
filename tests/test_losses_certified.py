"""L_noise (eq. 10) and L_CRA (eq. 9 with eq. 11), tested as functions with known answers, and end to end
(`robcli finetune --loss noise`, then `--loss cra`, then `robcli certify`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import norm

from robcli.losses import LossConfig, get_loss
from robcli.losses.cra import cra_loss, soft_radius
from robcli.losses.noise import noise_loss


def _model(seed=0, d=6, k=4):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(d, 16), torch.nn.ReLU(), torch.nn.Linear(16, k))


def test_registered_by_name():
    assert get_loss("noise") is noise_loss
    assert get_loss("cra") is cra_loss


def test_noise_loss_is_ce_on_the_generators_noise():
    m = _model()
    x = torch.rand(8, 6)
    y = torch.randint(0, 4, (8,))
    cfg = LossConfig(sigma=0.3)
    loss, terms = noise_loss(m, x, y, cfg, torch.Generator().manual_seed(5))
    eta = torch.randn(x.shape, generator=torch.Generator().manual_seed(5)) * 0.3
    want = F.cross_entropy(m(x + eta), y)
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    assert terms["noise"] == pytest.approx(want.item(), rel=1e-6)
    # the noise is really there, and is not clipped to [0, 1]
    assert abs(loss.item() - F.cross_entropy(m(x), y).item()) > 1e-4
    assert ((x + eta) < 0).any()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def _soft_radius_numpy(logits, sigma, gamma, cls=None):
    z = gamma * logits.astype(np.float64)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    pbar = p.mean(0)
    a = pbar.argmax(1) if cls is None else cls
    rest = pbar.copy()
    rest[np.arange(len(a)), a] = -1
    return sigma / 2 * (norm.ppf(pbar[np.arange(len(a)), a]) - norm.ppf(rest.max(1))), a


def test_soft_radius_matches_eq_11():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 10, 5, generator=g) * 2
    y = torch.randint(0, 5, (10,), generator=g)
    r, a = soft_radius(logits, 0.25, 4.0)
    want, want_a = _soft_radius_numpy(logits.numpy(), 0.25, 4.0)
    np.testing.assert_allclose(r.numpy(), want, rtol=1e-9, atol=1e-12)
    assert (a.numpy() == want_a).all() and (r >= 0).all()
    r_lab, _ = soft_radius(logits, 0.25, 4.0, y, radius_class="label")
    want_lab, _ = _soft_radius_numpy(logits.numpy(), 0.25, 4.0, y.numpy())
    np.testing.assert_allclose(r_lab.numpy(), want_lab, rtol=1e-9, atol=1e-12)
    wrong = a != y
    assert wrong.any() and (r_lab[wrong] < 0).all()


def test_soft_radius_two_class_single_copy_is_cohen_radius():
    # k = 1, two classes: pbar_A = p, runner-up = 1 - p, so CR = sigma/2 (Phi^-1(p) - Phi^-1(1-p)) = sigma Phi^-1(p)
    logits = torch.tensor([[[1.3, 0.2], [-0.4, 0.9]]])
    r, _ = soft_radius(logits, 0.5, 1.0)
    p = torch.softmax(logits[0].double(), -1).max(1).values.numpy()
    np.testing.assert_allclose(r.numpy(), 0.5 * norm.ppf(p), rtol=1e-9)


def test_soft_radius_keeps_gradient_when_confident():
    for margin in (5.0, 60.0, 150.0):
        z = torch.tensor([[[margin, 0.0, 0.0]]], requires_grad=True)
        r, _ = soft_radius(z, 0.5, 4.0)
        r.sum().backward()
        assert torch.isfinite(r).all() and z.grad.abs().sum() > 0 and torch.isfinite(z.grad).all(), margin


def test_cra_loss_value_matches_eq_9():
    m = _model(1)
    x = torch.rand(5, 6)
    y = torch.randint(0, 4, (5,))
    cfg = LossConfig(sigma=0.25, num_noise=8, temperature=4.0, beta=0.7)
    loss, terms = cra_loss(m, x, y, cfg, torch.Generator().manual_seed(3))
    eta = torch.randn((8, *x.shape), generator=torch.Generator().manual_seed(3)) * 0.25
    with torch.no_grad():
        z = m((x + eta).flatten(0, 1)).view(8, 5, 4)
        ce = F.cross_entropy(z.flatten(0, 1), y.repeat(8))
        w = (1 - torch.softmax(z, -1)[:, torch.arange(5), y]).mean(0).numpy()
    cr, _ = _soft_radius_numpy(z.numpy(), 0.25, 4.0)
    want = 0.7 * ce.item() + float((w * cr).mean())
    assert loss.item() == pytest.approx(want, rel=1e-5)
    assert terms["radius"] == pytest.approx(float(cr.mean()), rel=1e-5)
    assert terms["soft_inacc"] == pytest.approx(float(w.mean()), rel=1e-5)
    assert terms["noise"] == pytest.approx(ce.item(), rel=1e-5)


def test_cra_detached_weight_only_moves_the_radius():
    m = _model(2)
    x = torch.rand(4, 6)
    y = torch.randint(0, 4, (4,))
    cfg = LossConfig(sigma=0.25, num_noise=4, beta=0.0, detach_weight=True)
    loss, terms = cra_loss(m, x, y, cfg, torch.Generator().manual_seed(0))
    loss.backward()
    g_det = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    loss2, _ = cra_loss(m, x, y, LossConfig(sigma=0.25, num_noise=4, beta=0.0, detach_weight=False),
                        torch.Generator().manual_seed(0))
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-6)
    loss2.backward()
    assert any((a - p.grad).abs().max() > 1e-8 for a, p in zip(g_det, m.parameters()))


def test_cra_steps_shrink_radius_of_a_robust_wrong_prediction():
    # a model confidently wrong on x: minimizing the CRA term (beta = 0) must reduce its soft radius
    torch.manual_seed(0)
    m = torch.nn.Linear(3, 3)
    with torch.no_grad():
        m.weight.zero_()
        m.bias.copy_(torch.tensor([0.0, 2.0, 0.0]))
    x = torch.full((4, 3), 0.5)
    y = torch.zeros(4, dtype=torch.long)  # true class 0, model predicts 1
    cfg = LossConfig(sigma=0.25, num_noise=16, temperature=4.0, beta=0.0)
    opt = torch.optim.SGD(m.parameters(), lr=0.2)
    radii = []
    for step in range(15):
        opt.zero_grad()
        loss, terms = cra_loss(m, x, y, cfg, torch.Generator().manual_seed(step))
        loss.backward()
        opt.step()
        radii.append(terms["radius"])
    assert radii[0] > 0.3 and radii[-1] < 0.5 * radii[0]


def test_cra_same_generator_same_loss():
    m = _model(3)
    x = torch.rand(3, 6)
    y = torch.randint(0, 4, (3,))
    a, _ = cra_loss(m, x, y, LossConfig(num_noise=4), torch.Generator().manual_seed(9))
    b, _ = cra_loss(m, x, y, LossConfig(num_noise=4), torch.Generator().manual_seed(9))
    c, _ = cra_loss(m, x, y, LossConfig(num_noise=4), torch.Generator().manual_seed(10))
    assert a.item() == b.item() and a.item() != c.item()


def test_finetune_noise_then_cra_then_certify(cli, tmp_path):
    from robcli.tables.io import read_table

    noise = tmp_path / "noise"
    r = cli("finetune", "--loss", "noise", "--dataset", "digits", "--model", "tiny_cnn", "--epochs", "1",
            "--sigma", "0.12", "--out", noise, "--quiet", "--seed", "0")
    assert r.exit_code == 0, r.output
    assert (noise / "model.safetensors").exists()
    cra = tmp_path / "cra"
    r = cli("finetune", "--loss", "cra", "--dataset", "digits", "--init", noise, "--epochs", "1", "--sigma", "0.12",
            "--num-noise", "4", "--temperature", "4", "--out", cra, "--quiet", "--seed", "0")
    assert r.exit_code == 0, r.output
    log = read_table(cra / "train_log.parquet", "train_log").df
    assert len(log) == 1 and log["loss"].notna().all()
    out = tmp_path / "cert.parquet"
    r = cli("certify", "--model", cra, "--dataset", "digits", "--n-ex", "4", "--sigma", "0.12", "--N0", "20",
            "--N", "200", "--alpha", "0.01", "--out", out)
    assert r.exit_code == 0, r.output
    assert "sigma=0.12" in r.output and "abstain=" in r.output
    t = read_table(out, "certify")
    assert len(t.df) == 4 and t.meta["models"][0]["sha256"]
