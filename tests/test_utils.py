"""Flag parsing, device resolution, seeded generators, hashing and atomic file writes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from robcli.errors import UsageError
from robcli.utils.device import resolve_device
from robcli.utils.hashing import sha256_bytes, sha256_file, tensor_fingerprint
from robcli.utils.parse import parse_eps, parse_float_expr, parse_fraction_in, parse_norm, parse_shard
from robcli.utils.seeding import make_generator, seed_everything


@pytest.mark.parametrize("text, want", [
    ("8/255", 8 / 255), ("0.031", 0.031), (" 2/255 ", 2 / 255), ("1e-3", 1e-3), ("0", 0.0), ("1", 1.0),
    (0.5, 0.5), (1, 1.0),
])
def test_parse_eps_accepts(text, want):
    assert parse_eps(text) == pytest.approx(want, rel=0, abs=1e-15)


@pytest.mark.parametrize("text, match", [
    ("abc", "not a number"), ("", "not a number"), ("-1", "negative"), ("-1/255", "negative"),
    ("nan", "not a finite number"), ("inf", "not a finite number"), ("1/0", "divides by zero"),
    ("8/255/2", "not a number"), ("1.5", "> 1 is meaningless for Linf"), ("300/255", "Linf"),
    (True, "not a number"),
])
def test_parse_eps_rejects(text, match):
    with pytest.raises(UsageError, match=match) as e:
        parse_eps(text)
    assert "\n" not in str(e.value)


def test_parse_eps_l2_allows_large_radius_and_checks_norm():
    assert parse_eps("1.5", norm="L2") == 1.5
    assert parse_eps("1.5", norm="l2") == 1.5
    with pytest.raises(UsageError, match="unknown norm"):
        parse_eps("0.1", norm="L7")


def test_parse_float_expr_never_evaluates():
    for evil in ("__import__('os')", "2**3", "1+1", "(1)"):
        with pytest.raises(UsageError, match="not a number"):
            parse_float_expr(evil)


@pytest.mark.parametrize("text, want", [("Linf", "Linf"), ("linf", "Linf"), ("inf", "Linf"), (" L-inf ", "Linf"),
                                        ("L2", "L2"), ("l2", "L2"), ("2", "L2")])
def test_parse_norm(text, want):
    assert parse_norm(text) == want


@pytest.mark.parametrize("text", ["L1", "", "l3", "linfinity!"])
def test_parse_norm_rejects(text):
    with pytest.raises(UsageError, match="unknown norm.*Linf, L2"):
        parse_norm(text)


def test_parse_shard():
    assert parse_shard(None) is None
    assert parse_shard("0/4") == (0, 4) and parse_shard("3/4") == (3, 4) and parse_shard(" 0 / 1 ") == (0, 1)
    for bad, match in [("4/4", "0 <= I < K"), ("-1/4", "0 <= I < K"), ("0/0", "0 <= I < K"), ("a/b", "I/K"),
                       ("1/2/3", "I/K"), ("3", "I/K"), ("", "I/K")]:
        with pytest.raises(UsageError, match=match):
            parse_shard(bad)


def test_parse_fraction_in():
    assert parse_fraction_in("0.5", "alpha", 0, 1) == 0.5
    with pytest.raises(UsageError, match=r"alpha '0' is outside \(0, 1\]"):
        parse_fraction_in("0", "alpha", 0, 1, lo_open=True)
    with pytest.raises(UsageError, match="outside"):
        parse_fraction_in("1.01", "alpha", 0, 1)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("CPU") == torch.device("cpu")
    auto = resolve_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == auto
    with pytest.raises(UsageError, match="unknown device"):
        resolve_device("tpu")
    with pytest.raises(UsageError, match="unknown device"):
        resolve_device("cudax")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA is not available.*--device cpu"):
            resolve_device("cuda:0")


def test_make_generator_is_seeded_and_independent():
    a = torch.rand(5, generator=make_generator(3))
    b = torch.rand(5, generator=make_generator(3))
    c = torch.rand(5, generator=make_generator(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    torch.rand(3, generator=make_generator(1))
    assert torch.equal(before, torch.random.get_rng_state())
    assert make_generator(0, "cpu").device.type == "cpu"


def test_seed_everything():
    seed_everything(11)
    a = (torch.rand(2), np.random.rand(2))
    seed_everything(11)
    b = (torch.rand(2), np.random.rand(2))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_sha256_known_answers(tmp_path):
    f = tmp_path / "f.bin"
    f.write_bytes(b"abc")
    want = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # FIPS 180-2 test vector
    assert sha256_file(f) == want and sha256_file(f, chunk=1) == want
    assert sha256_bytes(b"a", b"bc") == want
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * 5000)
    assert sha256_file(big) == hashlib.sha256(big.read_bytes()).hexdigest()


def test_tensor_fingerprint():
    x = torch.arange(12, dtype=torch.float32).view(3, 4)
    fp = tensor_fingerprint(x)
    assert fp == tensor_fingerprint(x.clone()) == tensor_fingerprint(x.t().contiguous().t())  # layout-free
    assert fp == tensor_fingerprint(x.numpy())  # tensors and arrays agree
    assert fp != tensor_fingerprint(x.view(4, 3))  # shape counts
    assert fp != tensor_fingerprint(x.double())  # dtype counts
    y = x.clone()
    y[2, 3] += 1
    assert fp != tensor_fingerprint(y)
    assert tensor_fingerprint(x, x) != fp
    bf = x.to(torch.bfloat16)
    assert tensor_fingerprint(bf) == tensor_fingerprint(bf.clone()) != tensor_fingerprint(bf.view(torch.int16))


def _umask() -> int:
    m = os.umask(0o022)
    os.umask(m)
    return m


def test_atomic_writers_give_ordinary_file_modes(tmp_path):
    """mkstemp files are 0600; tables, weights, cards and reports must get the umask's mode (0644 usually)."""
    import torch

    from robcli.tables.io import write_table
    from robcli.train.loop import _atomic_torch_save
    from robcli.utils.fsio import atomic_write_bytes

    want = 0o666 & ~_umask()
    df = pd.DataFrame({"idx": [0], "label": [1], "split": ["robust_accurate"]})
    paths = [write_table(df, tmp_path / "p.parquet", "partition", config={}, prov={})]
    atomic_write_bytes(tmp_path / "card.json", b"{}")
    _atomic_torch_save({"a": torch.zeros(1)}, tmp_path / "state.pt")
    paths += [tmp_path / "card.json", tmp_path / "state.pt"]
    for p in paths:
        assert (Path(p).stat().st_mode & 0o777) == want, p
