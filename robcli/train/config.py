"""The frozen, validated configuration of one ``robcli finetune`` run."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from robcli.errors import UsageError

ROBUST_LOSSES = ("trades", "era", "dga")  # need eps > 0 (training-time PGD)
AUGMENTS = ("none", "standard", "autoaugment")
ERA_ADV = ("descent", "single")
OPTIMIZERS = ("sgd",)

# paper App. A.2: fine-tuning 50 epochs at lr 1e-3 (x0.1 at 75%); from scratch lr 1e-1
FINETUNE_LR = 1e-3
SCRATCH_LR = 1e-1
FINETUNE_EPOCHS = 50
SCRATCH_EPOCHS = 20  # the paper's synthetic-data setting; CIFAR from scratch used 100
DEFAULT_BATCH = 200
DEFAULT_WEIGHT_DECAY = 2e-4  # TRADES reference (the ERA paper does not state one)
DEFAULT_MOMENTUM = 0.9
DEFAULT_MILESTONES = (0.75,)
TRAIN_DEFAULTED = ("epochs", "lr", "batch", "momentum", "weight_decay", "lr_milestones")  # resolved when None


def generic_defaults(finetune: bool) -> dict:
    """robcli's own defaults (App. A.2's CIFAR settings), used where the data set recommends nothing."""
    return {"epochs": FINETUNE_EPOCHS if finetune else SCRATCH_EPOCHS, "lr": FINETUNE_LR if finetune else SCRATCH_LR,
            "batch": DEFAULT_BATCH, "momentum": DEFAULT_MOMENTUM, "weight_decay": DEFAULT_WEIGHT_DECAY,
            "lr_milestones": DEFAULT_MILESTONES}


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that determines a finetune run (written into the card and every table's metadata).

    ``epochs``, ``lr``, ``batch``, ``momentum``, ``weight_decay`` and ``lr_milestones`` of ``None`` (the user
    did not give the flag) resolve to the data set's recommended settings for the architecture
    (:func:`robcli.data.registry.recommended_training`: the embedded gaussians and digits carry them), else
    to robcli's generic ones (:func:`generic_defaults`, the paper's App. A.2: fine-tuning (``init`` given)
    50 epochs at 1e-3; from scratch 20 epochs at 1e-1; batch 200, momentum 0.9, weight decay 2e-4, x0.1 at
    75%). ``defaults_from`` records, for each of them that was resolved, where its value came from.
    ``lr_milestones`` are fractions of the epochs after which the learning rate is multiplied by
    ``lr_gamma`` (epoch ``e``, 0-based, uses ``lr * gamma ** #{m : e >= m * epochs}``): ``(0.75,)`` is the
    paper's fine-tuning schedule, ``(0.75, 0.9)`` its from-scratch schedule, ``()`` a constant rate.
    ``batch`` is the global batch: with ``world_size`` data-parallel replicas (torchrun/srun,
    :mod:`robcli.train.parallel`) each takes ``batch / world_size`` rows of it; ``world_size`` is recorded but
    is not part of :meth:`identity` (it changes results only by the order of float reductions, and through
    per-rank BatchNorm statistics without ``sync_bn``).
    """

    loss: str
    dataset: str
    out: str
    data_dir: str | None = None
    image_size: int | None = None
    download: bool = False
    split: str = "train"  # the val split (carved from train) is used for model selection
    train_subset: tuple[int, ...] | None = None
    init: str | None = None
    arch: str | None = None  # architecture of a bare --init checkpoint
    model: str | None = None  # architecture trained from scratch (default: mlp for vectors, small_cnn for images)
    eps: float = 0.0
    norm: str = "Linf"
    beta: float = 1.0
    trades_beta: float = 6.0
    era_adv: str = "descent"
    era_steps: int | None = None
    detach_weight: bool = True
    attack_steps: int = 10
    step_size: float | None = None
    sigma: float = 0.12
    num_noise: int = 16
    temperature: float = 4.0
    epochs: int | None = None
    lr: float | None = None
    lr_milestones: tuple[float, ...] | None = None
    lr_gamma: float = 0.1
    batch: int | None = None
    optimizer: str = "sgd"
    momentum: float | None = None
    weight_decay: float | None = None
    augment: str = "none"
    eval_steps: int = 20
    eval_restarts: int = 1
    eval_batch: int = 500
    seed: int = 0
    device: str = "auto"
    channels_last: bool | None = None  # None: on for conv nets on CPU (measured ~1.4x faster steps)
    world_size: int = 1  # data-parallel replicas (torchrun/srun); --batch is the global batch (robcli.train.parallel)
    sync_bn: bool = False  # SyncBatchNorm over the replicas (CUDA only)
    extra: dict = field(default_factory=dict)
    defaults_from: dict = field(default_factory=dict)  # filled in: field -> where its resolved value came from

    def __post_init__(self) -> None:
        from robcli.data.registry import recommended_training
        from robcli.utils.parse import parse_norm

        object.__setattr__(self, "norm", parse_norm(self.norm))
        missing = [k for k in TRAIN_DEFAULTED if getattr(self, k) is None]
        if missing:
            rec, source = recommended_training(self.dataset, self.start_arch(), bool(self.init))
            generic = generic_defaults(bool(self.init))
            origin = dict(self.defaults_from)
            for k in missing:
                object.__setattr__(self, k, rec[k] if k in rec else generic[k])
                origin[k] = source if k in rec else "robcli generic default"
            object.__setattr__(self, "defaults_from", origin)
        object.__setattr__(self, "lr_milestones", tuple(float(m) for m in self.lr_milestones))
        self.validate()

    def start_arch(self) -> str | None:
        """The architecture this run trains: ``--model`` (or the data set's default, mlp for vectors and
        small_cnn for images), the ``--init`` run directory's card, or ``--arch``; None when unknown."""
        if self.init is None:
            if self.model is not None:
                return self.model
            from robcli.data.registry import get_info, recommends_training

            if not recommends_training(self.dataset):
                return None  # nothing to look up (and on-disk data sets need not be read for this)
            return "small_cnn" if get_info(self.dataset).is_image else "mlp"
        import json
        from pathlib import Path

        if self.arch is not None:
            return self.arch
        p = Path(str(self.init))
        card = p / "card.json" if p.is_dir() else p.parent / "card.json"  # a run dir, or a checkpoint beside one
        try:
            return str(json.loads(card.read_text())["arch"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def validate(self) -> None:
        from robcli.losses import LOSSES

        if self.loss == "mixnet":
            raise UsageError("--loss mixnet trains the adaptive mixing network, not a FinetuneConfig run: use "
                             "robcli.mixing.run.finetune_mixnet (the command and robcli.api.finetune route it there)")
        LOSSES.get(self.loss)  # an unknown name: UsageError naming the registered losses
        if self.loss in ROBUST_LOSSES and not self.eps > 0:
            raise UsageError(f"--loss {self.loss} needs --eps > 0 (got {self.eps})")
        if not math.isfinite(self.eps) or self.eps < 0:
            raise UsageError(f"--eps must be >= 0 (got {self.eps})")
        if self.norm == "Linf" and self.eps > 1:
            raise UsageError(f"--eps {self.eps} > 1 is meaningless for Linf on pixels in [0,1]")
        checks = [
            (self.epochs >= 1, f"--epochs must be >= 1 (got {self.epochs})"),
            (math.isfinite(self.lr) and self.lr > 0, f"--lr must be > 0 (got {self.lr})"),
            (self.batch >= 1, f"--batch must be >= 1 (got {self.batch})"),
            (self.attack_steps >= 1, f"--attack-steps must be >= 1 (got {self.attack_steps})"),
            (self.era_steps is None or self.era_steps >= 1, f"--era-steps must be >= 1 (got {self.era_steps})"),
            (self.step_size is None or self.step_size > 0, f"--step-size must be > 0 (got {self.step_size})"),
            (self.beta >= 0 and math.isfinite(self.beta), f"--beta must be >= 0 (got {self.beta})"),
            (self.trades_beta >= 0 and math.isfinite(self.trades_beta), f"--trades-beta must be >= 0 (got {self.trades_beta})"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0 (got {self.weight_decay})"),
            (0 <= self.momentum < 1, f"--momentum must be in [0, 1) (got {self.momentum})"),
            (0 < self.lr_gamma <= 1, f"--lr-gamma must be in (0, 1] (got {self.lr_gamma})"),
            (all(0 < m < 1 for m in self.lr_milestones), f"--lr-milestones must be fractions in (0, 1) (got {self.lr_milestones})"),
            (list(self.lr_milestones) == sorted(self.lr_milestones), "--lr-milestones must be increasing"),
            (self.augment in AUGMENTS, f"unknown --augment {self.augment!r}; choose one of {', '.join(AUGMENTS)}"),
            (self.era_adv in ERA_ADV, f"unknown --era-adv {self.era_adv!r}; choose one of {', '.join(ERA_ADV)}"),
            (self.optimizer in OPTIMIZERS, f"unknown optimizer {self.optimizer!r}"),
            (self.split == "train", f"training uses the train split (got {self.split!r}); val is carved from it"),
            (self.sigma > 0, f"--sigma must be > 0 (got {self.sigma})"),
            (self.num_noise >= 1, f"--num-noise must be >= 1 (got {self.num_noise})"),
            (self.temperature > 0, f"--temperature must be > 0 (got {self.temperature})"),
            (self.eval_steps >= 1 and self.eval_restarts >= 1, "eval steps and restarts must be >= 1"),
            (self.init is None or self.model is None, "give either --init (fine-tune) or --model ARCH (from scratch), not both"),
        ]
        checks += [
            (self.world_size >= 1, f"world size must be >= 1 (got {self.world_size})"),
            (self.batch % self.world_size == 0,
             f"--batch {self.batch} does not split over the world size {self.world_size}: give a multiple of "
             f"{self.world_size} (--batch is the global batch; each rank takes --batch / world size rows)"),
            (not self.sync_bn or self.world_size > 1,
             "--sync-bn needs several processes (torchrun/srun on CUDA); a single process has nothing to sync"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UsageError(msg)

    def loss_config(self):
        """The :class:`robcli.losses.LossConfig` this run passes to its loss."""
        from robcli.losses import LossConfig

        return LossConfig(
            eps=self.eps, norm=self.norm, attack_steps=self.attack_steps, step_size=self.step_size, beta=self.beta,
            trades_beta=self.trades_beta, era_adv=self.era_adv, detach_weight=self.detach_weight,
            era_steps=self.era_steps, sigma=self.sigma, num_noise=self.num_noise, temperature=self.temperature,
        )

    def lr_at(self, epoch: int) -> float:
        """Learning rate of 0-based ``epoch`` (step schedule, see class docstring)."""
        n = sum(1 for m in self.lr_milestones if epoch >= m * self.epochs)
        return float(self.lr) * self.lr_gamma ** n

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        if self.train_subset is not None:
            from robcli.utils.hashing import sha256_bytes

            blob = ",".join(str(i) for i in self.train_subset).encode()
            d["train_subset"] = {"n": len(self.train_subset), "sha256": sha256_bytes(blob)}
        return d

    def identity(self) -> dict:
        """The fields that must match for ``--resume`` to continue a run (not device, world size or presentation:
        a run may be resumed on another number of ranks; ``sync_bn`` only when set, as runs before it lack it)."""
        d = self.to_dict()
        for k in ("device", "out", "download", "data_dir", "defaults_from", "world_size"):  # values are kept
            d.pop(k, None)
        if not d.get("sync_bn"):
            d.pop("sync_bn", None)
        return d


def finetune_config(*, loss: str, dataset: str, out, eps="0", norm: str = "Linf", lr=None, lr_milestones=None,
                    train_subset=None, **fields) -> FinetuneConfig:
    """A :class:`FinetuneConfig` from what a user writes (the command's flags, the API's arguments):
    ``eps`` and ``lr`` as numbers or expressions (``"8/255"``, ``"1e-3"``), ``lr_milestones`` as ``"0.75,0.9"``,
    ``"none"`` or a sequence, ``train_subset`` as an index file (checked against ``dataset``'s train split) or
    a sequence of indices. ``None`` for epochs, lr, lr_milestones, batch, momentum or weight_decay: the data
    set's recommended value (see the class). The other ``fields`` go to the class as they are.

    Raises:
        UsageError, DataError: unparsable values, an empty or foreign ``train_subset``, the class's checks.
    """
    from robcli.utils.parse import parse_eps, parse_float_expr, parse_norm

    nrm = parse_norm(norm)
    if isinstance(lr_milestones, str):
        text = lr_milestones.strip().lower()
        lr_milestones = () if text in ("", "none") else tuple(
            parse_float_expr(m, "--lr-milestones entry") for m in lr_milestones.split(","))
    subset = None
    if isinstance(train_subset, (str, Path)):
        from robcli.data.indices import check_origin, read_index_list

        ids, origin = read_index_list(train_subset, "--train-subset")
        check_origin(origin, dataset, "train", f"--train-subset {train_subset}")
        subset = tuple(sorted(set(ids)))
        what = f"--train-subset {train_subset}"
    elif train_subset is not None:
        subset = tuple(sorted({int(i) for i in train_subset}))
        what = "train_subset"
    if subset is not None and not subset:
        raise UsageError(f"{what} is empty")
    return FinetuneConfig(loss=loss, dataset=dataset, out=str(out), eps=parse_eps(str(eps), nrm), norm=nrm,
                          lr=None if lr is None else parse_float_expr(str(lr), "--lr"),
                          lr_milestones=None if lr_milestones is None else tuple(lr_milestones),
                          train_subset=subset, **fields)


def selection_criterion(loss: str) -> str:
    """Which validation metric picks ``model.safetensors`` (ties go to the later epoch).

    * ``std`` (and any other loss): ``val_nat_acc`` - what standard training optimizes.
    * ``noise``/``cra``: ``val_noisy_acc`` - validation accuracy under Gaussian noise at the run's
      ``--sigma`` (8 draws per point, unclipped, as ``robcli certify`` adds it): the base classifier's
      accuracy on the distribution the smoothed classifier votes over, a cheap proxy for certified accuracy.
    * ``trades``: ``val_robust_acc``.
    * ``era``/``dga``: ``val_robust_acc - val_robust_inaccuracy`` - eq. 4's two goals (maximize robust
      accuracy, minimize robust inaccuracy) with equal weight, as measured by the validation attack.

    Robust metrics come from PGD (plus a grid over the ball for inputs of dimension <= 3), judged against
    the model's own prediction; see :mod:`robcli.train.loop`.
    """
    if loss == "trades":
        return "val_robust_acc"
    if loss in ("era", "dga"):
        return "val_robust_acc - val_robust_inaccuracy"
    if loss in ("noise", "cra"):
        return "val_noisy_acc"
    return "val_nat_acc"
