"""SQL on robcli tables: DuckDB reads the Parquet tables and their robcli.* key-value metadata as they are
(a real attack table; a folder of certify shards read with a glob)."""

from __future__ import annotations

import json

import pytest
import torch

from robcli.analysis.metrics import attack_view, certify_view
from robcli.tables.io import read_table

duckdb = pytest.importorskip("duckdb", reason="duckdb is in the test extras: pip install -e '.[test]'")

# the README's query: robust inaccuracy per class (worst case over the attacks at each eps)
PER_CLASS = """
WITH ex AS (
  SELECT idx, label, eps, bool_and(robust) AS robust, any_value(correct) AS correct
  FROM read_parquet($path) GROUP BY idx, label, eps)
SELECT eps, label, count(*) AS n,
       avg(CASE WHEN robust AND NOT correct THEN 1 ELSE 0 END) AS robust_inaccuracy,
       avg(CASE WHEN robust AND correct THEN 1 ELSE 0 END) AS robust_accuracy
FROM ex GROUP BY eps, label ORDER BY eps, label
"""

META = """
SELECT decode(key) AS key, decode(value) AS value
FROM parquet_kv_metadata($path) WHERE decode(key) LIKE 'robcli.%'
"""


@pytest.fixture(scope="module")
def attack_table(cli, tmp_path_factory):
    from robcli.models import build, make_card, save_run

    torch.manual_seed(1)
    d = tmp_path_factory.mktemp("duck")
    save_run(d / "run", build("tiny_mlp", 3, (2,)), make_card("tiny_mlp", 3, (2,), dataset="gaussians"))
    out = d / "attack.parquet"
    r = cli("attack", "--model", d / "run", "--dataset", "gaussians", "--n-ex", "60", "--attack", "grid",
            "--grid-points", "9", "--eps", "0.05", "--eps", "0.2", "--quiet", "--out", out)
    assert r.exit_code == 0, r.output
    return out


def test_sql_robust_inaccuracy_per_class_equals_robcli(attack_table):
    rows = duckdb.execute(PER_CLASS, {"path": str(attack_table)}).fetchall()
    t = read_table(attack_table, "attack")
    want = []
    for eps in (0.05, 0.2):
        v = attack_view(t, eps).df
        for label, g in v.groupby("label"):
            want.append((eps, int(label), len(g), float((g["robust"] & ~g["correct"]).mean()),
                         float((g["robust"] & g["correct"]).mean())))
    assert len(rows) == len(want) == 6
    for got, exp in zip(rows, want):
        assert got[:3] == pytest.approx(exp[:3]) and got[3] == pytest.approx(exp[3]) and got[4] == pytest.approx(exp[4])
    assert sum(r[2] for r in rows) == 120  # 60 examples at each of 2 eps


def test_sql_reads_the_robcli_metadata(attack_table):
    meta = dict(duckdb.execute(META, {"path": str(attack_table)}).fetchall())
    t = read_table(attack_table, "attack")
    assert meta["robcli.table"] == "attack" and meta["robcli.schema_version"] == t.meta["schema_version"]
    assert json.loads(meta["robcli.config"]) == t.config
    assert json.loads(meta["robcli.models"])[0]["sha256"] == t.meta["models"][0]["sha256"]
    # JSON functions work on it directly: which attack, which data set
    attack, dataset = duckdb.execute(
        "SELECT json_extract_string(decode(value), '$.attack') FROM parquet_kv_metadata($p) "
        "WHERE decode(key) = 'robcli.config' UNION ALL "
        "SELECT json_extract_string(decode(value), '$.dataset') FROM parquet_kv_metadata($p) "
        "WHERE decode(key) = 'robcli.data'", {"p": str(attack_table)}).fetchall()
    assert attack[0] == "grid" and dataset[0] == "gaussians"


def test_sql_on_the_parts_of_certify_shards(cli, tmp_path):
    from robcli.tables.run import parts_path

    out = tmp_path / "cert.parquet"
    common = ["certify", "--model", "tiny_mlp", "--dataset", "gaussians", "--n-ex", "12", "--N0", "10",
              "--N", "200", "--alpha", "0.01", "--sigma", "0.25", "--quiet", "--chunk", "4", "--out", out]
    for i in range(3):
        r = cli(*common, "--shard", f"{i}/3")
        assert r.exit_code == 0, r.output
    # the parts of a run (finished or still going) are robcli tables too: SQL reads them before the merge
    glob = str(parts_path(out) / "chunk-*.parquet")
    n, acc = duckdb.execute(
        "SELECT count(*), avg(CASE WHEN predict = label AND radius >= 0.1 THEN 1 ELSE 0 END) FROM read_parquet($g)",
        {"g": glob}).fetchone()
    seeds = duckdb.execute(
        "SELECT DISTINCT json_extract_string(decode(value), '$.sigmas[0]') FROM parquet_kv_metadata($g) "
        "WHERE decode(key) = 'robcli.config'", {"g": glob}).fetchall()
    assert seeds == [("0.25",)]
    r = cli("merge", parts_path(out), "--out", out)
    assert r.exit_code == 0, r.output
    t = read_table(out, "certify")
    v = certify_view(t, 0.1)
    assert n == 12 == len(t.df) and acc == pytest.approx(float((v.df["robust"] & v.df["correct"]).mean()))
