"""Tiny random-weight Stable Diffusion models, built and converted once per test session
(the builders: tests/models.py; diffusers as the reference: tests/reference.py).

Nothing is downloaded: the models are made with diffusers/transformers.
"""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from tests.models import TinyModel, build_tiny, smooth_picture

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Compiled-model blobs go to a fresh folder per test session, not the user's cache.
import tempfile as _tempfile

os.environ["SDCLI_CACHE_DIR"] = _tempfile.mkdtemp(prefix="sdcli-test-cache-")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
warnings.filterwarnings("ignore", module="torch")

PARITY: list[dict] = []


@pytest.fixture(scope="session")
def models_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_eps(models_root) -> TinyModel:
    return build_tiny(models_root, "epsilon")


@pytest.fixture(scope="session")
def tiny_vpred(models_root) -> TinyModel:
    return build_tiny(models_root, "v_prediction")


@pytest.fixture(scope="session")
def tiny_sd2(models_root) -> TinyModel:
    """SD 2.x's differences on a tiny scale: linear projections, per-block heads, gelu,
    "!" padding, v-prediction."""
    model = build_tiny(models_root, "v_prediction", "sd2")
    model.prediction_type = "sd2 v_pred"
    return model


@pytest.fixture(scope="session")
def tiny_eps_fp16(tiny_eps, models_root) -> Path:
    """tiny_eps converted at fp16 (convert's default weight format)."""
    from sdcli.convert.export import ConvertOptions, convert

    out = models_root / "tiny-epsilon-fp16-ov"
    convert(str(tiny_eps.diffusers_dir), out, ConvertOptions(weight_format="fp16"), log=lambda s: None)
    return out


@pytest.fixture(scope="session")
def tiny_z_image(models_root):
    """(diffusers folder, sdcli's fp32 conversion, diffusers' ZImagePipeline on it): a tiny random
    Z-Image (seed 0), built and converted once for every test file that uses it."""
    import torch
    from diffusers import ZImagePipeline

    from sdcli.convert.random_z_image import build_random_z_image
    from tests.models import convert_fp32

    build_random_z_image(models_root / "tiny-z-image", seed=0)
    convert_fp32(models_root / "tiny-z-image", models_root / "tiny-z-image-ov")
    pipe = ZImagePipeline.from_pretrained(models_root / "tiny-z-image", torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return models_root / "tiny-z-image", models_root / "tiny-z-image-ov", pipe


@pytest.fixture(scope="session")
def tiny_eps_hybrid(tiny_eps, tmp_path_factory) -> Path:
    """tiny_eps through `sdcli convert --quantize hybrid`, calibrated on a prompts file (two
    prompts, a comment and a blank line) over 6 UNet calls: one conversion for test_quantize
    and test_lora_formats."""
    from typer.testing import CliRunner

    from sdcli.cli.app import app

    prompts = tmp_path_factory.mktemp("calib") / "prompts.txt"
    prompts.write_text("# calibration\na red house\n\na blue boat\n")
    out = tmp_path_factory.mktemp("hybrid") / "model"
    result = CliRunner().invoke(app, ["convert", str(tiny_eps.diffusers_dir), "--output", str(out), "--quantize", "hybrid",
                                      "--calibration-prompts", str(prompts), "--calibration-samples", "6", "--quiet"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def tiny_klein(models_root):
    """(diffusers folder, sdcli's fp32 conversion, diffusers' Flux2KleinPipeline on it): a tiny
    random FLUX.2-klein (distilled, seed 0), built and converted once for every test file."""
    import torch
    from diffusers import Flux2KleinPipeline

    from sdcli.convert.random_flux2_klein import build_random_flux2_klein
    from tests.models import convert_fp32

    build_random_flux2_klein(models_root / "tiny-klein", seed=0)
    convert_fp32(models_root / "tiny-klein", models_root / "tiny-klein-ov")
    pipe = Flux2KleinPipeline.from_pretrained(models_root / "tiny-klein", torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return models_root / "tiny-klein", models_root / "tiny-klein-ov", pipe


@pytest.fixture(scope="session")
def tiny_klein_base(tiny_klein, models_root):
    """(sdcli folder, diffusers pipeline) of tiny_klein as a Base model: its conversion copied
    with model_index.json's is_distilled false, and Flux2KleinPipeline on the same components
    with is_distilled=False (Base models guide above 1)."""
    import json
    import shutil

    from diffusers import Flux2KleinPipeline

    _, folder, pipe = tiny_klein
    base = models_root / "tiny-klein-base-ov"
    shutil.copytree(folder, base)
    index = json.loads((base / "model_index.json").read_text())
    (base / "model_index.json").write_text(json.dumps({**index, "is_distilled": False}))
    base_pipe = Flux2KleinPipeline(**pipe.components, is_distilled=False)
    base_pipe.set_progress_bar_config(disable=True)
    return base, base_pipe

@pytest.fixture(scope="session")
def inpaint_files(tmp_path_factory) -> dict:
    """Init images and masks, 96x64 and 64x64: a mask with an off-grid ellipse, a
    rectangle and grey levels on both sides of 0.5."""
    from sdcli.imaging.image_io import save_png

    folder = tmp_path_factory.mktemp("inpaint-images")
    files = {}
    for w, h in [(96, 64), (64, 64)]:
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        img = smooth_picture(w, h)
        mask = np.zeros((h, w), np.uint8)
        mask[((x - 0.4 * w) / (0.23 * w)) ** 2 + ((y - 0.45 * h) / (0.3 * h)) ** 2 <= 1] = 255
        mask[3:14, w - 21 : w - 5] = 200  # above 0.5: repainted
        mask[h - 12 : h - 3, 5:30] = 100  # below 0.5: kept
        save_png(folder / f"init-{w}x{h}.png", img)
        mask_path = folder / f"mask-{w}x{h}.png"
        import cv2

        cv2.imwrite(str(mask_path), mask)
        files[(w, h)] = (folder / f"init-{w}x{h}.png", mask_path)
    return files


@pytest.fixture(scope="session")
def tiny_sdxl(models_root):
    """The tiny SDXL base (tests/models.build_tiny_sdxl, seed 0; tests/data/optimum-tiny-sdxl was
    exported from the same weights)."""
    from tests.models import build_tiny_sdxl

    return build_tiny_sdxl(models_root)


@pytest.fixture(scope="session")
def tiny_sdxl_vpred(models_root):
    """A tiny SDXL v-prediction model trained with zero terminal SNR (trailing spacing), as the
    NoobAI-style models are (seed 5)."""
    from sdcli.convert.random_model import SDXL_SCHEDULER
    from tests.models import build_tiny_sdxl

    config = dict(SDXL_SCHEDULER, rescale_betas_zero_snr=True, timestep_spacing="trailing")
    return build_tiny_sdxl(models_root, "tiny-sdxl-vpred", "v_prediction", seed=5, scheduler_config=config)


@pytest.fixture(scope="session")
def tiny_sdxl_refiner(models_root):
    """A tiny SDXL refiner (text_encoder_2 only, aesthetic-score time_ids; seed 4)."""
    from tests.models import build_tiny_sdxl

    return build_tiny_sdxl(models_root, "tiny-sdxl-refiner", seed=4, refiner=True)


@pytest.fixture(scope="session")
def init_image_file(tmp_path_factory) -> Path:
    """A smooth, deterministic 64x96 RGB picture (H=64, W=96) saved as PNG."""
    from sdcli.imaging.image_io import save_png

    path = tmp_path_factory.mktemp("images") / "init.png"
    save_png(path, smooth_picture(96, 64))
    return path


@pytest.fixture(scope="session")
def parity_log():
    return PARITY


def pytest_terminal_summary(terminalreporter):
    # the largest differences from diffusers the scheduler tests measured on the way (their own
    # tolerances are checked in the tests)
    checks = sys.modules.get("tests.scheduler_checks")
    if checks is not None and checks.FIGURES:
        terminalreporter.section("scheduler tests: largest differences from diffusers")
        for key, value in sorted(checks.FIGURES.items()):
            terminalreporter.write_line(f"{key}: {value:.3g}")
    if not PARITY:
        return
    terminalreporter.section("parity with diffusers (max pixel difference of 255)")
    for row in PARITY:
        terminalreporter.write_line(
            f"{row['model']:<13} {row['scheduler']:<8} {row['mode']:<14} {row['size']:<7} max {row['max']:>3}  mean {row['mean']:.4f}"
        )
    out = os.environ.get("SDCLI_PARITY_REPORT")
    if out:
        import json

        Path(out).write_text(json.dumps(PARITY, indent=1))


@pytest.fixture(scope="session")
def tiny_controlnets(tiny_eps, models_root, tmp_path_factory):
    """Two random ControlNets fitting tiny_eps (every layer randomised), converted at fp32 by
    `sdcli convert` into a ControlNet folder; and control images."""
    from typer.testing import CliRunner

    from sdcli.cli.app import app
    from sdcli.convert.random_controlnet import build_random_controlnet
    from sdcli.imaging.image_io import save_png
    from tests.controlnets import TinyControlNets
    from tests.models import smooth_picture

    folder = models_root / "ControlNet"
    sources = {}
    for seed, name in enumerate(("cn-a", "cn-b")):
        sources[name] = build_random_controlnet(tiny_eps.diffusers_dir / "unet", models_root / f"{name}-src", seed=seed)
        result = CliRunner().invoke(app, ["convert", str(sources[name]), "--weight-format", "fp32",
                                          "--controlnet-dir", str(folder), "--quiet"])
        assert result.exit_code == 0, result.output
        assert (folder / f"{name}-src" / "openvino_model.xml").is_file()
        (folder / f"{name}-src").rename(folder / name)
    images_dir = tmp_path_factory.mktemp("control")
    y, x = np.mgrid[0:64, 0:64]
    stripes = np.where(((x // 8) + (y // 16)) % 2 == 0, 230, 20).astype(np.uint8)
    pictures = {"a": smooth_picture(64, 64), "b": np.stack([stripes, 255 - stripes, stripes], axis=-1),
                "wide": smooth_picture(96, 64)}
    images = {}
    for key, picture in pictures.items():
        images[key] = images_dir / f"{key}.png"
        save_png(images[key], picture)
    return TinyControlNets(sources, folder, images)
