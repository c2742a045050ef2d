"""Per-example views of attack/certify tables and the paper's metrics.

Natural accuracy (eq. 1), robust accuracy (eq. 2) and robust inaccuracy (eq. 3) of
"Avoiding Robust Misclassifications for Improved Robustness without Accuracy Loss":

* ``nat_acc``            = mean 1{F(x) = y}
* ``robust_acc``         = mean 1{F(x) = y and F constant on B_eps(x)}
* ``robust_inaccuracy``  = mean 1{F(x) != y and F constant on B_eps(x)}

From an attack table, "constant on the ball" means no attack at that eps changed the prediction (an upper
bound on the truth: attacks can miss). From a certify table it means the smoothed classifier did not abstain
and its certified radius is at least the radius asked for (Cohen et al.: g is constant inside that radius).

A certify table is read as the certificate of the model it names only when it is one: a mixture table whose
``certified_model`` is ``mixture-with-smoothed-h`` certifies a classifier no run directory computes, and a
table of radius ESTIMATES (``radius_is_estimate``) certifies nothing; :func:`certify_view` refuses both
(estimates only unless ``allow_estimate``, for reports that label them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from robcli.errors import TableError, UsageError


@dataclass
class ModelView:
    """One model's per-example outcome at one radius.

    Attributes:
        df: pandas DataFrame indexed by ``idx`` with columns ``label`` (int), ``pred`` (int, -1 = abstain),
            ``correct`` (bool), ``robust`` (bool).
        eps: the radius the robustness refers to.
        norm: ``Linf`` or ``L2``.
        source: the table path.
        kind: ``attack`` or ``certify``.
        data: the data fingerprint from the table metadata.
        model: the model path recorded in the table metadata (or the table path).
        attacks: attacks combined (worst case) for attack tables.
    """

    df: Any
    eps: float
    norm: str
    source: str
    kind: str
    data: dict = field(default_factory=dict)
    model: str = ""
    attacks: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.df)


def same_eps(a: float, b: float) -> bool:
    return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)


def certificate_of(table) -> tuple[str | None, bool]:
    """(certified_model, radii are estimates) of a certify table.

    ``certified_model`` comes from the column (or the config), for tables written before it from
    ``radius_kind`` (mixture certificates); None for Cohen's CERTIFY tables (the smoothed model of their run).

    Raises:
        TableError: one table holding certificates of different classifiers.
    """
    from robcli.tables.schema import CERTIFIED_MIXTURE, RADIUS_KIND_CERTIFIES

    df = table.df
    found: set[str] = set()
    if "certified_model" in df.columns:
        found = {str(v) for v in df["certified_model"].unique()}
    elif "radius_kind" in df.columns:
        for k in map(str, df["radius_kind"].unique()):
            cm = RADIUS_KIND_CERTIFIES.get(k, CERTIFIED_MIXTURE if k.startswith("lipschitz-local-estimate") else None)
            if cm is not None:
                found.add(cm)
    elif table.config.get("certified_model"):
        found = {str(table.config["certified_model"])}
    if len(found) > 1:
        raise TableError(f"{table.path} holds certificates of different classifiers ({', '.join(sorted(found))})")
    est = bool(df["radius_is_estimate"].astype(bool).any()) if "radius_is_estimate" in df.columns else \
        bool(table.config.get("radius_is_estimate", False))
    return (found.pop() if found else None), est


def certified_model_name(table, display=str) -> str | None:
    """What a mixture certify table certifies, as a name: the mixture run directory (``certify --method mix-... --model RUN``),
    else ``mixture(h=ROBUST, alpha=A)`` (any mixture of that h at that weight); None for other tables.
    ``display`` formats the paths (e.g. a short display name)."""
    from robcli.tables.schema import CERTIFIED_MIXTURE

    if table.kind != "certify" or certificate_of(table)[0] != CERTIFIED_MIXTURE:
        return None
    cfg = table.config
    if cfg.get("model"):
        return display(str(cfg["model"]))
    a = cfg.get("mix_alpha")
    return f"mixture(h={display(str(cfg.get('robust')))}" + (f", alpha={float(a):g})" if a is not None else ")")


def check_certificate(table, *, allow_estimate: bool = False) -> None:
    """Refuse a certify table that is not a certificate of the model it would stand for.

    Raises:
        TableError: ``certified_model`` is ``mixture-with-smoothed-h`` (always), or the radii are estimates
            (unless ``allow_estimate``).
    """
    from robcli.tables.schema import CERTIFIED_MIXTURE_SMOOTHED_H

    cm, est = certificate_of(table)
    if cm == CERTIFIED_MIXTURE_SMOOTHED_H:
        robust = table.config.get("robust") or "h"
        raise TableError(
            f"{table.path} certifies {cm} (certify --method mix-smoothed-h/mix-lipschitz-rs: the mixture whose robust member "
            f"is the Gaussian-smoothed hard classifier of {robust}), not a mixture run directory or any model robcli "
            "loads; for the run directory's own classifier certify with --method mix-lipschitz"
        )
    if est and not allow_estimate:
        raise TableError(
            f"{table.path} holds radius ESTIMATES of {cm or 'a model'} (radius_is_estimate; certify --method mix-local-estimate, "
            "the adaptive-smoothing paper's App. C.3), not certificates: it cannot certify anything here; use an attack table or a certificate"
        )


def tests_labels(table) -> bool:
    """Whether a certify table tested each example's LABEL (``certify --sequential --against label``).

    Such a table measures certified accuracy on a labeled set: its certificates say "the label is certified at
    radius r", which a deployed selector could never compute (it has no labels)."""
    if str((table.config or {}).get("against", "")).strip().lower() == "label":
        return True
    df = table.df
    return "against" in df.columns and bool((df["against"].astype(str) == "label").any())


def check_selector_table(table) -> None:
    """Refuse a certify table as a selector's (robust model's) table when it was certified against the labels.

    Raises:
        TableError: the table was made with ``--against label``.
    """
    if table.kind == "certify" and tests_labels(table):
        raise TableError(f"{table.path} was certified --against label: a selector cannot use labels; certify the "
                         "robust model with --against prediction (the default) for compose")


def check_certified_run(table, run: str) -> None:
    """Refuse a run directory given for a mixture certify table that does not certify it (compose --robust-model).

    Raises:
        TableError: the table certifies a mixture and ``run`` is not the mixture run directory it names.
    """
    from pathlib import Path

    name = certified_model_name(table)
    if name is None:
        return
    model = table.config.get("model")
    if not model:
        raise TableError(f"{table.path} certifies {name} for any core model, not the run {run}: certify the mixture "
                         "run directory itself (certify --method mix-... --model RUN)")
    if Path(run).expanduser().resolve() != Path(str(model)).expanduser().resolve():
        raise TableError(f"{table.path} certifies the mixture run {model}, not {run}")


def _model_name(table) -> str:
    mixture = certified_model_name(table) if table.kind == "certify" else None
    if mixture is not None:
        return mixture
    models = table.meta.get("models") or []
    if isinstance(models, list) and models and isinstance(models[0], dict) and models[0].get("path"):
        from pathlib import Path

        p = Path(str(models[0]["path"]))
        # run-dir weights are named by their run directory
        return str(p.parent) if p.name in ("model.safetensors", "last.safetensors") else str(p)
    return str(table.path)


def available_eps(df) -> list[float]:
    """Distinct eps values of an attack table's frame, sorted."""
    out: list[float] = []
    for e in sorted(float(v) for v in df["eps"].unique()):
        if not any(same_eps(e, o) for o in out):
            out.append(e)
    return out


def fmt_eps(e: float) -> str:
    r = e * 255
    if e > 0 and abs(r - round(r)) < 1e-6 and e <= 1:
        return f"{e:g} ({int(round(r))}/255)"
    return f"{e:g}"


def attack_view(table, eps: float | None = None, *, attack: str | None = None, norm: str | None = None) -> ModelView:
    """Per-example worst case over the attacks of an attack table at one eps.

    An example counts as robust only when every attack run at that eps left its prediction unchanged.

    Raises:
        TableError: the table has no rows at ``eps`` (or for ``attack``/``norm``), several eps and none chosen,
            attacks that cover different examples, or clean predictions that disagree between attacks.
    """
    df = table.df
    if norm is not None:
        df = df[df["norm"] == norm]
        if df.empty:
            raise TableError(f"{table.path} holds no {norm} rows (norms: {', '.join(sorted(table.df['norm'].unique()))})")
    norms = sorted(df["norm"].unique())
    if len(norms) != 1:
        raise TableError(f"{table.path} mixes norms {', '.join(norms)}; choose one with --norm")
    if attack is not None:
        sub = df[df["attack"] == attack]
        if sub.empty:
            raise TableError(
                f"{table.path} holds no {attack!r} rows (attacks: {', '.join(sorted(df['attack'].unique()))})"
            )
        df = sub
    eps_list = available_eps(df)
    if eps is None:
        if len(eps_list) != 1:
            raise TableError(f"{table.path} holds several eps ({', '.join(fmt_eps(e) for e in eps_list)}); choose one with --eps")
        eps = eps_list[0]
    mask = df["eps"].map(lambda v: same_eps(v, eps))
    df = df[mask]
    if df.empty:
        raise TableError(f"{table.path} has no rows at eps={fmt_eps(eps)} (it holds {', '.join(fmt_eps(e) for e in eps_list) or 'none'})")
    attacks = tuple(sorted(df["attack"].unique()))
    counts = df.groupby("attack")["idx"].nunique()
    n_idx = df["idx"].nunique()
    short = counts[counts != n_idx]
    if len(short):
        a = short.index[0]
        raise TableError(f"{table.path}: attack {a!r} at eps={fmt_eps(eps)} covers {short.iloc[0]} of {n_idx} examples")
    if df.duplicated(["idx", "attack"]).any():
        raise TableError(f"{table.path} has duplicate rows for one example and attack at eps={fmt_eps(eps)}")
    g = df.groupby("idx", sort=True)
    if (g["clean_pred"].nunique() > 1).any():
        raise TableError(f"{table.path}: clean predictions disagree between attacks (a randomized model?)")
    out = g.agg(label=("label", "first"), pred=("clean_pred", "first"), correct=("correct", "first"), robust=("robust", "all"))
    out["correct"] = out["pred"] == out["label"]
    out["robust"] = out["robust"].astype(bool)
    return ModelView(out, float(eps), norms[0], str(table.path), "attack", dict(table.meta.get("data") or {}),
                     _model_name(table), attacks)


def certify_view(table, radius: float, *, sigma: float | None = None, norm: str = "L2",
                 allow_estimate: bool = False) -> ModelView:
    """Per-example outcome of a certified classifier at a radius (eq. 13: certified radius >= ``radius``).

    ``predict == -1`` (Cohen's abstain) is neither correct nor robust. The radius asked for is in ``norm``;
    each row's ``radius`` is in the norm of its certificate: the table's ``norm`` column where it has one
    (mixture certificates), else L2 (Cohen's CERTIFY). The conversion is sound in both directions: an Linf
    ball of radius r contains the L2 ball of radius r, so an Linf radius answers an L2 question as it is; an
    L2 ball of radius r contains only the Linf ball of radius r / sqrt(d), so an L2 radius answers an Linf
    question through the ``radius_linf`` column (r / sqrt(d), written by certify). Tables that are not a
    certificate of the model they name are refused (:func:`check_certificate`); ``allow_estimate`` lets
    radius estimates through (the caller must label what it builds on them).

    Raises:
        TableError: several sigmas and none chosen, no rows for ``sigma``, an unknown ``norm`` value, an Linf
            question on L2 certificates without a ``radius_linf`` column, a mixture-with-smoothed-h
            certificate, or estimates without ``allow_estimate``.
    """
    check_certificate(table, allow_estimate=allow_estimate)
    df = table.df
    sigmas = sorted(df["sigma"].unique())
    if sigma is None:
        if len(sigmas) != 1:
            raise TableError(f"{table.path} holds several sigmas ({', '.join(f'{s:g}' for s in sigmas)}); choose one with --sigma")
        sigma = float(sigmas[0])
    df = df[df["sigma"].map(lambda v: same_eps(v, sigma))]
    if df.empty:
        raise TableError(f"{table.path} has no rows at sigma={sigma:g} (it holds {', '.join(f'{s:g}' for s in sigmas)})")
    if df["idx"].duplicated().any():
        raise TableError(f"{table.path} has duplicate rows for one example at sigma={sigma:g}")
    d = df.set_index("idx").sort_index()
    import pandas as pd

    from robcli.utils.parse import parse_norm

    norm = parse_norm(norm)
    if "norm" in d.columns:  # the norm each row's certificate is stated in
        try:
            row_norm = d["norm"].map(lambda v: parse_norm(str(v)))
        except UsageError:
            raise TableError(f"{table.path} has an unknown value in its norm column "
                             f"({', '.join(sorted(map(str, d['norm'].unique())))}); expected Linf or L2") from None
    else:
        row_norm = pd.Series("L2", index=d.index)  # Cohen's CERTIFY: L2 radii
    r = d["radius"].astype(float)
    if norm == "Linf":
        l2 = row_norm == "L2"
        if l2.any():
            if "radius_linf" not in d.columns:
                raise TableError(f"{table.path} holds L2 certificates without a radius_linf column: an L2 radius r "
                                 "answers an Linf question only as r / sqrt(d); use --norm L2")
            r = r.where(~l2, d["radius_linf"].astype(float))
    out = pd.DataFrame({
        "label": d["label"].astype("int64"),
        "pred": d["predict"].astype("int64"),
    })
    out["correct"] = out["pred"] == out["label"]
    out["robust"] = (out["pred"] != -1) & (r >= float(radius))
    out.index.name = "idx"
    if certified_model_name(table) is not None:  # a mixture certificate: no smoothing of the certified model
        a = table.config.get("mix_alpha")
        what = (f"{d['radius_kind'].iloc[0]}(mix_alpha={float(a):g})" if "radius_kind" in d.columns and len(d)
                and a is not None else "mixture-certificate")
    else:
        what = f"smoothing(sigma={sigma:g})"
    return ModelView(out, float(radius), norm, str(table.path), "certify", dict(table.meta.get("data") or {}),
                     _model_name(table), (what,))


def view_from_table(table, eps: float | None, *, attack: str | None = None, norm: str | None = None,
                    sigma: float | None = None) -> ModelView:
    """Dispatch on the table kind (attack or certify)."""
    if table.kind == "attack":
        return attack_view(table, eps, attack=attack, norm=norm)
    if table.kind == "certify":
        if eps is None:
            raise UsageError(f"{table.path} is a certify table: give the radius with --radius (or --eps)")
        return certify_view(table, eps, sigma=sigma, norm=norm or "L2")
    raise TableError(f"{table.path} is a {table.kind} table; expected an attack or certify table")


def summarize(view: ModelView) -> dict[str, float]:
    """Eq. 1-3 plus the robust fraction, as fractions in [0, 1]."""
    df = view.df
    n = len(df)
    if n == 0:
        raise TableError(f"{view.source}: no examples")
    c = df["correct"].to_numpy(bool)
    r = df["robust"].to_numpy(bool)
    return {
        "n": n,
        "nat_acc": float(c.mean()),
        "robust_acc": float((c & r).mean()),
        "robust_inaccuracy": float((~c & r).mean()),
        "robust": float(r.mean()),
    }


def check_same_examples(views: list[ModelView]) -> None:
    """Refuse views of different data sets or different example sets.

    Raises:
        TableError: the data set/split in the metadata disagree, or the example indices or labels differ.
    """
    if len(views) < 2:
        return
    first = views[0]
    for v in views[1:]:
        for key in ("dataset", "split"):
            a, b = first.data.get(key), v.data.get(key)
            if a is not None and b is not None and a != b:
                raise TableError(f"{v.source} is on {key} {b!r} but {first.source} is on {a!r}")
        if first.norm != v.norm:
            raise TableError(f"{v.source} uses norm {v.norm} but {first.source} uses {first.norm}")
        ia, ib = first.df.index, v.df.index
        if len(ia) != len(ib) or not (ia == ib).all():
            only_a = len(ia.difference(ib))
            only_b = len(ib.difference(ia))
            raise TableError(
                f"{v.source} and {first.source} cover different examples ({only_b} only in the first, {only_a} only in the second); "
                "attack the same --n-ex/--skip/--subset"
            )
        if not (first.df["label"].to_numpy() == v.df["label"].to_numpy()).all():
            raise TableError(f"{v.source} and {first.source} disagree on labels: different data sets")
