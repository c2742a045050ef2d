"""Mixture runs from model specs, as `robcli compose --mix/--mix-sweep` and `robcli finetune --loss mixnet` run
them: importable functions that return a path or DataFrames (the CLI only parses flags and prints).

* :func:`build_fixed_mixture`: the fixed-alpha mixture of two models, written as a run directory.
* :func:`sweep_fixed_mixtures`: natural and STD/ROB/MIX-attacked accuracy over a grid of fixed alpha, as
  compose-table rows (the mixing paper's Fig. 2, the adaptive-smoothing paper's Fig. 4).
* :func:`train_adaptive_mixture`: the adaptive mixing network alpha_theta(x) on two frozen models (the adaptive-smoothing paper's Sec. 4).

User mistakes raise robcli's typed errors; nothing is written before the inputs are checked.
"""

from __future__ import annotations

from pathlib import Path


def layers_spec(spec: str | None, flag: str = "--layers-g") -> tuple[str, str] | None:
    """``"net.layer1,net.layer2"`` -> ("net.layer1", "net.layer2"); None stays None."""
    from robcli.errors import UsageError

    if spec is None:
        return None
    parts = tuple(p.strip() for p in spec.split(",") if p.strip())
    if len(parts) != 2:
        raise UsageError(f"{flag} {spec!r}: give two layer names, shallow,middle (e.g. net.layer1,net.layer2)")
    return parts


def require_models(**specs: str) -> None:
    """Mixtures mix models: refuse table paths (a .parquet file or a folder of shards) early, naming the flag."""
    from robcli.errors import UsageError

    for flag, spec in specs.items():
        p = Path(spec)
        shards = p.is_dir() and not (p / "card.json").exists() and any(p.glob("*.parquet"))
        if p.suffix == ".parquet" or ".parquet," in spec or shards:
            raise UsageError(f"--mix/--mix-sweep take models (run dirs or checkpoints), not tables: {flag} {spec}")


def build_fixed_mixture(core: str, robust: str, alpha: float, export: str | Path, *, mix_space: str = "prob",
                        scale_g: float = 1.0, scale_h: float = 1.0) -> Path:
    """Write the fixed-alpha mixture log((1-a) softmax(s_g g) + a softmax(s_h h)) of ``core`` g and ``robust`` h
    as a run directory that every ``--model`` flag loads; returns its path.

    Raises:
        UsageError: alpha outside [0, 1], a bad logit scale. ModelError: members that cannot be mixed.
    """
    from robcli.mixing.io import build_mixture, load_members, save_mixture
    from robcli.mixing.mixed import check_alpha, check_scale

    a = check_alpha(alpha, "--mix")
    check_scale(scale_g, "--scale-g")
    check_scale(scale_h, "--scale-h")
    lg, lh = load_members(core, robust)
    m = build_mixture(lg, lh, alpha=a, mix_space=mix_space, scale_g=scale_g, scale_h=scale_h)
    save_mixture(export, m, core=core, robust=robust, lg=lg, lh=lh, dataset=lg.card.get("dataset"))
    return Path(export)


DEFAULT_GRID = tuple(i / 10 for i in range(11))


def sweep_fixed_mixtures(core: str, robust: str, data, grid=DEFAULT_GRID, *, eps: float, norm: str = "Linf",
                         steps: int = 20, mix_space: str = "prob", scale_g: float = 1.0, scale_h: float = 1.0,
                         batch: int = 256, device=None):
    """(compose table, sweep rows) of the fixed-alpha mixtures of ``core`` and ``robust`` over ``grid``.

    ``data``: a selected :class:`robcli.data` split. ``steps``: PGD steps of each of the STD, ROB and MIX
    attacks. The compose table has one row per alpha (``selector = "fixed-alpha"``, ``threshold = alpha``).

    Raises:
        UsageError: empty grid, alpha outside [0, 1], ``steps``/``batch`` < 1. NonFiniteOutput: NaN/inf logits.
    """
    from robcli.errors import UsageError
    from robcli.mixing.evaluate import sweep_compose_frame
    from robcli.mixing.io import load_members
    from robcli.mixing.mixed import check_alpha
    from robcli.mixing.sweep import alpha_sweep

    grid = [check_alpha(a, "--mix-grid") for a in grid]
    if steps < 1 or batch < 1:
        raise UsageError("--steps and --batch must be >= 1")
    lg, lh = load_members(core, robust, dataset_info=data.info, device=device)
    x, y = data.tensors()
    df = alpha_sweep(lg.model, lh.model, x.to(device), y.to(device), grid, eps=eps, norm=norm, steps=steps,
                     mix_space=mix_space, scale_g=scale_g, scale_h=scale_h, batch=batch)
    return sweep_compose_frame(df, core=core, robust=robust), df


def train_adaptive_mixture(core: str, robust: str, data, cfg, out: str | Path, *, mix_space: str = "prob",
                           scale_g: float = 1.0, scale_h: float = 1.0, mix_range=(0.0, 1.0), layers_g=None,
                           layers_h=None, device=None, callback=None, command=None) -> Path:
    """Train the mixing network alpha_theta(x) (both members frozen) and write the adaptive mixture run dir.

    ``cfg``: a :class:`robcli.mixing.train.MixnetConfig`; ``mix_range``: the (min, max) alpha(x) is rescaled
    to at evaluation; ``layers_g/h``: (shallow, middle) layer names or None for the architecture's default;
    ``callback(epoch, row)``: per-epoch log rows. Returns the run directory.
    """
    from robcli.mixing.io import build_mixture, load_members, save_mixture
    from robcli.mixing.mixed import check_alpha_range, check_scale
    from robcli.mixing.train import train_mixnet

    rng = check_alpha_range(*mix_range, names=("--mix-min", "--mix-max"))
    check_scale(scale_g, "--scale-g")
    check_scale(scale_h, "--scale-h")
    lg, lh = load_members(core, robust, dataset_info=data.info, device=device)
    m = build_mixture(lg, lh, alpha=None, mix_space=mix_space, scale_g=scale_g, scale_h=scale_h,
                      alpha_range=None if rng == (0.0, 1.0) else rng, layers_g=layers_g, layers_h=layers_h,
                      width=cfg.width, blocks=cfg.blocks, sigmoid_scale=cfg.sigmoid_scale, device=device,
                      seed=cfg.seed)
    x, y = data.tensors()
    log = train_mixnet(m, x, y, cfg, callback=callback, device=device)
    training = {"loss": "mixnet", "config": cfg.as_dict(), "log": log, "command": list(command or []),
                "data": data.fingerprint()}
    save_mixture(out, m, core=core, robust=robust, lg=lg, lh=lh, training=training, dataset=data.info.name)
    return Path(out)


def finetune_mixnet(core: str, robust: str, *, dataset: str, out: str | Path, eps, norm: str = "Linf",
                    data_dir: str | None = None, n_ex: int | None = None, train_attack: str = "B",
                    attack_steps: int = 10, epochs: int | None = None, batch: int | None = None, lr=None,
                    c_ce: float = 0.0, c_bce: float = 1.5, c_prod: float = 0.2, ema: float | None = None,
                    mix_min: float = 0.0, mix_max: float = 1.0, layers_g: str | None = None,
                    layers_h: str | None = None, width: int = 16, blocks: int = 1, eps_low: float = 0.25,
                    mix_attack_weight: float = 1.0, sigmoid_scale: float = 2.0, mix_space: str = "prob",
                    scale_g: float = 1.0, scale_h: float = 1.0, seed: int = 0, device: str = "auto",
                    force: bool = False, callback=None, command=None) -> Path:
    """``robcli finetune --loss mixnet``: validate the options (:class:`robcli.mixing.train.MixnetConfig`),
    load the train split of ``dataset`` (its first ``n_ex`` examples) and train the adaptive mixing network of
    the frozen ``core`` (g) and ``robust`` (h) models into the run directory ``out``.

    ``epochs``, ``batch``, ``lr`` of None: 10, 128, 1e-3 (AdamW). ``attack_steps``: the most steps of the
    training attack (drawn in [1, N] per batch). ``callback(epoch, row)``: per-epoch log rows. Nothing is written
    before the options, the models and the data have been checked.

    Raises:
        UsageError, DataError, ModelError: bad options, missing models, an existing ``out`` without ``force``.
    """
    from robcli.data.registry import load_split
    from robcli.errors import UsageError
    from robcli.mixing.mixed import check_alpha_range
    from robcli.mixing.train import MixnetConfig
    from robcli.models.card import image_size_for
    from robcli.utils.device import resolve_device
    from robcli.utils.parse import parse_eps, parse_float_expr, parse_norm

    if core is None or robust is None:
        raise UsageError("--loss mixnet needs --core G and --robust H (the frozen models to mix)")
    nrm = parse_norm(norm)
    rng = check_alpha_range(mix_min, mix_max, names=("--mix-min", "--mix-max"))
    lay_g, lay_h = layers_spec(layers_g, "--layers-g"), layers_spec(layers_h, "--layers-h")
    cfg = MixnetConfig(eps=parse_eps(str(eps), nrm), norm=nrm, steps=attack_steps, eps_low=eps_low,
                       setting=str(train_attack).upper(), alpha_weight=mix_attack_weight, c_ce=c_ce, c_bce=c_bce,
                       c_prod=c_prod, epochs=10 if epochs is None else epochs, batch=128 if batch is None else batch,
                       lr=1e-3 if lr is None else parse_float_expr(str(lr), "--lr"), ema=ema, width=width,
                       blocks=blocks, sigmoid_scale=sigmoid_scale, seed=seed)
    if Path(out).exists() and not force:
        raise UsageError(f"{out} exists; pass --force to overwrite")
    dev = resolve_device(device)
    data = load_split(dataset, "train", data_dir=data_dir, image_size=image_size_for(None, core)).select(n_ex=n_ex)
    return train_adaptive_mixture(core, robust, data, cfg, out, mix_space=mix_space, scale_g=scale_g,
                                  scale_h=scale_h, mix_range=rng, layers_g=lay_g, layers_h=lay_h, device=dev,
                                  callback=callback, command=command)
