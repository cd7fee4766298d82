"""The one request object: what to generate, validated once, whatever asked for it (the
command line, a batch row, a Ray worker, the quantization's calibration, the server).

Messages name generate's flags, which every front end shares.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdcli.engine.prompt_syntax import MAX_WEIGHT, weight_out_of_range
from sdcli.model.defaults import GUIDANCE_MAX, STEPS_MAX, VAES  # noqa: F401  (the request's ranges; others import them from here)
from sdcli.util.errors import UsageError
from sdcli.util.rng import RNG_KINDS

SEED_MAX = 2**64 - 1
DEFAULT_STEPS = 20  # generate's --steps and --guidance-scale where neither the model nor a flag gives one
DEFAULT_GUIDANCE = 7.5
AESTHETIC_SCORE = 6.0  # an SDXL refiner's scores for the prompt's and the negative prompt's rows (diffusers')
NEGATIVE_AESTHETIC_SCORE = 2.5

Image = np.ndarray | Path  # an array, or a file read by with_images_read()


def check_rng(rng: str) -> None:
    if rng not in RNG_KINDS:
        raise UsageError(f"--rng must be {' or '.join(RNG_KINDS)}, got {rng!r}")


def check_vae(vae: str) -> None:
    if vae not in VAES:
        raise UsageError(f"--vae must be {' or '.join(VAES)}, got {vae!r}")


def check_prompt_text(flag: str, text: str, emphasis: bool) -> None:
    """Text that can be encoded: valid Unicode, and emphasis weights within bounds."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8 in argv arrive as lone surrogates
        raise UsageError(f"{flag} is not valid UTF-8 text (check the terminal's or the script's encoding)") from None
    weight = weight_out_of_range(text) if emphasis else None
    if weight is not None:
        raise UsageError(f"{flag}: an emphasis weight of {weight:.6g} is beyond +-{MAX_WEIGHT:g} (nested brackets "
                         "multiply; write \\( for a literal bracket, or pass --no-emphasis)")


@dataclass
class GenerationRequest:
    """One image to make.  Defaults are those of `sdcli generate`."""

    prompt: str = ""
    negative_prompt: str = ""
    steps: int = DEFAULT_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE
    seed: int = 0
    width: int | None = None  # None: the model's default size (or the init image's)
    height: int | None = None
    scheduler: str | None = None  # None: the model's own scheduler
    init_image: Image | None = None  # RGB uint8 [H, W, 3], or its file
    strength: float = 0.8  # img2img: how much of the init image is repainted (1.0: all of it)
    rng: str = "torch"  # "torch": the same draws as diffusers with torch.Generator().manual_seed(seed)
    emphasis: bool = True  # A1111's (word), [word], (word:1.3) syntax
    mask: Image | None = None  # inpainting: float [H, W] in [0, 1] (1 repaint, 0 keep), any size, or its file
    mask_blur: int = 4  # inpainting: Gaussian sigma in pixels; 0: diffusers' result exactly (no overlay)
    deepcache: int = 1  # run the full UNet every N-th call, the shallow branch in between (1: off)
    clip_skip: int = 1  # A1111's Clip skip: the text encoder's N-th layer from the end (1: the last)
    vae: str = "full"  # "tiny": the TAESD that `sdcli convert --tiny-vae` adds, for decoding and encoding
    # the VAE (full or tiny) decoded in tiles as diffusers' enable_tiling() (engine/vae_tiling.py): True, False,
    # None: when the memory estimate says a whole decode would not fit; tiles of vae_tile_size pixels
    # (None: diffusers' default: the VAE config's sample_size, 512 for the tiny VAE)
    vae_tiling: bool | None = None
    vae_tile_size: int | None = None
    guidance_rescale: float = 0.0  # diffusers' guidance_rescale (phi, 0..1): after classifier-free guidance
    cfg_normalization: float = 0.0  # Z-Image: the guided prediction's norm capped at this times the prompt's (0: off)
    cfg_truncation: float = 1.0  # Z-Image: no guidance on steps whose 1 - sigma is above this (1: guidance throughout)
    # SDXL's micro-conditioning (diffusers' defaults: the image size, crop (0, 0); the refiner's scores)
    original_size: tuple[int, int] | None = None  # (width, height)
    crop_coords: tuple[int, int] | None = None  # (x, y) of the crop's top-left corner
    target_size: tuple[int, int] | None = None  # (width, height)
    aesthetic_score: float = AESTHETIC_SCORE
    negative_aesthetic_score: float = NEGATIVE_AESTHETIC_SCORE
    refiner_switch: float = 0.8  # with a refiner (Engine(refiner=...)): the fraction of the schedule the base runs
    # FLUX.2-klein's editing: the images the picture is conditioned on (RGB uint8 [H, W, 3], or their
    # files), and their names for the PNG's parameters (with_images_read takes them from the files)
    reference_images: tuple[Image, ...] = ()
    reference_names: tuple[str, ...] = ()
    # ControlNet units (engine.controlnet.ControlUnit: a converted ControlNet, its control image, weight,
    # guidance start/end, control mode, resize mode, preprocessor), summed in the denoise stage
    controlnets: tuple = ()
    # Image-to-image on latents as the denoiser takes them ([1, C, h, w], noised to the first timestep
    # of `strength`'s part of the schedule): the hires fix's second pass
    init_latents: np.ndarray | None = None
    hires: object | None = None  # an engine.hires.HiresFix: A1111's hires fix, a second pass at a larger size
    # Set by the engine (Networks.activate), not by front ends: the prompt's <lora:...> tags and
    # embeddings resolved (an engine.networks.ActiveNetworks); the prompt is then without its tags.
    networks: object | None = None

    def validate(self) -> None:
        """UsageError naming the flag for the first setting that cannot be run."""
        check_prompt_text("--prompt", self.prompt, self.emphasis)
        check_prompt_text("--negative-prompt", self.negative_prompt, self.emphasis)
        check_rng(self.rng)
        check_vae(self.vae)
        if self.vae_tile_size is not None and (self.vae_tile_size < 16 or self.vae_tile_size % 8):
            raise UsageError(f"--vae-tile-size must be a multiple of 8 from 16, got {self.vae_tile_size}")
        if self.mask is not None and self.reference_images:
            raise UsageError("--mask is for inpainting an --init-image; editing with --reference-image takes no mask")
        if self.mask is not None and self.init_image is None:
            raise UsageError("--mask needs --init-image (the image to inpaint)")
        if not 1 <= self.steps <= STEPS_MAX:
            raise UsageError(f"--steps must be between 1 and {STEPS_MAX}, got {self.steps}")
        if not (math.isfinite(self.guidance_scale) and 0.0 <= self.guidance_scale <= GUIDANCE_MAX):
            raise UsageError(f"--guidance-scale must be between 0 and {GUIDANCE_MAX:g}, got {self.guidance_scale}")
        if not (math.isfinite(self.guidance_rescale) and 0.0 <= self.guidance_rescale <= 1.0):
            raise UsageError(f"--guidance-rescale must be between 0 and 1, got {self.guidance_rescale}")
        if not (math.isfinite(self.cfg_normalization) and 0.0 <= self.cfg_normalization <= GUIDANCE_MAX):
            raise UsageError(f"--cfg-normalization must be between 0 and {GUIDANCE_MAX:g}, got {self.cfg_normalization}")
        if not (math.isfinite(self.cfg_truncation) and 0.0 <= self.cfg_truncation <= 1.0):
            raise UsageError(f"--cfg-truncation must be between 0 and 1, got {self.cfg_truncation}")
        if not 0 <= self.seed <= SEED_MAX:
            raise UsageError(f"--seed must be between 0 and {SEED_MAX}, got {self.seed}")
        if not 0.0 <= self.strength <= 1.0:
            raise UsageError("--strength must be between 0 and 1")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None and (value <= 0 or value % 8):
                raise UsageError(f"--{name} must be a positive multiple of 8, got {value}")
        if self.mask_blur < 0:
            raise UsageError("--mask-blur must be 0 or more")
        if self.deepcache < 1:
            raise UsageError("--deepcache must be 1 (off) or more")
        if self.clip_skip < 1:
            raise UsageError("--clip-skip must be 1 (off) or more")
        self._validate_micro_conditioning()
        if self.hires is not None:
            self.hires.validate(self)
        for unit in self.controlnets:
            unit.check()

    def _validate_micro_conditioning(self) -> None:
        for flag, pair, low in (("--original-size", self.original_size, 1), ("--crop-coords", self.crop_coords, 0),
                                ("--target-size", self.target_size, 1)):
            if pair is not None and (len(pair) != 2 or any(not low <= int(v) <= 1_000_000 for v in pair)):
                raise UsageError(f"{flag} must be two whole numbers from {low} to 1000000, got {pair}")
        if not (math.isfinite(self.refiner_switch) and 0.0 < self.refiner_switch < 1.0):
            raise UsageError(f"--refiner-switch must be between 0 and 1 (exclusive), got {self.refiner_switch}")
        for flag, score in (("--aesthetic-score", self.aesthetic_score),
                            ("--negative-aesthetic-score", self.negative_aesthetic_score)):
            if not (math.isfinite(score) and 0.0 <= score <= 10.0):
                raise UsageError(f"{flag} must be between 0 and 10, got {score}")

    def with_images_read(self) -> "GenerationRequest":
        """This request with its init image, mask and reference images as arrays (files are read
        and checked; the references' file names kept in reference_names)."""
        from sdcli.imaging.image_io import read_mask, read_rgb

        changes = {}
        if isinstance(self.init_image, (str, Path)):
            changes["init_image"] = read_rgb(Path(self.init_image))
        if isinstance(self.mask, (str, Path)):
            changes["mask"] = read_mask(Path(self.mask))
        if any(isinstance(image, (str, Path)) for image in self.reference_images):
            images = []
            for image in self.reference_images:
                try:
                    images.append(read_rgb(Path(image)) if isinstance(image, (str, Path)) else image)
                except UsageError as exc:
                    raise UsageError(f"--reference-image: {exc}") from None
            changes["reference_images"] = tuple(images)
            if not self.reference_names:
                changes["reference_names"] = tuple(Path(image).name if isinstance(image, (str, Path)) else "(array)"
                                                   for image in self.reference_images)
        if any(isinstance(unit.image, (str, Path)) for unit in self.controlnets):
            changes["controlnets"] = tuple(unit.read_image() for unit in self.controlnets)
        return dataclasses.replace(self, **changes) if changes else self

    def replace(self, **changes) -> "GenerationRequest":
        return dataclasses.replace(self, **changes)
