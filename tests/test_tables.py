"""Parquet tables: schema validation, atomic writes, provenance metadata, checking reader, shard folders."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from robcli import __version__
from robcli.errors import TableError
from robcli.tables import SCHEMA_VERSION, SCHEMAS, provenance, read_table, write_table
from robcli.utils.hashing import sha256_file


def attack_df(idx=(0, 1, 2), eps=(0.1,), attack="pgd") -> pd.DataFrame:
    rows = []
    for e in eps:
        for i in idx:
            rows.append({
                "idx": i, "label": i % 3, "eps": e, "norm": "Linf", "attack": attack, "clean_pred": i % 3,
                "adv_pred": (i + 1) % 3, "correct": True, "robust": i % 2 == 0, "clean_margin": 0.5,
                "adv_margin": -0.1, "pert_norm": e,
            })
    return pd.DataFrame(rows)


def compose_df(**over) -> pd.DataFrame:
    row = {"selector": "robust", "threshold": 0.5, "eps": 0.1, "nat_acc": 0.9, "robust_acc": 0.5,
           "robust_selection": 0.6, "selected_robust_acc": float("nan"), "robust_inaccuracy": 0.01}
    row.update(over)
    return pd.DataFrame([row])


def test_every_kind_has_a_schema():
    assert {"attack", "certify", "partition", "compose", "train_log"} <= set(SCHEMAS)
    assert {"idx", "label", "eps", "norm", "attack", "clean_pred", "adv_pred", "correct", "robust",
            "clean_margin", "adv_margin"} <= set(SCHEMAS["attack"])
    assert list(SCHEMAS["certify"])[:6] == ["idx", "label", "predict", "radius", "correct", "time"]


def test_round_trip_with_metadata(tmp_path):
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"weights")
    prov = provenance(seed=7, device="cpu", models=[model], data={"dataset": "gaussians", "sha256": "ab" * 32},
                      command=["attack", "--eps", "8/255"])
    cfg = {"eps": [0.1], "attack": "pgd", "n_ex": 3}
    out = write_table(attack_df(), tmp_path / "sub" / "a.parquet", "attack", config=cfg, prov=prov)
    t = read_table(out, "attack")
    assert t.kind == "attack" and t.path == str(out)
    pd.testing.assert_frame_equal(t.df[list(SCHEMAS["attack"])], attack_df()[list(SCHEMAS["attack"])],
                                  check_dtype=False)
    assert t.df["idx"].dtype == np.int64 and t.df["robust"].dtype == bool
    assert pd.api.types.is_string_dtype(t.df["norm"].dtype)
    m = t.meta
    assert t.config == cfg
    assert m["seed"] == 7 and m["device"] == "cpu" and m["command"] == ["attack", "--eps", "8/255"]
    assert m["models"] == [{"path": str(model), "sha256": sha256_file(model)}]
    assert m["data"] == {"dataset": "gaussians", "sha256": "ab" * 32}
    assert m["schema_version"] == SCHEMA_VERSION and m["version"] == __version__
    import torch

    assert m["torch_version"] == torch.__version__ and m["table"] == "attack"
    assert m["threads"] == str(torch.get_num_threads())
    # the metadata is plain Parquet schema metadata, readable by any tool
    raw = pq.read_schema(out).metadata
    assert raw[b"robcli.table"] == b"attack" and json.loads(raw[b"robcli.config"]) == cfg


def test_provenance_of_run_directory_hashes_its_weights_and_card(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / "last.safetensors").write_bytes(b"last")
    (d / "model.safetensors").write_bytes(b"best")
    (d / "card.json").write_text("{}")
    entry = provenance(models=[d])["models"][0]
    assert entry["sha256"] == sha256_file(d / "model.safetensors")
    assert entry["card_sha256"] == sha256_file(d / "card.json")
    assert provenance(models=["resnet18"])["models"][0]["sha256"] is None
    assert provenance()["device"] is None


def test_atomic_write_leaves_no_file_on_crash(tmp_path, monkeypatch):
    out = tmp_path / "a.parquet"

    def crash(table, where, *a, **k):
        with open(where, "wb") as f:
            f.write(b"PAR1 half written")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", crash)
    with pytest.raises(OSError, match="disk full"):
        write_table(attack_df(), out, "attack")
    assert list(tmp_path.iterdir()) == []
    # an existing good table survives a crashed overwrite untouched
    monkeypatch.undo()
    write_table(attack_df(), out, "attack", config={"v": 1})
    before = out.read_bytes()
    monkeypatch.setattr(pq, "write_table", crash)
    with pytest.raises(OSError, match="disk full"):
        write_table(attack_df(idx=(5,)), out, "attack", config={"v": 2})
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["a.parquet"]
    monkeypatch.undo()
    assert read_table(out).config == {"v": 1}


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d.drop(columns=["robust"]), "lacks required column.*robust"),
    (lambda d: d.assign(eps=[0.1, float("nan"), 0.1]), "'eps' cannot be float64: NaN"),
    (lambda d: d.assign(idx=["a", "b", "c"]), "'idx' cannot be int64"),
    (lambda d: d.assign(idx=[0.0, 1.5, 2.0]), "'idx' cannot be int64: non-integer"),
    (lambda d: d.assign(label=[0, None, 1]), "'label' cannot be int64"),
    (lambda d: d.assign(robust=["False", "True", "True"]), "'robust' cannot be bool"),
    (lambda d: d.assign(robust=[0, 2, 1]), "'robust' cannot be bool"),
    (lambda d: d.assign(norm=["Linf", None, "Linf"]), "'norm' cannot be string: missing"),
    (lambda d: d.assign(norm=[1, 2, 3]), "'norm' cannot be string"),
    (lambda d: d.assign(eps=["0.1", "0.1", "0.1"]), "'eps' cannot be float64: text"),
])
def test_schema_validation_refuses_bad_attack_tables(tmp_path, mutate, match):
    out = tmp_path / "a.parquet"
    with pytest.raises(TableError, match=match) as e:
        write_table(mutate(attack_df()), out, "attack")
    assert "\n" not in str(e.value)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_schema_fractions_and_nullable(tmp_path):
    write_table(compose_df(), tmp_path / "ok.parquet", "compose")  # NaN allowed in selected_robust_acc
    assert np.isnan(read_table(tmp_path / "ok.parquet", "compose").df["selected_robust_acc"][0])
    for bad in ({"nat_acc": 1.5}, {"robust_acc": -0.01}, {"robust_inaccuracy": 97.0}):
        with pytest.raises(TableError, match="fractions in \\[0,1\\]"):
            write_table(compose_df(**bad), tmp_path / "bad.parquet", "compose")
    with pytest.raises(TableError, match="'nat_acc' cannot be float64: NaN"):
        write_table(compose_df(nat_acc=float("nan")), tmp_path / "bad.parquet", "compose")
    with pytest.raises(TableError, match="unknown split"):
        write_table(pd.DataFrame({"idx": [0], "label": [1], "split": ["robust"]}), tmp_path / "p.parquet", "partition")
    assert not (tmp_path / "bad.parquet").exists() and not (tmp_path / "p.parquet").exists()


def test_bool_from_01_and_extra_columns_kept(tmp_path):
    df = attack_df().assign(correct=[1, 0, 1], extra=["x", "y", "z"])
    t = read_table(write_table(df, tmp_path / "a.parquet", "attack"))
    assert t.df["correct"].tolist() == [True, False, True] and t.df["extra"].tolist() == ["x", "y", "z"]


def test_writer_refuses_unknown_kind_and_directory_target(tmp_path):
    with pytest.raises(TableError, match="unknown table kind"):
        write_table(attack_df(), tmp_path / "a.parquet", "nope")
    (tmp_path / "d.parquet").mkdir()
    with pytest.raises(TableError, match="is a directory"):
        write_table(attack_df(), tmp_path / "d.parquet", "attack")


# ---- reader errors --------------------------------------------------------------------------------------


def test_reader_errors(tmp_path):
    with pytest.raises(TableError, match="does not exist"):
        read_table(tmp_path / "missing.parquet")
    bad = tmp_path / "corrupt.parquet"
    bad.write_bytes(b"this is not parquet")
    with pytest.raises(TableError, match="not a readable Parquet table"):
        read_table(bad)
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    with pytest.raises(TableError, match="not a readable Parquet table"):
        read_table(empty)
    good = write_table(attack_df(), tmp_path / "good.parquet", "attack")
    truncated = tmp_path / "trunc.parquet"
    truncated.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(TableError, match="not a readable Parquet table"):
        read_table(truncated)
    foreign = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"a": [1, 2]}), foreign)
    with pytest.raises(TableError, match="not a robcli table"):
        read_table(foreign)
    with pytest.raises(TableError, match="is a attack table; expected certify or partition") as e:
        read_table(good, ("certify", "partition"))
    assert "\n" not in str(e.value)
    assert read_table(good, "attack").kind == "attack"


def _rewrite_meta(src, dst, **changes):
    t = pq.read_table(src)
    meta = dict(t.schema.metadata)
    for k, v in changes.items():
        meta[f"robcli.{k}".encode()] = v.encode()
    pq.write_table(t.replace_schema_metadata(meta), dst)


def test_reader_refuses_other_schema_version_and_unknown_kind(tmp_path):
    good = write_table(attack_df(), tmp_path / "good.parquet", "attack")
    _rewrite_meta(good, tmp_path / "v99.parquet", schema_version="99")
    with pytest.raises(TableError, match="schema version '99'; this robcli reads '1'"):
        read_table(tmp_path / "v99.parquet")
    _rewrite_meta(good, tmp_path / "k.parquet", table="mystery")
    with pytest.raises(TableError, match="'mystery' table"):
        read_table(tmp_path / "k.parquet")


def test_reader_validates_schema_of_tampered_file(tmp_path):
    good = write_table(attack_df(), tmp_path / "good.parquet", "attack")
    t = pq.read_table(good)
    t = t.drop_columns(["robust"])
    pq.write_table(t, tmp_path / "tampered.parquet")
    with pytest.raises(TableError, match="tampered.parquet: attack table lacks required column.*robust"):
        read_table(tmp_path / "tampered.parquet")


# ---- folders of shards ------------------------------------------------------------------------------------


def test_folder_of_shards_reads_as_one_table(tmp_path):
    d = tmp_path / "shards"
    cfg = {"attack": "pgd", "eps": [0.1, 0.2]}
    prov = provenance(seed=1)
    write_table(attack_df(idx=(3, 4), eps=(0.1, 0.2)), d / "s1.parquet", "attack", config={**cfg, "shard": "1/2"}, prov=prov)
    write_table(attack_df(idx=(0, 1, 2), eps=(0.1, 0.2)), d / "s0.parquet", "attack", config={**cfg, "shard": "0/2"}, prov=prov)
    (d / ".s2.parquet.tmp").write_bytes(b"leftover temp file")  # ignored
    (d / "s2.parquet.partial").write_bytes(b"resume state")  # ignored
    t = read_table(d, "attack")
    assert len(t.df) == 10
    assert t.df[["idx", "eps"]].values.tolist() == sorted(t.df[["idx", "eps"]].values.tolist())
    assert len(t.meta["shards"]) == 2 and t.config["attack"] == "pgd"


def test_folder_of_shards_refusals(tmp_path):
    d = tmp_path / "shards"
    write_table(attack_df(idx=(0, 1)), d / "s0.parquet", "attack", config={"attack": "pgd", "shard": "0/2"})
    write_table(attack_df(idx=(2, 3)), d / "s1.parquet", "attack", config={"attack": "apgd-ce", "shard": "1/2"})
    with pytest.raises(TableError, match="different configurations"):
        read_table(d)
    write_table(attack_df(idx=(1, 2)), d / "s1.parquet", "attack", config={"attack": "pgd", "shard": "1/2"})
    with pytest.raises(TableError, match="both hold .*'idx': 1"):
        read_table(d)
    m1, m2 = tmp_path / "m1", tmp_path / "m2"
    m1.write_bytes(b"1")
    m2.write_bytes(b"2")
    write_table(attack_df(idx=(0,)), d / "s0.parquet", "attack", config={"attack": "pgd"}, prov=provenance(models=[m1]))
    write_table(attack_df(idx=(2,)), d / "s1.parquet", "attack", config={"attack": "pgd"}, prov=provenance(models=[m2]))
    with pytest.raises(TableError, match="different model files"):
        read_table(d)
    write_table(compose_df(), d / "s1.parquet", "compose", config={"attack": "pgd"})
    with pytest.raises(TableError, match="mixes table kinds"):
        read_table(d)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TableError, match="holds no .parquet tables"):
        read_table(empty)


def _cert_df(idx):
    n = len(idx)
    return pd.DataFrame({"idx": list(idx), "label": [0] * n, "predict": [0] * n, "radius": [0.1] * n,
                         "correct": [True] * n, "time": [0.0] * n, "sigma": [0.12] * n, "N0": [10] * n,
                         "N": [100] * n, "alpha": [0.01] * n, "nA": [90] * n, "pA_lower": [0.8] * n})


def _shard(d, i, k, idx, **cfg):
    base = {"sigmas": [0.12], "N": 100, "batch": 1000, "compile": False, "device_type": "cpu",
            "shard": None if k is None else f"{i}/{k}"}
    write_table(_cert_df(idx), d / f"s{i}.parquet", "certify", config={**base, **cfg}, prov=provenance(device="cpu"))


def test_folder_of_shards_must_hold_every_shard(tmp_path):
    d = tmp_path / "shards"
    _shard(d, 0, 3, (0, 3))
    _shard(d, 2, 3, (2,))
    with pytest.raises(TableError, match=r"lacks shard\(s\) 1/3 \(has 2 of 3\)"):
        read_table(d)
    _shard(d, 1, 3, ())  # an empty shard counts: the folder is complete
    assert read_table(d, "certify").df["idx"].tolist() == [0, 2, 3]
    (d / "s1.parquet").unlink()
    _shard(d, 1, 4, (1,))
    with pytest.raises(TableError, match="disagree on the number of shards K"):
        read_table(d)
    _shard(d, 1, None, (1,))
    with pytest.raises(TableError, match="mixes shards with an unsharded table .s1.parquet"):
        read_table(d)
    _shard(d, 1, 3, ())
    write_table(_cert_df(()), d / "dup.parquet", "certify",
                config={"sigmas": [0.12], "N": 100, "device_type": "cpu", "shard": "2/3"})
    with pytest.raises(TableError, match="are both shard 2/3"):
        read_table(d)


def test_folder_of_shards_batch_and_compile_may_differ_but_not_device_type(tmp_path):
    d = tmp_path / "shards"
    _shard(d, 0, 2, (0, 2), batch=250, compile=True)
    _shard(d, 1, 2, (1,), batch=4000)
    assert len(read_table(d, "certify").df) == 3
    _shard(d, 1, 2, (1,), N=200)
    with pytest.raises(TableError, match="different configurations"):
        read_table(d)
    _shard(d, 1, 2, (1,), device_type="cuda")
    with pytest.raises(TableError, match=r"different device types \(s0.parquet: cpu, s1.parquet: cuda\)"):
        read_table(d)
    # a table without a recorded device_type falls back on its provenance device (cuda:1 -> cuda)
    cfg = {"sigmas": [0.12], "N": 100, "batch": 1000, "compile": False, "shard": "1/2"}
    write_table(_cert_df((1,)), d / "s1.parquet", "certify", config=cfg, prov=provenance(device="cuda:1"))
    with pytest.raises(TableError, match="different device types"):
        read_table(d)
    write_table(_cert_df((1,)), d / "s1.parquet", "certify", config=cfg, prov=provenance(device="cpu"))
    assert len(read_table(d, "certify").df) == 3
