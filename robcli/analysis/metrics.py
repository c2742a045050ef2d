"""Per-example views of attack/certify tables and the paper's metrics.

Natural accuracy (eq. 1), robust accuracy (eq. 2) and robust inaccuracy (eq. 3) of
"Avoiding Robust Misclassifications for Improved Robustness without Accuracy Loss":

* ``nat_acc``            = mean 1{F(x) = y}
* ``robust_acc``         = mean 1{F(x) = y and F constant on B_eps(x)}
* ``robust_inaccuracy``  = mean 1{F(x) != y and F constant on B_eps(x)}

From an attack table, "constant on the ball" means no attack at that eps changed the prediction (an upper
bound on the truth: attacks can miss). From a certify table it means the smoothed classifier did not abstain
and its certified radius is at least the radius asked for (Cohen et al.: g is constant inside that radius).
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


def _model_name(table) -> str:
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


def certify_view(table, radius: float, *, sigma: float | None = None, norm: str = "L2") -> ModelView:
    """Per-example outcome of a certified classifier at a radius (eq. 13: certified radius >= ``radius``).

    ``predict == -1`` (Cohen's abstain) is neither correct nor robust. The radius asked for is in ``norm``;
    each row's ``radius`` is in the norm of its certificate: the table's ``norm`` column where it has one
    (mixture certificates, ``robcli mix certify``), else L2 (Cohen's CERTIFY). The conversion is sound in
    both directions: an Linf ball of radius r contains the L2 ball of radius r, so an Linf radius answers an
    L2 question as it is; an L2 ball of radius r contains only the Linf ball of radius r / sqrt(d), so an L2
    radius answers an Linf question through the ``radius_linf`` column (r / sqrt(d), written by certify).

    Raises:
        TableError: several sigmas and none chosen, no rows for ``sigma``, an unknown ``norm`` value, or an
            Linf question on L2 certificates without a ``radius_linf`` column.
    """
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
    return ModelView(out, float(radius), norm, str(table.path), "certify", dict(table.meta.get("data") or {}),
                     _model_name(table), (f"smoothing(sigma={sigma:g})",))


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
