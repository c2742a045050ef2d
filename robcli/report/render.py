"""Renderers: a report is a list of sections (title, DataFrame, note) plus optional PNG figures.

Fractions stay fractions in ``csv`` and ``json``; ``markdown``, ``latex`` and ``html`` show columns whose
name ends in ``_acc``, ``_inaccuracy``, ``_selection`` or ``_rate`` (and the split fractions) as percent.
LaTeX tables use booktabs rules (``\\usepackage{booktabs}``); the output's first line says so.
"""

from __future__ import annotations

import base64
import html as _html
import json
import math
from dataclasses import dataclass, field
from typing import Any

FORMATS = ("markdown", "csv", "latex", "json", "html")
LATEX_PREAMBLE_NOTE = "% robcli report: the tables use \\toprule/\\midrule/\\bottomrule: add \\usepackage{booktabs} to the preamble"
PCT_SUFFIXES = ("_acc", "_inaccuracy", "_selection", "_rate", "robust_accurate", "robust_inaccurate",
                "nonrobust_accurate", "nonrobust_inaccurate", "robust")


@dataclass
class Section:
    title: str
    df: Any  # pandas DataFrame
    note: str = ""


@dataclass
class Report:
    sections: list[Section] = field(default_factory=list)
    figures: list[tuple[str, bytes]] = field(default_factory=list)  # (caption, PNG bytes)
    data: dict = field(default_factory=dict)  # raw rows for the plots


def _is_pct(col: str) -> bool:
    return any(col.endswith(s) for s in PCT_SUFFIXES) or col.startswith(("delta_", "acc@", "acc_lb@", "inacc@", "sel@", "selacc@"))


def _cell(v: Any, col: str) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if _is_pct(col):
            s = f"{100 * v:.2f}"
            return ("+" + s) if col.startswith("delta_") and v > 0 else s
        return f"{v:.4g}"
    if isinstance(v, bool):
        return "yes" if v else ""
    return str(v)


def _header(col: str) -> str:
    return f"{col} [%]" if _is_pct(col) else col


def _rows(df) -> list[list[str]]:
    return [[_cell(v, c) for c, v in zip(df.columns, row)] for row in df.itertuples(index=False, name=None)]


def markdown_table(df) -> str:
    cols = [_header(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in _rows(df):
        lines.append("| " + " | ".join(x.replace("|", "\\|") for x in r) + " |")
    return "\n".join(lines)


def _tex(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"),
                 ("_", r"\_"), ("{", r"\{"), ("}", r"\}")):
        s = s.replace(a, b) if a != "\\" else s.replace(a, "\x00")
    return s.replace("\x00", r"\textbackslash{}")


def latex_table(df, caption: str) -> str:
    cols = [_tex(_header(c)) for c in df.columns]
    out = ["\\begin{table}[t]", "\\centering", f"\\caption{{{_tex(caption)}}}",
           "\\begin{tabular}{" + "l" * len(cols) + "}", "\\toprule", " & ".join(cols) + " \\\\", "\\midrule"]
    out += [" & ".join(_tex(x) for x in r) + " \\\\" for r in _rows(df)]
    out += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(out)


def html_table(df) -> str:
    head = "".join(f"<th>{_html.escape(_header(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{_html.escape(x)}</td>" for x in r) + "</tr>" for r in _rows(df))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _json_val(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    if hasattr(v, "item"):
        return _json_val(v.item())
    return v


def render(report: Report, fmt: str) -> str:
    """Render a report as text in one of ``FORMATS``."""
    if fmt == "markdown":
        parts = ["# robcli report"]
        for s in report.sections:
            parts.append(f"## {s.title}")
            if s.note:
                parts.append(s.note)
            parts.append(markdown_table(s.df))
        return "\n\n".join(parts) + "\n"
    if fmt == "csv":
        import io

        buf = io.StringIO()
        for i, s in enumerate(report.sections):
            if i:
                buf.write("\n")
            buf.write(f"# {s.title}\n")
            s.df.to_csv(buf, index=False)
        return buf.getvalue()
    if fmt == "latex":
        head = LATEX_PREAMBLE_NOTE + "\n\n"
        return head + "\n\n".join(latex_table(s.df, s.title) for s in report.sections) + "\n"
    if fmt == "json":
        doc = {"sections": [{"title": s.title, "note": s.note,
                             "rows": [{c: _json_val(v) for c, v in zip(s.df.columns, r)}
                                      for r in s.df.itertuples(index=False, name=None)]}
                            for s in report.sections]}
        return json.dumps(doc, indent=2) + "\n"
    if fmt == "html":
        css = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
               "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}th{background:#eee}"
               "img{max-width:100%}")
        parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>robcli report</title><style>{css}</style>"
                 "</head><body><h1>robcli report</h1>"]
        for s in report.sections:
            parts.append(f"<h2>{_html.escape(s.title)}</h2>")
            if s.note:
                parts.append(f"<p>{_html.escape(s.note)}</p>")
            parts.append(html_table(s.df))
        for cap, png in report.figures:
            b64 = base64.b64encode(png).decode()
            parts.append(f"<figure><img alt='{_html.escape(cap)}' src='data:image/png;base64,{b64}'>"
                         f"<figcaption>{_html.escape(cap)}</figcaption></figure>")
        parts.append("</body></html>")
        return "\n".join(parts) + "\n"
    from robcli.errors import UsageError

    raise UsageError(f"unknown --format {fmt!r}; choose one of {', '.join(FORMATS)}")


def render_partition_summary(summary: dict, title: str, fmt: str = "text") -> str:
    """The Table 8-style summary of one partition (``fmt``: text, markdown, csv, json)."""
    import pandas as pd

    df = pd.DataFrame([{"split": k, "count": v["count"], "fraction": v["fraction"]} for k, v in summary.items()])
    if fmt == "json":
        return json.dumps({"title": title, "splits": summary}, indent=2)
    if fmt == "csv":
        return df.to_csv(index=False).rstrip("\n")
    if fmt == "markdown":
        rows = [f"| {r.split} | {r.count} | {100 * r.fraction:.2f} |" for r in df.itertuples()]
        return f"**{title}**\n\n| split | count | share [%] |\n|---|---|---|\n" + "\n".join(rows)
    w = max(len(k) for k in summary)
    lines = [title] + [f"  {k:<{w}}  {v['count']:>7d}  {100 * v['fraction']:6.2f}%" for k, v in summary.items()]
    return "\n".join(lines)
