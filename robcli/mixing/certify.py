"""Certified radii of a fixed-alpha mixture run directory, as `robcli certify --method mix-...` computes them.

Each method's name says which classifier it certifies (the table's ``method`` and ``certified_model``):

* ``mix-smoothed-h`` (the mixing paper's Thm 2) and ``mix-lipschitz-rs`` (the mixing paper's Thm 1 with Lip = sqrt(2/pi)/sigma): the mixture
  whose robust member is the Gaussian-SMOOTHED hard classifier of h (certified_model
  ``mixture-with-smoothed-h``): not what the run directory computes; compose, partition and report refuse them.
* ``mix-lipschitz`` (the mixing paper's Thm 1 with a given Lipschitz constant of h's probabilities): the run directory's own
  deterministic mixture (certified_model ``mixture``).
* ``mix-local-estimate`` (the adaptive-smoothing paper's App. C.3): an ESTIMATE of the run directory's radius (``radius_is_estimate``).

The certificate holds whatever the core model g does, so only the robust member h is loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from robcli.errors import UsageError

METHODS: dict[str, str] = {
    "mix-smoothed-h": "the mixing paper's Thm 2: the mixture with the Gaussian-smoothed h (needs --sigma)",
    "mix-lipschitz-rs": "the mixing paper's Thm 1, Lip = sqrt(2/pi)/sigma: the mixture with the Gaussian-smoothed h (needs --sigma)",
    "mix-lipschitz": "the mixing paper's Thm 1 with --lipschitz L of h's probabilities: the mixture run directory itself",
    "mix-local-estimate": "the adaptive-smoothing paper's App. C.3: an ESTIMATE of the mixture run directory's radius in the --eps ball",
}
SMOOTHED = ("mix-smoothed-h", "mix-lipschitz-rs")
# names `robcli mix certify --method` used, refused with the new one
OLD_NAMES = {"smoothing": "mix-smoothed-h", "lipschitz-rs": "mix-lipschitz-rs", "lipschitz": "mix-lipschitz",
             "local": "mix-local-estimate"}


# the parameters each mixture certificate takes, among sigma / lipschitz / eps / norm (the others are refused)
PARAMS = ("sigma", "lipschitz", "eps", "norm")
TAKES = {"mix-smoothed-h": ("sigma",), "mix-lipschitz-rs": ("sigma",), "mix-lipschitz": ("lipschitz", "norm"),
         "mix-local-estimate": ("eps", "norm")}
WHY_NOT = {"sigma": " (it smooths nothing)", "norm": " (its radii are L2)"}  # why a method refuses it


def refused_params(method: str) -> tuple[str, ...]:
    """The parameters of :data:`PARAMS` that ``method`` (a checked name) does not take, in that order."""
    return tuple(p for p in PARAMS if p not in TAKES[method])


def check_method(method: str) -> str:
    """A mixture certify method name (case-insensitive), or a UsageError naming the choices / the new name."""
    m = method.strip().lower()
    if m in OLD_NAMES:
        raise UsageError(f"--method {method}: the mixture certificate is now called --method {OLD_NAMES[m]}")
    if m not in METHODS:
        raise UsageError(f"--method {method!r}: choose cohen, {', '.join(METHODS)}")
    return m


@dataclass(frozen=True)
class MixCertifyConfig:
    """What to certify and how. ``sigma``: smoothing noise of h (mix-smoothed-h, mix-lipschitz-rs);
    ``lipschitz``: Lipschitz constant of h's probabilities in ``norm`` (mix-lipschitz); ``eps``: ball radius of
    the local estimate; ``n0``, ``n``, ``alpha``: Monte-Carlo selection / estimation samples and failure
    probability of each certificate (smoothed methods; ``alpha`` is recorded for all)."""

    method: str
    sigma: float | None = None
    lipschitz: float | None = None
    eps: float | None = None
    norm: str = "L2"
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    batch: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", check_method(self.method))
        if self.method in SMOOTHED and self.sigma is None:
            raise UsageError(f"--method {self.method} needs --sigma (the smoothing noise of h)")
        if self.method == "mix-lipschitz" and (self.lipschitz is None or not self.lipschitz > 0):
            raise UsageError("--method mix-lipschitz needs --lipschitz L > 0 (of h's probabilities, in --norm)")
        if self.method == "mix-local-estimate" and not self.eps:
            raise UsageError("--method mix-local-estimate needs --eps > 0")
        if self.batch < 1:
            raise UsageError("--batch must be >= 1")


def resolve_mixture(model: str, mix: float | None = None, scale_h: float | None = None) -> dict:
    """The mixture to certify: ``{"model", "robust", "alpha", "scale_h"}``.

    ``model`` is a fixed-alpha mixture run directory (alpha, scale_h and the robust member come from its card;
    ``mix``/``scale_h`` given as well must agree with it), or the robust model h itself with its weight ``mix``
    (the certificate then holds for the mixture with ANY core model; ``model`` is recorded as None).

    Raises:
        UsageError: neither form, or flags conflicting with the card. ModelError: adaptive mixture, bad card.
    """
    from robcli.mixing.io import fixed_mixture_spec, is_mixnet_dir
    from robcli.mixing.mixed import check_alpha, check_scale

    if is_mixnet_dir(model):
        spec = fixed_mixture_spec(model)
        conflicts = []
        if mix is not None and check_alpha(mix, "--mix") != spec["alpha"]:
            conflicts.append(f"--mix {mix:g} (the card's alpha is {spec['alpha']:g})")
        if scale_h is not None and float(scale_h) != spec["scale_h"]:
            conflicts.append(f"--scale-h {scale_h:g} (the card's scale_h is {spec['scale_h']:g})")
        if conflicts:
            raise UsageError(f"--model {model} conflicts with {'; '.join(conflicts)}: drop the flag")
        return {"model": str(model), "robust": spec["robust"], "alpha": float(spec["alpha"]),
                "scale_h": check_scale(spec["scale_h"], "scale_h")}
    if mix is None:
        raise UsageError(f"--model {model} is not a mixture run directory (robcli compose --mix A --core G --robust H "
                         "--export RUN builds one); to certify the mixture of this robust model h with any core model "
                         "give its weight --mix A")
    return {"model": None, "robust": str(model), "alpha": check_alpha(mix, "--mix"),
            "scale_h": check_scale(1.0 if scale_h is None else scale_h, "--scale-h")}


def check_samples(run: dict, cfg: MixCertifyConfig) -> None:
    """The Monte-Carlo parameters of the smoothed methods, at the run's mixture weight (the mixture's floor on N
    is stricter than plain CERTIFY's)."""
    if cfg.method not in SMOOTHED:
        return
    from robcli.certify.bounds import check_params
    from robcli.mixing.radii import check_estimation_samples

    check_estimation_samples(cfg.n, cfg.alpha, run["alpha"])
    check_params(sigma=cfg.sigma, alpha=cfg.alpha, n0=cfg.n0, n=cfg.n, mode="certify")


def estimate_seed(seed: int, chunk: int) -> int:
    """The generator seed of ``mix-local-estimate`` on one chunk of examples: a hash of (seed, chunk), 62 bits."""
    from robcli.utils.seeding import hashed_seed

    return hashed_seed("robcli-mix-local-estimate", str(int(seed)), str(int(chunk)), bits=62)


def certify_mixture(run: dict, data, cfg: MixCertifyConfig, *, device=None, lm=None, chunk: int = 0):
    """Certify the fixed-alpha mixture ``run`` (:func:`resolve_mixture`) on ``data`` (a selected split, or one
    chunk of it).

    ``lm``: the robust member already loaded (else loaded here). ``chunk``: which chunk of the plan ``data`` is;
    it seeds the random starts of ``mix-local-estimate`` (:func:`estimate_seed`), so its table depends on the
    chunk size but not on how the chunks are spread. The smoothed methods seed every example's noise by its idx,
    and ``mix-lipschitz`` draws nothing: their rows do not depend on the chunks at all.

    Returns ``(df, config, files)``: the certify table (one row per example; ``method``, ``certified_model``,
    ``radius_is_estimate`` columns), its config, and the robust member's weight files (for provenance).

    Raises:
        UsageError: bad parameters. NonFiniteOutput: NaN/inf logits of h.
    """
    import time

    from robcli.mixing.evaluate import certify_frame
    from robcli.mixing.mixed import check_scale
    from robcli.mixing.radii import (
        certify_lipschitz_mixture,
        certify_local_estimate,
        certify_smoothed_mixture,
    )
    from robcli.models import load_model
    from robcli.utils.seeding import make_generator

    a, scale_h = run["alpha"], check_scale(run["scale_h"], "scale_h")
    check_samples(run, cfg)
    lm = lm if lm is not None else load_model(run["robust"], dataset_info=data.info, device=device)
    x, y = data.tensors()
    x = x.to(device)
    t0 = time.perf_counter()
    if cfg.method in SMOOTHED:
        cert = certify_smoothed_mixture(lm.model, x, alpha=a, sigma=cfg.sigma, n0=cfg.n0, n=cfg.n,
                                        alpha_cert=cfg.alpha, batch=cfg.batch, seed=cfg.seed, idx=data.idx.tolist(),
                                        method="smoothing" if cfg.method == "mix-smoothed-h" else "lipschitz",
                                        num_classes=lm.num_classes, device=device)
    elif cfg.method == "mix-lipschitz":
        cert = certify_lipschitz_mixture(lm.model, x, alpha=a, lip=cfg.lipschitz, scale_h=scale_h, batch=cfg.batch)
    else:
        cert = certify_local_estimate(lm.model, x, alpha=a, eps=cfg.eps, norm=cfg.norm, scale_h=scale_h,
                                      generator=make_generator(estimate_seed(cfg.seed, chunk), device))
    secs = time.perf_counter() - t0
    smoothed = cfg.method in SMOOTHED
    df = certify_frame(cert, data.idx.numpy(), y.numpy(), sigma=cfg.sigma if smoothed else 0.0,
                       n0=cfg.n0 if smoothed else 0, n=cfg.n if smoothed else 0, alpha_cert=cfg.alpha, alpha=a,
                       seconds=secs, norm="L2" if smoothed else cfg.norm, dim=math.prod(data.info.input_shape))
    df["method"] = cfg.method
    config = _table_config(run, cfg)
    assert config["certified_model"] == cert.certified_model and config["radius_is_estimate"] == cert.estimate
    return df, config, list(lm.files)


@dataclass
class MixCertifyResult:
    """What :func:`certify_mixture_table` did (as :class:`robcli.certify.table.CertifyResult`), plus the
    table's ``config``."""

    df: object
    out: object
    parts: object
    config: dict
    complete: bool = False
    world: object = None


def certify_mixture_table(cfg: MixCertifyConfig, *, model: str, dataset: str, out, mix: float | None = None,
                          scale_h: float | None = None, split: str = "test", n_ex: int | None = None, skip: int = 0,
                          data_dir: str | None = None, device: str = "auto", resume: bool = False,
                          force: bool = False, world=None, chunk: int | None = None, progress=None,
                          command=None) -> MixCertifyResult:
    """``robcli certify --method mix-...``: certify the mixture ``model`` (:func:`resolve_mixture`) on the
    selected examples of ``dataset`` and write the certify table ``out`` through the resumable, spreadable table
    run (:func:`robcli.distributed.run_table`: chunks of ``chunk`` examples, default
    :data:`robcli.certify.table.FIXED_CHUNK`, over torchrun/srun ranks, ``--shard`` processes or array tasks).

    Raises:
        UsageError, DataError, ModelError: bad input, found before anything is written. NonFiniteOutput.
    """
    from pathlib import Path

    from robcli.certify.table import chunk_size
    from robcli.data.registry import load_split
    from robcli.distributed import detect, run_table
    from robcli.models import load_model
    from robcli.models.card import image_size_for
    from robcli.tables.io import provenance
    from robcli.tables.run import TableRun, parts_path
    from robcli.utils.device import resolve_rank_device

    out = Path(out)
    if out.suffix != ".parquet":
        raise UsageError(f"--out {out}: give a file name ending in .parquet")
    run = resolve_mixture(model, mix, scale_h)
    check_samples(run, cfg)
    world = world or detect()
    dev = resolve_rank_device(device, world)
    data = load_split(dataset, split, data_dir=data_dir, image_size=image_size_for(None, run["robust"])).select(
        n_ex=n_ex, skip=skip)
    lm = load_model(run["robust"], dataset_info=data.info, device=dev)
    size = chunk_size(cfg, chunk)
    # the table's configuration: the certificate's, the selection, and (a mix-local-estimate's starts are seeded
    # per chunk) the chunk size; the noise streams of the smoothed methods differ between CPU and CUDA
    config = {**_table_config(run, cfg), "dataset": dataset, "split": split, "n_ex": n_ex, "skip": skip,
              "chunk": size, "batch": cfg.batch, "seed": cfg.seed, "device_type": dev.type}
    # the certified run directory first (the name readers show), then the robust member's weights
    prov = provenance(seed=cfg.seed, device=dev, models=([model] if run["model"] else []) + list(lm.files),
                      data=data.fingerprint(), command=list(command or []))
    free = ("batch",) if cfg.method == "mix-local-estimate" else ("batch", "chunk")

    def open_run(resume_: bool, force_: bool) -> TableRun:
        return TableRun(out, "certify", config, ids=data.idx.tolist(), chunk_size=size, prov=prov, resume=resume_,
                        force=force_, free_keys=free)

    def compute(table_run: TableRun, chunks, prog) -> None:
        for i, c in enumerate(chunks):
            part = data.select(skip=c.lo, n_ex=len(c))  # the chunk's examples, in plan order
            df, _, _ = certify_mixture(run, part, cfg, device=dev, lm=lm, chunk=c.id)
            table_run.write(c, df)
            if prog is not None:
                prog(i + 1, len(chunks), cfg.method)

    df, trun = run_table(out, open_run, compute, world=world, resume=resume, force=force, progress=progress,
                         desc=cfg.method)
    return MixCertifyResult(df, out, parts_path(out), config, complete=bool(trun is not None and trun.already),
                            world=world)


def _table_config(run: dict, cfg: MixCertifyConfig) -> dict:
    """The certificate part of a mixture certify table's configuration."""
    from robcli.tables.schema import CERTIFIED_MIXTURE, CERTIFIED_MIXTURE_SMOOTHED_H, CERTIFIED_MODELS

    smoothed = cfg.method in SMOOTHED
    cm = CERTIFIED_MIXTURE_SMOOTHED_H if smoothed else CERTIFIED_MIXTURE
    return {"model": run["model"], "robust": run["robust"], "mix_alpha": run["alpha"], "scale_h": run["scale_h"],
            "method": cfg.method, "sigma": cfg.sigma, "lipschitz": cfg.lipschitz, "eps": cfg.eps,
            "norm": "L2" if smoothed else cfg.norm, "N0": cfg.n0, "N": cfg.n, "alpha": cfg.alpha,
            "certified_model": cm, "certified_model_is": CERTIFIED_MODELS[cm],
            "radius_is_estimate": cfg.method == "mix-local-estimate"}
