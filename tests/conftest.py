"""Tiny random-weight Stable Diffusion models, built and converted once per test session.

Nothing is downloaded: the models are made here with diffusers/transformers.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Compiled-model blobs go to a fresh folder per test session, not the user's cache.
import tempfile as _tempfile

os.environ["SDCLI_CACHE_DIR"] = _tempfile.mkdtemp(prefix="sdcli-test-cache-")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
warnings.filterwarnings("ignore", module="torch")

PARITY: list[dict] = []


class TinyModel:
    def __init__(self, diffusers_dir: Path, ov_dir: Path, prediction_type: str):
        self.diffusers_dir = diffusers_dir
        self.ov_dir = ov_dir
        self.prediction_type = prediction_type
        self._pipe = None

    def pipe(self):
        if self._pipe is None:
            import torch
            from diffusers import StableDiffusionPipeline

            self._pipe = StableDiffusionPipeline.from_pretrained(self.diffusers_dir, torch_dtype=torch.float32)
            self._pipe.set_progress_bar_config(disable=True)
        return self._pipe


def _build(root: Path, prediction_type: str, variant: str = "sd1") -> TinyModel:
    from sdcli.convert.export import ConvertOptions, convert
    from sdcli.convert.random_model import TINY, TINY_SD2, build_random_pipeline

    name = f"tiny-{prediction_type}" + ("" if variant == "sd1" else f"-{variant}")
    src = root / name
    out = root / f"{name}-ov"
    sizes = TINY if variant == "sd1" else TINY_SD2
    build_random_pipeline(src, sizes, prediction_type=prediction_type, seed=0 if prediction_type == "epsilon" else 7)
    convert(str(src), out, ConvertOptions(weight_format="fp32"), log=lambda s: None)
    return TinyModel(src, out, prediction_type)


@pytest.fixture(scope="session")
def models_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_eps(models_root) -> TinyModel:
    return _build(models_root, "epsilon")


@pytest.fixture(scope="session")
def tiny_vpred(models_root) -> TinyModel:
    return _build(models_root, "v_prediction")


@pytest.fixture(scope="session")
def tiny_sd2(models_root) -> TinyModel:
    """SD 2.x's differences on a tiny scale: linear projections, per-block heads, gelu,
    "!" padding, v-prediction."""
    model = _build(models_root, "v_prediction", "sd2")
    model.prediction_type = "sd2 v_pred"
    return model


@pytest.fixture(scope="session")
def init_image_file(tmp_path_factory) -> Path:
    """A smooth, deterministic 64x96 RGB picture (H=64, W=96) saved as PNG."""
    from sdcli.imaging.image_io import save_png

    h, w = 64, 96
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack(
        [
            127 + 120 * np.sin(x / 9.0),
            127 + 120 * np.cos(y / 7.0),
            127 + 120 * np.sin((x + y) / 13.0),
        ],
        axis=-1,
    ).round().astype(np.uint8)
    path = tmp_path_factory.mktemp("images") / "init.png"
    save_png(path, img)
    return path


@pytest.fixture(scope="session")
def parity_log():
    return PARITY


def pytest_terminal_summary(terminalreporter):
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
