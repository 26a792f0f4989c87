"""diffctl train task=digits image_model=... through the pipeline, then diffctl images on the checkpoint."""

import json

import pytest
import torch

pytest.importorskip("sklearn")

from diffctl.agents import load
from diffctl.cli import main
from diffctl.images import ImageDiffusion

TINY = {
    "unet2d": "image_model.backbone_kwargs={base: 8, mults: [1, 2], blocks: 1, attn_res: [8], groups: 4}",
    "dit2d": "image_model.backbone_kwargs={patch: 4, dim: 16, depth: 1, heads: 2}",
}


@pytest.mark.parametrize("backbone", ["unet2d", "dit2d"])
def test_train_digits_then_sample_invert_edit_classify(tmp_path, capsys, backbone):
    run_dir = tmp_path / "run"
    args = ["train", "task=digits", f"image_model={backbone}", TINY[backbone],
            f"task.dataset.path={tmp_path}/d.zarr", "training.steps=3", "training.batch_size=8",
            "training.warmup_steps=1", f"run_dir={run_dir}",
            "training.progress=false", "training.tensorboard=false", "image_model.classify_levels=2",
            "image_model.classify_first_round=1", "image_model.classify_keep=2"]  # fmt: skip
    assert main(args) == 0
    assert (run_dir / "samples.png").is_file()
    model = load(run_dir / "checkpoint")
    assert isinstance(model, ImageDiffusion) and model.num_classes == 10 and model.image_shape == (1, 16, 16)
    assert model.dataset["path"].endswith("d.zarr") and model.task == "digits"
    x = model.sample(4, labels=[0, 1, 2, 3], steps=3, generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, 1, 16, 16)
    ckpt = str(run_dir / "checkpoint")
    capsys.readouterr()
    assert (
        main(["images", "sample", ckpt, "--n", "20", "--steps", "2", "--out", str(tmp_path / "s.png")]) == 0
    )
    assert (tmp_path / "s.png").is_file()
    assert main(["images", "invert", ckpt, "--n", "3", "--steps", "5", "--out", str(tmp_path / "i.png")]) == 0
    report = json.loads(capsys.readouterr().out.splitlines()[-2])
    assert report["method"] == "edict" and report["max_abs_err"] <= 1e-4
    assert (
        main(
            [
                "images",
                "edit",
                ckpt,
                "--n",
                "2",
                "--steps",
                "3",
                "--to",
                "7",
                "--out",
                str(tmp_path / "e.png"),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["images", "classify", ckpt, "--n", "5"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["images"] == 5 and result["nfe_per_image"] == 10 * 1 + 2 * 1


def test_image_model_errors_are_one_line(tmp_path, capsys):
    assert main(["images", "sample", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert "nope" in err and "Traceback" not in err
    assert main(["train", "task=digits", "image_model=unet2d", "image_model.backbone=resnet",
                 f"task.dataset.path={tmp_path}/d.zarr", f"run_dir={tmp_path}/r"]) == 1  # fmt: skip
    assert "unknown image backbone 'resnet'" in capsys.readouterr().err
