"""The oracle: `sdcli generate --rng torch --precision f32` gives diffusers' pixels.

Same tiny random weights, scheduler, seed and size; max difference <= 2 of 255.
"""
from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from sdcli.cli.app import app
from sdcli.imaging.image_io import read_rgb

# our name -> (diffusers class, extra from_config arguments)
SCHEDULERS = {
    "pndm": ("PNDMScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    # the Brownian tree's seed (SEED below): diffusers takes it from the config, sdcli from --seed
    "dpmpp_sde": ("DPMSolverSDEScheduler", {"noise_sampler_seed": 1234}),
    "dpmpp_sde_karras": ("DPMSolverSDEScheduler", {"use_karras_sigmas": True, "noise_sampler_seed": 1234}),
    "unipc": ("UniPCMultistepScheduler", {}),
}


def diffusers_scheduler(name, config):
    import diffusers

    cls, extra = SCHEDULERS[name]
    return getattr(diffusers, cls).from_config(config, **extra)
PROMPT = "a photo of an astronaut riding a horse"
NEGATIVE = "blurry"
STEPS = 10
SEED = 1234


def diffusers_pixels(model, scheduler, width, height, init_image=None, strength=None) -> np.ndarray:
    import diffusers
    import torch
    from PIL import Image

    components = dict(model.pipe().components)
    generator = torch.Generator("cpu").manual_seed(SEED)
    kwargs = dict(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=7.5,
                  generator=generator, output_type="np")
    if init_image is None:
        pipe = diffusers.StableDiffusionPipeline(**components)
        pipe.scheduler = diffusers_scheduler(scheduler, pipe.scheduler.config)
        out = pipe(height=height, width=width, **kwargs).images[0]
    else:
        pipe = diffusers.StableDiffusionImg2ImgPipeline(**components)
        pipe.scheduler = diffusers_scheduler(scheduler, pipe.scheduler.config)
        out = pipe(image=Image.open(init_image).convert("RGB"), strength=strength, **kwargs).images[0]
    return (out * 255).round().astype(np.int16)


def sdcli_pixels(model, scheduler, tmp_path, width=None, height=None, init_image=None, strength=None) -> np.ndarray:
    out = tmp_path / "out.png"
    args = ["generate", "--model", str(model.ov_dir), "--prompt", PROMPT, "--negative-prompt", NEGATIVE,
            "--steps", str(STEPS), "--seed", str(SEED), "--scheduler", scheduler, "--rng", "torch",
            "--precision", "f32", "--output", str(out), "--quiet"]
    if width:
        args += ["--width", str(width), "--height", str(height)]
    if init_image is not None:
        args += ["--init-image", str(init_image), "--strength", str(strength)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return read_rgb(out).astype(np.int16)


def compare(ours, theirs, log, **row) -> None:
    assert ours.shape == theirs.shape
    diff = np.abs(ours - theirs)
    log.append({**row, "max": int(diff.max()), "mean": float(diff.mean())})
    # The images must have content for the comparison to mean anything.
    assert theirs.std() > 10
    assert diff.max() <= 2, f"max pixel difference {diff.max()} > 2"


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
@pytest.mark.parametrize("width,height", [(64, 64), (96, 64)])
@pytest.mark.parametrize("model_name", ["tiny_eps", "tiny_vpred"])
def test_txt2img_matches_diffusers(request, model_name, scheduler, width, height, tmp_path, parity_log):
    model = request.getfixturevalue(model_name)
    theirs = diffusers_pixels(model, scheduler, width, height)
    ours = sdcli_pixels(model, scheduler, tmp_path, width, height)
    compare(ours, theirs, parity_log, model=model.prediction_type, scheduler=scheduler, mode="txt2img",
            size=f"{width}x{height}")


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
@pytest.mark.parametrize("strength", [0.3, 0.6, 1.0])
@pytest.mark.parametrize("model_name", ["tiny_eps", "tiny_vpred"])
def test_img2img_matches_diffusers(request, model_name, scheduler, strength, init_image_file, tmp_path, parity_log):
    model = request.getfixturevalue(model_name)
    theirs = diffusers_pixels(model, scheduler, None, None, init_image_file, strength)
    ours = sdcli_pixels(model, scheduler, tmp_path, init_image=init_image_file, strength=strength)
    compare(ours, theirs, parity_log, model=model.prediction_type, scheduler=scheduler,
            mode=f"img2img {strength}", size="96x64")


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "dpmpp_2m"])
def test_sd2_style_model_matches_diffusers(tiny_sd2, scheduler, init_image_file, tmp_path, parity_log):
    theirs = diffusers_pixels(tiny_sd2, scheduler, 64, 64)
    ours = sdcli_pixels(tiny_sd2, scheduler, tmp_path, 64, 64)
    compare(ours, theirs, parity_log, model=tiny_sd2.prediction_type, scheduler=scheduler, mode="txt2img", size="64x64")
    theirs = diffusers_pixels(tiny_sd2, scheduler, None, None, init_image_file, 0.6)
    ours = sdcli_pixels(tiny_sd2, scheduler, tmp_path, init_image=init_image_file, strength=0.6)
    compare(ours, theirs, parity_log, model=tiny_sd2.prediction_type, scheduler=scheduler, mode="img2img 0.6",
            size="96x64")
