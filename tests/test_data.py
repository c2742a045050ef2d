"""Data registry: embedded sets, on-disk sets (missing --data-dir), imagefolder, validation split, selection,
index lists read against another split or data set."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robcli.data import get_info, list_datasets, load_split, val_rows
from robcli.data.registry import VAL_FRACTION
from robcli.errors import DataError


@pytest.fixture(scope="module")
def gauss():
    return {s: load_split("gaussians", s) for s in ("train", "val", "train_full", "test")}


@pytest.fixture(scope="module")
def digits():
    return {s: load_split("digits", s) for s in ("train", "val", "train_full", "test")}


def test_registry_lists_required_sets():
    assert {"gaussians", "digits", "cifar10", "cifar100", "mnist", "svhn", "imagefolder"} <= set(list_datasets())


def test_unknown_dataset_and_split():
    with pytest.raises(DataError, match="unknown data set 'nope'.*gaussians"):
        load_split("nope", "test")
    with pytest.raises(DataError, match="unknown split 'dev'"):
        load_split("gaussians", "dev")
    with pytest.raises(DataError, match="unknown data set"):
        get_info("nope")


# ---- gaussians ------------------------------------------------------------------------------------------


def test_gaussians_shape_range_and_small_class(gauss):
    d = gauss["train_full"]
    assert d.info.num_classes == 3 and d.info.input_shape == (2,)
    assert tuple(d.x.shape) == (1000, 2) and d.x.dtype == torch.float32
    assert float(d.x.min()) >= 0.0 and float(d.x.max()) <= 1.0
    counts = torch.bincount(d.y, minlength=3)
    assert (counts > 0).all()
    small = int(counts.argmin())
    assert d.info.class_names[small] == "small"
    assert counts[small] < 0.2 * counts.max()  # a genuinely small class (Fig. 1)


def test_gaussians_deterministic_and_train_differs_from_test(gauss):
    again = load_split("gaussians", "test")
    assert torch.equal(again.x, gauss["test"].x) and torch.equal(again.y, gauss["test"].y)
    assert not torch.equal(gauss["train_full"].x[:10], gauss["test"].x[:10])


# ---- digits ---------------------------------------------------------------------------------------------


def test_digits_8x8_in_unit_interval(digits):
    tr, te = digits["train_full"], digits["test"]
    assert tr.info.input_shape == (1, 8, 8) and tr.info.num_classes == 10
    assert len(tr) + len(te) == 1797
    assert abs(len(te) - 0.3 * 1797) <= 1
    x, _ = te.tensors()
    assert x.dtype == torch.float32 and float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert set(te.y.tolist()) == set(range(10))


def test_digits_train_and_test_are_disjoint_images(digits):
    a = {bytes(r.numpy().tobytes()) for r in digits["train_full"].x}
    b = [bytes(r.numpy().tobytes()) for r in digits["test"].x]
    # a few digits images are exact duplicates in sklearn's set; the split itself is by row, so overlap is tiny
    assert sum(r in a for r in b) < 10


# ---- validation split -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gaussians", "digits"])
def test_val_carved_from_train(name, request):
    d = request.getfixturevalue("gauss" if name == "gaussians" else "digits")
    tr, va, full, te = d["train"], d["val"], d["train_full"], d["test"]
    tri, vai = set(tr.idx.tolist()), set(va.idx.tolist())
    assert not tri & vai
    assert tri | vai == set(full.idx.tolist())
    assert len(va) == pytest.approx(VAL_FRACTION * len(full), abs=full.info.num_classes)
    # rows are the same examples as in train_full (never taken from test)
    assert torch.equal(full.x[va.idx], va.x) and torch.equal(full.y[va.idx], va.y)
    assert torch.equal(full.x[tr.idx], tr.x)
    # every class (including the small one) appears in val
    assert set(va.y.tolist()) == set(range(full.info.num_classes))
    assert te.source["split_rule"] == "test"


def test_val_split_fixed_across_calls_and_seeds(gauss):
    again = load_split("gaussians", "val")
    assert torch.equal(again.idx, gauss["val"].idx)
    torch.manual_seed(12345)  # the global RNG must not matter
    assert torch.equal(load_split("gaussians", "val").idx, gauss["val"].idx)


def test_val_rows_stratified_known_answer():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 2 + [3])
    rows = val_rows(y)
    got = torch.bincount(y[rows], minlength=4).tolist()
    assert got == [5, 3, 1, 0]  # round(10%), at least one of a 2-example class, none of a singleton
    assert torch.equal(rows, torch.sort(rows).values)


# ---- selection and fingerprints -------------------------------------------------------------------------


def test_select_skip_n_ex_subset(gauss):
    te = gauss["test"]
    s = te.select(skip=10, n_ex=5)
    assert s.idx.tolist() == list(range(10, 15))
    assert torch.equal(s.x, te.x[10:15])
    sub = te.select(subset=[7, 3, 3, 900])
    assert sub.idx.tolist() == [3, 7, 900]
    assert sub.select(skip=1, n_ex=1).idx.tolist() == [7]
    v = gauss["val"]
    first = int(v.idx[0])
    assert v.select(subset=[first]).idx.tolist() == [first]


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"skip": 5000}, "empty"),
        ({"n_ex": 0}, "--n-ex must be positive"),
        ({"skip": -1}, "--skip must be >= 0"),
        ({"subset": []}, "empty"),
        ({"subset": [5000]}, "not in the gaussians/test split"),
        ({"subset": ["a"]}, "integer"),
        ({"subset": [1, 2], "skip": 2}, "empty"),
    ],
)
def test_select_errors(gauss, kw, match):
    with pytest.raises(DataError, match=match):
        gauss["test"].select(**kw)


def test_select_subset_must_belong_to_split(gauss):
    tr = gauss["train"]
    val_index = int(gauss["val"].idx[0])
    with pytest.raises(DataError, match="not in the gaussians/train split"):
        tr.select(subset=[val_index])


def test_fingerprint_stable_and_selection_sensitive(gauss):
    te = gauss["test"]
    f1 = te.select(n_ex=20).fingerprint()
    f2 = load_split("gaussians", "test").select(n_ex=20).fingerprint()
    assert f1 == f2
    assert f1["n"] == 20 and f1["dataset"] == "gaussians" and f1["split"] == "test"
    assert len(f1["sha256"]) == 64
    assert te.select(n_ex=20, skip=1).fingerprint()["sha256"] != f1["sha256"]
    assert te.select(n_ex=21).fingerprint()["sha256"] != f1["sha256"]
    assert gauss["train"].select(n_ex=20).fingerprint()["sha256"] != f1["sha256"]


def test_get_returns_copies(gauss):
    te = gauss["test"].select(n_ex=4)
    x, y = te.tensors()
    x.add_(10.0)
    y.add_(1)
    x2, y2 = te.tensors()
    assert float(x2.max()) <= 1.0 and torch.equal(y2, te.y)
    xr, yr = te.get(torch.tensor([1, 2]))
    assert torch.equal(xr, te.x[1:3]) and torch.equal(yr, te.y[1:3])


# ---- on-disk data sets: never downloaded, clear one-line errors -----------------------------------------


@pytest.mark.parametrize("name, where", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"),
                                         ("mnist", "MNIST/raw"), ("svhn", "test_32x32.mat")])
def test_missing_data_dir_is_one_line_error(name, where, tmp_path):
    with pytest.raises(DataError, match="--data-dir") as e:
        load_split(name, "test")
    assert where in str(e.value) and "\n" not in str(e.value)
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="does not exist") as e:
        load_split(name, "test", data_dir=missing)
    assert where in str(e.value) and "\n" not in str(e.value)
    assert not missing.exists()
    with pytest.raises(DataError, match="not found") as e:  # folder exists but holds no files
        load_split(name, "test", data_dir=tmp_path)
    assert where in str(e.value) and "--download" in str(e.value) and "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []  # nothing downloaded or created


def test_corrupt_cifar_folder(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"garbage")
    with pytest.raises(DataError, match="incomplete or corrupt"):
        load_split("cifar10", "test", data_dir=tmp_path)


def test_download_needs_data_dir():
    with pytest.raises(DataError, match="--download needs --data-dir"):
        load_split("cifar10", "test", download=True)


def test_torchvision_info_without_files():
    info = get_info("cifar100")
    assert info.num_classes == 100 and info.input_shape == (3, 32, 32) and len(info.mean) == 3


# ---- imagefolder ----------------------------------------------------------------------------------------


def _png(path: Path, color: tuple[int, int, int], size=(10, 7), mode="RGB") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", size, color)
    (im.convert("L") if mode == "L" else im).save(path)


COLORS = {"cat": (255, 0, 0), "dog": (0, 0, 255), "emu": (0, 255, 0)}


def test_imagefolder_train_test_layout(tmp_path):
    for split, n in (("train", 4), ("test", 2)):
        for c, col in COLORS.items():
            for i in range(n):
                _png(tmp_path / split / c / f"{i}.png", col)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    _png(tmp_path / "train" / "dog" / "gray.png", (0, 0, 255), mode="L")
    tr = load_split("imagefolder", "train_full", data_dir=tmp_path, image_size=6)
    te = load_split("imagefolder", "test", data_dir=tmp_path, image_size=6)
    assert tr.info.class_names == ("cat", "dog", "emu") and tr.info.input_shape == (3, 6, 6)
    assert len(tr) == 13 and len(te) == 6
    assert tr.x.dtype == torch.uint8
    x, y = te.tensors()
    assert tuple(x.shape) == (6, 3, 6, 6) and float(x.max()) == 1.0 and float(x.min()) == 0.0
    # known answer: each class is its colour channel, full intensity
    for xi, yi in zip(x, y.tolist()):
        want = torch.tensor(COLORS[te.info.class_names[yi]], dtype=torch.float32) / 255
        assert torch.allclose(xi.mean(dim=(1, 2)), want)
    va = load_split("imagefolder", "val", data_dir=tmp_path, image_size=6)
    assert set(va.idx.tolist()).isdisjoint(load_split("imagefolder", "train", data_dir=tmp_path, image_size=6).idx.tolist())


def test_imagefolder_flat_layout_split_per_class(tmp_path):
    for c, col in COLORS.items():
        for i in range(5):
            _png(tmp_path / c / f"img{i}.png", col)
    tr = load_split("imagefolder", "train_full", data_dir=tmp_path, image_size=4)
    te = load_split("imagefolder", "test", data_dir=tmp_path, image_size=4)
    assert len(tr) + len(te) == 15
    assert torch.bincount(te.y, minlength=3).tolist() == [1, 1, 1]
    assert torch.bincount(tr.y, minlength=3).tolist() == [4, 4, 4]
    assert te.info.input_shape == (3, 4, 4)
    again = load_split("imagefolder", "test", data_dir=tmp_path, image_size=4)
    assert again.fingerprint()["sha256"] == te.fingerprint()["sha256"]
    assert load_split("imagefolder", "test", data_dir=tmp_path).info.input_shape == (3, 64, 64)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataError, match="--data-dir"):
        load_split("imagefolder", "test")
    (tmp_path / "only").mkdir()
    with pytest.raises(DataError, match="at least two class folders"):
        load_split("imagefolder", "test", data_dir=tmp_path)
    (tmp_path / "other").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        load_split("imagefolder", "test", data_dir=tmp_path)
    _png(tmp_path / "only" / "a.png", (1, 2, 3))
    _png(tmp_path / "only" / "b.png", (1, 2, 3))
    (tmp_path / "other" / "bad.png").write_bytes(b"not a png")
    (tmp_path / "other" / "bad2.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image"):
        load_split("imagefolder", "train_full", data_dir=tmp_path)
    with pytest.raises(DataError, match="--image-size"):
        load_split("imagefolder", "test", data_dir=tmp_path, image_size=0)


def test_imagefolder_test_class_missing_from_train(tmp_path):
    for split in ("train", "test"):
        for c in ("a", "b"):
            _png(tmp_path / split / c / "0.png", (9, 9, 9))
    _png(tmp_path / "test" / "zebra" / "0.png", (9, 9, 9))
    with pytest.raises(DataError, match="missing from train: zebra"):
        load_split("imagefolder", "test", data_dir=tmp_path)


def test_index_lists_and_partitions_refuse_another_split_or_data_set(cli, tmp_path):
    """Indices are positions within a split: a test-split list read against train named other examples."""
    table = tmp_path / "a.parquet"
    assert cli("attack", "--model", "tiny_mlp", "--dataset", "gaussians", "--n-ex", "12", "--steps", "2",
               "--eps", "0.2", "--out", table, "-q").exit_code == 0
    part, lst = tmp_path / "p.parquet", tmp_path / "ids.txt"
    res = cli("partition", table, "--out", part, "--export-split", "robust_accurate", "--export", lst, "-q")
    assert res.exit_code == 0, res.output
    assert lst.read_text().startswith("# robcli index list: dataset=gaussians split=test\n")
    out = tmp_path / "o.parquet"
    attack = ["attack", "--model", "tiny_mlp", "--eps", "0.05", "--steps", "2", "--out", out, "-q"]
    res = cli(*attack, "--dataset", "gaussians", "--split", "train", "--subset", lst)
    assert res.exit_code == 2 and "test-split" in res.output and not out.exists()
    res = cli(*attack, "--dataset", "digits", "--subset", part, "--subset-split", "robust_accurate")
    assert res.exit_code == 2 and "'gaussians'" in res.output and not out.exists()
    res = cli(*attack, "--dataset", "gaussians", "--subset", lst)  # the same split: fine
    assert res.exit_code == 0, res.output
    run = tmp_path / "run"
    res = cli("finetune", "--loss", "std", "--dataset", "gaussians", "--epochs", "1", "--train-subset", lst, "--out", run)
    assert res.exit_code == 2 and "test-split" in res.output and not run.exists()
    res = cli("finetune", "--loss", "std", "--dataset", "gaussians", "--epochs", "1", "--train-subset", part, "--out", run)
    assert res.exit_code == 2 and "not a text file" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
