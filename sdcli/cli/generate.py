"""`sdcli generate`: images from a prompt, an init image (image-to-image) and a mask
(inpainting), or redone from a PNG's stored settings."""
from __future__ import annotations

import json
import os
import secrets
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import List, Optional

import typer

from sdcli.cli.app import (CACHE_MAX_GB_HELP, app, finite, list_schedulers, option_given, positive_multiple_of_8,
                           process_age, scheduler_name, use_cache_max_gb, user_errors, warn)
from sdcli.engine.request import AESTHETIC_SCORE, GUIDANCE_MAX, NEGATIVE_AESTHETIC_SCORE
from sdcli.util.errors import UsageError

# generate's options that a PNG's parameters can give (the flags given on the command line win)
STORED = ("prompt", "negative_prompt", "steps", "scheduler", "guidance_scale", "seed", "width", "height", "strength",
          "rng", "precision", "emphasis", "deepcache", "vae", "clip_skip", "mask_blur", "guidance_rescale",
          "cfg_normalization", "cfg_truncation")
# ... of which these go through their flag's type, range and callback again
RECHECKED = ("steps", "scheduler", "guidance_scale", "seed", "width", "height", "strength", "deepcache", "clip_skip",
             "mask_blur", "guidance_rescale", "cfg_normalization", "cfg_truncation")
# ... and SDXL's micro-conditioning (its ranges are checked by GenerationRequest.validate)
STORED += ("original_size", "crop_coords", "target_size", "aesthetic_score", "negative_aesthetic_score")
# ... and the hires fix's (engine/hires.py)
HIRES = ("hires_scale", "hires_width", "hires_height", "hires_upscaler", "hires_steps", "hires_denoise", "hires_prompt",
         "hires_negative_prompt", "hires_scheduler", "hires_cfg")
STORED += HIRES
RECHECKED += ("hires_scale", "hires_width", "hires_height", "hires_steps", "hires_denoise", "hires_scheduler", "hires_cfg")


@app.command()
def generate(
    ctx: typer.Context,
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="What to draw (required unless --from-image)."),
    negative_prompt: str = typer.Option("", "--negative-prompt", "-n", help="What to steer away from."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Converted model folder, or a Hub repo of one (owner/name) [default: $SDCLI_MODEL, else the only one under models/, else OpenVINO/stable-diffusion-v1-5-int8-ov from the Hub]."),
    init_image: Optional[Path] = typer.Option(None, "--init-image", "-i", help="Start from this image (image-to-image)."),
    reference_image: Optional[List[Path]] = typer.Option(None, "--reference-image", help="FLUX.2-klein editing: an image the picture is conditioned on (repeatable; Flux2KleinPipeline's image=[...]); the picture takes the first one's size unless --width/--height."),
    strength: float = typer.Option(0.8, "--strength", min=0.0, max=1.0, callback=finite, help="Image-to-image: how much to repaint, 0..1."),
    mask: Optional[Path] = typer.Option(None, "--mask", help="Inpainting (with --init-image): white = repaint, black = keep; resized to the image."),
    mask_blur: int = typer.Option(4, "--mask-blur", min=0, max=256, help="Inpainting: Gaussian blur of the mask in pixels, and the result laid over the original through it; 0: neither (diffusers' exact result)."),
    steps: int = typer.Option(20, "--steps", "-s", min=1, max=1000, help="Denoising steps [default: the model folder's own (convert --default-steps), else 20; 4 for LCM models and the lcm scheduler]."),
    guidance_scale: float = typer.Option(7.5, "--guidance-scale", "-g", min=0.0, max=GUIDANCE_MAX, callback=finite, help="Classifier-free guidance; 1 or less turns it off [default: the model folder's own (convert --default-guidance), else 7.5; LCM models 8.5, built into the UNet; 1 with the lcm scheduler on other models]."),
    guidance_rescale: float = typer.Option(0.0, "--guidance-rescale", min=0.0, max=1.0, callback=finite, metavar="PHI", help="diffusers' guidance_rescale: the guided prediction pulled towards the prompt's standard deviation by PHI, 0..1 (0.7 in the paper; against the over-exposure of high guidance, and for zero-terminal-SNR models); with classifier-free guidance only [default: 0, off]."),
    cfg_normalization: float = typer.Option(0.0, "--cfg-normalization", min=0.0, max=GUIDANCE_MAX, callback=finite, metavar="K", help="Z-Image (ZImagePipeline's cfg_normalization): with guidance, the guided prediction's norm capped at K times the prompt's (1: diffusers' True) [default: 0, off]."),
    cfg_truncation: float = typer.Option(1.0, "--cfg-truncation", min=0.0, max=1.0, callback=finite, metavar="T", help="Z-Image (ZImagePipeline's cfg_truncation): guidance only on the steps whose timestep (1 - sigma, 0 at the start) is T or less; the prompt alone after [default: 1, throughout]."),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, max=2**64 - 1, help="Random seed [default: random, printed]."),
    width: Optional[int] = typer.Option(None, "--width", "-W", callback=positive_multiple_of_8, help="Multiple of 8 [default: the model's, or the init image's]."),
    height: Optional[int] = typer.Option(None, "--height", "-H", callback=positive_multiple_of_8, help="Multiple of 8 [default: the model's, or the init image's]."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", callback=scheduler_name, help="A name from --list-schedulers, short (dpmpp_2m_karras) or A1111's (\"DPM++ 2M Karras\") [default: the model's]."),
    list_schedulers: bool = typer.Option(False, "--list-schedulers", callback=list_schedulers, is_eager=True, expose_value=False, help="Print the schedulers and exit."),
    num_images: int = typer.Option(1, "--num-images", min=1, max=10_000, help="Images to make; image i uses seed+i."),
    output: Path = typer.Option(Path("output.png"), "--output", "-o", help="PNG to write; several images get -1, -2, ... before .png."),
    device: str = typer.Option("CPU", "--device", help="OpenVINO device: CPU, GPU, NPU, AUTO, ..."),
    precision: str = typer.Option("auto", "--precision", help="auto (OpenVINO picks: bf16 where the CPU has it), f32, bf16, f16."),
    rng: str = typer.Option("torch", "--rng", help="torch: the same noise as diffusers for a seed; numpy: faster draws."),
    emphasis: bool = typer.Option(True, "--emphasis/--no-emphasis", help="A1111 prompt weights: (word), [word], (word:1.3); \\( for a literal bracket."),
    low_memory: bool = typer.Option(False, "--low-memory", help="Keep one model component in memory at a time (slower with --num-images > 1)."),
    clip_skip: int = typer.Option(1, "--clip-skip", min=1, max=24, help="A1111's Clip skip: the prompt from the text encoder's N-th layer from the end (2: the penultimate; diffusers' clip_skip=N-1)."),
    deepcache: int = typer.Option(1, "--deepcache", min=1, max=1000, help="DeepCache: the full UNet every N-th step, only its shallow branch in between (3: about 2x faster steps; 1: off)."),
    original_size: Optional[str] = typer.Option(None, "--original-size", callback=lambda v: pair(v, "x", "--original-size", 1), help="SDXL: the original size it is conditioned on, WxH [default: the image size]."),
    crop_coords: Optional[str] = typer.Option(None, "--crop-coords", callback=lambda v: pair(v, ",", "--crop-coords", 0), help="SDXL: the crop's top-left corner it is conditioned on, X,Y [default: 0,0]."),
    target_size: Optional[str] = typer.Option(None, "--target-size", callback=lambda v: pair(v, "x", "--target-size", 1), help="SDXL: the target size it is conditioned on, WxH [default: the image size]."),
    aesthetic_score: float = typer.Option(AESTHETIC_SCORE, "--aesthetic-score", min=0.0, max=10.0, callback=finite, help="SDXL refiner: the aesthetic score it is conditioned on."),
    negative_aesthetic_score: float = typer.Option(NEGATIVE_AESTHETIC_SCORE, "--negative-aesthetic-score", min=0.0, max=10.0, callback=finite, help="SDXL refiner: the negative rows' aesthetic score."),
    refiner: Optional[Path] = typer.Option(None, "--refiner", help="SDXL: a refiner's converted folder, which takes over at --refiner-switch and decodes (diffusers' denoising_end/denoising_start)."),
    refiner_switch: float = typer.Option(0.8, "--refiner-switch", min=0.0, max=1.0, callback=finite, help="SDXL with --refiner: the fraction of the schedule the base model runs (A1111's \"Refiner switch at\")."),
    hires_scale: Optional[float] = typer.Option(None, "--hires-scale", callback=finite, help="A1111's hires fix: a second pass at this many times the size (more than 1), image-to-image on the upscaled first pass (docs/hires.md)."),
    hires_width: Optional[int] = typer.Option(None, "--hires-width", callback=positive_multiple_of_8, help="Hires fix: the second pass's width (with --hires-height: the first pass scaled to cover both, then cut about the centre; alone: the height follows the aspect)."),
    hires_height: Optional[int] = typer.Option(None, "--hires-height", callback=positive_multiple_of_8, help="Hires fix: the second pass's height (see --hires-width)."),
    hires_upscaler: str = typer.Option("Latent", "--hires-upscaler", metavar="NAME", help="Hires fix: Latent, \"Latent (antialiased)\", \"Latent (bicubic)\", \"Latent (bicubic antialiased)\", \"Latent (nearest)\", \"Latent (nearest-exact)\" (the latents interpolated), or Lanczos, Nearest, None (Lanczos straight to the size), a converted model upscaler's name (the decoded pixels upscaled, then encoded)."),
    hires_steps: int = typer.Option(0, "--hires-steps", min=0, max=1000, help="Hires fix: the second pass's steps, run on the tail of a steps/denoise schedule (0: --steps)."),
    hires_denoise: float = typer.Option(0.7, "--hires-denoise", min=0.0, max=1.0, callback=finite, help="Hires fix: A1111's denoising strength of the second pass, more than 0 and up to 1."),
    hires_prompt: str = typer.Option("", "--hires-prompt", help="Hires fix: the second pass's prompt [default: --prompt]."),
    hires_negative_prompt: str = typer.Option("", "--hires-negative-prompt", help="Hires fix: the second pass's negative prompt [default: --negative-prompt]."),
    hires_scheduler: Optional[str] = typer.Option(None, "--hires-scheduler", callback=scheduler_name, help="Hires fix: the second pass's scheduler [default: --scheduler's]."),
    upscaler_dir: Optional[Path] = typer.Option(None, "--upscaler-dir", help="Hires fix: where --hires-upscaler NAME finds a converted model upscaler [default: $SDCLI_UPSCALER_DIR, else models/ESRGAN]."),
    hires_cfg: Optional[float] = typer.Option(None, "--hires-cfg", min=0.0, max=GUIDANCE_MAX, callback=finite, help="Hires fix: the second pass's guidance scale (Forge's Hires CFG Scale) [default: --guidance-scale]."),
    vae: str = typer.Option("full", "--vae", help="full: the model's VAE; tiny: the TAESD that `sdcli convert --tiny-vae` added (much faster decoding, a little less detail) [default: the model folder's own (convert --default-vae), else full]."),
    vae_tiling: Optional[bool] = typer.Option(None, "--vae-tiling/--no-vae-tiling", help="Decode (and encode an init image) with the VAE in overlapping tiles, blended as diffusers' enable_tiling() does (AutoencoderKL's, or with --vae tiny AutoencoderTiny's): less memory for large images, a slightly different picture [default: only when the memory estimate says a whole decode would not fit]."),
    vae_tile_size: Optional[int] = typer.Option(None, "--vae-tile-size", min=16, max=8192, help="With VAE tiling: the tile size in pixels, a multiple of 8; with --vae tiny a multiple of 64 from 128 [default: as diffusers, the VAE's sample_size: 512 for SD 1.5, 1024 for SDXL; 512 with --vae tiny]."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or notes on stderr."),
    as_json: bool = typer.Option(False, "--json", help="One JSON line per image on stdout."),
    from_image: Optional[Path] = typer.Option(None, "--from-image", help="Redo the image whose settings this PNG stores; options given here override them."),
    lora_dir: Optional[Path] = typer.Option(None, "--lora-dir", help="Where <lora:NAME:WEIGHT> in the prompt finds NAME (subfolders included) [default: $SDCLI_LORA_DIR, else models/Lora]."),
    embeddings_dir: Optional[Path] = typer.Option(None, "--embeddings-dir", help="Textual-inversion embeddings, used where their file name is a word of the prompt [default: $SDCLI_EMBEDDINGS_DIR, else models/embeddings]."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Also read LoRAs and embeddings saved as pickles (.pt, .ckpt, .bin), which can run code: only files you trust."),
    cache_max_gb: Optional[float] = typer.Option(None, "--cache-max-gb", min=0.0, callback=finite, metavar="GB", help=CACHE_MAX_GB_HELP),
    controlnet: Optional[List[str]] = typer.Option(None, "--controlnet", metavar="NAME", help="A ControlNet unit: a converted ControlNet's name in --controlnet-dir (or its folder), with its --control-image; repeat both for several units. Each --control-* flag below is given once for all units or once per unit."),
    control_image: Optional[List[Path]] = typer.Option(None, "--control-image", metavar="FILE", help="The control image of each --controlnet (of a Union unit with several --control-type: one per type), fitted to the picture by --control-resize."),
    control_weight: Optional[List[float]] = typer.Option(None, "--control-weight", help="ControlNet: its weight, 0..2 (diffusers' controlnet_conditioning_scale) [default: 1]."),
    control_start: Optional[List[float]] = typer.Option(None, "--control-start", help="ControlNet: the fraction of the steps it starts at, 0..1 (diffusers' control_guidance_start) [default: 0]."),
    control_end: Optional[List[float]] = typer.Option(None, "--control-end", help="ControlNet: the fraction of the steps it ends at, 0..1 (control_guidance_end); it is not run outside [start, end] [default: 1]."),
    control_mode: Optional[List[str]] = typer.Option(None, "--control-mode", metavar="balanced|prompt|controlnet", help="ControlNet: A1111's control mode: balanced, prompt (My prompt is more important), controlnet (ControlNet is more important: diffusers' guess_mode) [default: balanced]."),
    control_resize: Optional[List[str]] = typer.Option(None, "--control-resize", metavar="just-resize|crop-and-resize|resize-and-fill", help="ControlNet: how the control image is fitted to the picture (A1111's resize modes) [default: crop-and-resize]."),
    control_preprocessor: Optional[List[str]] = typer.Option(None, "--control-preprocessor", metavar="MODULE", help="ControlNet: the control map made from the fitted control image by an A1111 preprocessor (its sliders: --control-threshold-a/-b, else their defaults): none (the image is the map), canny (thresholds 100/200), invert, lineart_standard, scribble_xdog (threshold 32), shuffle (seed 0), tile_resample (rate 1), tile_colorfix and tile_colorfix+sharp (the image; the colour fix of the UNet's output), blur_gaussian (sigma 9), threshold (127), recolor_luminance and recolor_intensity (gamma 1), t2ia_color_grid (color), inpaint_only and inpaint (inpaint_global_harmonious): the control image with --mask's pixels at -1 (needs --mask); with their networks converted (sdcli convert, found in $SDCLI_ANNOTATOR_DIR, else models/annotators): depth_anything_v2, lineart, lineart_coarse, lineart_anime, softedge_hed, softedge_hedsafe, scribble_hed, softedge_pidinet, softedge_pidisafe, scribble_pidinet, openpose, openpose_hand, openpose_face, openpose_faceonly, openpose_full; see `sdcli detect` [default: none]."),
    control_threshold_a: Optional[List[float]] = typer.Option(None, "--control-threshold-a", metavar="VALUE", help="ControlNet: the preprocessor's first slider, as A1111's API's threshold_a (canny's Low Threshold, scribble_xdog's and threshold's, blur_gaussian's Sigma, tile_resample's Down Sampling Rate, recolor's Gamma Correction: docs/controlnet.md lists them), within the slider's range; -1: its default [default: -1]."),
    control_threshold_b: Optional[List[float]] = typer.Option(None, "--control-threshold-b", metavar="VALUE", help="ControlNet: the preprocessor's second slider, as threshold_b (canny's High Threshold); -1: its default [default: -1]."),
    control_resolution: Optional[List[str]] = typer.Option(None, "--control-resolution", metavar="picture|pixel-perfect|PIXELS", help="ControlNet: where the preprocessor makes the map: picture (from the image fitted to the picture, at its size), or as A1111 does, from the image as given scaled so its short side is PIXELS (64..2048: its Preprocessor Resolution, the API's processor_res) or the size that comes out at the picture's scale (pixel-perfect), the map then fitted to the picture by A1111's map resize (edges kept one pixel wide) [default: picture]."),
    control_mask: Optional[List[str]] = typer.Option(None, "--control-mask", metavar="FILE", help="ControlNet: the unit's own mask for inpaint_only and inpaint (white: repainted), the A1111 API's unit mask, in place of --mask; none: that unit has none. Without --mask (no inpainting), an inpaint_only unit keeps the area outside its mask as the extension does: the control image's latents put back after every step, then the picture laid over the control image through the mask dilated and blurred by 7 pixels."),
    control_type: Optional[List[str]] = typer.Option(None, "--control-type", metavar="TYPE", help="ControlNet Union (xinsir's controlnet-union-sdxl-1.0, ProMax): the unit's control type, as A1111 names it: openpose, depth, softedge (hed, pidi, scribble), hardedge (canny, lineart, mlsd), normal, segmentation, tile, inpaint (ProMax's last two); required for a Union, refused for other ControlNets. Several joined by + (canny+depth: ProMax's multi-condition) run one call of the Union on as many control images, the unit taking one --control-image per type, in order."),
    controlnet_dir: Optional[Path] = typer.Option(None, "--controlnet-dir", help="Where --controlnet NAME finds converted ControlNets [default: $SDCLI_CONTROLNET_DIR, else models/ControlNet]."),
):
    """Make images from a prompt (and optionally an init image)."""
    # the arguments as this function got them: click's ctx.params may hold Typer's paths as str
    options = SimpleNamespace(**{name: value for name, value in locals().items() if name != "ctx"})
    with user_errors("interrupted"):
        use_cache_max_gb(cache_max_gb)
        if from_image is not None:
            from sdcli.engine.parameters import settings_from_image

            apply_stored_settings(ctx, options, settings_from_image(from_image))
        engine, request, paths = prepare(ctx, options)
        write_images(engine, request, paths, options)


def control_units(o: SimpleNamespace) -> tuple:
    """generate's ControlNet units: one per --controlnet, each with its --control-image, and each
    --control-* flag's value given once for all units or once per unit."""
    from sdcli.engine.controlnet import ControlUnit, per_unit, unit_default, unit_images

    names, images = list(o.controlnet or ()), list(o.control_image or ())
    if not names:
        for flag, given in (("--control-image", images), ("--control-weight", o.control_weight),
                            ("--control-start", o.control_start), ("--control-end", o.control_end),
                            ("--control-mode", o.control_mode), ("--control-resize", o.control_resize),
                            ("--control-preprocessor", o.control_preprocessor), ("--control-type", o.control_type),
                            ("--control-threshold-a", o.control_threshold_a),
                            ("--control-threshold-b", o.control_threshold_b), ("--control-mask", o.control_mask),
                            ("--control-resolution", o.control_resolution)):
            if given:
                raise UsageError(f"{flag} is for a ControlNet unit: pass --controlnet NAME too")
        return ()

    def column(setting: str) -> list:
        values = getattr(o, f"control_{setting}")
        column = per_unit(values, len(names), unit_default(setting))
        if column is None:
            raise UsageError(f"--control-{setting.replace('_', '-')} given {len(values)} times for {len(names)} "
                             "ControlNets: give it "
                             "once (for all) or once per --controlnet")
        return column

    columns = [column(setting) for setting in ("weight", "start", "end", "mode", "resize", "preprocessor")]
    types, resolutions = column("type"), column("resolution")
    sliders = [dict(zip(("threshold_a", "threshold_b"), pair))
               for pair in zip(column("threshold_a"), column("threshold_b"))]
    masks = [None if m is None or str(m).strip().lower() in ("", "none") else Path(m) for m in column("mask")]
    groups = unit_images(images, types, len(names), UsageError)
    return tuple(ControlUnit(name, Path(group[0]), *settings, image_name=Path(group[0]).name, type=kind,
                             more_images=tuple(Path(i) for i in group[1:]), mask=mask, resolution=str(res), **slider)
                 for name, group, kind, slider, mask, res, *settings in zip(names, groups, types, sliders, masks,
                                                                            resolutions, *columns))


def pair(value, separator: str, flag: str, low: int) -> tuple[int, int] | None:
    """"WxH" or "X,Y" as two whole numbers (width first)."""
    if value is None or isinstance(value, tuple):
        return value
    parts = str(value).lower().replace(" ", "").split(separator)
    if len(parts) != 2 or not all(p.isdigit() and low <= int(p) <= 1_000_000 for p in parts):
        shape = "WxH" if separator == "x" else "X,Y"
        raise typer.BadParameter(f"must be {shape}, two whole numbers from {low}, got {value!r}", param_hint=flag)
    return int(parts[0]), int(parts[1])


def apply_stored_settings(ctx: typer.Context, options: SimpleNamespace, stored: dict) -> None:
    """--from-image: the PNG's settings for every option not given on the command line."""
    for name in STORED:
        if name in stored and not option_given(ctx, name):
            setattr(options, name, stored[name])
    checked = recheck_stored(ctx, {name: getattr(options, name) for name in RECHECKED})
    for name, value in checked.items():
        setattr(options, name, value)
    for needed, what in (("init_image", "an init image (image-to-image)"), ("mask", "a mask (inpainting)")):
        if needed in stored.get("needs", ()) and getattr(options, needed) is None:
            flag = "--" + needed.replace("_", "-")
            raise UsageError(f"--from-image: {ctx.params['from_image']} was made from {what}, which a PNG does not "
                             f"store: pass {flag} to redo it")
    references = stored.get("reference_names", ())
    if references and not options.reference_image:
        raise UsageError(f"--from-image: {ctx.params['from_image']} was made from {len(references)} reference "
                         f"image(s) ({', '.join(references)}), which a PNG does not store: pass --reference-image "
                         "for each, in that order, to redo it")
    if references and len(options.reference_image) != len(references):
        warn(f"--from-image: it was made from {len(references)} reference image(s) ({', '.join(references)}), "
             f"{len(options.reference_image)} given: the image will differ")
    apply_stored_controlnets(ctx, options, stored.get("controlnets", ()))
    for note in stored.get("notes", ()):
        warn(f"--from-image: {note}")
    options.stored_hashes = {kind: stored[kind] for kind in ("lora_hashes", "ti_hashes") if kind in stored}
    model_name = stored.get("model_name")
    if options.model is None and not os.environ.get("SDCLI_MODEL") and model_name and (Path("models") / model_name).is_dir():
        options.model = str(Path("models") / model_name)


def apply_stored_controlnets(ctx: typer.Context, options: SimpleNamespace, units: list) -> None:
    """--from-image: the PNG's ControlNet units (A1111's `ControlNet N` fields) for --controlnet and
    each --control-* flag not given; their control images are not in a PNG: --control-image."""
    if not units or option_given(ctx, "controlnet"):
        return
    from sdcli.engine.controlnet import union_types, unit_default

    names = [unit["model"] for unit in units]
    needed = sum(max(len(union_types(unit.get("type", ""))), 1) for unit in units)  # (several: a Union's)
    if len(options.control_image or ()) != needed:
        images = f", {needed} control images" if needed != len(units) else ""
        raise UsageError(f"--from-image: {ctx.params['from_image']} was made with {len(units)} ControlNet unit(s) "
                         f"({', '.join(names)}{images}), whose control images a PNG does not store: pass "
                         "--control-image for each, in that order, to redo it")
    options.controlnet = names
    for name, key in (("control_weight", "weight"), ("control_start", "start"), ("control_end", "end"),
                      ("control_mode", "mode"), ("control_resize", "resize"),
                      ("control_preprocessor", "preprocessor"), ("control_type", "type"),
                      ("control_threshold_a", "threshold_a"), ("control_threshold_b", "threshold_b"),
                      ("control_resolution", "resolution")):
        if not option_given(ctx, name):
            setattr(options, name, [unit.get(key, unit_default(key)) for unit in units])


def prepare(ctx: typer.Context, o: SimpleNamespace):
    """The checked request, the engine that runs it and the files to write."""
    from sdcli.engine.engine import Engine
    from sdcli.engine.networks import NetworkFolders
    from sdcli.engine.request import GenerationRequest
    from sdcli.runtime.core import check_precision

    o.imports_done = time.perf_counter()  # for --json's breakdown
    if o.prompt is None:
        raise UsageError("--prompt is required (or --from-image with an image that stores one)")
    request = GenerationRequest(
        prompt=o.prompt, negative_prompt=o.negative_prompt, steps=o.steps, guidance_scale=o.guidance_scale,
        seed=o.seed or 0, width=o.width, height=o.height, scheduler=o.scheduler, init_image=o.init_image,
        strength=o.strength, mask=o.mask, mask_blur=o.mask_blur, rng=o.rng, emphasis=o.emphasis,
        deepcache=o.deepcache, clip_skip=o.clip_skip, vae=o.vae, vae_tiling=o.vae_tiling,
        vae_tile_size=o.vae_tile_size, original_size=o.original_size,
        crop_coords=o.crop_coords, target_size=o.target_size, aesthetic_score=o.aesthetic_score,
        negative_aesthetic_score=o.negative_aesthetic_score, refiner_switch=o.refiner_switch,
        guidance_rescale=o.guidance_rescale, cfg_normalization=o.cfg_normalization,
        cfg_truncation=o.cfg_truncation, reference_images=tuple(o.reference_image or ()),
        controlnets=control_units(o),
    )
    request.validate()
    check_precision(o.precision)
    request = request.replace(hires=hires_fix(o))
    networks = NetworkFolders(o.lora_dir, o.embeddings_dir, o.allow_pickle)
    networks.check()  # a folder named that does not exist
    paths = output_paths(o.output, o.num_images)
    check_output_dir(o.output)
    model_dir = find_model(o.model, o.quiet or o.as_json)
    request = request.with_images_read()
    seed = o.seed if o.seed is not None else secrets.randbelow(2**32)
    # the text encoder is freed once the prompt is encoded: every image shares it
    engine = Engine(model_dir, device=o.device, precision=o.precision, low_memory=o.low_memory,
                    keep_text_encoder=False, networks=networks, refiner=o.refiner, controlnet_dir=o.controlnet_dir)
    changes = {"seed": seed}
    few_step = engine.family.generation_defaults(o.scheduler)
    if few_step and o.from_image is None:  # the model's own defaults (its folder's, an LCM's) for what was not given
        for name, value in zip(("steps", "guidance_scale"), few_step):
            if not option_given(ctx, name):
                changes[name] = value
    if o.from_image is None and not option_given(ctx, "vae"):  # the folder's --default-vae (a PNG says its own)
        changes["vae"] = (engine.refiner or engine).folder.default_vae  # the folder that decodes
    request = request.replace(**changes)
    request.validate()
    engine.check_fits(request, images=o.num_images)  # a size too large is refused before anything loads
    if o.seed is None and not (o.quiet or o.as_json):  # (and a LoRA not found: one line, no seed before it)
        print(f"sdcli: seed {seed}", file=sys.stderr)
    return engine, request, paths


def write_images(engine, request, paths: list[Path], o: SimpleNamespace) -> None:
    from sdcli.engine.parameters import image_parameters
    from sdcli.imaging.image_io import save_png
    from sdcli.util.progress import StepProgress

    for i, path in enumerate(paths):
        image_request = request.replace(seed=(request.seed + i) % 2**64)
        step_seconds: list[float] = []
        first_step_at: list[float] = []
        label = f"image {i + 1}/{len(paths)}" if len(paths) > 1 else "generating"
        with StepProgress(label, enabled=not (o.quiet or o.as_json)) as bar:

            def on_step(info, bar=bar):
                if not first_step_at:
                    first_step_at.append(process_age() - info.seconds)
                step_seconds.append(round(info.seconds, 4))
                bar.update(info)

            # the UNet is not needed again after the last image: free it before decoding
            result = engine.generate(image_request, on_step, on_note=warn, release_unet=i == len(paths) - 1)
        if i == 0:
            check_stored_hashes(getattr(o, "stored_hashes", {}), result)
        t0 = time.perf_counter()
        save_png(path, result.image, image_parameters(engine, image_request, result, o.precision))
        png_write = time.perf_counter() - t0
        if o.as_json:
            timings = {k: round(v, 4) for k, v in {**engine.timings, **result.timings}.items()}
            timings.update(before_first_step=round(first_step_at[0], 4) if first_step_at else None,
                           process=round(process_age(), 4), steps=step_seconds)
            if i == 0:  # the whole process's stages, up to this line (the first image's)
                timings["breakdown"] = json_breakdown(engine, result, png_write, getattr(o, "imports_done", None))
            print(json.dumps({"path": str(path), "seed": result.seed, "width": result.width, "height": result.height,
                              "steps": image_request.steps, "scheduler": result.scheduler, "timings": timings}),
                  flush=True)
        elif not o.quiet:
            print(path, flush=True)


def json_breakdown(engine, result, png_write: float, imports_done: float | None) -> dict:
    """--json: where the process has spent its time so far (sdcli.util.breakdown)."""
    import sdcli
    from sdcli.util.breakdown import age_at, generate_breakdown

    process_start = age_at(sdcli.IMPORTED_AT)
    now = time.perf_counter()
    imports = (imports_done or now) - sdcli.IMPORTED_AT
    total = (process_start or 0.0) + now - sdcli.IMPORTED_AT
    load_total = sum(v for k, v in engine.timings.items() if k.startswith("compile_"))
    return generate_breakdown(result.timings, process_start, imports, png_write, total, load_total)


def check_stored_hashes(stored: dict, result) -> None:
    """--from-image: a warning for each LoRA or embedding whose file is not the one the image
    was made with (its A1111 hash differs)."""
    for kind, label, found in (("lora_hashes", "LoRA", result.lora_hashes), ("ti_hashes", "embedding", result.ti_hashes)):
        now = dict(found)
        for name, short in stored.get(kind, {}).items():
            if name in now and now[name] != short:
                warn(f"--from-image: {label} {name} is not the file the image was made with (hash {now[name]}, "
                     f"the image's {short}): the image will differ")
            elif name not in now and kind == "ti_hashes":
                warn(f"--from-image: the image was made with the embedding {name} ({short}), not found in "
                     "the embeddings folder or not in the prompt: the image will differ")


def find_model(model: Optional[str], quiet: bool = False) -> Path:
    from sdcli.model.hub import resolve_model

    return resolve_model(model, quiet)


def output_paths(output: Path, count: int) -> list[Path]:
    if output.suffix.lower() != ".png":
        raise UsageError(f"--output must be a .png file, got {output}")
    paths = [output] if count == 1 else [output.with_name(f"{output.stem}-{i + 1}{output.suffix}") for i in range(count)]
    for path in paths:
        if path.is_dir():
            raise UsageError(f"--output: {path} is a folder; give a .png file name")
    return paths


def check_output_dir(path: Path) -> None:
    from sdcli.util.fsutil import check_writable_dir

    try:
        check_writable_dir(path.parent if str(path.parent) else Path("."))
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc}") from None


def recheck_stored(ctx: typer.Context, values: dict) -> dict:
    """Settings read from a --from-image PNG go through the same types, ranges and checks as
    the flags they stand for."""
    params = {p.name: p for p in ctx.command.params}
    checked = {}
    for name, value in values.items():
        try:
            checked[name] = None if value is None else params[name].process_value(ctx, value)
        except typer.BadParameter as exc:
            raise UsageError(f"--from-image: the stored {params[name].opts[0]} is not valid: {exc.format_message()}") from None
    return checked


def hires_fix(o: SimpleNamespace):
    """The hires fix's settings (engine/hires.py), or None without --hires-scale, --hires-width
    or --hires-height (its other flags are then refused)."""
    from sdcli.engine.hires import HiresFix

    if o.hires_scale is None and o.hires_width is None and o.hires_height is None:
        for flag, value, default in (("--hires-upscaler", o.hires_upscaler, "Latent"), ("--hires-steps", o.hires_steps, 0),
                                     ("--hires-denoise", o.hires_denoise, 0.7), ("--hires-prompt", o.hires_prompt, ""),
                                     ("--hires-negative-prompt", o.hires_negative_prompt, ""),
                                     ("--hires-scheduler", o.hires_scheduler, None), ("--hires-cfg", o.hires_cfg, None)):
            if value != default:
                raise UsageError(f"{flag} is for the hires fix: pass --hires-scale or --hires-width/--hires-height too")
        return None
    return HiresFix(scale=2.0 if o.hires_scale is None else o.hires_scale, resize_width=o.hires_width or 0,
                    resize_height=o.hires_height or 0, upscaler=o.hires_upscaler, steps=o.hires_steps,
                    denoise=o.hires_denoise, prompt=o.hires_prompt, negative_prompt=o.hires_negative_prompt,
                    scheduler=o.hires_scheduler, guidance_scale=o.hires_cfg, upscaler_dir=o.upscaler_dir)
