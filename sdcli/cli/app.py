"""The `sdcli` command line."""
from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import sys
import time
import traceback
from pathlib import Path
from typing import Optional

import typer

from sdcli import __version__
from sdcli.batch.rows import GUIDANCE_MAX
from sdcli.util.errors import SdcliError, UsageError
from sdcli.schedulers import A1111_NAMES, resolve_scheduler_name, scheduler_names

app = typer.Typer(
    help="Stable Diffusion on an ordinary CPU, through OpenVINO.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts say "[default: ...]", which rich would eat as markup
)

STATE = {"debug": False}
_IMPORTED_AT = time.perf_counter()


def process_age() -> float:
    """Seconds since this process started (interpreter start-up included where /proc tells)."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _IMPORTED_AT


def fail(exc: BaseException) -> None:
    """Print one line for `exc` and exit with its code (full traceback with --debug)."""
    if STATE["debug"]:
        traceback.print_exception(exc)
    code = exc.exit_code if isinstance(exc, SdcliError) else 1
    if isinstance(exc, SdcliError):
        message = str(exc)
    elif isinstance(exc, OSError) and exc.strerror:
        message = f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    else:
        message = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        if not STATE["debug"]:
            message += " (run with --debug for details)"
    print(f"sdcli: error: {message}", file=sys.stderr)
    raise typer.Exit(code)


@contextlib.contextmanager
def user_errors(interrupted: str = "interrupted"):
    """Every command's body runs in this: an error becomes one line and an exit code
    (see `fail`), Ctrl-C a short note and 130."""
    try:
        yield
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        print(f"sdcli: {interrupted}", file=sys.stderr)
        raise typer.Exit(130) from None
    except Exception as exc:
        fail(exc)


def warn(message: str) -> None:
    """Warnings go to stderr even with --quiet: they say the result is not what was asked."""
    print(f"sdcli: warning: {message}", file=sys.stderr)


@app.callback()
def main_options(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
):
    STATE["debug"] = debug
    if version:
        print(f"sdcli {__version__}")
        raise typer.Exit(0)


def _finite(value: Optional[float]) -> Optional[float]:
    if value is not None and not math.isfinite(value):  # click's FloatRange lets nan through
        raise typer.BadParameter(f"must be a finite number, got {value}")
    return value


def _check_creatable(folder: Path, flag: str) -> None:
    """`folder` can be made: the nearest part of its path that exists is a writable folder."""
    parent = folder.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag}: cannot create {folder}: {parent} is not a writable folder")


# --- convert ------------------------------------------------------------------------

@app.command()
def convert(
    source: Optional[str] = typer.Argument(None, help="Hub repo id, local diffusers folder, or single-file .safetensors checkpoint (none with --into)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output folder [default: models/<source name>]."),
    weight_format: Optional[str] = typer.Option(None, "--weight-format", help="fp16 (default, half the size of fp32), fp32, or int8 (NNCF weight compression; the default with --quantize)."),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="hybrid: NNCF hybrid quantization of the UNet (int8 weights for its linear layers, int8 weights and activations elsewhere), calibrated on a short generation; the other components int8 weight-only."),
    calibration_prompts: Optional[Path] = typer.Option(None, "--calibration-prompts", help="With --quantize: a text file, one prompt a line [default: 8 built-in prompts]."),
    calibration_samples: int = typer.Option(32, "--calibration-samples", min=4, max=2000, help="With --quantize: UNet calls to measure (more: slower conversion, ranges closer to real use)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output folder."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow pickled .ckpt checkpoints (they can run code when loaded)."),
    config: Optional[str] = typer.Option(None, "--config", help="Diffusers folder or repo whose configs describe a single-file checkpoint."),
    lora: Optional[str] = typer.Option(None, "--lora", help="Fuse this LoRA into the UNet (and the text encoder, where it has weights for it): a .safetensors file, a folder holding one, or a Hub repo such as latent-consistency/lcm-lora-sdv1-5 (needs peft)."),
    lora_scale: float = typer.Option(1.0, "--lora-scale", callback=_finite, help="The LoRA's weight when fused."),
    convert_scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Make this the model's own scheduler (scheduler_config.json), e.g. lcm for an LCM-LoRA; a name from `sdcli generate --list-schedulers` [default: the source's]."),
    tiny_vae: Optional[str] = typer.Option(None, "--tiny-vae", help="Also convert this tiny autoencoder for `generate --vae tiny`: a diffusers AutoencoderTiny folder or Hub repo (madebyollin/taesd for SD 1.x/2.x)."),
    into: Optional[Path] = typer.Option(None, "--into", help="With --tiny-vae and no SOURCE: add the tiny VAE to this converted model folder."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
):
    """Export a diffusers model to OpenVINO IR (the optimum-cli folder layout); or, with
    --tiny-vae TAESD --into DIR, add a tiny VAE to a converted model."""
    from sdcli.convert.export import WEIGHT_FORMATS, ConvertOptions, default_output_name

    with user_errors("interrupted; nothing was written"):
        weight_format = weight_format if weight_format is not None else ("int8" if quantize else "fp16")
        if weight_format not in WEIGHT_FORMATS:
            raise UsageError(f"--weight-format must be one of {', '.join(WEIGHT_FORMATS)}, got {weight_format!r}")
        log = (lambda s: None) if quiet else (lambda s: print(s, file=sys.stderr))
        if into is not None:
            if source is not None or output is not None:
                raise UsageError("--into adds a tiny VAE to a converted folder; give it without SOURCE and --output")
            if tiny_vae is None:
                raise UsageError("--into needs --tiny-vae (the tiny VAE to add)")
            _quiet_libraries()
            from sdcli.convert.tiny_vae import add_tiny_vae

            add_tiny_vae(into, tiny_vae, weight_format, force=force, log=log)
            if not quiet:
                print(into)
            return
        if source is None:
            raise UsageError("missing SOURCE (a Hub repo id, diffusers folder or checkpoint), or --tiny-vae with --into DIR")
        if not source.strip():
            raise UsageError("SOURCE is empty: give a Hub repo id, a diffusers folder or a .safetensors checkpoint")
        target = output or Path("models") / default_output_name(source)
        _check_creatable(target, "--output")
        if config is not None:
            from sdcli.model.hub import looks_like_repo_id

            if not Path(config).expanduser().is_dir() and not looks_like_repo_id(config):
                raise UsageError(f"--config: {config} is neither a diffusers folder nor a Hub repo id")
        prompts = None
        if calibration_prompts is not None:
            if quantize is None:
                raise UsageError("--calibration-prompts only makes sense with --quantize hybrid")
            from sdcli.batch.rows import read_text

            prompts = [line.strip() for line in read_text(str(calibration_prompts)).splitlines()
                       if line.strip() and not line.lstrip().startswith("#")]
            if not prompts:
                raise UsageError(f"--calibration-prompts: no prompts in {calibration_prompts}")
        opts = ConvertOptions(weight_format=weight_format, force=force, allow_pickle=allow_pickle, config=config,
                              tiny_vae=tiny_vae, lora=lora, lora_scale=lora_scale, scheduler=convert_scheduler,
                              quantize=quantize, calibration_prompts=prompts, calibration_samples=calibration_samples)
        _quiet_libraries()
        from sdcli.convert.export import convert as run_convert

        run_convert(source, target, opts, log=log)
        if not quiet:
            print(target)


def _quiet_libraries() -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    for name in ("transformers", "diffusers", "nncf", "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)


# --- generate -----------------------------------------------------------------------

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


def a1111_parameters(config, result, model_name: str, init_image: bool, precision: str | None = None) -> str:
    """The PNG's `parameters` text: A1111's fields plus what sdcli needs to redo the image."""
    from sdcli.imaging.params import format_parameters

    fields = {
        "Steps": config.steps,
        "Sampler": A1111_NAMES.get(result.scheduler, result.scheduler),
        "CFG scale": f"{config.guidance_scale:g}",
        "Seed": result.seed,
        "Size": f"{result.width}x{result.height}",
        "Model": model_name,
        "Denoising strength": f"{config.strength:g}" if init_image else None,
        "Mask blur": config.mask_blur if getattr(config, "mask", None) is not None else None,
        "RNG": config.rng,
        "Precision": precision,
        "Emphasis": None if config.emphasis else "off",
        "Clip skip": config.clip_skip if getattr(config, "clip_skip", 1) > 1 else None,
        "DeepCache": config.deepcache if getattr(config, "deepcache", 1) > 1 else None,
        "VAE": "tiny" if getattr(config, "vae", "full") == "tiny" else None,
        "Version": f"sdcli {__version__}",
    }
    return format_parameters(config.prompt, config.negative_prompt, fields)


def settings_from_image(path: Path) -> dict:
    """generate's options as stored in an sdcli/A1111 PNG's `parameters` chunk."""
    from sdcli.imaging.image_io import read_png_text
    from sdcli.imaging.params import parse_parameters

    if not path.is_file():
        raise UsageError(f"--from-image: {path} not found")
    text = read_png_text(path).get("parameters")
    if text is None:
        raise UsageError(f"--from-image: {path} has no generation settings (no 'parameters' text chunk)")
    prompt, negative, fields = parse_parameters(text)
    out: dict = {"prompt": prompt, "negative_prompt": negative}
    try:
        if "Steps" in fields:
            out["steps"] = int(fields["Steps"])
        if "Sampler" in fields:
            out["scheduler"] = resolve_scheduler_name(fields["Sampler"])
        if "CFG scale" in fields:
            out["guidance_scale"] = float(fields["CFG scale"])
        if "Seed" in fields:
            out["seed"] = int(fields["Seed"])
        if "Size" in fields:
            w, h = fields["Size"].lower().split("x")
            out["width"], out["height"] = int(w), int(h)
        if "Denoising strength" in fields:
            out["strength"] = float(fields["Denoising strength"])
        if "RNG" in fields:
            out["rng"] = fields["RNG"]
        if "Precision" in fields:
            out["precision"] = fields["Precision"]
        if "Emphasis" in fields:
            out["emphasis"] = fields["Emphasis"] != "off"
        if "Clip skip" in fields:
            out["clip_skip"] = int(fields["Clip skip"])
        if "DeepCache" in fields:
            out["deepcache"] = int(fields["DeepCache"])
        if "Mask blur" in fields:
            out["mask_blur"] = int(fields["Mask blur"])
        if fields.get("VAE") == "tiny":  # A1111 writes a VAE file's name here: only sdcli's value is read
            out["vae"] = "tiny"
        if "Model" in fields:
            out["model_name"] = fields["Model"]
    except ValueError as exc:
        raise UsageError(f"--from-image: {path} has unreadable settings: {exc}") from None
    return out


def check_output_dir(path: Path) -> None:
    from sdcli.util.fsutil import check_writable_dir

    try:
        check_writable_dir(path.parent if str(path.parent) else Path("."))
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc}") from None


def _recheck_stored(ctx: typer.Context, values: dict) -> dict:
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


def _option_given(ctx: typer.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def _positive_multiple_of_8(value: Optional[int]) -> Optional[int]:
    if value is not None and (value <= 0 or value % 8):
        raise typer.BadParameter(f"must be a positive multiple of 8, got {value}")
    return value


def _scheduler_name(value: Optional[str]) -> Optional[str]:
    if value is None:
        return None
    try:
        return resolve_scheduler_name(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _list_schedulers(value: bool) -> None:
    if value:
        for name in scheduler_names():
            print(f"{name:<18} {A1111_NAMES[name]}")
        raise typer.Exit(0)


@app.command()
def generate(
    ctx: typer.Context,
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="What to draw (required unless --from-image)."),
    negative_prompt: str = typer.Option("", "--negative-prompt", "-n", help="What to steer away from."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Converted model folder [default: $SDCLI_MODEL, else the only one under models/]."),
    init_image: Optional[Path] = typer.Option(None, "--init-image", "-i", help="Start from this image (image-to-image)."),
    strength: float = typer.Option(0.8, "--strength", min=0.0, max=1.0, callback=_finite, help="Image-to-image: how much to repaint, 0..1."),
    mask: Optional[Path] = typer.Option(None, "--mask", help="Inpainting (with --init-image): white = repaint, black = keep; resized to the image."),
    mask_blur: int = typer.Option(4, "--mask-blur", min=0, max=256, help="Inpainting: Gaussian blur of the mask in pixels, and the result laid over the original through it; 0: neither (diffusers' exact result)."),
    steps: int = typer.Option(20, "--steps", "-s", min=1, max=1000, help="Denoising steps [default: 20; 4 for LCM models and the lcm scheduler]."),
    guidance_scale: float = typer.Option(7.5, "--guidance-scale", "-g", min=0.0, max=GUIDANCE_MAX, callback=_finite, help="Classifier-free guidance; 1 or less turns it off [default: 7.5; LCM models 8.5, built into the UNet; 1 with the lcm scheduler on other models]."),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, max=2**64 - 1, help="Random seed [default: random, printed]."),
    width: Optional[int] = typer.Option(None, "--width", "-W", callback=_positive_multiple_of_8, help="Multiple of 8 [default: the model's, or the init image's]."),
    height: Optional[int] = typer.Option(None, "--height", "-H", callback=_positive_multiple_of_8, help="Multiple of 8 [default: the model's, or the init image's]."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", callback=_scheduler_name, help="A name from --list-schedulers, short (dpmpp_2m_karras) or A1111's (\"DPM++ 2M Karras\") [default: the model's]."),
    list_schedulers: bool = typer.Option(False, "--list-schedulers", callback=_list_schedulers, is_eager=True, expose_value=False, help="Print the schedulers and exit."),
    num_images: int = typer.Option(1, "--num-images", min=1, max=10_000, help="Images to make; image i uses seed+i."),
    output: Path = typer.Option(Path("output.png"), "--output", "-o", help="PNG to write; several images get -1, -2, ... before .png."),
    device: str = typer.Option("CPU", "--device", help="OpenVINO device: CPU, GPU, NPU, AUTO, ..."),
    precision: str = typer.Option("auto", "--precision", help="auto (OpenVINO picks: bf16 where the CPU has it), f32, bf16, f16."),
    rng: str = typer.Option("torch", "--rng", help="torch: the same noise as diffusers for a seed; numpy: faster draws."),
    emphasis: bool = typer.Option(True, "--emphasis/--no-emphasis", help="A1111 prompt weights: (word), [word], (word:1.3); \\( for a literal bracket."),
    low_memory: bool = typer.Option(False, "--low-memory", help="Keep one model component in memory at a time (slower with --num-images > 1)."),
    clip_skip: int = typer.Option(1, "--clip-skip", min=1, max=24, help="A1111's Clip skip: the prompt from the text encoder's N-th layer from the end (2: the penultimate; diffusers' clip_skip=N-1)."),
    deepcache: int = typer.Option(1, "--deepcache", min=1, max=1000, help="DeepCache: the full UNet every N-th step, only its shallow branch in between (3: about 2x faster steps; 1: off)."),
    vae: str = typer.Option("full", "--vae", help="full: the model's VAE; tiny: the TAESD that `sdcli convert --tiny-vae` added (much faster decoding, a little less detail)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or notes on stderr."),
    as_json: bool = typer.Option(False, "--json", help="One JSON line per image on stdout."),
    from_image: Optional[Path] = typer.Option(None, "--from-image", help="Redo the image whose settings this PNG stores; options given here override them."),
):
    """Make images from a prompt (and optionally an init image)."""
    with user_errors("interrupted"):
        from sdcli.runtime.core import PRECISIONS

        if from_image is not None:
            stored = settings_from_image(from_image)

            def given(name: str) -> bool:
                source = ctx.get_parameter_source(name)
                return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")

            prompt = prompt if given("prompt") else stored["prompt"]
            negative_prompt = negative_prompt if given("negative_prompt") else stored["negative_prompt"]
            steps = steps if given("steps") else stored.get("steps", steps)
            scheduler = scheduler if given("scheduler") else stored.get("scheduler", scheduler)
            guidance_scale = guidance_scale if given("guidance_scale") else stored.get("guidance_scale", guidance_scale)
            seed = seed if given("seed") else stored.get("seed", seed)
            width = width if given("width") else stored.get("width", width)
            height = height if given("height") else stored.get("height", height)
            strength = strength if given("strength") else stored.get("strength", strength)
            rng = rng if given("rng") else stored.get("rng", rng)
            precision = precision if given("precision") else stored.get("precision", precision)
            emphasis = emphasis if given("emphasis") else stored.get("emphasis", emphasis)
            deepcache = deepcache if given("deepcache") else stored.get("deepcache", deepcache)
            vae = vae if given("vae") else stored.get("vae", vae)
            clip_skip = clip_skip if given("clip_skip") else stored.get("clip_skip", clip_skip)
            mask_blur = mask_blur if given("mask_blur") else stored.get("mask_blur", mask_blur)
            checked = _recheck_stored(ctx, dict(steps=steps, scheduler=scheduler, guidance_scale=guidance_scale,
                                                seed=seed, width=width, height=height, strength=strength,
                                                deepcache=deepcache, clip_skip=clip_skip, mask_blur=mask_blur))
            steps, scheduler, guidance_scale, seed, width, height, strength, deepcache, clip_skip, mask_blur = \
                checked.values()
            if model is None and not os.environ.get("SDCLI_MODEL") and (Path("models") / stored.get("model_name", "")).is_dir():
                model = str(Path("models") / stored["model_name"])
        if prompt is None:
            raise UsageError("--prompt is required (or --from-image with an image that stores one)")
        for flag, text in (("--prompt", prompt), ("--negative-prompt", negative_prompt)):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # bytes that are not UTF-8 in argv arrive as lone surrogates
                raise UsageError(f"{flag} is not valid UTF-8 text (check the terminal's or the script's encoding)") from None
            from sdcli.engine.prompt_syntax import MAX_WEIGHT, weight_out_of_range

            weight = weight_out_of_range(text) if emphasis else None
            if weight is not None:
                raise UsageError(f"{flag}: an emphasis weight of {weight:.6g} is beyond +-{MAX_WEIGHT:g} (nested brackets "
                                 "multiply; write \\( for a literal bracket, or pass --no-emphasis)")

        if precision not in PRECISIONS:
            raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if rng not in ("torch", "numpy"):
            raise UsageError(f"--rng must be torch or numpy, got {rng!r}")
        if vae not in ("full", "tiny"):
            raise UsageError(f"--vae must be full or tiny, got {vae!r}")
        paths = output_paths(output, num_images)
        check_output_dir(output)
        model_dir = find_model(model, quiet or as_json)
        image = None
        if init_image is not None:
            from sdcli.imaging.image_io import read_rgb

            image = read_rgb(init_image)
        mask_array = None
        if mask is not None:
            if init_image is None:
                raise UsageError("--mask needs --init-image (the image to inpaint)")
            from sdcli.imaging.image_io import read_mask

            mask_array = read_mask(mask)
        if seed is None:
            seed = secrets.randbelow(2**32)
            if not (quiet or as_json):
                print(f"sdcli: seed {seed}", file=sys.stderr)

        from sdcli.engine.lcm import lcm_defaults
        from sdcli.engine.engine import GenerationConfig, StableDiffusionEngine

        engine = StableDiffusionEngine(model_dir, device=device, precision=precision, low_memory=low_memory)
        few_step = lcm_defaults(engine.folder, scheduler)
        if few_step and from_image is None:  # an LCM model's own defaults for what was not given
            steps = steps if _option_given(ctx, "steps") else few_step[0]
            guidance_scale = guidance_scale if _option_given(ctx, "guidance_scale") else few_step[1]
        base = GenerationConfig(
            prompt=prompt,
            negative_prompt=negative_prompt,
            steps=steps,
            guidance_scale=guidance_scale,
            seed=seed,
            width=width,
            height=height,
            scheduler=scheduler,
            init_image=image,
            strength=strength,
            mask=mask_array,
            mask_blur=mask_blur,
            rng=rng,
            emphasis=emphasis,
            deepcache=deepcache,
            clip_skip=clip_skip,
            vae=vae,
        )
        base.validate()
        from sdcli.engine.memory import check_fits

        check_fits(engine, base, images=num_images)  # a size too large is refused before anything loads
        engine.preload(base)
        context, notes = engine.encode_prompt(prompt, negative_prompt, engine.classifier_free_guidance(guidance_scale), emphasis, clip_skip)
        for note in notes:
            warn(note)
        engine.release_text_encoder()
        from sdcli.util.progress import StepProgress

        from sdcli.imaging.image_io import save_png

        for i, path in enumerate(paths):
            config = GenerationConfig(**{**base.__dict__, "seed": (seed + i) % 2**64})
            step_seconds: list[float] = []
            first_step_at: list[float] = []
            with StepProgress(f"image {i + 1}/{len(paths)}" if len(paths) > 1 else "generating", enabled=not (quiet or as_json)) as bar:

                def on_step(info, bar=bar):
                    if not first_step_at:
                        first_step_at.append(process_age() - info.seconds)
                    step_seconds.append(round(info.seconds, 4))
                    bar.update(info)

                # the UNet is not needed again after the last image: free it before decoding
                result = engine.generate(config, on_step=on_step, context=context, release_unet=i == len(paths) - 1)
            save_png(path, result.image, a1111_parameters(config, result, engine.folder.name, image is not None, precision))
            if as_json:
                timings = {k: round(v, 4) for k, v in {**engine.timings, **result.timings}.items()}
                timings.update(before_first_step=round(first_step_at[0], 4) if first_step_at else None,
                               process=round(process_age(), 4), steps=step_seconds)
                print(json.dumps({"path": str(path), "seed": result.seed, "width": result.width, "height": result.height,
                                  "steps": steps, "scheduler": result.scheduler, "timings": timings}), flush=True)
            elif not quiet:
                print(path, flush=True)


def _terminate(signum, frame) -> None:
    # SIGTERM unwinds like Ctrl-C does: temporary files and folders are removed on the way
    # out, finished images stay.  OpenVINO runs a UNet step without returning to Python,
    # so this lands within one step.
    print("sdcli: terminated", file=sys.stderr)
    raise SystemExit(143)


def main() -> None:
    import signal

    signal.signal(signal.SIGTERM, _terminate)
    app()


# --- info ---------------------------------------------------------------------------

@app.command()
def info(
    target: Optional[Path] = typer.Argument(None, help="A converted model folder to describe."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """OpenVINO version, devices and CPU capabilities; with a model folder, its components;
    with a PNG, the settings it was made with."""
    with user_errors("interrupted"):
        from sdcli.model.info import describe_model, describe_runtime

        if target is not None and target.is_file():
            from sdcli.imaging.image_io import read_png_text
            from sdcli.imaging.params import parse_parameters

            text = read_png_text(target).get("parameters")
            if text is None:
                raise UsageError(f"{target} has no generation settings (no 'parameters' text chunk)")
            if as_json:
                prompt, negative, fields = parse_parameters(text)
                print(json.dumps({"prompt": prompt, "negative_prompt": negative, **fields}, ensure_ascii=False, indent=1))
            else:
                print(text)
            return

        data = {"runtime": describe_runtime()}
        if target is not None:
            data["model"] = describe_model(target)
        if as_json:
            print(json.dumps(data, indent=1))
            return
        rt = data["runtime"]
        print(f"sdcli {__version__}, OpenVINO {rt['openvino']}")
        for dev in rt["devices"]:
            print(f"  {dev['name']}: {dev['full_name']}  capabilities: {', '.join(dev['capabilities'])}")
        if "model" in data:
            m = data["model"]
            print(f"model {m['path']} ({m['total_mb']:.1f} MB{', ' + m['weight_format'] if m.get('weight_format') else ''})")
            for c in m["components"]:
                print(f"  {c['name']:<16} {c['size_mb']:>9.1f} MB  weights {c['weights']}")


# --- bench --------------------------------------------------------------------------

@app.command()
def bench(
    steps: str = typer.Option("4,20", "--steps", help="Comma-separated step counts."),
    rounds: int = typer.Option(2, "--rounds", min=1, help="Interleaved rounds of every peer and step count."),
    peers: str = typer.Option("sdcli,genai,diffusers", "--peers", help="Which of sdcli, genai, diffusers to run."),
    size: int = typer.Option(512, "--size", callback=_positive_multiple_of_8, help="Image width and height."),
    precision: str = typer.Option("auto", "--precision", help="auto, f32, bf16 (diffusers: bf16 autocast for auto)."),
    weight_format: str = typer.Option("fp16", "--weight-format", help="Weight format of the converted folder."),
    workdir: Optional[Path] = typer.Option(None, "--workdir", help="Where the random model is built and kept [default: ~/.cache/sdcli/bench]."),
    output_dir: Path = typer.Option(Path("bench-results"), "--output-dir", help="Where bench.json and bench.md go."),
    sdcli_arg: list[str] = typer.Option([], "--sdcli-arg", help="Extra argument for `sdcli generate` (repeatable)."),
    arch: str = typer.Option("sd15", "--arch", help="sd15 (the real cost) or tiny (a quick check of the benchmark itself)."),
    readme: Optional[Path] = typer.Option(None, "--readme", help="Also rewrite this README's bench table (between <!-- bench:NAME:start/end --> markers)."),
    readme_block: str = typer.Option("local", "--readme-block", help="NAME of the README block to rewrite."),
    no_run: bool = typer.Option(False, "--no-run", help="Run nothing; render OUTPUT_DIR/bench.json (with --readme)."),
):
    """Benchmark sdcli against openvino-genai and diffusers on an SD 1.5-size random model."""
    with user_errors("interrupted"):
        from sdcli.bench.peers import PEERS, run_bench, update_readme
        from sdcli.model.folder import default_cache_dir

        if no_run:
            if readme is None:
                raise UsageError("--no-run only makes sense with --readme")
            update_readme(readme, output_dir / "bench.json", readme_block)
            return

        try:
            step_list = [int(s) for s in steps.split(",") if s.strip()]
        except ValueError:
            raise UsageError(f"--steps takes comma-separated numbers such as 4,20, got {steps!r}") from None
        peer_list = [p.strip() for p in peers.split(",") if p.strip()]
        bad = [p for p in peer_list if p not in PEERS]
        if bad or not peer_list:
            raise UsageError(f"--peers takes {', '.join(PEERS)}; got {peers!r}")
        if not step_list or min(step_list) < 1:
            raise UsageError("--steps needs positive step counts, e.g. 4,20")
        if arch not in ("sd15", "tiny"):
            raise UsageError(f"--arch takes sd15 or tiny, got {arch!r}")
        work = workdir or default_cache_dir().parent / "bench"
        rows = run_bench(work, output_dir, step_list, rounds, peer_list, size, precision, weight_format,
                         list(sdcli_arg), log=lambda s: print(s, file=sys.stderr, flush=True), arch=arch)
        print((output_dir / "bench.md").read_text())
        if readme is not None:
            update_readme(readme, output_dir / "bench.json", readme_block)
        _ = rows


@app.command("bench-features")
def bench_features(
    cases: str = typer.Option(",".join(("deepcache", "tiny_vae", "combo", "lcm", "quantize", "throughput")), "--cases", help="Comma-separated: deepcache, tiny_vae, combo, lcm, quantize, throughput."),
    rounds: int = typer.Option(2, "--rounds", min=1, help="Interleaved measured rounds (after one warm-up run of each configuration)."),
    size: int = typer.Option(512, "--size", callback=_positive_multiple_of_8, help="Image width and height."),
    arch: str = typer.Option("sd15", "--arch", help="sd15 (the real cost) or tiny (a quick check of the benchmark itself)."),
    batch_images: int = typer.Option(4, "--batch-images", min=2, max=8, help="throughput: prompts in the batch."),
    batch_steps: int = typer.Option(8, "--batch-steps", min=1, help="throughput: steps per image."),
    workdir: Optional[Path] = typer.Option(None, "--workdir", help="Where the random models are built and kept [default: ~/.cache/sdcli/bench]."),
    output_dir: Path = typer.Option(Path("bench-results"), "--output-dir", help="Where features.json and features.md go."),
    readme: Optional[Path] = typer.Option(None, "--readme", help="Also rewrite this README's block (between <!-- bench:NAME:start/end --> markers)."),
    readme_block: str = typer.Option("features-local", "--readme-block", help="NAME of the README block to rewrite."),
    no_run: bool = typer.Option(False, "--no-run", help="Run nothing; render OUTPUT_DIR/features.json (with --readme)."),
    warm_up: bool = typer.Option(True, "--warm-up/--no-warm-up", help="Run each configuration once unmeasured first (--no-warm-up: the compiled-model cache is known to be warm)."),
):
    """Benchmark the opt-in speed-ups (DeepCache, tiny VAE, LCM, quantization, batch throughput)."""
    with user_errors("interrupted"):
        from sdcli.bench.features import CASES, run_features, update_readme
        from sdcli.model.folder import default_cache_dir

        if no_run:
            if readme is None:
                raise UsageError("--no-run only makes sense with --readme")
            update_readme(readme, output_dir / "features.json", readme_block)
            return

        chosen = [c.strip() for c in cases.split(",") if c.strip()]
        bad = [c for c in chosen if c not in CASES]
        if bad or not chosen:
            raise UsageError(f"--cases takes {', '.join(CASES)}; got {cases!r}")
        if arch not in ("sd15", "tiny"):
            raise UsageError(f"--arch takes sd15 or tiny, got {arch!r}")
        work = workdir or default_cache_dir().parent / "bench"
        run_features(work, output_dir, chosen, rounds, size, arch, batch_images, batch_steps,
                     log=lambda s: print(s, file=sys.stderr, flush=True), warm_up=warm_up)
        print((output_dir / "features.md").read_text())
        if readme is not None:
            update_readme(readme, output_dir / "features.json", readme_block)


# --- batch --------------------------------------------------------------------------

def _parallel(value: str) -> int:
    """--parallel: 0 for auto, else a positive count."""
    if value.strip().lower() == "auto":
        return 0
    try:
        count = int(value)
    except ValueError:
        count = 0
    if not 1 <= count <= 64:
        raise UsageError(f"--parallel takes auto or a number from 1 to 64, got {value!r}")
    return count


@app.command()
def batch(
    ctx: typer.Context,
    file: str = typer.Argument(..., help="Prompts: .txt (one a line), .jsonl or .csv (per-row settings); - reads standard input."),
    output_dir: Path = typer.Option(..., "--output-dir", "-o", help="Folder for the images and manifest.jsonl (created if missing)."),
    input_format: Optional[str] = typer.Option(None, "--format", help="txt, jsonl or csv [default: FILE's extension; txt for -]."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Converted model folder [default: $SDCLI_MODEL, else the only one under models/]."),
    negative_prompt: str = typer.Option("", "--negative-prompt", "-n", help="Default negative prompt."),
    init_image: Optional[Path] = typer.Option(None, "--init-image", "-i", help="Default init image (image-to-image)."),
    strength: float = typer.Option(0.8, "--strength", min=0.0, max=1.0, callback=_finite, help="Image-to-image: how much to repaint, 0..1."),
    steps: int = typer.Option(20, "--steps", "-s", min=1, max=1000, help="Denoising steps."),
    guidance_scale: float = typer.Option(7.5, "--guidance-scale", "-g", min=0.0, max=GUIDANCE_MAX, callback=_finite, help="Classifier-free guidance; 1 or less turns it off."),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, max=2**64 - 1, help="Base seed: a row without one uses seed+index [default: random, printed, kept in the folder for re-runs]."),
    width: Optional[int] = typer.Option(None, "--width", "-W", callback=_positive_multiple_of_8, help="Multiple of 8 [default: the model's, or the init image's]."),
    height: Optional[int] = typer.Option(None, "--height", "-H", callback=_positive_multiple_of_8, help="Multiple of 8 [default: the model's, or the init image's]."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", callback=_scheduler_name, help="A name from --list-schedulers, short (dpmpp_2m_karras) or A1111's (\"DPM++ 2M Karras\") [default: the model's]."),
    list_schedulers: bool = typer.Option(False, "--list-schedulers", callback=_list_schedulers, is_eager=True, expose_value=False, help="Print the schedulers and exit."),
    device: str = typer.Option("CPU", "--device", help="OpenVINO device: CPU, GPU, NPU, AUTO, ..."),
    precision: str = typer.Option("auto", "--precision", help="auto, f32, bf16, f16."),
    rng: str = typer.Option("torch", "--rng", help="torch or numpy."),
    vae: str = typer.Option("full", "--vae", help="full or tiny (the tiny VAE `convert --tiny-vae` added), for every row."),
    deepcache: int = typer.Option(1, "--deepcache", min=1, max=1000, help="DeepCache for every row (see generate)."),
    clip_skip: int = typer.Option(1, "--clip-skip", min=1, max=24, help="Clip skip for every row (see generate)."),
    parallel: str = typer.Option("auto", "--parallel", metavar="N|auto", help="Rows in flight at once, one per OpenVINO throughput stream: N, or auto (OpenVINO's count on machines of 8+ cores, where it measured +16% images/hour; one at a time below, where it measured -8%); 1: one at a time."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or notes on stderr."),
    as_json: bool = typer.Option(False, "--json", help="One JSON line per finished image on stdout (as in the manifest)."),
    ray: Optional[str] = typer.Option(None, "--ray", metavar="ADDRESS", help="Spread the rows over a Ray cluster: auto (the running one), local (start one here), HOST:6379 or ray://HOST:10001. The model folder must be at the same path on every node (needs sdcli[ray])."),
    ray_cpus_per_actor: Optional[int] = typer.Option(None, "--ray-cpus-per-actor", min=1, metavar="N", help="With --ray: one worker per N CPUs [default: one per node, with all its CPUs]."),
    shared_output: bool = typer.Option(False, "--shared-output", help="With --ray: workers write the images into --output-dir themselves (a folder shared by every node, at the same path)."),
):
    """Make one image per row of FILE into --output-dir; a re-run skips what is done (see sdcli/batch.py)."""
    with user_errors("interrupted; run the same command again to finish"):
        from sdcli.batch.run import BatchOptions, run_batch

        code = run_batch(BatchOptions(
            file=file, output_dir=output_dir, input_format=input_format, model=model, negative_prompt=negative_prompt,
            init_image=init_image, strength=strength, steps=steps, guidance_scale=guidance_scale, seed=seed,
            width=width, height=height, scheduler=scheduler, device=device, precision=precision, rng=rng,
            quiet=quiet, as_json=as_json, debug=STATE["debug"], parallel=_parallel(parallel),
            vae=vae, deepcache=deepcache, clip_skip=clip_skip,
            unset=tuple(name for name in ("steps", "guidance_scale") if not _option_given(ctx, name)),
            ray=ray, ray_cpus_per_actor=ray_cpus_per_actor, shared_output=shared_output,
        ))
    raise typer.Exit(code)
