"""Built-in data sets: embedded (gaussians, digits) and read from --data-dir (torchvision, imagefolder)."""

from __future__ import annotations

from pathlib import Path

from robcli.data.registry import DataInfo, TrainDefaults, register_dataset
from robcli.errors import DataError

# ---------------------------------------------------------------------------------------------------------
# gaussians: the ERA paper's synthetic 3-class 2-D data (Fig. 1, App. A.2): N = 1000 training points.
# Two large classes and one small class beside one of them, where a smoothing (robust) decision boundary tends
# to swallow it (calibrated: standard training ~99% accurate; TRADES at Linf eps=0.05 robustly misclassifies part
# of the small class).
# Coordinates are clipped into [0, 1] because attacks clip to the [0, 1] box.
# ---------------------------------------------------------------------------------------------------------
GAUSSIANS = {
    "means": ((0.30, 0.50), (0.70, 0.50), (0.80, 0.74)),
    "stds": (0.08, 0.08, 0.035),
    "weights": (0.46, 0.46, 0.08),
    "n_train": 1000,
    "n_test": 1000,
    "seed": {"train": 0, "test": 1},
}


def _gaussians():
    def info(**_):
        return DataInfo("gaussians", 3, (2,), ("left", "right", "small"), None, None, is_image=False)

    def load(split, **_):
        import numpy as np
        import torch

        cfg = GAUSSIANS
        rng = np.random.default_rng(cfg["seed"][split])
        n = cfg["n_train"] if split == "train" else cfg["n_test"]
        y = rng.choice(3, size=n, p=np.asarray(cfg["weights"]))
        means = np.asarray(cfg["means"])[y]
        stds = np.asarray(cfg["stds"])[y][:, None]
        x = np.clip(means + stds * rng.standard_normal((n, 2)), 0.0, 1.0).astype(np.float32)
        return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64)), {"generator": cfg}

    return info, load


# Recommended finetune settings (used for every flag the user does not give; recorded in the run's card).
# From scratch: App. A.2 for the synthetic data ("20 epochs, a fixed learning rate 1e-1, and batch size 10"),
# plain SGD without weight decay (A.2 names neither). robcli's generic defaults (batch 200, momentum 0.9) give
# 5 optimizer steps per epoch on these 900 points: `finetune --loss std --epochs 20 --seed 7` then never
# predicts the small class. Measured (std, mlp, seeds 0-7): every class kept, small-class test recall
# 0.967-1.0. Fine-tuning (--init): recipes/era_gaussians_study.toml's schedule (20 epochs, lr 0.01, x0.1 at
# 75%, batch 10, plain SGD); the generic 50 epochs at lr 1e-3, batch 200 leave a standard model unchanged.
GAUSSIANS_TRAINING = TrainDefaults(
    scratch={"epochs": 20, "lr": 0.1, "batch": 10, "momentum": 0.0, "weight_decay": 0.0, "lr_milestones": ()},
    finetune={"epochs": 20, "lr": 0.01, "batch": 10, "momentum": 0.0, "weight_decay": 0.0, "lr_milestones": (0.75,)},
    scratch_why="ERA paper App. A.2 (20 epochs, fixed lr 0.1, batch 10), plain SGD, no weight decay",
    finetune_why="20 epochs, lr 0.01 x0.1 at 75%, batch 10, plain SGD (recipes/era_gaussians_study.toml)",
)

register_dataset("gaussians", "synthetic 3-class 2-D Gaussians (ERA paper Fig. 1), embedded",
                 train_defaults={"mlp": GAUSSIANS_TRAINING, "*": GAUSSIANS_TRAINING})(_gaussians)

# ---------------------------------------------------------------------------------------------------------
# digits: scikit-learn's bundled 8x8 handwritten digits (1797 images, pixel values 0..16 -> [0, 1]).
# Fixed seeded stratified train/test split: 30% test.
# ---------------------------------------------------------------------------------------------------------
DIGITS_TEST_FRACTION = 0.3
DIGITS_SEED = 0


def _digits():
    def info(**_):
        return DataInfo(
            "digits", 10, (1, 8, 8), tuple(str(i) for i in range(10)), (0.30,), (0.38,), is_image=True
        )

    def load(split, **_):
        import numpy as np
        import torch
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        d = load_digits()
        x = (d.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
        y = d.target.astype(np.int64)
        idx = np.arange(len(y))
        tr, te = train_test_split(idx, test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SEED, stratify=y)
        rows = np.sort(tr if split == "train" else te)
        src = {"source": "sklearn.datasets.load_digits", "test_fraction": DIGITS_TEST_FRACTION, "seed": DIGITS_SEED}
        return torch.from_numpy(x[rows]), torch.from_numpy(y[rows]), src

    return info, load


# Recommended finetune settings: the quickstart's (recipes/paper.toml). From scratch, batch 64 at lr 0.05
# for 15 epochs matches the generic batch 200 / lr 0.1 / 20 epochs (measured, std small_cnn, seeds 0-4: test
# accuracy 0.987-0.996 vs 0.985-0.996, every class kept in both) in fewer epochs; fine-tuning (--init), 6
# epochs at lr 0.01 replace the generic 50 epochs at lr 1e-3, which take ~8x longer on this CPU-sized set.
DIGITS_TRAINING = TrainDefaults(
    scratch={"epochs": 15, "lr": 0.05, "batch": 64, "momentum": 0.9, "weight_decay": 2e-4, "lr_milestones": (0.75,)},
    finetune={"epochs": 6, "lr": 0.01, "batch": 64, "momentum": 0.9, "weight_decay": 2e-4, "lr_milestones": (0.75,)},
    scratch_why="15 epochs, lr 0.05 x0.1 at 75%, batch 64, momentum 0.9, weight decay 2e-4 (the quickstart's)",
    finetune_why="6 epochs, lr 0.01 x0.1 at 75%, batch 64, momentum 0.9, weight decay 2e-4 (the quickstart's)",
)

register_dataset("digits", "scikit-learn's bundled 8x8 digits (1797 images, 10 classes), embedded",
                 train_defaults={"small_cnn": DIGITS_TRAINING, "*": DIGITS_TRAINING})(_digits)

# ---------------------------------------------------------------------------------------------------------
# torchvision data sets read from --data-dir
# ---------------------------------------------------------------------------------------------------------
_TV = {
    "cifar10": ("CIFAR10", 10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100": ("CIFAR100", 100, (3, 32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "mnist": ("MNIST", 10, (1, 28, 28), (0.1307,), (0.3081,)),
    "svhn": ("SVHN", 10, (3, 32, 32), (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}
# where torchvision expects the files under --data-dir (per split), and how to say it in one line
_TV_FILES = {
    "cifar10": (lambda split: "cifar-10-batches-py", "DIR/cifar-10-batches-py/ (the extracted cifar-10-python.tar.gz)"),
    "cifar100": (lambda split: "cifar-100-python", "DIR/cifar-100-python/ (the extracted cifar-100-python.tar.gz)"),
    "mnist": (lambda split: "MNIST/raw", "DIR/MNIST/raw/ (the four *-ubyte files)"),
    "svhn": (lambda split: f"{split}_32x32.mat", "DIR/train_32x32.mat and DIR/test_32x32.mat"),
}


def _require_dir(name: str, data_dir, expected: str) -> Path:
    if data_dir is None:
        raise DataError(f"data set {name!r} is read from disk: pass --data-dir DIR holding {expected}")
    p = Path(data_dir).expanduser()
    if not p.is_dir():
        raise DataError(f"--data-dir {p} does not exist; put the {name} files there as {expected}")
    return p


def _tv(name: str):
    cls_name, k, shape, mean, std = _TV[name]
    rel, where = _TV_FILES[name]

    def info(**_):
        return DataInfo(name, k, shape, tuple(str(i) for i in range(k)), mean, std, is_image=True)

    def load(split, data_dir=None, download=False, **_):
        if download:
            if data_dir is None:
                raise DataError(f"--download needs --data-dir DIR: the folder to download {name} into")
            root = Path(data_dir).expanduser()
            root.mkdir(parents=True, exist_ok=True)
        else:
            root = _require_dir(name, data_dir, where + " (or add --download)")
            found = (root / rel(split)).exists() or (name == "mnist" and (root / "MNIST" / "processed").exists())
            if not found:
                raise DataError(f"{name} files not found in {root}: expected {where} (or add --download)")
        import numpy as np
        import torch
        import torchvision

        cls = getattr(torchvision.datasets, cls_name)
        try:
            if name == "svhn":
                ds = cls(str(root), split=split, download=download)
            else:
                ds = cls(str(root), train=(split == "train"), download=download)
        except (RuntimeError, OSError, ValueError) as e:
            why = (str(e).splitlines() or [type(e).__name__])[0][:100]
            raise DataError(f"{name} files in {root} are incomplete or corrupt ({why}); expected {where}") from None
        if name in ("cifar10", "cifar100"):
            x = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
            y = torch.as_tensor(ds.targets)
        elif name == "mnist":
            x = ds.data.unsqueeze(1).contiguous()
            y = ds.targets.clone()
        else:
            x = torch.from_numpy(np.ascontiguousarray(ds.data))
            y = torch.as_tensor(ds.labels)
        return x, y, {"root": str(root)}

    return info, load


for _name in _TV:
    register_dataset(_name, f"torchvision {_TV[_name][0]} read from --data-dir")(lambda _n=_name: _tv(_n))

# ---------------------------------------------------------------------------------------------------------
# imagefolder: a class-per-folder tree (MTSD / SBB style). DIR/train/<class>/*.png and DIR/test/<class>/...
# If DIR has no train/test sub-folders, DIR/<class>/... is split 80/20 with a fixed seed.
# ---------------------------------------------------------------------------------------------------------
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".gif", ".tif", ".tiff", ".webp"}
IMAGEFOLDER_TEST_FRACTION = 0.2
IMAGEFOLDER_SEED = 0
IMAGEFOLDER_DEFAULT_SIZE = 64
_IF_LAYOUT = "DIR/<class>/<image> or DIR/train/<class>/<image> + DIR/test/<class>/<image>"


def _classes_of(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(d: Path) -> list[Path]:
    return sorted(f for f in d.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTS)


def _imagefolder():
    """Class-per-folder images (MTSD / SBB style).

    Two layouts: ``DIR/train/<class>/...`` + ``DIR/test/<class>/...`` (the class list comes from train; a
    test class missing from train is an error), or a flat ``DIR/<class>/...`` tree that is split per
    class, with a fixed seed, into 80% train and 20% test (at least one image of each side for a class of
    two or more images). Images are converted to RGB and resized to ``--image-size`` (default 64).
    """

    def _layout(data_dir):
        root = _require_dir("imagefolder", data_dir, _IF_LAYOUT)
        split_dirs = (root / "train").is_dir() and (root / "test").is_dir()
        classes = _classes_of(root / "train" if split_dirs else root)
        if len(classes) < 2:
            raise DataError(f"imagefolder {root} needs at least two class folders ({_IF_LAYOUT}), found {len(classes)}")
        if split_dirs:
            extra = sorted(set(_classes_of(root / "test")) - set(classes))
            if extra:
                raise DataError(f"imagefolder {root}/test has class folder(s) missing from train: {', '.join(extra[:5])}")
        return root, split_dirs, classes

    def info(data_dir=None, image_size=None, **_):
        root, _, classes = _layout(data_dir)
        s = int(image_size or IMAGEFOLDER_DEFAULT_SIZE)
        return DataInfo("imagefolder", len(classes), (3, s, s), tuple(classes), None, None, is_image=True)

    def load(split, data_dir=None, image_size=None, **_):
        import numpy as np
        import torch
        from PIL import Image, UnidentifiedImageError

        root, split_dirs, classes = _layout(data_dir)
        base = root / split if split_dirs else root
        rng = np.random.default_rng(IMAGEFOLDER_SEED)
        files, labels = [], []
        for ci, c in enumerate(classes):
            d = base / c
            found = _images_in(d) if d.is_dir() else []
            if not split_dirs and found:
                n = len(found)
                n_test = min(max(1, int(round(IMAGEFOLDER_TEST_FRACTION * n))), n - 1) if n >= 2 else 0
                test_rows = set(rng.permutation(n)[:n_test].tolist())
                found = [f for i, f in enumerate(found) if (i in test_rows) == (split == "test")]
            files += found
            labels += [ci] * len(found)
        if not files:
            raise DataError(f"imagefolder {base} holds no images ({', '.join(sorted(IMAGE_EXTS))}) for split {split!r}")
        s = int(image_size or IMAGEFOLDER_DEFAULT_SIZE)
        arr = np.empty((len(files), 3, s, s), dtype=np.uint8)
        for i, f in enumerate(files):
            try:
                with Image.open(f) as im:
                    arr[i] = np.asarray(im.convert("RGB").resize((s, s), Image.BILINEAR)).transpose(2, 0, 1)
            except (UnidentifiedImageError, OSError, ValueError):
                raise DataError(f"cannot read image {f} (corrupt or not an image)") from None
        src = {"root": str(root), "image_size": s, "layout": "train/test" if split_dirs else "flat 80/20 per class"}
        return torch.from_numpy(arr), torch.as_tensor(labels, dtype=torch.long), src

    return info, load


register_dataset("imagefolder", "class-per-folder image tree read from --data-dir (--image-size)")(_imagefolder)
