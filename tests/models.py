"""The tiny random-weight models the tests run on, and the picture they start img2img from.

Nothing is downloaded: the models are made here with diffusers/transformers
(sdcli.convert.random_model) and converted by sdcli at fp32. The session fixtures that hold
the shared ones are in conftest.py; a model only one test file uses has its fixture there.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


class TinyModel:
    """A diffusers folder of random weights and sdcli's conversion of it."""

    def __init__(self, diffusers_dir: Path, ov_dir: Path, prediction_type: str):
        self.diffusers_dir = diffusers_dir
        self.ov_dir = ov_dir
        self.prediction_type = prediction_type
        self._pipe = None

    def pipe(self):
        """diffusers' StableDiffusionPipeline on the weights (loaded once)."""
        if self._pipe is None:
            import torch
            from diffusers import StableDiffusionPipeline

            self._pipe = StableDiffusionPipeline.from_pretrained(self.diffusers_dir, torch_dtype=torch.float32)
            self._pipe.set_progress_bar_config(disable=True)
        return self._pipe


class PipelineModel:
    """A diffusers folder and sdcli's conversion of it, whose components come from the folder's
    own pipeline class (loaded once), for any of diffusers' pipelines of that family."""

    def __init__(self, diffusers_dir: Path, ov_dir: Path):
        self.diffusers_dir, self.ov_dir = diffusers_dir, ov_dir
        self._components = None

    def components(self) -> dict:
        if self._components is None:
            import torch
            from diffusers import DiffusionPipeline

            pipe = DiffusionPipeline.from_pretrained(self.diffusers_dir, torch_dtype=torch.float32)
            self._components = dict(pipe.components)
        return self._components


class InpaintModel(PipelineModel):
    """A dedicated inpainting model (9-channel UNet)."""

    def __init__(self, diffusers_dir: Path, ov_dir: Path, name: str):
        super().__init__(diffusers_dir, ov_dir)
        self.name = name


def convert_fp32(src: Path, out: Path) -> Path:
    """`sdcli convert SRC --output OUT --weight-format fp32`, quietly."""
    from sdcli.convert.export import ConvertOptions, convert

    convert(str(src), out, ConvertOptions(weight_format="fp32"), log=lambda s: None)
    return out


def build_tiny(root: Path, prediction_type: str, variant: str = "sd1") -> TinyModel:
    """The tiny SD 1.x-shaped model (variant "sd1") or SD 2.x-shaped one ("sd2"), under root."""
    from sdcli.convert.random_model import TINY, TINY_SD2, build_random_pipeline

    name = f"tiny-{prediction_type}" + ("" if variant == "sd1" else f"-{variant}")
    src = root / name
    out = root / f"{name}-ov"
    sizes = TINY if variant == "sd1" else TINY_SD2
    build_random_pipeline(src, sizes, prediction_type=prediction_type, seed=0 if prediction_type == "epsilon" else 7)
    convert_fp32(src, out)
    return TinyModel(src, out, prediction_type)


def build_tiny_inpaint(root: Path) -> InpaintModel:
    """A tiny dedicated inpainting model (9-channel UNet)."""
    from sdcli.convert.random_model import TINY_INPAINT, build_random_pipeline

    src, out = root / "tiny-inpaint", root / "tiny-inpaint-ov"
    build_random_pipeline(src, TINY_INPAINT, seed=3)
    convert_fp32(src, out)
    return InpaintModel(src, out, "inpaint9")


def build_tiny_lcm(root: Path) -> TinyModel:
    """A tiny Latent Consistency Model (a UNet with the guidance embedding, the LCM scheduler)."""
    from sdcli.convert.random_model import TINY, build_random_pipeline

    build_random_pipeline(root / "tiny-lcm", TINY, seed=3, lcm=True)
    convert_fp32(root / "tiny-lcm", root / "tiny-lcm-ov")
    return TinyModel(root / "tiny-lcm", root / "tiny-lcm-ov", "epsilon")


def build_mismatched(root: Path) -> TinyModel:
    """A tiny model whose parts do not fit tiny_eps's: 8 latent channels, 48-wide text embeddings."""
    from sdcli.convert.random_model import TINY, build_random_pipeline

    sizes = {"unet": dict(TINY["unet"], in_channels=8, out_channels=8, cross_attention_dim=48),
             "vae": dict(TINY["vae"], latent_channels=8), "text": dict(TINY["text"], hidden_size=48)}
    build_random_pipeline(root / "other", sizes)
    convert_fp32(root / "other", root / "other-ov")
    return TinyModel(root / "other", root / "other-ov", "epsilon")


def smooth_picture(width: int, height: int) -> np.ndarray:
    """A smooth, deterministic RGB picture (uint8, height x width x 3)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.stack(
        [
            127 + 120 * np.sin(x / 9.0),
            127 + 120 * np.cos(y / 7.0),
            127 + 120 * np.sin((x + y) / 13.0),
        ],
        axis=-1,
    ).round().astype(np.uint8)


class TinySDXL(PipelineModel):
    """A tiny random-weight SDXL pipeline (diffusers folder) and sdcli's conversion of it."""

    def __init__(self, diffusers_dir: Path, ov_dir: Path, prediction_type: str = "epsilon"):
        super().__init__(diffusers_dir, ov_dir)
        self.prediction_type = prediction_type


def build_tiny_sdxl(root: Path, name: str = "tiny-sdxl", prediction_type: str = "epsilon", seed: int = 0,
                    scheduler_config: dict | None = None, refiner: bool = False,
                    in_channels: int | None = None) -> TinySDXL:
    """A tiny SDXL base (or refiner, or 9-channel inpainting model) under root, converted at fp32."""
    from sdcli.convert.random_model import TINY_SDXL, TINY_SDXL_REFINER, build_random_sdxl

    src, out = root / name, root / f"{name}-ov"
    build_random_sdxl(src, TINY_SDXL_REFINER if refiner else TINY_SDXL, prediction_type=prediction_type, seed=seed,
                      scheduler_config=scheduler_config, in_channels=in_channels)
    convert_fp32(src, out)
    return TinySDXL(src, out, prediction_type)
