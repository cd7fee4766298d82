"""diffusers as the reference: its pipelines on the same tiny weights, prompt, seed and scheduler
as `sdcli generate --rng torch --precision f32`, and the comparison of the two pictures
(max difference <= 2 of 255).

torch, diffusers and sdcli's CLI are imported where used, so that importing this costs little.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np

PROMPT = "a photo of an astronaut riding a horse"
NEGATIVE = "blurry"
STEPS = 10
SEED = 1234

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
    # the Brownian tree's seed (SEED above): diffusers takes it from the config, sdcli from --seed
    "dpmpp_sde": ("DPMSolverSDEScheduler", {"noise_sampler_seed": SEED}),
    "dpmpp_sde_karras": ("DPMSolverSDEScheduler", {"use_karras_sigmas": True, "noise_sampler_seed": SEED}),
    "unipc": ("UniPCMultistepScheduler", {}),
}


def diffusers_scheduler(name, config):
    """diffusers' scheduler for our scheduler name, switched to the way a pipeline is: from the
    config of the one it has."""
    import diffusers

    cls, extra = SCHEDULERS[name]
    return getattr(diffusers, cls).from_config(config, **extra)


# --- diffusers' side ----------------------------------------------------------------------------


def reference_pipeline(components: dict, scheduler: str | None = None, *, img2img: bool = False,
                       inpaint: bool = False, xl: bool = False, **config):
    """diffusers' StableDiffusion(Img2Img|Inpaint)Pipeline on `components` (`xl`: the
    StableDiffusionXL ones, made with `config` such as requires_aesthetics_score), with our
    scheduler `scheduler` (None: the components' own)."""
    import diffusers

    kind = "Inpaint" if inpaint else "Img2Img" if img2img else ""
    pipe = getattr(diffusers, f"StableDiffusion{'XL' if xl else ''}{kind}Pipeline")(**components, **config)
    pipe.set_progress_bar_config(disable=True)
    if scheduler is not None:
        pipe.scheduler = diffusers_scheduler(scheduler, pipe.scheduler.config)
    return pipe


def reference_arguments(*, steps: int | None = STEPS, seed: int = SEED, prompt: str | None = PROMPT,
                        negative: str | None = NEGATIVE, guidance: float | None = 7.5, width: int | None = None,
                        height: int | None = None, init_image: Path | None = None, strength: float | None = None,
                        mask: Path | None = None, **extra) -> dict:
    """A diffusers pipeline call's arguments (output_type="np", a CPU torch generator of `seed`);
    a None leaves the pipeline's default, `extra` (e.g. prompt_embeds) goes as it is."""
    import torch
    from PIL import Image

    kwargs = dict(generator=torch.Generator("cpu").manual_seed(seed), output_type="np", **extra)
    if prompt is not None:
        kwargs["prompt"] = prompt
    if negative is not None:
        kwargs["negative_prompt"] = negative
    if steps is not None:
        kwargs["num_inference_steps"] = steps
    if guidance is not None:
        kwargs["guidance_scale"] = guidance
    if width is not None:
        kwargs.update(width=width, height=height)
    if init_image is not None:
        kwargs.update(image=Image.open(init_image).convert("RGB"), strength=strength)
    if mask is not None:
        kwargs["mask_image"] = Image.open(mask)
    return kwargs


@contextmanager
def vae_tiling(vae, tile: int):
    """diffusers' `vae` (an AutoencoderKL) with enable_tiling() at tiles of `tile` pixels
    (tile_sample_min_size; tile_latent_min_size that over the VAE's factor), for the `with`
    block; then as it was (the pipelines' components are shared by a session's tests)."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    saved = (vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size)
    try:
        vae.enable_tiling()
        vae.tile_sample_min_size, vae.tile_latent_min_size = tile, tile // factor
        yield vae
    finally:
        vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size = saved


def to_pixels(images) -> np.ndarray:
    """The first of a pipeline's output_type="np" images as 0..255 int16."""
    return (images[0] * 255).round().astype(np.int16)


def diffusers_pixels(components: dict, scheduler: str | None, *, xl: bool = False, pipeline_config: dict | None = None,
                     **arguments) -> np.ndarray:
    """The picture diffusers makes: txt2img, img2img with `init_image`, inpainting with `mask`
    too (the arguments are reference_arguments'); `xl`: with the SDXL pipelines, made with
    `pipeline_config`."""
    inpaint = arguments.get("mask") is not None
    img2img = arguments.get("init_image") is not None
    pipe = reference_pipeline(components, scheduler, img2img=img2img, inpaint=inpaint, xl=xl, **(pipeline_config or {}))
    return to_pixels(pipe(**reference_arguments(**arguments)).images)


# --- sdcli's side -------------------------------------------------------------------------------


def generate_args(model_dir, out, *extra, steps: int | None = STEPS, seed: int = SEED, prompt: str = PROMPT,
                  negative: str | None = NEGATIVE, scheduler: str | None = None, width: int | None = None,
                  height: int | None = None, init_image: Path | None = None, strength: float | None = None,
                  mask: Path | None = None, mask_blur: int | None = None) -> list[str]:
    """`sdcli generate ... --rng torch --precision f32 --output OUT --quiet` for the picture
    reference_arguments describes; None leaves sdcli's default; `extra` comes last."""
    args = ["generate", "--model", str(model_dir), "--prompt", prompt]
    if negative is not None:
        args += ["--negative-prompt", negative]
    if steps is not None:
        args += ["--steps", str(steps)]
    args += ["--seed", str(seed)]
    if scheduler is not None:
        args += ["--scheduler", scheduler]
    args += ["--rng", "torch", "--precision", "f32"]
    if width is not None:
        args += ["--width", str(width), "--height", str(height)]
    if init_image is not None:
        args += ["--init-image", str(init_image)]
    if mask is not None:
        args += ["--mask", str(mask)]
    if mask_blur is not None:
        args += ["--mask-blur", str(mask_blur)]
    if strength is not None:
        args += ["--strength", str(strength)]
    return [*args, "--output", str(out), "--quiet", *map(str, extra)]


def sdcli_generate(model_dir, out, *extra, **options) -> Path:
    """Runs generate_args(...) in-process; it must exit 0. Returns the PNG."""
    from typer.testing import CliRunner

    from sdcli.cli.app import app

    result = CliRunner().invoke(app, generate_args(model_dir, out, *extra, **options))
    assert result.exit_code == 0, result.output
    return Path(out)


def sdcli_pixels(model_dir, out, *extra, **options) -> np.ndarray:
    """The picture sdcli_generate writes, as 0..255 int16."""
    from sdcli.imaging.image_io import read_rgb

    return read_rgb(sdcli_generate(model_dir, out, *extra, **options)).astype(np.int16)


# --- openvino-genai's side ----------------------------------------------------------------------


def same_noise(seed: int):
    """An openvino_genai Generator handing out the draws sdcli makes (`--rng torch`), so the two
    pipelines can be compared."""
    import openvino as ov
    import openvino_genai as ov_genai

    from sdcli.util.rng import TorchRNG

    class SameNoise(ov_genai.Generator):
        def __init__(self):
            ov_genai.Generator.__init__(self)
            self.rng = TorchRNG(seed)

        def next(self):
            raise NotImplementedError

        def randn_tensor(self, shape):
            return ov.Tensor(self.rng.randn(tuple(shape)))

    return SameNoise()


# --- the comparison -----------------------------------------------------------------------------


def compare(ours, theirs, log: list | None, **row) -> None:
    """Our picture within 2 of 255 of diffusers' everywhere; diffusers' has content (so that the
    comparison means something). `row` and the differences go to `log` (the parity table printed
    at the end of the run), unless it is None."""
    assert ours.shape == theirs.shape
    diff = np.abs(ours - theirs)
    if log is not None:
        log.append({**row, "max": int(diff.max()), "mean": float(diff.mean())})
    # The images must have content for the comparison to mean anything.
    assert theirs.std() > 10
    assert diff.max() <= 2, f"max pixel difference {diff.max()} > 2"
