"""A1111's PNG parameters both ways: the `parameters` text written with each image (A1111's
fields plus what sdcli needs to redo it), and generate's settings read back from one."""
from __future__ import annotations

from pathlib import Path

from sdcli import __version__
from sdcli.imaging.image_io import read_png_text
from sdcli.imaging.params import format_parameters, parse_parameters
from sdcli.schedulers import A1111_NAMES, resolve_scheduler_name
from sdcli.util.errors import UsageError


def parameters_text(request, result, model_name: str, precision: str | None = None) -> str:
    """The PNG's `parameters` text for `request` and its `result`: A1111's fields plus what
    sdcli needs to redo the image (`precision`: recorded when given)."""
    fields = {
        "Steps": request.steps,
        "Sampler": A1111_NAMES.get(result.scheduler, result.scheduler),
        "CFG scale": f"{request.guidance_scale:g}",
        "Seed": result.seed,
        "Size": f"{result.width}x{result.height}",
        "Model": model_name,
        "Denoising strength": f"{request.strength:g}" if request.init_image is not None else None,
        "Mask blur": request.mask_blur if request.mask is not None else None,
        "RNG": request.rng,
        "Precision": precision,
        "Emphasis": None if request.emphasis else "off",
        "Clip skip": request.clip_skip if request.clip_skip > 1 else None,
        "DeepCache": request.deepcache if request.deepcache > 1 else None,
        "VAE": "tiny" if request.vae == "tiny" else None,
        "Version": f"sdcli {__version__}",
    }
    return format_parameters(request.prompt, request.negative_prompt, fields)


def settings_from_image(path: Path) -> dict:
    """generate's options as stored in an sdcli/A1111 PNG's `parameters` chunk."""
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
