"""A1111's PNG parameters both ways: the `parameters` text written with each image (A1111's
fields, with the values A1111 1.9+ writes and reads, plus what sdcli needs to redo it), and
generate's settings read back from one, sdcli's or A1111's.

What A1111 reads differently from what sdcli meant is written A1111's way:
- `Sampler` is A1111's sampler and `Schedule type` how its steps are spaced (1.9+); without a
  schedule type A1111 takes the sampler's default, Karras for DPM++ 2M and DPM++ SDE.
- `RNG: CPU` is torch's CPU generator, which `--rng torch` reproduces (A1111's default, and
  what it assumes when there is no RNG field, is its GPU noise).
- `Emphasis: None` is A1111's name for --no-emphasis (emphasis on, "Original", is not written).
- `VAE Decoder: TAESD` (and `VAE Encoder: TAESD` with an init image) is --vae tiny.
- `CFG Rescale phi` is --guidance-rescale (the name A1111's CFG-rescale extensions read).
- `Reference images` (sdcli's field: A1111 has none) names the files of FLUX.2-klein's
  --reference-image, in order; --from-image needs them given again (a PNG does not hold them).
"""
from __future__ import annotations

import re
from pathlib import Path

from sdcli import __version__
from sdcli.imaging.image_io import read_png_text
from sdcli.engine.request import AESTHETIC_SCORE, NEGATIVE_AESTHETIC_SCORE
from sdcli.imaging.params import format_parameters, parse_parameters
from sdcli.schedulers import FLOW_A1111_NAME, FLOW_A1111_SCHEDULE_TYPE, FLOW_SCHEDULERS, resolve_scheduler_name
from sdcli.schedulers.a1111 import A1111Unsupported, a1111_sampler, from_a1111, schedule_type
from sdcli.util.errors import UsageError

RNG_NAMES = {"torch": "CPU", "numpy": "numpy"}  # --rng -> the RNG field (A1111's name where it has one)
RNG_FROM_FIELD = {"cpu": "torch", "torch": "torch", "numpy": "numpy"}
# --guidance-rescale: A1111 has no field of its own; its CFG-rescale extensions write "CFG Rescale phi"
# (sd-webui-neutral-prompt, and what sdcli writes), "CFG Rescale" and, earlier, "CFG Rescale φ" (read in
# this order, the last one found wins).  They rescale the denoised image rather than the noise
# prediction, so A1111 does not give sdcli's (diffusers') pixels for the same phi.
CFG_RESCALE_FIELDS = ("CFG Rescale φ", "CFG Rescale", "CFG Rescale phi")

# A1111 fields that change the picture in ways sdcli does not do: read, and said so
NOT_REPRODUCED = {
    "Hires checkpoint": "another checkpoint for the hires pass", "Face restoration": "face restoration",
    "Variation seed strength": "a variation seed", "Tiling": "tiling", "Seed resize from": "seed resizing",
    "ENSD": "an eta noise seed delta", "Refiner": "a refiner model", "Hypernet": "a hypernetwork",
}


def image_parameters(engine, request, result, precision: str | None = None) -> str:
    """parameters_text for an image `engine` made, with the schedule type of the scheduler it ran."""
    config = engine.family.make_scheduler(result.scheduler).config
    hires = getattr(result, "hires_scheduler", None)
    hires_config = engine.family.make_scheduler(hires).config if hires else None
    return parameters_text(request, result, engine.folder.name, precision, scheduler_config=config,
                           hires_scheduler_config=hires_config)


def parameters_text(request, result, model_name: str, precision: str | None = None,
                    scheduler_config: dict | None = None, hires_scheduler_config: dict | None = None) -> str:
    """The PNG's `parameters` text for `request` and its `result`: A1111's fields plus what
    sdcli needs to redo the image (`precision`: recorded when given; `scheduler_config`: the
    config the scheduler ran with, which decides the schedule type)."""
    tiny = request.vae == "tiny"
    img2img = request.init_image is not None
    flow = result.scheduler in FLOW_SCHEDULERS  # a flow-matching model's Euler (A1111's Euler, Simple)
    fields = {
        "Steps": request.steps,
        "Sampler": FLOW_A1111_NAME if flow else a1111_sampler(result.scheduler),
        "Schedule type": FLOW_A1111_SCHEDULE_TYPE if flow else schedule_type(result.scheduler, scheduler_config),
        "CFG scale": f"{request.guidance_scale:g}",
        "CFG Rescale phi": f"{request.guidance_rescale:g}" if request.guidance_rescale > 0 else None,
        "CFG normalization": f"{request.cfg_normalization:g}" if getattr(request, "cfg_normalization", 0) else None,
        "CFG truncation": f"{request.cfg_truncation:g}" if getattr(request, "cfg_truncation", 1) != 1 else None,
        "Seed": result.seed,
        "Size": "{}x{}".format(*(getattr(result, "first_pass_size", None) or (result.width, result.height))),
        "Model": model_name,
        "Denoising strength": f"{request.strength:g}" if img2img else None,
        **hires_fields(request, result, scheduler_config, hires_scheduler_config),
        "Mask blur": request.mask_blur if request.mask is not None else None,
        "Reference images": ", ".join(getattr(request, "reference_names", ()) or
                                      [f"#{i + 1}" for i in range(len(getattr(request, "reference_images", ())))])
        or None,
        "RNG": RNG_NAMES.get(request.rng, request.rng),
        "Precision": precision,
        "Emphasis": None if request.emphasis else "None",
        "Clip skip": request.clip_skip if request.clip_skip > 1 else None,
        "DeepCache": request.deepcache if request.deepcache > 1 else None,
        **controlnet_fields(request),
        **micro_conditioning_fields(request),
        "VAE Encoder": "TAESD" if tiny and img2img else None,
        "VAE Decoder": "TAESD" if tiny else None,
        "Lora hashes": format_hashes(getattr(result, "lora_hashes", ())),
        "TI hashes": format_hashes(getattr(result, "ti_hashes", ())),
        "Version": f"sdcli {__version__}",
    }
    return format_parameters(request.prompt, request.negative_prompt, fields)


def hires_fields(request, result, scheduler_config: dict | None, hires_config: dict | None) -> dict:
    """The hires fix's fields as A1111 writes them (Forge's `Hires CFG Scale`): the upscale or
    the resize, its steps where given, the upscaler, and the prompts, sampler, schedule type and
    guidance scale where they differ from the first pass's."""
    from sdcli.engine.hires import number_text

    hires = getattr(request, "hires", None)
    if hires is None:
        return {}
    fields = {"Denoising strength": number_text(hires.denoise)}
    if hires.resized:
        fields["Hires resize"] = f"{hires.resize_width}x{hires.resize_height}"
    else:
        fields["Hires upscale"] = number_text(hires.scale)
    fields["Hires steps"] = hires.steps or None
    fields["Hires upscaler"] = hires.upscaler
    if hires.prompt and hires.prompt != request.prompt:
        fields["Hires prompt"] = hires.prompt
    if hires.negative_prompt and hires.negative_prompt != request.negative_prompt:
        fields["Hires negative prompt"] = hires.negative_prompt
    second = getattr(result, "hires_scheduler", None)
    if hires.scheduler and second and second not in FLOW_SCHEDULERS:
        sampler, first_sampler = a1111_sampler(second), a1111_sampler(result.scheduler)
        schedule = schedule_type(second, hires_config)
        fields["Hires sampler"] = sampler if sampler != first_sampler else None
        fields["Hires schedule type"] = schedule if schedule != schedule_type(result.scheduler, scheduler_config) \
            else None
    if hires.guidance_scale is not None and hires.guidance_scale != request.guidance_scale:
        fields["Hires CFG Scale"] = number_text(hires.guidance_scale)
    return fields


def controlnet_fields(request) -> dict:
    """A1111's `ControlNet N` fields for the request's ControlNet units (engine/controlnet.py)."""
    units = getattr(request, "controlnets", ())
    if not units:
        return {}
    from sdcli.engine.controlnet import infotext_fields

    return infotext_fields(units)


def _read_controlnets(fields: dict[str, str], out: dict, notes: list[str]) -> None:
    if "ControlNet 0" in fields:  # the control images are not in the PNG: given again (or refused)
        from sdcli.engine.controlnet import read_infotext

        out["controlnets"] = read_infotext(fields, notes)


def micro_conditioning_fields(request) -> dict:
    """SDXL's micro-conditioning where the run set it (sdcli's fields: A1111 has none), and the
    refiner's aesthetic scores where they are not diffusers' defaults (6 and 2.5)."""
    def pair(value, separator):
        return None if value is None else f"{value[0]}{separator}{value[1]}"

    return {"Original size": pair(request.original_size, "x"), "Crop coords": pair(request.crop_coords, ","),
            "Target size": pair(request.target_size, "x"),
            "Aesthetic score": f"{request.aesthetic_score:g}" if request.aesthetic_score != AESTHETIC_SCORE else None,
            "Negative aesthetic score": f"{request.negative_aesthetic_score:g}"
            if request.negative_aesthetic_score != NEGATIVE_AESTHETIC_SCORE else None}


def format_hashes(pairs) -> str | None:
    """A1111's `Lora hashes` / `TI hashes` value: "name: hash, name: hash" (None when empty)."""
    return ", ".join(f"{name}: {short}" for name, short in pairs) or None


def parse_hashes(value: str) -> dict[str, str]:
    """{name: hash} of a `Lora hashes` / `TI hashes` value."""
    pairs = (item.rsplit(":", 1) for item in value.split(",") if ":" in item)
    return {name.strip(): short.strip() for name, short in pairs}


def settings_from_image(path: Path) -> dict:
    """generate's options as stored in an sdcli/A1111 PNG's `parameters` chunk, read as
    A1111 1.9+ reads them.  Also `notes` (what cannot be redone exactly, for a warning) and
    `needs` (`init_image`, `mask`: what the image was made from, which a PNG does not hold)."""
    if not path.is_file():
        raise UsageError(f"--from-image: {path} not found")
    text = read_png_text(path).get("parameters")
    if text is None:
        raise UsageError(f"--from-image: {path} has no generation settings (no 'parameters' text chunk)")
    prompt, negative, fields = parse_parameters(text)
    try:
        return settings_from_fields(prompt, negative, fields)
    except ValueError as exc:
        raise UsageError(f"--from-image: {path} has unreadable settings: {exc}") from None


def settings_from_fields(prompt: str, negative: str, fields: dict[str, str]) -> dict:
    """settings_from_image's reading of parsed parameters (ValueError for a value that is not
    a number where one is needed)."""
    by_sdcli = fields.get("Version", "").startswith("sdcli")
    notes: list[str] = []
    out: dict = {"prompt": prompt, "negative_prompt": negative, "notes": notes, "needs": []}
    numbers = {"Steps": ("steps", int), "CFG scale": ("guidance_scale", float), "Seed": ("seed", int),
               "Denoising strength": ("strength", float), "Clip skip": ("clip_skip", int),
               "DeepCache": ("deepcache", int), "Mask blur": ("mask_blur", int),
               "CFG normalization": ("cfg_normalization", float), "CFG truncation": ("cfg_truncation", float)}
    numbers.update({field: ("guidance_rescale", float) for field in CFG_RESCALE_FIELDS})
    for field, (name, kind) in numbers.items():
        if field in fields:
            out[name] = kind(fields[field])
    if "Size" in fields:
        w, h = fields["Size"].lower().split("x")
        out["width"], out["height"] = int(w), int(h)
    if "Precision" in fields:
        out["precision"] = fields["Precision"]
    if "Model" in fields:
        out["model_name"] = fields["Model"]
    if fields.get("Reference images"):  # the files are not in the PNG: given again (or refused)
        out["reference_names"] = tuple(name.strip() for name in fields["Reference images"].split(",") if name.strip())
    for field, name in (("Lora hashes", "lora_hashes"), ("TI hashes", "ti_hashes")):
        if field in fields:  # checked against the files found when the image is redone
            out[name] = parse_hashes(fields[field])
    if "Sampler" in fields:
        out["scheduler"] = _scheduler(fields, by_sdcli, notes)
    _read_rng(fields, by_sdcli, out)
    _read_emphasis(fields, out)
    _read_vae(fields, out)
    _read_micro_conditioning(fields, out)
    _read_controlnets(fields, out, notes)
    hires = "Hires upscale" in fields or "Hires resize" in fields
    if "Denoising strength" in fields and not hires:
        out["needs"].append("init_image")
        if "Mask blur" in fields:
            out["needs"].append("mask")
    elif hires:
        out.pop("strength", None)
        _read_hires(fields, by_sdcli, out)
    for field, what in NOT_REPRODUCED.items():
        if field in fields and what not in " ".join(notes):
            notes.append(f"it was made with {what} ({field}), which sdcli does not do: the image will differ")
    return out


def _before_schedule_types(version: str) -> bool:
    """A1111 before 1.9, which had no schedule types: its "DPM++ 2M" was not Karras."""
    match = re.match(r"v?(\d+)\.(\d+)", version.strip())
    return bool(match) and (int(match[1]), int(match[2])) < (1, 9)


def _scheduler(fields: dict[str, str], by_sdcli: bool, notes: list[str]) -> str:
    """Our scheduler for the Sampler and Schedule type fields.  Without a schedule type, a PNG
    from sdcli or from A1111 before 1.9 means the sampler as named (their DPM++ 2M was not
    Karras); any other means A1111 1.9+'s Automatic."""
    sampler, schedule = fields["Sampler"], fields.get("Schedule type")
    as_named = schedule is None and (by_sdcli or _before_schedule_types(fields.get("Version", "")))
    try:
        return from_a1111(sampler, schedule, automatic_is_default=not as_named)
    except A1111Unsupported as exc:
        try:
            fallback = resolve_scheduler_name(sampler)
        except ValueError:
            try:
                fallback = from_a1111(sampler, None)
            except A1111Unsupported:
                raise ValueError(str(exc)) from None
        notes.append(f"{exc}: using {a1111_sampler(fallback)} ({fallback}); the image will differ")
        return fallback


def _read_hires(fields: dict[str, str], by_sdcli: bool, out: dict) -> None:
    """The hires fix's fields (hires_fields) as generate's --hires-* settings; a PNG without an
    upscaler had A1111's default, Latent (ValueError for a value that is not a number)."""
    from sdcli.engine.hires import DEFAULT_DENOISE, DEFAULT_UPSCALER

    if "Hires resize" in fields:
        width, _, height = fields["Hires resize"].strip().lower().partition("x")
        out["hires_width"], out["hires_height"] = int(width) or None, int(height) or None
    else:
        out["hires_scale"] = float(fields["Hires upscale"])
    out["hires_upscaler"] = fields.get("Hires upscaler") or DEFAULT_UPSCALER
    out["hires_steps"] = int(fields.get("Hires steps", 0))
    out["hires_denoise"] = float(fields.get("Denoising strength", DEFAULT_DENOISE))
    out["hires_prompt"] = fields.get("Hires prompt", "")
    out["hires_negative_prompt"] = fields.get("Hires negative prompt", "")
    if "Hires CFG Scale" in fields:
        out["hires_cfg"] = float(fields["Hires CFG Scale"])
    if "Hires sampler" in fields or "Hires schedule type" in fields:
        second = {"Sampler": fields.get("Hires sampler", fields.get("Sampler", "")),
                  "Schedule type": fields.get("Hires schedule type", fields.get("Schedule type")),
                  "Version": fields.get("Version", "")}
        if second["Schedule type"] is None:
            del second["Schedule type"]
        out["hires_scheduler"] = _scheduler(second, by_sdcli, out["notes"])


def _read_rng(fields: dict[str, str], by_sdcli: bool, out: dict) -> None:
    value = fields.get("RNG")
    if value is None:
        if not by_sdcli and fields.get("Version"):  # A1111 (which writes its version) without RNG: its GPU noise
            out["notes"].append("no RNG field: A1111 made it with its GPU noise, which sdcli cannot reproduce "
                                "(using torch's CPU noise, A1111's RNG: CPU); the image will differ")
        return
    rng = RNG_FROM_FIELD.get(value.strip().lower())
    if rng is None:
        out["notes"].append(f"RNG: {value} (A1111's {value} noise) cannot be reproduced by sdcli; using torch's "
                            "CPU noise (A1111's RNG: CPU): the image will differ")
        rng = "torch"
    out["rng"] = rng


def _read_emphasis(fields: dict[str, str], out: dict) -> None:
    value = fields.get("Emphasis")
    if value is None:
        return
    key = value.strip().lower()
    if key in ("none", "off"):
        out["emphasis"] = False
    elif key == "original":
        out["emphasis"] = True
    else:
        out["emphasis"] = True
        out["notes"].append(f"Emphasis: {value} is not available in sdcli; using A1111's Original emphasis "
                            "(weights applied, the mean restored): the image will differ")


def _read_micro_conditioning(fields: dict[str, str], out: dict) -> None:
    """micro_conditioning_fields read back (ValueError for a value that is not two whole numbers
    or a number; the request checks their ranges as it checks the flags')."""
    for field, name, separator in (("Original size", "original_size", "x"), ("Crop coords", "crop_coords", ","),
                                   ("Target size", "target_size", "x")):
        if field in fields:
            first, second = fields[field].strip().lower().split(separator)
            out[name] = (int(first), int(second))
    for field, name in (("Aesthetic score", "aesthetic_score"), ("Negative aesthetic score", "negative_aesthetic_score")):
        if field in fields:
            out[name] = float(fields[field])


def _read_vae(fields: dict[str, str], out: dict) -> None:
    decoder = fields.get("VAE Decoder", "").strip().lower()
    encoder = fields.get("VAE Encoder", "").strip().lower()
    if decoder == "taesd" or fields.get("VAE") == "tiny":  # "VAE: tiny": sdcli before it wrote A1111's field
        out["vae"] = "tiny"
        if encoder and encoder != "taesd" and "Denoising strength" in fields:
            out["notes"].append("the init image was encoded with the full VAE and decoded with TAESD; sdcli's "
                                "--vae tiny uses TAESD for both: the image will differ")
    elif encoder == "taesd":
        out["notes"].append("the init image was encoded with TAESD and decoded with the full VAE; sdcli uses one "
                            "VAE for both (the full one): the image will differ")
    elif fields.get("VAE") and fields.get("VAE") != "tiny":
        out["notes"].append(f"it names the VAE {fields['VAE']!r}, which sdcli does not load (it uses the model's "
                            "own): the image may differ")
