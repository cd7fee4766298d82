"""The rest of sdcli's options on SDXL folders: `--vae tiny` with a TAESDXL, `--deepcache N`,
run-time LoRAs (kohya's lora_unet_/lora_te1_/lora_te2_ and diffusers/PEFT keys) and
embeddings (clip_l/clip_g), `--low-memory`, `--from-image`, `sdcli batch`, `--clip-skip`,
an int8 folder, `sdcli info` and the memory estimate.

The references are diffusers' StableDiffusionXL(Img2Img)Pipeline on the same tiny random
weights (`sdcli generate --rng torch --precision f32`, max pixel difference <= 2 of 255):
given `vae=AutoencoderTiny(...)`; with the DeepCache written by hand on its UNet in
tests/test_deepcache.py; with `load_lora_weights` + `fuse_lora`; with
`load_textual_inversion` on both text encoders.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sdcli.cli.app import app
from sdcli.imaging.image_io import read_rgb
from tests import reference
from tests.models import build_tiny_sdxl
from tests.reference import compare

SQUARE = dict(width=64, height=64)


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def sdxl_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sdxl-option-models")


@pytest.fixture(scope="module")
def tiny_sdxl(sdxl_root):
    return build_tiny_sdxl(sdxl_root)


def diffusers_pixels(model, scheduler="euler", components=None, **arguments) -> np.ndarray:
    return reference.diffusers_pixels(components or model.components(), scheduler, xl=True, **arguments)


def sdcli_pixels(model_dir, out, *extra, scheduler="euler", **arguments) -> np.ndarray:
    return reference.sdcli_pixels(model_dir, out, *extra, scheduler=scheduler, **arguments)


# --- --vae tiny with a TAESDXL -----------------------------------------------------------------

@pytest.fixture(scope="module")
def taesdxl_dir(sdxl_root) -> Path:
    """A random TAESDXL that fits the tiny SDXL (madebyollin/taesdxl has TAESD's architecture)."""
    from sdcli.convert.random_model import TINY_TAESDXL, build_random_taesd

    folder = sdxl_root / "tiny-taesdxl"
    build_random_taesd(folder, TINY_TAESDXL, seed=12)
    return folder


@pytest.fixture(scope="module")
def sdxl_with_tiny(tiny_sdxl, taesdxl_dir, sdxl_root) -> Path:
    """tiny_sdxl converted again, with --tiny-vae."""
    out = sdxl_root / "tiny-sdxl-taesdxl"
    r = run("convert", tiny_sdxl.diffusers_dir, "--output", out, "--weight-format", "fp32", "--tiny-vae", taesdxl_dir,
            "--quiet")
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def taesdxl(taesdxl_dir):
    import torch
    from diffusers import AutoencoderTiny

    return AutoencoderTiny.from_pretrained(taesdxl_dir, torch_dtype=torch.float32)


@pytest.mark.parametrize("scheduler,size", [("euler", (64, 64)), ("dpmpp_2m", (96, 64))])
def test_tiny_vae_txt2img_matches_diffusers(tiny_sdxl, sdxl_with_tiny, taesdxl, scheduler, size, tmp_path,
                                            parity_log):
    width, height = size
    theirs = diffusers_pixels(tiny_sdxl, scheduler, {**tiny_sdxl.components(), "vae": taesdxl}, width=width,
                              height=height)
    ours = sdcli_pixels(sdxl_with_tiny, tmp_path / "out.png", "--vae", "tiny", scheduler=scheduler, width=width,
                        height=height)
    full = sdcli_pixels(sdxl_with_tiny, tmp_path / "full.png", scheduler=scheduler, width=width, height=height)
    assert np.abs(full - ours).max() > 20  # the tiny VAE decodes, not the full one
    compare(ours, theirs, parity_log, model="sdxl taesdxl", scheduler=scheduler, mode="txt2img", size=f"{width}x{height}")


def test_tiny_vae_img2img_matches_diffusers(tiny_sdxl, sdxl_with_tiny, taesdxl, init_image_file, tmp_path,
                                            parity_log):
    theirs = diffusers_pixels(tiny_sdxl, "euler_a", {**tiny_sdxl.components(), "vae": taesdxl},
                              init_image=init_image_file, strength=0.6)
    ours = sdcli_pixels(sdxl_with_tiny, tmp_path / "out.png", "--vae", "tiny", scheduler="euler_a",
                        init_image=init_image_file, strength=0.6)
    compare(ours, theirs, parity_log, model="sdxl taesdxl", scheduler="euler_a", mode="img2img 0.6", size="96x64")


def test_tiny_vae_added_into_a_converted_sdxl_folder(tiny_sdxl, taesdxl_dir, sdxl_with_tiny, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_sdxl.ov_dir, model)
    message = run("generate", "--model", model, "--prompt", "x", "--vae", "tiny", "--output", tmp_path / "x.png")
    assert message.exit_code == 2 and "madebyollin/taesdxl" in message.output
    r = run("convert", "--tiny-vae", taesdxl_dir, "--into", model, "--weight-format", "fp32", "--quiet")
    assert r.exit_code == 0, r.output
    for name in ("vae_encoder_tiny", "vae_decoder_tiny"):
        assert (model / name / "openvino_model.bin").read_bytes() == \
            (sdxl_with_tiny / name / "openvino_model.bin").read_bytes()


# --- --deepcache -------------------------------------------------------------------------------

def deepcache_pixels(model, scheduler, interval, steps=9, **picture) -> np.ndarray:
    from tests.test_deepcache import reference_deepcache

    pipe = reference.reference_pipeline(model.components(), scheduler, xl=True, img2img="init_image" in picture)
    with reference_deepcache(pipe.unet, interval) as state:
        images = pipe(**reference.reference_arguments(steps=steps, **picture)).images
    assert state["calls"] > interval  # the cache was really used
    return reference.to_pixels(images)


@pytest.mark.parametrize("scheduler,interval", [("euler", 3), ("dpmpp_2m", 2)])
def test_deepcache_matches_reference_deepcache(tiny_sdxl, scheduler, interval, tmp_path, parity_log):
    theirs = deepcache_pixels(tiny_sdxl, scheduler, interval, **SQUARE)
    ours = sdcli_pixels(tiny_sdxl.ov_dir, tmp_path / "dc.png", "--deepcache", interval, scheduler=scheduler, steps=9,
                        **SQUARE)
    plain = sdcli_pixels(tiny_sdxl.ov_dir, tmp_path / "plain.png", scheduler=scheduler, steps=9, **SQUARE)
    assert np.abs(ours - plain).max() > 2  # the cache changes the image, so the match below means something
    compare(ours, theirs, parity_log, model="sdxl eps", scheduler=scheduler, mode=f"deepcache {interval}", size="64x64")


def test_deepcache_img2img_matches_reference_deepcache(tiny_sdxl, init_image_file, tmp_path, parity_log):
    theirs = deepcache_pixels(tiny_sdxl, "euler_a", 2, init_image=init_image_file, strength=0.7)
    ours = sdcli_pixels(tiny_sdxl.ov_dir, tmp_path / "dc.png", "--deepcache", 2, scheduler="euler_a", steps=9,
                        init_image=init_image_file, strength=0.7)
    compare(ours, theirs, parity_log, model="sdxl eps", scheduler="euler_a", mode="dc 2 img2img .7", size="96x64")
