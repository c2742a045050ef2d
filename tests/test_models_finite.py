"""Models whose logits are not finite (issue 9, item 5): every command that runs a model refuses NaN/inf
logits on clean inputs with one line naming the model and writes nothing; attacks, certify's noisy votes and
validation that meet them inside a ball / under noise say so instead of counting a NaN as a prediction."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

from robcli.tables.run import parts_path


class NaNWhere(nn.Module):
    """A linear 2-D classifier (3 classes) that returns NaN logits where ``x[:, 0] > thr``.

    ``const``: constant logits (class 0) elsewhere, so no gradient attack flips anything and every example
    stays for the grid search, which covers the whole ball. ``up``: logits (1, 10 x0 - 20, 0): class 0 on
    the data, and the way to flip it is to increase x0, so every attack walks toward the NaN region.
    """

    def __init__(self, thr: float, const: bool = False, value: float = float("nan"), up: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(2, 3)
        self.thr = thr
        self.const = const
        self.up = up
        self.value = value
        self.input_shape = [2]  # read by robcli's loader, so mixtures of these need no --input-shape
        self.num_classes = 3

    def forward(self, x):
        z = self.lin(x)
        if self.const:
            z = z * 0.0 + torch.tensor([1.0, 0.0, 0.0])
        if self.up:
            z = torch.stack([torch.ones_like(x[:, 0]), 10.0 * x[:, 0] - 20.0, torch.zeros_like(x[:, 0])], 1)
        bad = (x[:, 0] > self.thr).unsqueeze(1)
        return torch.where(bad, torch.full_like(z, self.value), z)


def _script(module, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(module).save(str(path))
    return path


N_EX = 20


@pytest.fixture(scope="module")
def thr():
    """Just above the largest first coordinate of the first N_EX Gaussians test points."""
    from robcli.data.registry import load_split

    x, _ = load_split("gaussians", "test").select(n_ex=N_EX).tensors()
    return float(x[:, 0].max()) + 0.02


@pytest.fixture(scope="module")
def models(tmp_path_factory, thr):
    d = tmp_path_factory.mktemp("nan_models")
    return {
        "nan": _script(NaNWhere(-1.0), d / "nan.pt"),  # NaN everywhere
        "inf": _script(NaNWhere(-1.0, value=float("inf")), d / "inf.pt"),  # +inf everywhere
        "one": _script(NaNWhere(thr - 0.021), d / "one.pt"),  # NaN on the clean point with the largest x0 only
        "far": _script(NaNWhere(thr), d / "far.pt"),  # finite on every clean point, NaN 0.02 beyond
        "far_const": _script(NaNWhere(thr, const=True), d / "far_const.pt"),
        "far_up": _script(NaNWhere(thr, up=True), d / "far_up.pt"),
        "const": _script(NaNWhere(5.0, const=True), d / "const.pt"),
        "ok": _script(NaNWhere(5.0), d / "ok.pt"),  # never NaN: the control
    }


def _attack(cli, model, out, *extra):
    return cli("attack", "--model", model, "--dataset", "gaussians", "--n-ex", N_EX, "--batch", "8",
               "--steps", "10", "--out", out, *extra)


# ------------------------------------------------------------------------------------------------ attack


@pytest.mark.parametrize("which", ["nan", "inf", "one"])
@pytest.mark.parametrize("attack", ["pgd", "apgd-ce"])
def test_attack_refuses_nonfinite_clean_logits(cli, one_line_error, models, tmp_path, which, attack):
    out = tmp_path / "a.parquet"
    r = _attack(cli, models[which], out, "--attack", attack, "--eps", "0.01")
    line = one_line_error(r, f"model {models[which]}", "non-finite logits", "clean inputs")
    assert ("20 of 20" in line) == (which != "one")
    assert not out.exists() and not parts_path(out).exists()


@pytest.mark.parametrize("attack", ["pgd", "apgd-ce", "grid"])
def test_attack_that_meets_nan_inside_the_ball_stops_and_writes_nothing(cli, one_line_error, models, tmp_path, attack):
    model = models["far_const" if attack == "grid" else "far"]
    grid = ["--grid-points", "21"] if attack == "grid" else []
    # the small radius never reaches the NaN region: a normal table
    small = tmp_path / "small.parquet"
    r = _attack(cli, model, small, "--attack", attack, *grid, "--eps", "0.01", "--quiet")
    assert r.exit_code == 0, r.output
    # the large one does, in the second (batch, eps) block: the first block's checkpoint is removed too
    out = tmp_path / "a.parquet"
    r = _attack(cli, model, out, "--attack", attack, *grid, "--eps", "0.01", "--eps", "0.2", "--quiet")
    one_line_error(r, f"model {model}", "non-finite logits", "eps 0.2", "neither robust nor a flip")
    assert not out.exists() and not parts_path(out).exists()


def test_attack_control_model_runs(cli, models, tmp_path):
    out = tmp_path / "a.parquet"
    r = _attack(cli, models["ok"], out, "--attack", "pgd", "--eps", "0.01", "--eps", "0.2", "--quiet")
    assert r.exit_code == 0, r.output
    assert out.exists()


def test_naming_keeps_a_partial_table_that_existed_before(tmp_path):
    from robcli.cli.common import naming_nonfinite
    from robcli.errors import NonFiniteOutput

    old, new = tmp_path / "old.partial.parquet", tmp_path / "new.partial.parquet"
    old.write_bytes(b"rows of an earlier run")
    for part in (old, new):
        with pytest.raises(NonFiniteOutput, match=r"^model M\.pt returned"):
            with naming_nonfinite("M.pt", part):
                part.write_bytes(b"this run's rows")
                raise NonFiniteOutput("returned non-finite logits")
    assert old.exists() and not new.exists()


# ----------------------------------------------------------------------------------------------- certify


def _certify(cli, model, out, *extra):
    return cli("certify", "--model", model, "--dataset", "gaussians", "--n-ex", N_EX, "--N0", "20", "--N", "100",
               "--alpha", "0.01", "--batch", "100", "--out", out, *extra)


@pytest.mark.parametrize("which", ["nan", "inf", "one"])
def test_certify_refuses_nonfinite_clean_logits(cli, one_line_error, models, tmp_path, which):
    out = tmp_path / "c.parquet"
    r = _certify(cli, models[which], out, "--sigma", "0.001")
    one_line_error(r, f"model {models[which]}", "non-finite logits", "clean inputs")
    assert not out.exists() and not parts_path(out).exists()


def test_certify_that_meets_nan_under_noise_stops_and_writes_nothing(cli, one_line_error, models, tmp_path):
    # sigma 0.001: the NaN region is 20 sigma away from every example, nothing trips
    ok = tmp_path / "ok.parquet"
    r = _certify(cli, models["far"], ok, "--sigma", "0.001", "--quiet")
    assert r.exit_code == 0, r.output
    # sigma 0.05: the examples near the region get NaN votes; one example per group (batch 100 = N), so
    # the examples before it were certified: no checkpoint of them may be left behind
    out = tmp_path / "c.parquet"
    r = _certify(cli, models["far"], out, "--sigma", "0.05")
    one_line_error(r, f"model {models['far']}", "Gaussian-noisy copies", "sigma 0.05")
    assert not out.exists() and not parts_path(out).exists()


def test_vote_counter_checks_every_forward_pass_once_per_call():
    from robcli.certify.smoothing import VoteCounter
    from robcli.errors import NonFiniteOutput

    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            z = torch.stack([x[:, 0], -x[:, 0]], 1)
            # NaN only in the LAST forward pass of the round (the 5th of 5 batches of 40)
            return z if self.calls < 5 else z * float("nan")

    m = Counting()
    counter = VoteCounter(m, 2, "cpu", 40, image=False)
    with pytest.raises(NonFiniteOutput, match="idx 7"):
        counter.counts(torch.zeros(1, 2), [1], 200, 0.1, ids=[7])
    assert m.calls == 5


# ----------------------------------------------------------------------------------------------- mixtures


@pytest.fixture(scope="module")
def nan_weights_runs(tmp_path_factory):
    """digits tiny_cnn run dirs: a finite one, and one whose last layer's weights are NaN (a diverged checkpoint)."""
    from robcli.models import build, make_card, save_run

    d = tmp_path_factory.mktemp("nan_weights")
    out = {}
    for name in ("ok", "nan"):
        torch.manual_seed(0)
        m = build("tiny_cnn", 10, (1, 8, 8))
        if name == "nan":
            last = [p for p in m.parameters() if p.dim() == 2][-1]
            with torch.no_grad():
                last.fill_(float("nan"))
        save_run(d / name, m, make_card("tiny_cnn", 10, (1, 8, 8), dataset="digits"))
        out[name] = d / name
    return out


def test_mix_sweep_names_the_member(cli, one_line_error, models, tmp_path):
    out = tmp_path / "s.parquet"
    common = ["-d", "gaussians", "--n-ex", N_EX, "--steps", "5", "--mix-grid", "0", "--mix-grid", "1", "-o", out, "-q"]
    r = cli("compose", "--mix-sweep", "--core", models["ok"], "--robust", models["nan"], "--eps", "0.01", *common)
    one_line_error(r, f"robust model {models['nan']} (member h)", "clean inputs")
    r = cli("compose", "--mix-sweep", "--core", models["far"], "--robust", models["ok"], "--eps", "0.2", *common)
    one_line_error(r, f"core model {models['far']} (member g)", "inside the eps-balls")
    assert not out.exists()
    r = cli("compose", "--mix-sweep", "--core", models["far"], "--robust", models["ok"], "--eps", "0.01", *common)
    assert r.exit_code == 0, r.output


def test_mix_attack_names_the_mixture_and_member(cli, one_line_error, models, tmp_path):
    for which, eps, needle in (("nan", "0.01", "clean inputs"), ("far_up", "0.2", "inside the eps-balls")):
        run = tmp_path / f"mix-{which}"
        r = cli("compose", "--mix", "0.7", "--core", models["const"], "--robust", models[which],
                "--export", run, "-q")
        assert r.exit_code == 0, r.output
        out = tmp_path / f"a-{which}.parquet"
        r = cli("attack", "--model", run, "--dataset", "gaussians", "--attack", "mix-b", "--steps", "5",
                "--eps", eps, "--n-ex", N_EX, "--out", out)
        one_line_error(r, f"the robust model h of the mixture {run}", needle)
        assert not out.exists()


@pytest.mark.parametrize("method", ["mix-smoothed-h", "mix-lipschitz", "mix-local-estimate"])
def test_mix_certify_refuses_a_nan_robust_model(cli, one_line_error, models, tmp_path, method):
    extra = {"mix-smoothed-h": ["--sigma", "0.05", "--N0", "20", "--N", "100", "--alpha", "0.01"],
             "mix-lipschitz": ["--lipschitz", "1"], "mix-local-estimate": ["--eps", "0.2", "--norm", "Linf"]}[method]
    out = tmp_path / "c.parquet"
    r = cli("certify", "--model", models["nan"], "--mix", "0.8", "-d", "gaussians", "--n-ex", N_EX,
            "--method", method, *extra, "-o", out)
    one_line_error(r, f"robust model {models['nan']} (member h)", "clean inputs")
    if method != "mix-lipschitz":  # NaN met under noise / inside the ball (the Lipschitz method only reads h(x))
        r = cli("certify", "--model", models["far"], "--mix", "0.8", "-d", "gaussians", "--n-ex", N_EX,
                "--method", method, *extra, "-o", out)
        one_line_error(r, f"robust model {models['far']} (member h)",
                        "Gaussian-noisy" if method == "mix-smoothed-h" else "eps-balls")
    assert not out.exists()


def test_mix_train_refuses_a_nan_member(cli, one_line_error, nan_weights_runs, tmp_path):
    out = tmp_path / "adaptive"
    r = cli("finetune", "--loss", "mixnet", "--core", nan_weights_runs["nan"], "--robust", nan_weights_runs["ok"], "-d", "digits",
            "--eps", "0.1", "--out", out, "--epochs", "1", "--n-ex", "64", "--attack-steps", "1", "-q")
    one_line_error(r, f"core model {nan_weights_runs['nan']} (member g)", "clean training inputs")
    assert not out.exists()


def test_mix_attack_control_runs_where_the_ball_stays_finite(cli, models, tmp_path):
    run = tmp_path / "mix"
    assert cli("compose", "--mix", "0.7", "--core", models["const"], "--robust", models["far_up"],
               "--export", run, "-q").exit_code == 0
    out = tmp_path / "a.parquet"
    args = ["--model", run, "--dataset", "gaussians", "--eps", "0.01", "--n-ex", N_EX, "-o", out]
    r = cli("attack", *args, "--attack", "mix-b", "--steps", "5")
    assert r.exit_code == 0, r.output


# ---------------------------------------------------------------------------------------------- finetune


def test_finetune_refuses_an_init_model_with_nan_logits(cli, one_line_error, nan_weights_runs, tmp_path):
    out = tmp_path / "ft"
    r = cli("finetune", "--loss", "std", "--dataset", "digits", "--init", nan_weights_runs["nan"], "--epochs", "1",
            "--out", out, "--quiet")
    one_line_error(r, f"model {nan_weights_runs['nan']}", "clean training inputs")
    assert not out.exists()


def test_validation_refuses_nan_logits(tmp_path):
    from robcli.data.registry import load_split
    from robcli.errors import NonFiniteOutput
    from robcli.train.config import FinetuneConfig
    from robcli.train.loop import evaluate_val
    from robcli.utils.seeding import make_generator

    val = load_split("gaussians", "val")
    x, _ = val.tensors()
    cfg = FinetuneConfig(loss="trades", dataset="gaussians", out=str(tmp_path / "o"), eps=0.05)
    gen = make_generator(0)
    ok = evaluate_val(NaNWhere(5.0), val, cfg, "cpu", gen)  # the control: finite everywhere
    assert 0 <= ok["val_nat_acc"] <= 1
    with pytest.raises(NonFiniteOutput, match=r"the model being trained returned non-finite logits \(NaN or inf\) in validation"):
        evaluate_val(NaNWhere(-1.0), val, cfg, "cpu", gen)  # NaN on the clean val points
    with pytest.raises(NonFiniteOutput, match="validation"):  # finite on val, NaN within eps of the largest x0
        evaluate_val(NaNWhere(float(x[:, 0].max()) + 0.03, const=True), val, cfg, "cpu", gen)
