"""imagefolder data after finetune: later commands read it at the size the model was trained on."""

import numpy as np
import torch

from robcli.models import build, make_card, save_run

N_TEST = 3  # images per class in the test split


def _tree(root, size=20):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("test", N_TEST)):
        for c in range(2):
            d = root / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(d / f"{i}.png")


def _check_rows(df):
    """One row per test image, each idx once, labels the folders' classes (c0 -> 0, c1 -> 1), correct consistent."""
    assert len(df) == 2 * N_TEST and sorted(df["idx"]) == list(range(2 * N_TEST))
    assert sorted(df["label"]) == [0] * N_TEST + [1] * N_TEST


def test_certify_and_attack_take_the_image_size_from_the_model_card(cli, one_line_error, tmp_path):
    from robcli.tables.io import read_table

    _tree(tmp_path / "data")
    torch.manual_seed(0)
    run = tmp_path / "run"
    save_run(run, build("tiny_cnn", 2, (3, 16, 16)), make_card("tiny_cnn", 2, (3, 16, 16), dataset="imagefolder"))
    r = cli("certify", "--model", run, "--dataset", "imagefolder", "--data-dir", tmp_path / "data", "--sigma", "0.25",
            "--N0", "20", "--N", "200", "--out", tmp_path / "c.parquet", "--quiet")
    assert r.exit_code == 0, r.output
    c = read_table(tmp_path / "c.parquet", "certify")
    _check_rows(c.df)
    assert c.meta["data"]["dataset"] == "imagefolder" and c.meta["data"]["n"] == 2 * N_TEST
    assert c.df["predict"].isin([-1, 0, 1]).all() and (c.df["correct"] == (c.df["predict"] == c.df["label"])).all()
    assert all(int(np.sum(v)) == 200 for v in c.df["counts"])
    r = cli("attack", "--model", run, "--dataset", "imagefolder", "--data-dir", tmp_path / "data", "--attack", "pgd",
            "--eps", "8/255", "--steps", "2", "--out", tmp_path / "a.parquet", "--quiet")
    assert r.exit_code == 0, r.output
    a = read_table(tmp_path / "a.parquet", "attack").df
    _check_rows(a)
    assert a["clean_pred"].isin([0, 1]).all() and (a["correct"] == (a["clean_pred"] == a["label"])).all()
    assert a["eps"].unique().tolist() == [8 / 255]
    # an explicit size that disagrees with the model is a one-line error
    one_line_error(cli("certify", "--model", run, "--dataset", "imagefolder", "--data-dir", tmp_path / "data",
                       "--image-size", "24", "--sigma", "0.25", "--N", "200", "--out", tmp_path / "c2.parquet"),
                   "24")
    assert not (tmp_path / "c2.parquet").exists()
