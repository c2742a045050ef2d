"""The data set registry.

``load_split(name, split, ...)`` returns a :class:`SplitData`: the examples of one split in memory
(uint8 or float32 storage), their labels, their original indices within the split, and a fingerprint.

Splits: ``train`` (minus the validation share), ``val`` (carved from TRAIN with a fixed seed, never from
test), ``test``. ``train_full`` is train + val, for users who do not want a validation split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from robcli.errors import DataError
from robcli.utils.registry import Registry

SPLITS = ("train", "val", "test", "train_full")
VAL_FRACTION = 0.1
VAL_SEED = 1234  # fixed: the validation split never changes with --seed


@dataclass(frozen=True)
class DataInfo:
    """Static facts about a data set."""

    name: str
    num_classes: int
    input_shape: tuple[int, ...]  # (C, H, W) or (D,) for vector data
    class_names: tuple[str, ...]
    mean: tuple[float, ...] | None = None  # default input normalization for models trained on it
    std: tuple[float, ...] | None = None
    is_image: bool = True


@dataclass
class SplitData:
    """One split of a data set, in memory.

    Attributes:
        x: storage tensor, shape (N, *input_shape), uint8 (scale 1/255) or float32 in [0, 1].
        y: int64 labels, shape (N,).
        idx: int64 original indices within the split, shape (N,) (kept through selection).
    """

    info: DataInfo
    split: str
    x: object
    y: object
    idx: object
    source: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def get(self, rows):
        """Float32 inputs in [0,1] and labels for the given row positions (a LongTensor or slice).

        The returned tensors never share memory with the storage: callers may modify them in place.
        """
        import torch

        xb = self.x[rows]
        if xb.dtype == torch.uint8:
            xb = xb.float().div_(255.0)
        elif xb.data_ptr() == self.x.data_ptr() or isinstance(rows, slice):
            xb = xb.clone()
        yb = self.y[rows]
        if isinstance(rows, slice):
            yb = yb.clone()
        return xb, yb

    def tensors(self):
        """All inputs as float32 in [0,1] and all labels."""
        return self.get(slice(None))

    def select(self, *, n_ex: int | None = None, skip: int = 0, subset=None) -> SplitData:
        """Keep the examples whose original index is in ``subset`` (if given), then skip/take in order."""
        import torch

        rows = torch.arange(len(self))
        if subset is not None:
            try:
                wanted = torch.as_tensor(sorted(set(int(i) for i in subset)), dtype=torch.long)
            except (TypeError, ValueError):
                raise DataError("subset must list integer example indices") from None
            if wanted.numel() == 0:
                raise DataError(f"the selection from {self.info.name}/{self.split} is empty (the subset lists no indices)")
            unknown = wanted[~torch.isin(wanted, self.idx)]
            if unknown.numel():
                raise DataError(
                    f"subset names {unknown.numel()} index(es) not in the {self.info.name}/{self.split} split "
                    f"(e.g. {int(unknown[0])})"
                )
            rows = rows[torch.isin(self.idx, wanted)]
        if skip is None:
            skip = 0
        if int(skip) < 0:
            raise DataError("--skip must be >= 0")
        rows = rows[int(skip):]
        if n_ex is not None:
            if int(n_ex) <= 0:
                raise DataError("--n-ex must be positive")
            rows = rows[: int(n_ex)]
        if rows.numel() == 0:
            raise DataError(
                f"the selection from {self.info.name}/{self.split} is empty: --skip {skip} leaves none of its "
                f"{len(self)} examples{' in the subset' if subset is not None else ''}"
            )
        return SplitData(self.info, self.split, self.x[rows], self.y[rows], self.idx[rows], dict(self.source))

    def fingerprint(self) -> dict:
        """A description of exactly which data this is (for table metadata).

        ``sha256`` covers the inputs, labels and original indices, so two selections of the same split
        differ, and the same selection is stable across runs and processes.
        """
        from robcli.utils.hashing import tensor_fingerprint

        return {
            "dataset": self.info.name,
            "split": self.split,
            "n": len(self),
            "sha256": tensor_fingerprint(self.x, self.y, self.idx),
            **self.source,
        }


# the finetune settings a data set may recommend (FinetuneConfig field names)
TRAIN_DEFAULT_KEYS = ("epochs", "lr", "batch", "momentum", "weight_decay", "lr_milestones")


@dataclass(frozen=True)
class TrainDefaults:
    """Recommended ``robcli finetune`` settings for one data set and architecture (as timm's pretrained configs
    carry each model's input size, interpolation and crop): what ``finetune`` uses for every flag of
    :data:`TRAIN_DEFAULT_KEYS` the user did not give.

    Attributes:
        scratch: settings for training from scratch (``--model ARCH``).
        finetune: settings for fine-tuning (``--init RUN``).
        scratch_why, finetune_why: where the values come from (a paper section, a measurement), recorded
            with the run.
    """

    scratch: dict
    finetune: dict
    scratch_why: str = ""
    finetune_why: str = ""

    def __post_init__(self) -> None:
        for part in (self.scratch, self.finetune):
            bad = set(part) - set(TRAIN_DEFAULT_KEYS)
            if bad:
                raise ValueError(f"unknown training defaults {sorted(bad)}; allowed: {', '.join(TRAIN_DEFAULT_KEYS)}")


@dataclass(frozen=True)
class DatasetEntry:
    info: Callable[..., DataInfo]
    load: Callable[..., tuple]  # (split in {'train','test'}, **opts) -> (x, y, source-dict)
    description: str
    train_defaults: dict[str, TrainDefaults] = field(default_factory=dict)  # architecture name or "*" -> defaults


DATASETS: Registry[DatasetEntry] = Registry("data set", modules=("robcli.data.builtin",), error=DataError)
"""Every registered data set (filled by importing :mod:`robcli.data.builtin` on first read)."""


def register_dataset(name: str, description: str, train_defaults: dict[str, TrainDefaults] | None = None):
    """Decorator: the decorated function returns ``(info_fn, load_fn)``; registered under ``name``."""

    def deco(fn):
        info_fn, load_fn = fn()
        DATASETS.add(name, DatasetEntry(info_fn, load_fn, description, dict(train_defaults or {})), description)
        return fn

    return deco


def dataset_entry(name: str) -> DatasetEntry:
    """The registered entry of ``name``; DataError naming the choices if unknown."""
    return DATASETS.get(name).obj


def recommends_training(name: str) -> bool:
    """Whether data set ``name`` is registered and carries recommended training settings."""
    key = DATASETS.resolve(name)
    return key is not None and bool(DATASETS.get(key).obj.train_defaults)


def recommended_training(name: str, arch: str | None, finetune: bool) -> tuple[dict, str]:
    """The training settings data set ``name`` recommends for architecture ``arch``.

    Looks up ``arch`` first, then the data set's ``"*"`` entry (any architecture).

    Returns:
        (settings, source): settings keyed by :data:`TRAIN_DEFAULT_KEYS` (empty when the data set recommends
        nothing, or is unknown), and a description of the entry, e.g. ``"gaussians/mlp from scratch (App. A.2)"``.
    """
    key = DATASETS.resolve(name)
    if key is None:
        return {}, ""
    entry = DATASETS.get(key).obj
    key = arch if arch in entry.train_defaults else "*"
    rec = entry.train_defaults.get(key)
    if rec is None:
        return {}, ""
    mode = "fine-tuning" if finetune else "from scratch"
    why = rec.finetune_why if finetune else rec.scratch_why
    return dict(rec.finetune if finetune else rec.scratch), f"{name}/{key} {mode}" + (f": {why}" if why else "")


def list_datasets() -> list[str]:
    return DATASETS.names()


def get_info(name: str, **opts) -> DataInfo:
    return dataset_entry(name).info(**opts)


def load_split(
    name: str,
    split: str = "test",
    *,
    data_dir: str | Path | None = None,
    download: bool = False,
    image_size: int | None = None,
) -> SplitData:
    """Load one split of a registered data set.

    Raises:
        DataError: unknown name or split, or files missing from ``data_dir``.
    """
    import torch

    entry = dataset_entry(name)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if image_size is not None and int(image_size) < 1:
        raise DataError(f"--image-size {image_size} must be a positive number of pixels")
    opts = {"data_dir": data_dir, "download": download, "image_size": image_size}
    info = entry.info(**opts)
    base = "test" if split == "test" else "train"
    x, y, source = entry.load(base, **opts)
    x = torch.as_tensor(x)
    if x.dtype != torch.uint8:
        x = x.to(torch.float32)
    y = torch.as_tensor(y, dtype=torch.long)
    if x.shape[0] != y.shape[0] or tuple(x.shape[1:]) != tuple(info.input_shape):
        raise DataError(f"{name}/{base} loaded inputs of shape {tuple(x.shape)} for {y.shape[0]} labels; "
                        f"expected (N, {', '.join(map(str, info.input_shape))})")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= info.num_classes):
        raise DataError(f"{name}/{base} has labels outside 0..{info.num_classes - 1}")
    idx = torch.arange(y.shape[0])
    if split in ("train", "val"):
        in_val = torch.zeros(y.shape[0], dtype=torch.bool)
        in_val[val_rows(y)] = True
        keep = idx[in_val] if split == "val" else idx[~in_val]
        x, y, idx = x[keep], y[keep], idx[keep]
    source = dict(source)
    source["split_rule"] = (
        f"val = stratified {VAL_FRACTION} of train, seed {VAL_SEED}" if split in ("train", "val") else base
    )
    return SplitData(info, split, x, y, idx, source)


def val_rows(y):
    """The rows of the full training set that form the validation split (sorted LongTensor).

    Stratified: each class gives ``round(VAL_FRACTION * n_c)`` of its ``n_c`` examples (at least one when
    it has two or more), drawn with the fixed seed ``VAL_SEED``, so a small class is represented and the
    split never changes with ``--seed``. Carved from TRAIN only; the test split is never touched.
    """
    import torch

    y = torch.as_tensor(y, dtype=torch.long)
    g = torch.Generator().manual_seed(VAL_SEED)
    parts = []
    for c in torch.unique(y).tolist():
        rows_c = torch.nonzero(y == c).flatten()
        n_c = rows_c.numel()
        n_val = int(round(VAL_FRACTION * n_c))
        if n_c >= 2:
            n_val = min(max(1, n_val), n_c - 1)
        else:
            n_val = 0
        perm = torch.randperm(n_c, generator=g)
        parts.append(rows_c[perm[:n_val]])
    val = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
    return torch.sort(val).values
