"""OpenAI's images API beside A1111's: POST /v1/images/generations (JSON), /v1/images/edits and
/v1/images/variations (multipart), GET /v1/models and /v1/models/{id}, and GET
/v1/images/files/{name} for `response_format: url`.

A request becomes the A1111 routes' Plan (a1111.plan: the same checks, seeds, defaults and
scheduler choice) and runs as their Job on the same Worker: one queue, the same size and memory
checks, progress at /sdapi/v1/progress, and the PNG parameters `sdcli generate` writes.

Errors on /v1 are OpenAI's body `{"error": {"message", "type", "param", "code"}}`: 400 a bad
field (`param` names it), 401 a missing or wrong API key, 404 an unknown model or route, 413 a
body too large, 503 a full queue or a server stopping, 500 a failure; never a traceback.
"""
from __future__ import annotations

import asyncio
import base64
import re
import secrets
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Optional

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from sdcli.engine.request import GUIDANCE_MAX, SEED_MAX, STEPS_MAX
from sdcli.serve import a1111
from sdcli.serve.models import Img2ImgRequest, Txt2ImgRequest
from sdcli.serve.worker import Job, ModelNotFound, QueueFull, ServerStopping, Worker
from sdcli.util.errors import SdcliError, UsageError, error_text

PREFIX = "/v1"
FILES = "/v1/images/files/"  # response_format url: served without the API key (the names are unguessable)
MAX_N = 10  # OpenAI's limit on `n`
EDIT_STRENGTH, WHOLE_STRENGTH = 1.0, 0.75  # repainted pixels are redrawn whole; a whole image is varied
# A1111's field names (FieldError.field) as OpenAI's request names them
PARAMS = {"cfg_scale": "guidance_scale", "n_iter": "n", "batch_size": "n", "denoising_strength": "strength",
          "width": "size", "height": "size", "sampler_name": "scheduler", "init_images[0]": "image",
          "override_settings.sd_model_checkpoint": "model",
          # the `hires` extension (A1111's enable_hr fields, hires_fields)
          "hr_scale": "hires.scale", "hr_resize_x": "hires.width", "hr_resize_y": "hires.height",
          "hr_upscaler": "hires.upscaler", "hr_second_pass_steps": "hires.steps", "hr_prompt": "hires.prompt",
          "hr_negative_prompt": "hires.negative_prompt", "hr_sampler_name": "hires.scheduler",
          "hr_scheduler": "hires.scheduler", "hr_cfg": "hires.cfg"}
HIRES_KEYS = ("scale", "width", "height", "upscaler", "steps", "denoise", "prompt", "negative_prompt", "scheduler",
              "cfg")  # the `hires` extension's fields: generate's --hires-* flags


def is_openai_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


class OpenAIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_json(status: int, message: str, param: str | None = None, code: str | None = None,
               headers: dict | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 503:
        headers = {**(headers or {}), "Retry-After": "5"}
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status, headers=headers)


def _flags_to_fields(message: str) -> str:
    """An engine message names generate's flags: here, the request's fields."""
    for flag, name in (*((f"--hires-{key.replace('_', '-')}", f"hires.{key}") for key in HIRES_KEYS),
                       ("--init-image", "image"), ("--reference-image", "a reference image"), ("--mask", "mask"),
                       ("--steps", "steps"), ("--guidance-scale", "guidance_scale"), ("--negative-prompt", "negative_prompt"),
                       ("--prompt", "prompt"), ("--seed", "seed"), ("--strength", "strength"),
                       ("--width", "size"), ("--height", "size")):
        message = message.replace(flag, name)
    return message


def error_from(exc: BaseException) -> JSONResponse:
    """OpenAI's error response for what a /v1 request raised."""
    if isinstance(exc, OpenAIError):
        return error_json(exc.status, exc.message, exc.param, exc.code)
    if isinstance(exc, ModelNotFound):
        return error_json(404, f"{error_text(exc).split(':')[0]}: GET /v1/models lists the models here", "model",
                          "model_not_found")
    if isinstance(exc, (QueueFull, ServerStopping)):
        return error_json(503, str(exc), code="server_overloaded" if isinstance(exc, QueueFull) else None)
    if isinstance(exc, a1111.FieldError):
        param = PARAMS.get(exc.field, exc.field)
        message = str(exc)
        if message.startswith(exc.field + ":"):
            message = param + message[len(exc.field):]
        return error_json(400, _flags_to_fields(message), param)
    if isinstance(exc, UsageError):
        return error_json(400, _flags_to_fields(str(exc)))
    if isinstance(exc, SdcliError):
        return error_json(500, str(exc))
    if isinstance(exc, RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(where) or None
        return error_json(400, f"{param or 'body'}: {first.get('msg', 'invalid request')}", param)
    return error_json(500, error_text(exc))


# -- images served for response_format url -------------------------------------------------------
class ImageStore:
    """The images a `url` response points to, kept in memory for `ttl` seconds, at most
    `max_count` of them and `max_bytes` in all (the oldest go first)."""

    def __init__(self, ttl: float = 3600.0, max_count: int = 500, max_bytes: int = 256 << 20, clock=time.monotonic):
        self.ttl, self.max_count, self.max_bytes, self.clock = ttl, max_count, max_bytes, clock
        self._items: OrderedDict[str, tuple[float, bytes, str]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, data: bytes, media_type: str, suffix: str) -> str:
        name = f"{secrets.token_urlsafe(24)}.{suffix}"
        with self._lock:
            self._items[name] = (self.clock() + self.ttl, data, media_type)
            self._bytes += len(data)
            self._prune()
        return name

    def get(self, name: str) -> tuple[bytes, str] | None:
        with self._lock:
            self._prune()
            item = self._items.get(name)
        return None if item is None else (item[1], item[2])

    def _prune(self) -> None:
        now = self.clock()
        while self._items:
            name, (expires, data, _) = next(iter(self._items.items()))
            if expires > now and len(self._items) <= self.max_count and self._bytes <= self.max_bytes:
                break
            del self._items[name]
            self._bytes -= len(data)


# -- requests ---------------------------------------------------------------------------------------
class ImageGenerationRequest(BaseModel):
    """POST /v1/images/generations: OpenAI's fields, and sdcli's own (negative_prompt, seed, steps,
    guidance_scale, scheduler) as extra body fields."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    prompt: str = Field(description="What to draw (A1111's prompt syntax works: (word:1.2), <lora:NAME:W>).")
    model: Optional[str] = Field(None, description="A model's id from GET /v1/models (a folder's name); null: the server's model.")
    n: Optional[int] = Field(None, description="Images, 1 to 10 [1]; image i uses seed + i.")
    size: Optional[str] = Field(None, description="WxH, each a multiple of 8, or auto [auto: the model's size].")
    response_format: Optional[str] = Field(None, description="b64_json [default] or url (served here for an hour).")
    output_format: Optional[str] = Field(None, description="png [default], jpeg or webp.")
    output_compression: Optional[int] = Field(None, description="jpeg and webp: quality 0 to 100 [100].")
    quality: Optional[str] = Field(None, description="Accepted and ignored (steps set the quality).")
    style: Optional[str] = Field(None, description="Accepted and ignored.")
    background: Optional[str] = Field(None, description="Accepted and ignored (images are opaque).")
    moderation: Optional[str] = Field(None, description="Accepted and ignored (no moderation here).")
    user: Optional[str] = Field(None, description="Accepted and ignored.")
    stream: Optional[bool] = Field(None, description="Must be false or null (no streaming).")
    negative_prompt: Optional[str] = Field(None, description="sdcli's: what to steer away from.")
    seed: Optional[int] = Field(None, description="sdcli's: the seed [-1 or null: random]; sdcli generate --seed gives the same image.")
    steps: Optional[int] = Field(None, description="sdcli's: denoising steps [the model folder's default, else 20].")
    guidance_scale: Optional[float] = Field(None, description="sdcli's: classifier-free guidance [the model folder's default, else 7.5].")
    scheduler: Optional[str] = Field(None, description="sdcli's: a scheduler (sdcli's or A1111's sampler name) [the model's own].")
    hires: Optional[Any] = Field(None, description="sdcli's: A1111's hires fix (docs/hires.md), an object of generate's --hires-* settings: scale (more than 1) [2], or width/height; upscaler [Latent]; steps [0: steps]; denoise [0.7]; prompt, negative_prompt, scheduler, cfg [the first pass's]. true: all defaults.")


def parse_size(value: Any) -> tuple[int | None, int | None]:
    """(width, height) of `size` ("WxH" or "auto"; None: the model's or the image's size)."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None, None
    match = re.fullmatch(r"\s*(\d{1,6})\s*[xX]\s*(\d{1,6})\s*", value) if isinstance(value, str) else None
    if match is None:
        raise OpenAIError(400, f"size must be WxH (e.g. 512x512) or auto, got {value!r}", "size")
    width, height = int(match.group(1)), int(match.group(2))
    for side in (width, height):
        if side <= 0 or side % 8 or side > a1111.MAX_SIDE:
            raise OpenAIError(400, f"size: width and height must be multiples of 8 from 8 to {a1111.MAX_SIDE}, "
                                   f"got {value!r}", "size")
    return width, height


def _choice(name: str, value: Any, choices: tuple[str, ...], default: str) -> str:
    if value is None or value == "":
        return default
    if not isinstance(value, str) or value.lower() not in choices:
        raise OpenAIError(400, f"{name} must be {' or '.join(choices)}, got {value!r}", name)
    return value.lower()


def _whole(name: str, value: Any, low: int, high: int) -> int | None:
    if value is None or value == "":
        return None
    try:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, str):  # a form field
            text = value.strip()
            number = int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)
        else:
            number = value
        if not float(number).is_integer():
            raise ValueError
        number = int(number)
    except (TypeError, ValueError, OverflowError):
        raise OpenAIError(400, f"{name} must be a whole number, got {value!r}", name) from None
    if not low <= number <= high:
        raise OpenAIError(400, f"{name} must be from {low} to {high}, got {number}", name)
    return number


def _number(name: str, value: Any, low: float, high: float) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise OpenAIError(400, f"{name} must be a number, got {value!r}", name) from None
    if isinstance(value, bool) or not (np.isfinite(number) and low <= number <= high):
        raise OpenAIError(400, f"{name} must be from {low:g} to {high:g}, got {value!r}", name)
    return number


def _text(name: str, value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise OpenAIError(400, f"{name} must be text", name)
    return value


class Output:
    """How the images come back: response_format, output_format and its quality."""

    def __init__(self, fields: dict):
        self.response_format = _choice("response_format", fields.get("response_format"), ("b64_json", "url"),
                                       "b64_json")
        self.format = _choice("output_format", fields.get("output_format"), ("png", "jpeg", "jpg", "webp"), "png")
        self.format = "jpeg" if self.format == "jpg" else self.format
        compression = _whole("output_compression", fields.get("output_compression"), 0, 100)
        self.quality = 100 if compression is None else compression
        stream = fields.get("stream")
        if stream not in (None, False, "", "false", "False"):
            raise OpenAIError(400, "stream: streaming is not supported here (send stream false or leave it out)",
                              "stream")


def hires_fields(value: Any) -> dict:
    """The `hires` extension as A1111's txt2img fields (enable_hr, hr_*, denoising_strength; {}
    without it); defaults are generate's --hires-* flags' (denoise 0.7, not A1111's API 0.75)."""
    from sdcli.engine.hires import DEFAULT_DENOISE, MAX_SCALE

    if value is None or value is False:
        return {}
    if value is True:
        value = {}
    if not isinstance(value, dict):
        raise OpenAIError(400, "hires must be an object, e.g. {\"scale\": 2, \"denoise\": 0.5}", "hires")
    unknown = [key for key in value if key not in HIRES_KEYS]
    if unknown:
        raise OpenAIError(400, f"hires.{unknown[0]}: unknown field (known: {', '.join(HIRES_KEYS)})", f"hires.{unknown[0]}")
    scale = _number("hires.scale", value.get("scale"), 0.0, MAX_SCALE)
    denoise = _number("hires.denoise", value.get("denoise"), 0.0, 1.0)
    if denoise == 0.0:
        raise OpenAIError(400, "hires.denoise must be more than 0 and at most 1, got 0", "hires.denoise")
    sides = {key: _whole(f"hires.{key}", value.get(key), 0, a1111.MAX_SIDE) for key in ("width", "height")}
    out = {"enable_hr": True, "hr_scale": 2.0 if scale is None else scale, "hr_resize_x": sides["width"] or 0,
           "hr_resize_y": sides["height"] or 0, "hr_second_pass_steps": _whole("hires.steps", value.get("steps"), 0,
                                                                             STEPS_MAX) or 0,
           "denoising_strength": DEFAULT_DENOISE if denoise is None else denoise,
           "hr_upscaler": _text("hires.upscaler", value.get("upscaler")) or None,
           "hr_prompt": _text("hires.prompt", value.get("prompt")) or "",
           "hr_negative_prompt": _text("hires.negative_prompt", value.get("negative_prompt")) or "",
           "hr_sampler_name": _text("hires.scheduler", value.get("scheduler")) or None,
           "hr_cfg": _number("hires.cfg", value.get("cfg"), 0.0, GUIDANCE_MAX)}
    return out


def plan_for(worker: Worker, fields: dict, kind: str, image: np.ndarray | None = None,
             mask: np.ndarray | None = None, prompt: str = "") -> a1111.Plan:
    """The A1111 routes' Plan for an OpenAI request's `fields` (sdcli's extensions included)."""
    model = _text("model", fields.get("model")) or None
    if model is not None:
        try:
            worker.registry.find(model)
        except ModelNotFound:
            raise OpenAIError(404, f"the model {model!r} does not exist here: GET /v1/models lists the models",
                              "model", "model_not_found") from None
    n = _whole("n", fields.get("n"), 1, MAX_N) or 1
    width, height = parse_size(fields.get("size"))
    seed = _whole("seed", fields.get("seed"), -1, SEED_MAX)
    steps = _whole("steps", fields.get("steps"), 1, STEPS_MAX)
    guidance = _number("guidance_scale", fields.get("guidance_scale"), 0.0, GUIDANCE_MAX)
    default_strength = EDIT_STRENGTH if mask is not None else WHOLE_STRENGTH
    strength = _number("strength", fields.get("strength"), 0.0, 1.0)
    mask_blur = _whole("mask_blur", fields.get("mask_blur"), 0, 256)
    hires = hires_fields(fields.get("hires"))
    if hires and kind != "txt2img":
        raise OpenAIError(400, "hires: the hires fix is for /v1/images/generations (text to image)", "hires")
    settings = dict(
        prompt=prompt, negative_prompt=_text("negative_prompt", fields.get("negative_prompt")) or "",
        seed=-1 if seed is None else seed, steps=steps, cfg_scale=guidance, width=width, height=height,
        batch_size=1, n_iter=n, sampler_name=_text("scheduler", fields.get("scheduler")) or None,
        denoising_strength=default_strength if strength is None else strength, mask_blur=mask_blur,
        override_settings={"sd_model_checkpoint": model} if model else None)
    body = Txt2ImgRequest(**{**settings, **hires}) if hires else Img2ImgRequest(**settings)  # (hires: its denoise)
    plan = a1111.plan(body, "txt2img", worker.options)  # the checks, seeds and model of A1111's txt2img
    if kind == "img2img":
        plan.kind, plan.init_images, plan.mask = "img2img", [image], mask
    return plan


async def run_plan(worker: Worker, plan: a1111.Plan, output: Output, store: ImageStore, request: Request) -> dict:
    from sdcli.imaging.image_io import IMAGE_FORMATS, encode_image

    made = await asyncio.wrap_future(worker.submit(Job(plan.kind, plan)))

    def encode(item) -> bytes:
        _, result, text, png = item
        return png if output.format == "png" else encode_image(result.image, output.format, text, output.quality)

    blobs = await run_in_threadpool(lambda: [encode(item) for item in made.images])
    data = []
    for blob in blobs:
        if output.response_format == "url":
            name = store.put(blob, IMAGE_FORMATS[output.format], output.format)
            data.append({"url": f"{str(request.base_url).rstrip('/')}{FILES}{name}"})
        else:
            data.append({"b64_json": base64.b64encode(blob).decode("ascii")})
    out: dict[str, Any] = {"created": int(time.time()), "data": data, "output_format": output.format}
    if made.images:
        result = made.images[0][1]
        out["size"] = f"{result.width}x{result.height}"
    return out


# -- multipart uploads ------------------------------------------------------------------------------
async def read_form(request: Request) -> tuple[dict[str, Any], dict[str, list[bytes]]]:
    """A multipart (or urlencoded) body's text fields and its files' bytes, by name."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise OpenAIError(400, f"this route takes multipart/form-data (an image file and fields), got {kind or 'no content type'!r}")
    form = await request.form(max_files=16, max_fields=128)
    fields: dict[str, Any] = {}
    files: dict[str, list[bytes]] = {}
    try:
        for name, value in form.multi_items():
            if isinstance(value, str):
                fields[name] = value
            else:
                files.setdefault(name.removesuffix("[]"), []).append(await value.read())
    finally:
        await form.close()
    return fields, files


def decode_image(name: str, data: bytes) -> tuple[np.ndarray, np.ndarray | None]:
    """An uploaded image as RGB uint8, and its alpha as float [0, 1] (None: no alpha channel),
    through generate's reader and checks."""
    from sdcli.imaging.image_io import read_alpha, read_rgb

    with tempfile.TemporaryDirectory(prefix="sdcli-serve-") as tmp:
        path = Path(tmp) / "image"
        path.write_bytes(data)
        try:
            return read_rgb(path), read_alpha(path)
        except UsageError as exc:
            raise OpenAIError(400, f"{name}: {str(exc).replace(str(path), 'it')}", name) from None


def _one_image(files: dict[str, list[bytes]], name: str = "image") -> bytes:
    images = files.get(name) or []
    if not images:
        raise OpenAIError(400, f"{name}: an image file is required", name)
    if len(images) > 1:
        raise OpenAIError(400, f"{name}: one image is edited on this server's models (got {len(images)})", name)
    return images[0]


def edit_images(files: dict[str, list[bytes]]) -> tuple[np.ndarray, np.ndarray | None]:
    """The image to edit and the mask of what to repaint (1: repaint), OpenAI's way: the
    transparent pixels of `mask`, or of the image when no mask is given; None when nothing is
    transparent (the whole image is redrawn as image-to-image)."""
    image, alpha = decode_image("image", _one_image(files))
    masks = files.get("mask") or []
    if len(masks) > 1:
        raise OpenAIError(400, "mask: one mask at most", "mask")
    if not masks:
        if alpha is None or alpha.min() >= 1.0:
            return image, None
        return image, 1.0 - alpha
    _, mask_alpha = decode_image("mask", masks[0])
    if mask_alpha is None:
        raise OpenAIError(400, "mask: has no alpha channel: the mask is an image whose transparent pixels are "
                               "the ones to repaint (a PNG with transparency)", "mask")
    if mask_alpha.shape != image.shape[:2]:
        raise OpenAIError(400, f"mask: is {mask_alpha.shape[1]}x{mask_alpha.shape[0]}, the image "
                               f"{image.shape[1]}x{image.shape[0]}: they must be the same size", "mask")
    if mask_alpha.min() >= 1.0:
        raise OpenAIError(400, "mask: no pixel is transparent: nothing to repaint", "mask")
    return image, 1.0 - mask_alpha


# -- the routes ---------------------------------------------------------------------------------------
def add_openai_routes(app: FastAPI, worker: Worker, store: ImageStore | None = None) -> None:
    store = store or ImageStore()
    app.state.openai_images = store

    @app.exception_handler(OpenAIError)
    async def on_openai_error(request, exc: OpenAIError):
        return error_from(exc)

    @app.post("/v1/images/generations", tags=["openai"])
    async def generations(body: ImageGenerationRequest, request: Request):
        """OpenAI's image generation: `prompt`, `model`, `n`, `size`, `response_format`, `output_format`
        (`quality`, `style`, `background`, `moderation` are accepted and ignored)."""
        fields = body.model_dump()
        output = Output(fields)
        plan = await run_in_threadpool(plan_for, worker, fields, "txt2img", prompt=body.prompt)
        return await run_plan(worker, plan, output, store, request)

    @app.post("/v1/images/edits", tags=["openai"])
    async def edits(request: Request):
        """OpenAI's image edit (multipart): `image` (or `image[]`, one here) and an optional `mask`
        whose transparent pixels are repainted (without a mask, the image's own transparent
        pixels; with none, the whole image is redrawn image-to-image)."""
        fields, files = await read_form(request)
        output = Output(fields)
        prompt = _text("prompt", fields.get("prompt"))
        if not prompt:
            raise OpenAIError(400, "prompt: is required", "prompt")
        image, mask = await run_in_threadpool(edit_images, files)
        plan = await run_in_threadpool(plan_for, worker, fields, "img2img", image, mask, prompt)
        return await run_plan(worker, plan, output, store, request)

    @app.post("/v1/images/variations", tags=["openai"])
    async def variations(request: Request):
        """OpenAI's variations (multipart `image`): image-to-image of the image with an empty prompt."""
        fields, files = await read_form(request)
        output = Output(fields)
        image, _ = await run_in_threadpool(decode_image, "image", _one_image(files))
        plan = await run_in_threadpool(plan_for, worker, fields, "img2img", image, None, "")
        return await run_plan(worker, plan, output, store, request)

    @app.get(FILES + "{name}", tags=["openai"])
    async def image_file(name: str):
        """An image of a `response_format: url` response (kept an hour, the newest 500 at most)."""
        found = store.get(name)
        if found is None:
            raise OpenAIError(404, "no such image: images are kept for an hour after they are made", code="not_found")
        return Response(found[0], media_type=found[1])

    def model_item(entry) -> dict:
        try:
            created = int(entry.path.stat().st_mtime)
        except OSError:
            created = 0
        return {"id": entry.title, "object": "model", "created": created, "owned_by": "sdcli"}

    @app.get("/v1/models", tags=["openai"])
    async def models():
        """The models a request's `model` may name: the folders under --models-dir, and --model."""
        return {"object": "list", "data": [model_item(entry) for entry in worker.registry.entries()]}

    @app.get("/v1/models/{model_id}", tags=["openai"])
    async def model(model_id: str):
        try:
            entry = await run_in_threadpool(worker.registry.find, model_id)
        except ModelNotFound:
            raise OpenAIError(404, f"the model {model_id!r} does not exist here: GET /v1/models lists the models",
                              "model", "model_not_found") from None
        return model_item(entry)
