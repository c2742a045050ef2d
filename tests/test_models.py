"""Model registry, normalization wrapper, and every kind of --model that load_model accepts or refuses."""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from robcli.data import get_info
from robcli.data.registry import DataInfo
from robcli.errors import ModelError, UsageError
from robcli.models import (
    CARD,
    WEIGHTS,
    LoadedModel,
    Normalized,
    build,
    check_compatible,
    list_models,
    load_model,
    make_card,
    parse_shape,
    read_card,
    save_run,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:FutureWarning")

THIRD_PARTY = Path("/work/venv/lib/python3.11/site-packages/pyautoattack/examples/model_test.pt")
SMALL_IMG = DataInfo("img", 3, (3, 8, 8), ("a", "b", "c"), (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
VEC = DataInfo("vec", 3, (2,), ("a", "b", "c"), None, None, is_image=False)
LARGE = {"resnet18", "resnet50", "wrn-28-10", "wrn-34-10"}


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 400
    return msg


# ---- registry ---------------------------------------------------------------------------------------------


def test_registry_has_required_architectures():
    names = set(list_models())
    assert {"mlp", "small_cnn", "resnet18", "resnet50", "wrn-28-10", "wrn-34-10"} <= names
    assert set(list_models(tiny=True)) >= {"tiny_mlp", "tiny_cnn", "resnet18_tiny", "wrn_tiny"}


@pytest.mark.parametrize("arch", list_models())
def test_every_architecture_builds_and_maps_pixels_to_logits(arch):
    torch.manual_seed(0)
    if arch in ("mlp", "tiny_mlp"):
        shape, n = (2,), 5
    elif arch in LARGE:
        shape, n = (3, 32, 32), 1  # CIFAR-size nets: one image only (CPU)
    else:
        shape, n = (3, 16, 16), 4
    model = build(arch, 7, shape, mean=[0.5] * (shape[0] if len(shape) == 3 else 2),
                  std=[0.25] * (shape[0] if len(shape) == 3 else 2)).eval()
    with torch.no_grad():
        out = model(torch.rand(n, *shape))
    assert tuple(out.shape) == (n, 7) and torch.isfinite(out).all()


def test_image_arch_refuses_vector_data():
    with pytest.raises(ModelError, match="needs image inputs"):
        build("small_cnn", 3, (2,))
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        build("nope", 3, (2,))


# ---- normalization wrapper (known answers) -----------------------------------------------------------------


def test_normalized_known_answer_images_and_vectors():
    m = Normalized(nn.Identity(), mean=[0.5, 0.25, 0.0], std=[0.5, 0.25, 2.0])
    x = torch.ones(2, 3, 2, 2)
    y = m(x)
    assert torch.allclose(y[:, 0], torch.ones(2, 2, 2)) and torch.allclose(y[:, 1], 3 * torch.ones(2, 2, 2))
    assert torch.allclose(y[:, 2], 0.5 * torch.ones(2, 2, 2))
    v = Normalized(nn.Identity(), mean=[0.5, 0.0], std=[0.5, 4.0])
    assert torch.allclose(v(torch.tensor([[1.0, 2.0]])), torch.tensor([[1.0, 0.5]]))
    plain = Normalized(nn.Identity())
    assert torch.equal(plain(x), x) and "mean" not in plain.state_dict()


@pytest.mark.parametrize("mean, std, msg", [
    ([0.5], None, "needs both mean and std"), ([0.5], [0.0], "std must be positive and mean/std finite"),
    ([0.5, 0.5], [1.0], "mean has 2 values but std has 1"), ([float("nan")], [1.0], "mean/std finite"),
])
def test_normalized_rejects_bad_stats(mean, std, msg):
    with pytest.raises(ModelError, match=msg):
        Normalized(nn.Identity(), mean, std)


def test_build_checks_normalization_length():
    with pytest.raises(ModelError, match="2 values"):
        build("tiny_cnn", 3, (3, 8, 8), mean=[0.5, 0.5], std=[1.0, 1.0])


# ---- registered names ----------------------------------------------------------------------------------------


def test_registered_name_is_seeded_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a = load_model("tiny_cnn", dataset_info=SMALL_IMG, seed=3)
    assert torch.equal(state, torch.random.get_rng_state())
    b = load_model("tiny_cnn", dataset_info=SMALL_IMG, seed=3)
    c = load_model("tiny_cnn", dataset_info=SMALL_IMG, seed=4)
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(a.model(x), b.model(x)) and not torch.equal(a.model(x), c.model(x))
    assert a.kind == "registered" and not a.model.training
    assert a.card["normalization"]["mean"] == pytest.approx([0.5, 0.4, 0.3])
    none = load_model("tiny_cnn", dataset_info=SMALL_IMG, normalization="none")
    assert not none.model.has_norm


def test_registered_name_errors(tmp_path, monkeypatch):
    with pytest.raises(ModelError, match="needs --dataset") as e:
        load_model("mlp")
    _one_line(e)
    lm = load_model("mlp", num_classes=4, input_shape="2")
    assert lm.num_classes == 4 and lm.input_shape == (2,)
    with pytest.raises(ModelError, match="unknown model 'resnet19'.*resnet18") as e:
        load_model("resnet19", dataset_info=SMALL_IMG)
    _one_line(e)
    with pytest.raises(ModelError, match="does not exist"):
        load_model(str(tmp_path / "missing.pt"), dataset_info=SMALL_IMG)
    with pytest.raises(ModelError, match="unknown --arch"):
        load_model("mlp", arch="bogus", dataset_info=VEC)
    with pytest.raises(UsageError, match="normalization"):
        load_model("mlp", dataset_info=VEC, normalization="sometimes")
    with pytest.raises(UsageError, match="--num-classes"):
        load_model("mlp", dataset_info=VEC, num_classes=1)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlp").mkdir()
    with pytest.raises(ModelError, match="both a registered architecture and a path"):
        load_model("mlp", dataset_info=VEC)


def test_parse_shape():
    assert parse_shape("3,32,32") == (3, 32, 32) == parse_shape("3x32x32") == parse_shape([3, 32, 32])
    assert parse_shape("2") == (2,) and parse_shape(None) is None
    for bad, msg in (("a,b", "must look like C,H,W"), ("0,3", "must list positive sizes"),
                     ("", "must list positive sizes"), ("-1", "must list positive sizes")):
        with pytest.raises(UsageError, match=f"--input-shape '{bad}' {msg}"):
            parse_shape(bad)


# ---- run directories and safetensors ---------------------------------------------------------------------


@pytest.fixture
def run_dir(tmp_path):
    torch.manual_seed(1)
    model = build("tiny_cnn", 3, (3, 8, 8), mean=SMALL_IMG.mean, std=SMALL_IMG.std)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.eval()
    card = make_card("tiny_cnn", 3, (3, 8, 8), dataset="img", mean=SMALL_IMG.mean, std=SMALL_IMG.std,
                     class_names=SMALL_IMG.class_names, training={"loss": "std"})
    d = save_run(tmp_path / "run", model, card)
    save_run(d, model, card, name="last.safetensors")
    return d, model


def test_run_dir_round_trip(run_dir):
    d, model = run_dir
    lm = load_model(d, dataset_info=SMALL_IMG)
    assert isinstance(lm, LoadedModel) and lm.kind == "run" and lm.files == [str(d / WEIGHTS)]
    assert lm.card == read_card(d) and lm.card["training"] == {"loss": "std"}
    x = torch.rand(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(lm.model(x), model(x), atol=1e-6)
    assert not any(p.name.endswith(".tmp") for p in d.iterdir())


def test_cardless_safetensors_beside_card_and_alone(run_dir, tmp_path):
    d, model = run_dir
    x = torch.rand(3, 3, 8, 8)
    with torch.no_grad():
        want = model(x)
    last = load_model(d / "last.safetensors", dataset_info=SMALL_IMG)
    assert last.kind == "checkpoint"
    # moved away from its card: the card embedded in the safetensors metadata is used
    alone = tmp_path / "elsewhere" / "weights.safetensors"
    alone.parent.mkdir()
    alone.write_bytes((d / WEIGHTS).read_bytes())
    lone = load_model(alone, dataset_info=SMALL_IMG)
    # a plain safetensors file without any card: needs --arch, and then has no normalization
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in model.net.state_dict().items()}, str(plain))
    with pytest.raises(ModelError, match="--arch"):
        load_model(plain, dataset_info=SMALL_IMG)
    bare = load_model(plain, arch="tiny_cnn", dataset_info=SMALL_IMG, normalization="none")
    with torch.no_grad():
        assert torch.allclose(last.model(x), want, atol=1e-6)
        assert torch.allclose(lone.model(x), want, atol=1e-6)
        assert torch.allclose(bare.model.net(x), model.net(x), atol=1e-6)


def test_run_dir_errors(run_dir, tmp_path):
    d, _ = run_dir
    with pytest.raises(ModelError, match="model outputs 3 classes but vec|expects inputs of shape"):
        load_model(d, dataset_info=VEC)
    other = DataInfo("img10", 10, (3, 8, 8), tuple("abcdefghij"), None, None)
    with pytest.raises(ModelError, match="outputs 3 classes but img10 has 10") as e:
        load_model(d, dataset_info=other)
    _one_line(e)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ModelError, match="not a robcli run directory"):
        load_model(tmp_path / "empty_dir")
    (d / CARD).write_text("{not json")
    with pytest.raises(ModelError, match="corrupt"):
        load_model(d)
    (d / CARD).write_text('{"arch": "tiny_cnn"}')
    with pytest.raises(ModelError, match="lacks 'num_classes'"):
        load_model(d)
    (d / CARD).write_text("[1, 2]")
    with pytest.raises(ModelError, match="not a robcli model card"):
        load_model(d)


# ---- bare torch checkpoints -------------------------------------------------------------------------------


def _ref_net(arch="tiny_cnn", k=3, shape=(3, 8, 8), seed=5):
    torch.manual_seed(seed)
    net = build(arch, k, shape).net
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net.eval()


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "module_prefix", "nested_prefix", "no_nbt"])
def test_bare_state_dict_variants(tmp_path, wrap):
    net = _ref_net()
    sd = net.state_dict()
    if wrap == "state_dict":
        obj = {"state_dict": sd, "epoch": 7, "best_acc": 0.5}
    elif wrap == "model":
        obj = {"model": sd, "optimizer": {"lr": 0.1}}
    elif wrap == "module_prefix":
        obj = {"module." + k: v for k, v in sd.items()}
    elif wrap == "nested_prefix":
        obj = {"state_dict": {"module.model." + k: v for k, v in sd.items()}}
    elif wrap == "no_nbt":
        obj = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    else:
        obj = sd
    f = tmp_path / "ckpt.pt"
    torch.save(obj, f)
    lm = load_model(f, arch="tiny_cnn", dataset_info=SMALL_IMG)
    assert lm.kind == "checkpoint" and lm.files == [str(f)] and not lm.model.has_norm
    x = torch.rand(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(lm.model(x), net(x), atol=1e-6)
    with pytest.raises(ModelError, match="bare checkpoint: name its architecture with --arch.*resnet18") as e:
        load_model(f, dataset_info=SMALL_IMG)
    _one_line(e)


def test_robustbench_style_normalization_buffers(tmp_path):
    net = _ref_net()
    mu, sigma = torch.tensor([0.49, 0.48, 0.45]).view(1, 3, 1, 1), torch.tensor([0.25, 0.24, 0.26]).view(1, 3, 1, 1)
    sd = {"model." + k: v for k, v in net.state_dict().items()}
    sd.update({"mu": mu, "sigma": sigma})
    f = tmp_path / "rb.pt"
    torch.save({"state_dict": sd}, f)
    lm = load_model(f, arch="tiny_cnn", dataset_info=SMALL_IMG)
    x = torch.rand(3, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(lm.model(x), net((x - mu) / sigma), atol=1e-5)
    assert lm.card["normalization"]["mean"] == pytest.approx([0.49, 0.48, 0.45])
    # madrylab `robustness` layout: module.normalizer.*, module.model.*, module.attacker.model.*
    sd2 = {"module.model." + k: v for k, v in net.state_dict().items()}
    sd2.update({"module.attacker.model." + k: v for k, v in net.state_dict().items()})
    sd2.update({"module.normalizer.new_mean": mu, "module.normalizer.new_std": sigma})
    f2 = tmp_path / "robustness.pt"
    torch.save({"model": sd2, "epoch": 3}, f2)
    lm2 = load_model(f2, arch="tiny_cnn", dataset_info=SMALL_IMG)
    with torch.no_grad():
        assert torch.allclose(lm2.model(x), net((x - mu) / sigma), atol=1e-5)


def test_trades_wrn_with_unused_sub_block(tmp_path):
    net = _ref_net("wrn_tiny", 3, (3, 8, 8))
    sd = dict(net.state_dict())
    sd.update({"sub_block1." + k[len("block1."):]: v for k, v in net.state_dict().items() if k.startswith("block1.")})
    f = tmp_path / "trades.pt"
    torch.save(sd, f)
    lm = load_model(f, arch="wrn_tiny", dataset_info=SMALL_IMG)
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(lm.model(x), net(x), atol=1e-6)


def test_wrong_architecture_and_class_count(tmp_path):
    f = tmp_path / "resnet.pt"
    torch.save(_ref_net("resnet18_tiny").state_dict(), f)
    with pytest.raises(ModelError, match="does not fit architecture 'tiny_cnn'.*missing.*unexpected") as e:
        load_model(f, arch="tiny_cnn", dataset_info=SMALL_IMG)
    _one_line(e)
    wide = tmp_path / "wide.pt"
    torch.save(build("resnet18_tiny", 3, (3, 8, 8)).net.state_dict(), wide)
    with pytest.raises(ModelError, match="has shape"):
        load_model(wide, arch="resnet18_tiny", dataset_info=DataInfo("g", 3, (1, 8, 8), tuple("abc")))
    ten = DataInfo("ten", 10, (3, 8, 8), tuple("abcdefghij"))
    with pytest.raises(ModelError, match="has 3 output classes but the model is built for 10.*--num-classes 3") as e:
        load_model(f, arch="resnet18_tiny", dataset_info=ten)
    _one_line(e)


@pytest.mark.parametrize("content, match", [
    (b"", "empty"),
    (b"\x00\x01garbage" * 50, "not a readable torch checkpoint"),
    (b"PK\x03\x04truncated zip", "not a readable torch checkpoint"),
])
def test_corrupt_checkpoint_files(tmp_path, content, match):
    f = tmp_path / "bad.pt"
    f.write_bytes(content)
    with pytest.raises(ModelError, match=match) as e:
        load_model(f, arch="tiny_cnn", dataset_info=SMALL_IMG)
    _one_line(e)


def test_corrupt_safetensors(run_dir, tmp_path):
    d, _ = run_dir
    data = (d / WEIGHTS).read_bytes()
    (d / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="not a readable safetensors file") as e:
        load_model(d)
    _one_line(e)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"hello world, not tensors")
    with pytest.raises(ModelError, match="safetensors"):
        load_model(junk, arch="tiny_cnn", dataset_info=SMALL_IMG)


def test_non_state_dict_payloads(tmp_path):
    f = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], f)
    with pytest.raises(ModelError, match="does not hold a state dict"):
        load_model(f, arch="tiny_cnn", dataset_info=SMALL_IMG)
    torch.save({"epoch": 3, "acc": 0.5}, f)
    with pytest.raises(ModelError, match="no weight tensors.*epoch"):
        load_model(f, arch="tiny_cnn", dataset_info=SMALL_IMG)


# ---- pickles are refused, never unpickled ---------------------------------------------------------------


class _Trap:
    """Unpickling this object would create a marker file."""

    marker: Path

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("how", ["torch_save", "raw_pickle", "full_module"])
def test_pickled_objects_are_refused_without_running_code(tmp_path, how):
    marker = tmp_path / "code_ran"
    f = tmp_path / "evil.pt"
    if how == "torch_save":
        torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Trap(marker)}, f)
    elif how == "raw_pickle":
        f.write_bytes(pickle.dumps(_Trap(marker)))
    else:
        torch.save(build("tiny_cnn", 3, (3, 8, 8)), f)  # a whole nn.Module
    # sanity: the file really would run code when unpickled naively
    if how != "full_module":
        with open(f, "rb") as fh:
            assert b"touch" in fh.read()
    for kwargs in ({}, {"arch": "tiny_cnn"}):
        with pytest.raises(ModelError, match="refuses to unpickle") as e:
            load_model(f, dataset_info=SMALL_IMG, **kwargs)
        _one_line(e)
    assert not marker.exists()


# ---- TorchScript and torch.export ---------------------------------------------------------------------------


class _Vec(nn.Module):
    def __init__(self, k: int = 3, with_attrs: bool = True):
        super().__init__()
        self.lin = nn.Linear(2, k)
        if with_attrs:
            self.num_classes = k
            self.input_shape = (2,)

    def forward(self, x):
        return self.lin(x * 2.0)


def test_torchscript_scripted_reads_attributes(tmp_path):
    torch.manual_seed(0)
    m = _Vec(3).eval()
    f = tmp_path / "scripted.pt"
    torch.jit.script(m).save(str(f))
    lm = load_model(f)
    assert lm.kind == "torchscript" and lm.num_classes == 3 and lm.input_shape == (2,)
    x = torch.rand(6, 2, requires_grad=True)
    out = lm.model(x)
    assert torch.allclose(out, m(x), atol=1e-6)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ModelError, match="outputs 3 classes, not the 5 declared"):
        load_model(f, num_classes=5)
    with pytest.raises(ModelError, match="model outputs 3 classes but ten has 10"):
        load_model(f, dataset_info=DataInfo("ten", 10, (2,), tuple("abcdefghij"), is_image=False))


def test_torchscript_traced_infers_from_dataset_or_flags(tmp_path):
    m = _Vec(3, with_attrs=False).eval()
    f = tmp_path / "traced.pt"
    torch.jit.trace(m, torch.rand(1, 2)).save(str(f))
    with pytest.raises(ModelError, match="--input-shape") as e:
        load_model(f)
    _one_line(e)
    lm = load_model(f, dataset_info=VEC)  # shape from the data set, classes by a dry forward
    assert lm.num_classes == 3 and lm.input_shape == (2,)
    assert load_model(f, input_shape="2").num_classes == 3
    with pytest.raises(ModelError, match="forward pass on inputs of shape \\(5,\\) failed") as e:
        load_model(f, input_shape="5")
    _one_line(e)


def test_torchscript_image_model(tmp_path):
    net = _ref_net()
    f = tmp_path / "cnn.ts"
    torch.jit.trace(Normalized(net, SMALL_IMG.mean, SMALL_IMG.std).eval(), torch.rand(2, 3, 8, 8)).save(str(f))
    lm = load_model(f, dataset_info=SMALL_IMG)
    x = torch.rand(3, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(lm.model(x), Normalized(net, SMALL_IMG.mean, SMALL_IMG.std)(x), atol=1e-5)


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_export_program(tmp_path, dynamic):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4)).eval()
    kw = {"dynamic_shapes": ({0: torch.export.Dim("batch", min=2)},)} if dynamic else {}
    ep = torch.export.export(m, (torch.rand(3, 2),), **kw)
    f = tmp_path / "prog.pt2"
    torch.export.save(ep, str(f))
    lm = load_model(f)  # classes and shape from the program's specs
    assert lm.kind == "export" and lm.num_classes == 4 and lm.input_shape == (2,)
    lm.model.eval()
    lm.model.train()
    lm.model.eval()
    x = torch.rand(7, 2, requires_grad=True)  # not a multiple of the static batch of 3
    out = lm.model(x)
    with torch.no_grad():
        assert torch.allclose(out, m(x), atol=1e-5)
    out[:, 0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ModelError, match="outputs 4 classes but vec has 3"):
        load_model(f, dataset_info=VEC)


def test_corrupt_pt2(tmp_path):
    f = tmp_path / "bad.pt2"
    f.write_bytes(b"PK\x03\x04nonsense")
    with pytest.raises(ModelError, match="torch.export program") as e:
        load_model(f)
    _one_line(e)


# ---- a real third-party checkpoint ------------------------------------------------------------------------


def test_third_party_pyautoattack_resnet18():
    if not THIRD_PARTY.exists():
        pytest.skip(f"third-party checkpoint {THIRD_PARTY} is not installed (pyautoattack wheel without examples)")
    info = get_info("cifar10")
    lm = load_model(THIRD_PARTY, arch="resnet18", dataset_info=info)
    assert lm.kind == "checkpoint" and lm.num_classes == 10 and not lm.model.has_norm
    assert sum(p.numel() for p in lm.model.parameters()) == pytest.approx(11.17e6, rel=0.01)
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = lm.model(x)
    assert tuple(out.shape) == (2, 10) and torch.isfinite(out).all()
    # known answer: the package's own ResNet-18 definition gives the same logits
    spec = importlib.util.spec_from_file_location("_aa_resnet", THIRD_PARTY.parent / "resnet.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ref = mod.ResNet18()
    ref.load_state_dict(torch.load(THIRD_PARTY, map_location="cpu", weights_only=True))
    with torch.no_grad():
        assert torch.allclose(out, ref.eval()(x), atol=1e-4)
    with pytest.raises(ModelError, match="does not fit architecture 'resnet50'"):
        load_model(THIRD_PARTY, arch="resnet50", dataset_info=info)


def test_check_compatible_and_device():
    lm = load_model("tiny_mlp", dataset_info=VEC, device="cpu")
    check_compatible(lm, VEC)
    check_compatible(lm, None)
    with pytest.raises(ModelError, match="expects inputs of shape \\(2,\\)"):
        check_compatible(lm, SMALL_IMG)
    assert next(lm.model.parameters()).device.type == "cpu"
