"""A1111's Extras over HTTP: /sdapi/v1/upscalers, /sdapi/v1/extra-single-image and
/sdapi/v1/extra-batch-images in A1111's request and response shapes, upscaling as `sdcli upscale`
does (engine/upscale.py).  The model upscalers are the converted ones in $SDCLI_UPSCALER_DIR, else
models/ESRGAN; face restoration (GFPGAN, CodeFormer) is not done: a visibility above 0 is a 422.

Upscaling runs in the server's thread pool beside the generation queue, with its own OpenVINO
runtime (compiled upscalers kept for the next request).
"""
from __future__ import annotations

import base64
import threading
from typing import Optional

import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from sdcli.serve import a1111
from sdcli.serve.models import UpscalerItem

NONE = "None"  # A1111's "no upscaler"


class ExtrasOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    resize_mode: int = Field(0, description="0: scale by upscaling_resize; 1: to upscaling_resize_w x upscaling_resize_h.")
    show_extras_results: bool = Field(True, description="Return the images.")
    gfpgan_visibility: float = Field(0, description="Not supported: must be 0.")
    codeformer_visibility: float = Field(0, description="Not supported: must be 0.")
    codeformer_weight: float = Field(0, description="Ignored (CodeFormer is not supported).")
    upscaling_resize: float = Field(2, description="Times the size (resize_mode 0), more than 1.")
    upscaling_resize_w: int = Field(512, description="Target width (resize_mode 1).")
    upscaling_resize_h: int = Field(512, description="Target height (resize_mode 1).")
    upscaling_crop: bool = Field(True, description="resize_mode 1: crop to the target about the centre.")
    upscaler_1: str = Field(NONE, description="A name from /sdapi/v1/upscalers.")
    upscaler_2: str = Field(NONE, description="A second upscaler, blended in by extras_upscaler_2_visibility.")
    extras_upscaler_2_visibility: float = Field(0, description="0..1: how much of upscaler_2's image.")
    upscale_first: bool = Field(False, description="Ignored (no face restoration to order it with).")


class ExtrasSingleImageRequest(ExtrasOptions):
    image: str = Field("", description="A base64 image (a data: prefix is accepted).")


class ImageItem(BaseModel):
    data: str = Field(description="A base64 image.")
    name: str = Field("", description="Its file name.")


class ExtrasBatchImagesRequest(ExtrasOptions):
    imageList: list[ImageItem] = Field(description="The images.")


class ExtrasSingleImageResponse(BaseModel):
    html_info: str
    image: Optional[str] = None


class ExtrasBatchImagesResponse(BaseModel):
    html_info: str
    images: list[str]


class Upscalers:
    """The server's runtime and the model upscalers compiled on it (by name)."""

    def __init__(self):
        self._runtime = None
        self._models: dict[str, object] = {}
        self._lock = threading.Lock()

    def get(self, name: str, field: str):
        from sdcli.engine.upscale import resolve
        from sdcli.util.errors import UsageError

        if name in self._models:
            return self._models[name]
        with self._lock:
            if self._runtime is None:
                from sdcli.runtime.core import Runtime, default_cache_dir

                self._runtime = Runtime("CPU", "auto", default_cache_dir())
            try:
                upscaler = resolve(name, self._runtime)
            except UsageError as exc:
                raise a1111.FieldError(field, f"{exc} (or None)") from None
            self._models[name] = upscaler
            return upscaler


def listing() -> list[dict]:
    """/sdapi/v1/upscalers: None, Lanczos, Nearest and the converted model upscalers."""
    from sdcli.model.upscalers import BUILTIN, list_upscalers

    items = [{"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": 4}
             for name in (NONE, *BUILTIN)]
    for found in list_upscalers():
        items.append({"name": found.name, "model_name": found.info.get("architecture"),
                      "model_path": str(found.root), "model_url": None, "scale": found.scale})
    return items


def _check(body: ExtrasOptions) -> None:
    if body.gfpgan_visibility or body.codeformer_visibility:
        raise a1111.FieldError("gfpgan_visibility" if body.gfpgan_visibility else "codeformer_visibility",
                               "face restoration is not supported by sdcli: send 0")
    if body.resize_mode not in (0, 1):
        raise a1111.FieldError("resize_mode", "must be 0 (scale by) or 1 (to a size)")
    if body.resize_mode == 0 and not body.upscaling_resize > 1:
        raise a1111.FieldError("upscaling_resize", f"must be more than 1, got {body.upscaling_resize:g}")
    if body.resize_mode == 1 and not (8 <= body.upscaling_resize_w <= 16384 and 8 <= body.upscaling_resize_h <= 16384):
        raise a1111.FieldError("upscaling_resize_w", "the target size must be 8 to 16384 pixels a side")
    if not 0 <= body.extras_upscaler_2_visibility <= 1:
        raise a1111.FieldError("extras_upscaler_2_visibility", "must be between 0 and 1")


def upscale_one(image: np.ndarray, body: ExtrasOptions, upscalers: Upscalers) -> np.ndarray:
    """A1111's postprocessing upscale of one image (scale by, or to a size and cropped about the
    centre), with upscaler_2 blended in by its visibility."""
    from PIL import Image

    from sdcli.engine.upscale import SCALE_MAX, upscale
    from sdcli.util.errors import UsageError

    height, width = image.shape[:2]
    if body.resize_mode == 1:
        scale = max(body.upscaling_resize_w / width, body.upscaling_resize_h / height)
    else:
        scale = body.upscaling_resize
    if not 1 < scale <= SCALE_MAX:
        raise a1111.FieldError("upscaling_resize" if body.resize_mode == 0 else "upscaling_resize_w",
                               f"the scale must be more than 1 and at most {SCALE_MAX:g}, it is {scale:g}")

    def run(name: str, field: str) -> Image.Image | None:
        if name == NONE:
            return None
        try:
            return Image.fromarray(upscale(image, upscalers.get(name, field), scale))
        except UsageError as exc:
            raise a1111.FieldError(field, str(exc)) from None

    first = run(body.upscaler_1, "upscaler_1")
    result = first if first is not None else Image.fromarray(image)
    if body.upscaler_2 != NONE and body.extras_upscaler_2_visibility > 0:
        second = run(body.upscaler_2, "upscaler_2")
        if first is None:
            first = result.resize(second.size, resample=Image.Resampling.LANCZOS)
        result = Image.blend(first, second, body.extras_upscaler_2_visibility)
    if body.resize_mode == 1 and body.upscaling_crop:
        w, h = body.upscaling_resize_w, body.upscaling_resize_h
        cropped = Image.new("RGB", (w, h))
        cropped.paste(result, box=(w // 2 - result.width // 2, h // 2 - result.height // 2))
        result = cropped
    return np.asarray(result.convert("RGB"))


def _info(body: ExtrasOptions) -> str:
    parts = [f"Postprocess upscale by: {body.upscaling_resize:g}" if body.resize_mode == 0 else
             f"Postprocess upscale to: {body.upscaling_resize_w}x{body.upscaling_resize_h}",
             f"Postprocess upscaler: {body.upscaler_1}"]
    if body.upscaler_2 != NONE and body.extras_upscaler_2_visibility > 0:
        parts += [f"Postprocess upscaler 2: {body.upscaler_2}",
                  f"Postprocess upscaler 2 visibility: {body.extras_upscaler_2_visibility:g}"]
    return ", ".join(parts)


def _png(image: np.ndarray) -> str:
    from sdcli.imaging.image_io import encode_png

    return base64.b64encode(encode_png(image)).decode("ascii")


def add_extras_routes(app: FastAPI) -> None:
    upscalers = Upscalers()

    @app.get("/sdapi/v1/upscalers", response_model=list[UpscalerItem], tags=["lists"])
    async def list_upscalers():
        """None, Lanczos, Nearest and the converted model upscalers ($SDCLI_UPSCALER_DIR, else models/ESRGAN)."""
        return await run_in_threadpool(listing)

    @app.post("/sdapi/v1/extra-single-image", response_model=ExtrasSingleImageResponse, tags=["extras"])
    async def extra_single_image(body: ExtrasSingleImageRequest):
        """A1111's Extras on one image: upscaled (no face restoration)."""
        def work():
            _check(body)
            image = a1111.read_image("image", body.image)
            out = upscale_one(image, body, upscalers)
            return {"html_info": _info(body), "image": _png(out) if body.show_extras_results else None}

        return await run_in_threadpool(work)

    @app.post("/sdapi/v1/extra-batch-images", response_model=ExtrasBatchImagesResponse, tags=["extras"])
    async def extra_batch_images(body: ExtrasBatchImagesRequest):
        """A1111's Extras on several images."""
        def work():
            _check(body)
            images = [a1111.read_image(f"imageList[{i}].data", item.data) for i, item in enumerate(body.imageList)]
            out = [upscale_one(image, body, upscalers) for image in images]
            return {"html_info": _info(body), "images": [_png(o) for o in out] if body.show_extras_results else []}

        return await run_in_threadpool(work)
