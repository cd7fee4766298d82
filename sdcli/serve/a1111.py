"""AUTOMATIC1111's API fields <-> sdcli's GenerationRequest, and A1111's response shapes.

`plan(body, kind, options)` checks a txt2img/img2img body without a model: fields that switch
on something sdcli does not do are refused (FieldError naming the field, answered 422), values
out of range likewise, and the init images and mask are decoded.  `Plan.requests(engine)` makes
the GenerationRequests on the model that runs them: its defaults (an LCM model's steps and
guidance), its scheduler for A1111's sampler and schedule type, one request per image with
seed + i, as `sdcli generate --num-images` does.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import secrets
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sdcli import __version__
from sdcli.engine.request import GUIDANCE_MAX, SEED_MAX, STEPS_MAX, GenerationRequest
from sdcli.schedulers.a1111 import (KARRAS_VARIANTS, SAMPLER_ALIASES, SAMPLER_DEFAULT_SCHEDULE, SAMPLERS,
                                    SCHEDULE_TYPES, SPACING_TYPES, A1111Unsupported, a1111_sampler,
                                    find_schedule_type, from_a1111, schedule_type)
from sdcli.util.errors import UsageError

MAX_IMAGE_BYTES = 48 << 20  # one decoded base64 image
MAX_SIDE = 4096  # width and height (the memory check refuses what this machine cannot hold below it)
MAX_BATCH_SIZE, MAX_N_ITER = 8, 100  # A1111's own limits


class FieldError(UsageError):
    """A request field that cannot be done: answered 422, naming the field."""

    def __init__(self, name: str, message: str):
        super().__init__(f"{name}: {message}")
        self.field = name


@dataclass
class Options:
    """The server's A1111 options that requests default to (GET/POST /sdapi/v1/options)."""

    clip_skip: int = 1
    emphasis: bool = True
    vae: str | None = None  # "full", "tiny"; None: the model's own (its folder's --default-vae, else full)
    other: dict[str, Any] = field(default_factory=dict)  # options we keep but do not use

    def updated(self, changes: dict[str, Any], where: str) -> "Options":
        """These options with A1111 option values applied (FieldError for one we cannot do)."""
        out = Options(self.clip_skip, self.emphasis, self.vae, dict(self.other))
        for key, value in changes.items():
            if key == "sd_model_checkpoint":
                continue  # the worker switches models
            if key == "CLIP_stop_at_last_layers":
                out.clip_skip = _int_in(f"{where}.{key}", value, 1, 24)
            elif key == "emphasis":
                if value not in ("Original", "None"):
                    raise FieldError(f"{where}.{key}", f"{value!r} is not available (Original or None)")
                out.emphasis = value == "Original"
            elif key in ("sd_vae_decode_method", "sd_vae_encode_method"):
                if value not in ("Full", "TAESD"):
                    raise FieldError(f"{where}.{key}", f"{value!r} is not available (Full or TAESD)")
                out.vae = "tiny" if value == "TAESD" else "full"
            elif key == "randn_source":
                if value != "CPU":
                    raise FieldError(f"{where}.{key}", f"{value!r} noise cannot be reproduced here: only CPU (torch's "
                                                       "CPU generator, which sdcli draws)")
            elif key == "samples_format" and str(value).lower() != "png":
                raise FieldError(f"{where}.{key}", f"{value!r}: the images are PNGs")
            else:
                try:  # kept and sent back by GET /options, which cannot send NaN or Infinity
                    json.dumps(value, allow_nan=False)
                except ValueError:
                    raise FieldError(f"{where}.{key}", "NaN and Infinity are not JSON numbers") from None
                out.other[key] = value
        return out

    def as_a1111(self, model_title: str | None, previews: bool, model_vae: str = "full") -> dict[str, Any]:
        """A1111's options; `model_vae`: the VAE the loaded model decodes with when none is chosen."""
        method = "TAESD" if (self.vae or model_vae) == "tiny" else "Full"
        return {**self.other, "sd_model_checkpoint": model_title, "sd_checkpoint_hash": None,
                "CLIP_stop_at_last_layers": self.clip_skip, "emphasis": "Original" if self.emphasis else "None",
                "sd_vae": "Automatic", "sd_vae_decode_method": method,
                "sd_vae_encode_method": method, "randn_source": "CPU",
                "samples_format": "png", "live_previews_enable": previews, "eta_noise_seed_delta": 0}


def _int_in(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise FieldError(name, f"must be a whole number, got {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: JSON's Infinity
        raise FieldError(name, f"must be a whole number, got {value!r}") from None
    if number != float(value) or not low <= number <= high:
        raise FieldError(name, f"must be a whole number from {low} to {high}, got {value!r}")
    return number


def _finite(name: str, value: float | None, low: float, high: float) -> float | None:
    if value is not None and not (math.isfinite(value) and low <= value <= high):
        raise FieldError(name, f"must be between {low:g} and {high:g}, got {value}")
    return value


# -- refusals and checks that need no model -------------------------------------------------
def refuse_unsupported(body) -> None:
    """FieldError for the first field that switches on something sdcli does not do (what
    clients send by default, false, 0, empty or null, passes)."""
    def given(name: str):
        return getattr(body, name, None)

    checks = [
        ("hr_checkpoint_name", str(given("hr_checkpoint_name") or "Use same checkpoint") not in
         ("Use same checkpoint", "None"), "another checkpoint for the hires pass is not supported"),
        ("restore_faces", given("restore_faces") is True, "face restoration is not supported"),
        ("tiling", given("tiling") is True, "tiling is not supported"),
        ("script_name", bool(given("script_name")), "no scripts are installed here"),
        ("alwayson_scripts", any(str(key).lower() != "controlnet" for key in given("alwayson_scripts") or ()),
         "no scripts are installed here but ControlNet (alwayson_scripts.controlnet: controlnet_api.py)"),
        ("subseed_strength", (given("subseed_strength") or 0) > 0, "variation seeds are not supported"),
        ("styles", any(str(style).strip() for style in given("styles") or ()), "there are no prompt styles here"),
        ("resize_mode", (given("resize_mode") or 0) != 0, "only 0 (just resize) is supported"),
        ("initial_noise_multiplier", given("initial_noise_multiplier") not in (None, 1, 1.0),
         "only 1 is supported"),
        ("refiner_checkpoint", str(given("refiner_checkpoint") or "None").lower() != "none",
         "refiner models are not supported"),
    ]
    for name, refused, why in checks:
        if refused:
            raise FieldError(name, why)
    for side in ("h", "w"):
        value = given(f"seed_resize_from_{side}") or 0
        size = given("height" if side == "h" else "width")
        if value > 0 and value != size:
            raise FieldError(f"seed_resize_from_{side}", "seed resizing is not supported")


def decode_base64(name: str, text: str) -> bytes:
    """The bytes of a base64 image, with or without a data: prefix."""
    if not isinstance(text, str) or not text.strip():
        raise FieldError(name, "must be a base64-encoded image")
    text = text.strip()
    if text.startswith("data:"):
        text = text.partition(",")[2]
    if len(text) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise FieldError(name, f"the image is larger than {MAX_IMAGE_BYTES >> 20} MB")
    try:
        return base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError):
        raise FieldError(name, "is not valid base64") from None


def read_image(name: str, text: str, mask: bool = False) -> np.ndarray:
    """A base64 image as RGB uint8 (or, `mask`, as a float mask), through the same reader and
    checks as generate's --init-image / --mask."""
    from sdcli.imaging.image_io import read_mask, read_rgb

    data = decode_base64(name, text)
    with tempfile.TemporaryDirectory(prefix="sdcli-serve-") as tmp:
        path = Path(tmp) / "image"
        path.write_bytes(data)
        try:
            return read_mask(path) if mask else read_rgb(path)
        except UsageError as exc:
            message = str(exc).replace(str(path), "it")
            raise FieldError(name, message) from None


@dataclass
class Plan:
    """A checked txt2img/img2img request, before it meets a model."""

    kind: str  # "txt2img" | "img2img"
    body: Any
    options: Options
    model: str | None  # a title from override_settings, else the server's model
    seeds: list[int]
    init_images: list[np.ndarray] = field(default_factory=list)
    mask: np.ndarray | None = None
    restore: bool = True  # override_settings_restore_afterwards
    controlnet_units: tuple = ()  # alwayson_scripts.controlnet's enabled units (controlnet_api.ApiUnit; add_units)

    @property
    def count(self) -> int:
        return len(self.seeds)

    def requests(self, engine) -> list[GenerationRequest]:
        """One GenerationRequest per image, on `engine`'s model."""
        body = self.body
        scheduler = resolve_scheduler(engine, body.sampler_name or body.sampler_index, body.scheduler)
        steps, guidance = body.steps, body.cfg_scale
        few_step = engine.family.generation_defaults(scheduler)
        if few_step:
            steps = few_step[0] if steps is None else steps
            guidance = few_step[1] if guidance is None else guidance
        base = GenerationRequest(
            prompt=body.prompt or "", negative_prompt=body.negative_prompt or "",
            steps=20 if steps is None else steps, guidance_scale=7.5 if guidance is None else guidance,
            width=body.width, height=body.height, scheduler=scheduler, emphasis=self.options.emphasis,
            clip_skip=self.options.clip_skip, vae=self.options.vae or engine.folder.default_vae,
            guidance_rescale=body.guidance_rescale or 0.0)
        if self.kind == "txt2img" and getattr(body, "enable_hr", False):
            base = hires_request(engine, body, base)
        if self.kind == "img2img":
            base = base.replace(strength=0.75 if body.denoising_strength is None else body.denoising_strength,
                                mask=self.mask, mask_blur=4 if body.mask_blur is None else body.mask_blur)
        references = self.init_images and engine.family.reference_images
        if references:  # FLUX.2-klein has no image-to-image: its init_images are its reference images, all of them
            base = base.replace(reference_images=tuple(self.init_images),
                                reference_names=tuple(f"init_images[{i}]" for i in range(len(self.init_images))))
        out = []
        for i, seed in enumerate(self.seeds):
            request = base.replace(seed=seed)
            if self.init_images and not references:
                request = request.replace(init_image=self.init_images[i % len(self.init_images)])
            if self.controlnet_units:  # (each unit's image as this request needs it)
                request = request.replace(controlnets=tuple(u.engine_unit(engine, request)
                                                            for u in self.controlnet_units))
            out.append(request)
        return out

    def echo(self) -> dict:
        """The request's fields as A1111 sends them back (`parameters`)."""
        echoed = self.body.model_dump()
        if self.kind == "img2img" and not self.body.include_init_images:
            echoed["init_images"], echoed["mask"] = None, None
        return echoed


def plan(body, kind: str, options: Options) -> Plan:
    """Check `body` (a Txt2ImgRequest or Img2ImgRequest) and decode its images."""
    refuse_unsupported(body)
    override = body.override_settings or {}
    if not isinstance(override, dict):
        raise FieldError("override_settings", "must be an object")
    options = options.updated(override, "override_settings")
    model = override.get("sd_model_checkpoint")
    if model is not None and not isinstance(model, str):
        raise FieldError("override_settings.sd_model_checkpoint", "must be a model title from /sdapi/v1/sd-models")
    if body.steps is not None:
        _int_in("steps", body.steps, 1, STEPS_MAX)
    _finite("cfg_scale", body.cfg_scale, 0.0, GUIDANCE_MAX)
    _finite("guidance_rescale", body.guidance_rescale, 0.0, 1.0)
    for name in ("width", "height"):
        value = getattr(body, name)
        if value is not None and (value <= 0 or value % 8 or value > MAX_SIDE):
            raise FieldError(name, f"must be a multiple of 8 from 8 to {MAX_SIDE}, got {value}")
    batch_size = _int_in("batch_size", 1 if body.batch_size is None else body.batch_size, 1, MAX_BATCH_SIZE)
    n_iter = _int_in("n_iter", 1 if body.n_iter is None else body.n_iter, 1, MAX_N_ITER)
    seed = -1 if body.seed is None else body.seed
    if seed < -1 or seed > SEED_MAX:
        raise FieldError("seed", f"must be -1 (random) or from 0 to {SEED_MAX}, got {seed}")
    if seed == -1:
        seed = secrets.randbelow(2**32)
    result = Plan(kind, body, options, model, [(seed + i) % 2**64 for i in range(batch_size * n_iter)],
                  restore=body.override_settings_restore_afterwards is not False)
    if kind == "img2img":
        _plan_images(body, result)
    elif getattr(body, "enable_hr", False):
        _plan_hires(body)
    return result


HR_SAME = ("", "Use same sampler", "Use same scheduler")  # A1111's "the first pass's" for hr_sampler_name, hr_scheduler


def _plan_hires(body) -> None:
    """The hires fix's fields checked (FieldError naming the field)."""
    from sdcli.engine.hires import MAX_SCALE, upscaler_names

    for name in ("hr_resize_x", "hr_resize_y", "firstphase_width", "firstphase_height"):
        value = _int_in(name, getattr(body, name) or 0, 0, MAX_SIDE)
        if value % 8:
            raise FieldError(name, f"must be a multiple of 8 (or 0), got {value}")
    if not (body.hr_resize_x or body.hr_resize_y):
        scale = 2.0 if body.hr_scale is None else body.hr_scale
        if not (math.isfinite(scale) and 1.0 < scale <= MAX_SCALE):
            raise FieldError("hr_scale", f"must be more than 1 and at most {MAX_SCALE:g}, got {scale}")
    _int_in("hr_second_pass_steps", body.hr_second_pass_steps or 0, 0, STEPS_MAX)
    denoise = body.denoising_strength
    if denoise is not None and not (math.isfinite(denoise) and 0.0 < denoise <= 1.0):
        raise FieldError("denoising_strength", f"must be more than 0 and at most 1 for the hires fix, got {denoise}")
    _finite("hr_cfg", body.hr_cfg, 0.0, GUIDANCE_MAX)
    if body.hr_upscaler is not None and body.hr_upscaler not in upscaler_names():
        from sdcli.model.upscalers import find_upscaler

        try:  # a converted model upscaler ($SDCLI_UPSCALER_DIR, else models/ESRGAN)
            find_upscaler(str(body.hr_upscaler))
        except UsageError as exc:
            raise FieldError("hr_upscaler", f"{exc} (or one of {', '.join(upscaler_names())})") from None


def hires_request(engine, body, request: GenerationRequest) -> GenerationRequest:
    """`request` with the body's hires fix (checked by _plan_hires): its scheduler for
    hr_sampler_name and hr_scheduler on `engine`'s model, and the legacy first pass size."""
    from sdcli.engine.hires import DEFAULT_UPSCALER, HiresFix

    sampler = body.hr_sampler_name if body.hr_sampler_name not in HR_SAME else None
    schedule = body.hr_scheduler if body.hr_scheduler not in HR_SAME else None
    scheduler = None
    if sampler is not None or schedule is not None:
        try:
            scheduler = resolve_scheduler(engine, sampler or body.sampler_name or body.sampler_index or
                                          engine.family.make_scheduler(request.scheduler).name,
                                          schedule if schedule is not None else body.scheduler)
        except FieldError as exc:
            raise FieldError("hr_scheduler" if exc.field == "scheduler" else "hr_sampler_name",
                             str(exc).partition(": ")[2]) from None
    hires = HiresFix(scale=2.0 if body.hr_scale is None else body.hr_scale, resize_width=body.hr_resize_x or 0,
                     resize_height=body.hr_resize_y or 0, upscaler=body.hr_upscaler or DEFAULT_UPSCALER,
                     steps=body.hr_second_pass_steps or 0,
                     denoise=0.75 if body.denoising_strength is None else body.denoising_strength,
                     prompt=body.hr_prompt or "", negative_prompt=body.hr_negative_prompt or "", scheduler=scheduler,
                     guidance_scale=body.hr_cfg)
    changes = {"hires": hires}
    if body.firstphase_width or body.firstphase_height:  # A1111's legacy first pass size (then upscaled by hr_scale)
        changes.update(width=body.firstphase_width or request.width, height=body.firstphase_height or request.height)
    return request.replace(**changes)


def _plan_images(body, result: Plan) -> None:
    _finite("denoising_strength", body.denoising_strength, 0.0, 1.0)
    if body.mask_blur is not None:
        _int_in("mask_blur", body.mask_blur, 0, 256)
    if not body.init_images:
        raise FieldError("init_images", "img2img needs at least one init image")
    if len(body.init_images) > MAX_BATCH_SIZE * MAX_N_ITER:
        raise FieldError("init_images", "too many images")
    result.init_images = [read_image(f"init_images[{i}]", text) for i, text in enumerate(body.init_images)]
    if body.mask:
        mask = read_image("mask", body.mask, mask=True)
        result.mask = 1.0 - mask if body.inpainting_mask_invert == 1 else mask


# -- samplers and schedule types --------------------------------------------------------------
def model_spacing(engine, name: str) -> str:
    """The schedule type label that spaces `name`'s steps on `engine`'s model."""
    return schedule_type(name, engine.family.make_scheduler(name).config)


def resolve_scheduler(engine, sampler: str | None, schedule: str | None) -> str | None:
    """Our scheduler for A1111's sampler and schedule type on `engine`'s model (None: the
    model's own, as generate without --scheduler).  A schedule type that only spaces steps
    must be the one the model's scheduler config gives."""
    try:
        chosen = find_schedule_type(schedule)
        automatic = chosen is None or chosen.name == "automatic"
        if not sampler:
            if automatic:
                return None
            sampler = engine.family.make_scheduler(None).name
        name = from_a1111(sampler, schedule)
    except A1111Unsupported as exc:
        where = "scheduler" if "schedule type" in str(exc) else "sampler_name"
        raise FieldError(where, str(exc)) from None
    try:
        own = model_spacing(engine, name)
    except UsageError as exc:  # e.g. an LCM model asked for another scheduler
        raise FieldError("sampler_name", str(exc)) from None
    if chosen is not None and chosen.name in SPACING_TYPES and chosen.label != own:
        raise FieldError("scheduler", f"{chosen.label}: this model spaces {a1111_sampler(name)}'s steps as A1111's "
                                      f"{own} schedule (its scheduler config); use Automatic, {own}"
                                      + (" or Karras" if name in KARRAS_VARIANTS else ""))
    return name


def samplers() -> list[dict]:
    """GET /sdapi/v1/samplers: A1111's name of each of our schedulers, with A1111's aliases,
    our own names and the older combined names as aliases."""
    out: dict[str, dict] = {}
    for ours, name in SAMPLERS.items():
        item = out.setdefault(name, {"name": name, "aliases": list(SAMPLER_ALIASES.get(name, [])), "options": {}})
        item["aliases"].append(ours)
        if ours.endswith("_karras"):
            item["aliases"].append(f"{name} Karras")
        if name in SAMPLER_DEFAULT_SCHEDULE:
            item["options"]["scheduler"] = SAMPLER_DEFAULT_SCHEDULE[name]
    return list(out.values())


def schedulers(engine) -> list[dict]:
    """GET /sdapi/v1/schedulers: the schedule types a request can name here: Automatic,
    Karras (DPM++ 2M and DPM++ SDE), and the spacing the model's scheduler config gives."""
    names = {"automatic", "karras"}
    if engine is not None:
        spacing = model_spacing(engine, "euler" if not engine.folder.is_lcm else "lcm")
        names.update(s.name for s in SCHEDULE_TYPES if s.label == spacing)
    return [{"name": s.name, "label": s.label, "aliases": s.aliases or None, "default_rho": s.default_rho,
             "need_inner_model": s.need_inner_model} for s in SCHEDULE_TYPES if s.name in names]


# -- the response -------------------------------------------------------------------------------
def info_json(plan_: Plan, title: str, made: list, texts: list[str], interrupted: bool) -> str:
    """A1111's `info`: a JSON string (Processed.js()) for the images `made` ((request, result)
    pairs) and their parameters `texts`."""
    first_request, first_result = made[0] if made else (None, None)
    body = plan_.body
    seeds = [result.seed for _, result in made] or plan_.seeds[:1]
    prompt, negative = body.prompt or "", body.negative_prompt or ""
    strength = first_request.strength if first_request is not None and first_request.init_image is not None else None
    if first_request is not None and first_request.hires is not None:
        strength = first_request.hires.denoise
    info = {
        "prompt": prompt, "all_prompts": [prompt] * len(seeds),
        "negative_prompt": negative, "all_negative_prompts": [negative] * len(seeds),
        "seed": seeds[0], "all_seeds": seeds, "subseed": seeds[0], "all_subseeds": seeds, "subseed_strength": 0,
        # (the hires fix: the first pass's size, as A1111's Processed has it; the images are larger)
        "width": (first_result.first_pass_size or (first_result.width,))[0] if first_result else body.width,
        "height": (first_result.first_pass_size or (0, first_result.height))[1] if first_result else body.height,
        "sampler_name": response_sampler(first_result.scheduler) if first_result else body.sampler_name,
        "cfg_scale": first_request.guidance_scale if first_request else body.cfg_scale,
        "steps": first_request.steps if first_request else body.steps,
        "batch_size": body.batch_size or 1, "restore_faces": False, "face_restoration_model": None,
        "sd_model_name": title, "sd_model_hash": None, "sd_vae_name": None, "sd_vae_hash": None,
        "seed_resize_from_w": -1, "seed_resize_from_h": -1, "denoising_strength": strength,
        "extra_generation_params": _extra_params(texts[0]) if texts else {},
        "index_of_first_image": 0, "infotexts": texts, "styles": [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        "clip_skip": first_request.clip_skip if first_request else plan_.options.clip_skip,
        "is_using_inpainting_conditioning": bool(plan_.mask is not None and first_request is not None),
        "version": f"sdcli {__version__}", "interrupted": interrupted,
    }
    return json.dumps(info, ensure_ascii=False)


def response_sampler(scheduler: str) -> str:
    """A1111's sampler name for the scheduler an image ran (a flow-matching model's Euler: Euler,
    as its infotext says)."""
    from sdcli.schedulers import FLOW_A1111_NAME, FLOW_SCHEDULERS

    return FLOW_A1111_NAME if scheduler in FLOW_SCHEDULERS else a1111_sampler(scheduler)


def _extra_params(text: str) -> dict:
    from sdcli.imaging.params import parse_parameters

    _, _, fields = parse_parameters(text)
    core = {"Steps", "Sampler", "CFG scale", "Seed", "Size", "Model", "Denoising strength", "Clip skip", "Version"}
    return {key: value for key, value in fields.items() if key not in core}


def png_info_fields(text: str) -> dict:
    """The `parameters` of POST /png-info: the fields parsed as A1111 parses them (Size split
    into Size-1 and Size-2, its defaults for Clip skip, RNG, Schedule type and the VAE)."""
    from sdcli.imaging.params import parse_parameters

    prompt, negative, fields = parse_parameters(text)
    out: dict[str, Any] = {"Prompt": prompt, "Negative prompt": negative}
    for key, value in fields.items():
        w, x, h = value.partition("x")
        if w.isdigit() and h.isdigit() and x:
            out[f"{key}-1"], out[f"{key}-2"] = w, h
        else:
            out[key] = value
    for key, default in (("Clip skip", "1"), ("RNG", "GPU"), ("Schedule type", "Automatic"),
                         ("VAE Encoder", "Full"), ("VAE Decoder", "Full")):
        out.setdefault(key, default)
    return out
