"""imagefolder data after finetune: later commands read it at the size the model was trained on."""

import numpy as np
import torch

from robcli.models import build, make_card, save_run


def _tree(root, size=20):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("test", 3)):
        for c in range(2):
            d = root / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(d / f"{i}.png")


def test_certify_and_attack_take_the_image_size_from_the_model_card(cli, tmp_path):
    _tree(tmp_path / "data")
    torch.manual_seed(0)
    run = tmp_path / "run"
    save_run(run, build("tiny_cnn", 2, (3, 16, 16)), make_card("tiny_cnn", 2, (3, 16, 16), dataset="imagefolder"))
    r = cli("certify", "--model", run, "--dataset", "imagefolder", "--data-dir", tmp_path / "data", "--sigma", "0.25",
            "--N0", "20", "--N", "200", "--out", tmp_path / "c.parquet", "--quiet")
    assert r.exit_code == 0, r.output
    r = cli("attack", "--model", run, "--dataset", "imagefolder", "--data-dir", tmp_path / "data", "--attack", "pgd",
            "--eps", "8/255", "--steps", "2", "--out", tmp_path / "a.parquet", "--quiet")
    assert r.exit_code == 0, r.output
    # an explicit size that disagrees with the model is a one-line error
    r = cli("certify", "--model", run, "--dataset", "imagefolder", "--data-dir", tmp_path / "data",
            "--image-size", "24", "--sigma", "0.25", "--N", "200", "--out", tmp_path / "c2.parquet")
    assert r.exit_code == 2 and "robcli: error:" in r.output and not (tmp_path / "c2.parquet").exists()
