"""A1111's hires fix: a first pass at the requested size, its latents (or its decoded pixels)
upscaled, and a second image-to-image pass at the larger size: a composition of the engine's one
orchestration (Engine.generate runs each pass; nothing here knows a model family).

What it does, as AUTOMATIC1111's StableDiffusionProcessingTxt2Img does it:
- the target size: `scale` times the first pass's, or `resize_width` x `resize_height`; with
  both sides given, the first pass is scaled to cover them and the latents are then cut to them
  about the centre (calculate_target_resolution and the truncation in sample_hr_pass);
- a Latent upscaler interpolates the latents as torch.nn.functional.interpolate does with the
  mode and antialias A1111 maps its name to (resize_latents: the same weights in numpy); Lanczos
  and Nearest resize the decoded first pass with Pillow as A1111's upscalers do, and the VAE
  encodes it again (one draw from a generator of the seed where the VAE has a variance);
- the second pass runs exactly `steps` steps (0: the first pass's number) on the tail of a
  schedule of int(steps / min(denoise, 0.999)) steps (A1111's setup_img2img_steps), from the
  upscaled latents noised with a fresh draw from the same seed shaped like the larger latents,
  with its own prompt, negative prompt, scheduler and guidance scale where given (Forge's
  Hires CFG Scale).

On Z-Image (a flow-matching transformer) the second pass is ZImageImg2ImgPipeline on the upscaled
picture (pixel upscalers only; strength = denoise, int(steps / denoise) steps); the Latent modes,
which interpolate SD's latents, and FLUX.2-klein (no image-to-image strength) are refused.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdcli.util.errors import UsageError

# A1111's names (modules/shared.py latent_upscale_modes) -> (interpolate mode, antialias)
LATENT_MODES = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
PIXEL_UPSCALERS = ("Lanczos", "Nearest", "None")  # A1111's built-in upscalers on the decoded image ("None":
# straight to the target with Lanczos), and the converted model upscalers of model/upscalers.py, by name
DEFAULT_UPSCALER = "Latent"  # A1111's latent_upscale_default_mode (what a request without one gets)
DEFAULT_DENOISE = 0.7  # A1111's txt2img UI default for the hires pass's denoising strength
MAX_SIDE = 16384
MAX_SCALE = 8.0
MAX_DENOISE_FRACTION = 0.999  # A1111's cap in setup_img2img_steps


def upscaler_names() -> list[str]:
    return [*LATENT_MODES, *PIXEL_UPSCALERS]


def number_text(value: float) -> str:
    """A number as the PNG's parameters write it: whole numbers without a point, others as
    Python reads them back exactly."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


@dataclass(frozen=True)
class HiresFix:
    """The second pass of a GenerationRequest (its `hires`)."""

    scale: float = 2.0  # used when neither resize side is given (A1111's hr_scale)
    resize_width: int = 0  # A1111's hr_resize_x / hr_resize_y (0: from the other side, or from the scale)
    resize_height: int = 0
    upscaler: str = DEFAULT_UPSCALER
    steps: int = 0  # 0: the first pass's
    denoise: float = DEFAULT_DENOISE
    prompt: str = ""  # "": the first pass's (as A1111's hr_prompt)
    negative_prompt: str = ""
    scheduler: str | None = None  # None: the first pass's
    guidance_scale: float | None = None  # None: the first pass's (Forge's hr_cfg)
    upscaler_dir: Path | None = None  # where a model upscaler is found (None: $SDCLI_UPSCALER_DIR, else models/ESRGAN)

    @property
    def resized(self) -> bool:
        return bool(self.resize_width or self.resize_height)

    @property
    def latent(self) -> bool:
        return self.upscaler in LATENT_MODES

    def validate(self, request) -> None:
        """UsageError naming generate's flag for a setting that cannot be run."""
        from sdcli.engine.request import GUIDANCE_MAX, STEPS_MAX, check_prompt_text

        if not self.upscaler.strip():
            raise UsageError("--hires-upscaler: give a name: " + ", ".join(repr(n) for n in upscaler_names())
                             + " or a converted model upscaler's")
        for flag, value in (("--hires-width", self.resize_width), ("--hires-height", self.resize_height)):
            if value < 0 or value % 8 or value > MAX_SIDE:
                raise UsageError(f"{flag} must be a positive multiple of 8 up to {MAX_SIDE}, got {value}")
        if not self.resized and not (math.isfinite(self.scale) and 1.0 < self.scale <= MAX_SCALE):
            raise UsageError(f"--hires-scale must be more than 1 and at most {MAX_SCALE:g}, got {self.scale:g}")
        if not 0 <= self.steps <= STEPS_MAX:
            raise UsageError(f"--hires-steps must be between 0 (the first pass's) and {STEPS_MAX}, got {self.steps}")
        if not (math.isfinite(self.denoise) and 0.0 < self.denoise <= 1.0):
            raise UsageError(f"--hires-denoise must be more than 0 and at most 1, got {self.denoise:g}")
        if self.guidance_scale is not None and not (math.isfinite(self.guidance_scale)
                                                    and 0.0 <= self.guidance_scale <= GUIDANCE_MAX):
            raise UsageError(f"--hires-cfg must be between 0 and {GUIDANCE_MAX:g}, got {self.guidance_scale}")
        check_prompt_text("--hires-prompt", self.prompt, request.emphasis)
        check_prompt_text("--hires-negative-prompt", self.negative_prompt, request.emphasis)
        if request.init_image is not None or request.mask is not None:
            raise UsageError("the hires fix is for text-to-image: it takes no --init-image or --mask")
        if getattr(request, "controlnets", ()):
            raise UsageError("the hires fix with --controlnet is not supported yet")
        if request.reference_images:
            raise UsageError("the hires fix is for Stable Diffusion and SDXL models: it takes no --reference-image")

    def second_pass_steps(self, first_pass_steps: int) -> tuple[int, int]:
        """(steps of the whole schedule, steps run on its tail): A1111's setup_img2img_steps."""
        run = self.steps or first_pass_steps
        return int(run / min(self.denoise, MAX_DENOISE_FRACTION)), run


@dataclass(frozen=True)
class Target:
    """Where the second pass goes: the size the first pass is upscaled to, and the latent rows
    and columns then cut off (about the centre) to reach the final size."""

    upscale_width: int
    upscale_height: int
    truncate_x: int  # in latent columns
    truncate_y: int
    width: int  # the final image
    height: int


def target(hires: HiresFix, width: int, height: int, factor: int) -> Target:
    """A1111's calculate_target_resolution for a first pass of `width` x `height`, the latents
    `factor` times smaller (the VAE's scale factor, 8 on real models)."""
    tx, ty = 0, 0
    if not hires.resized:
        up_w, up_h = int(width * hires.scale), int(height * hires.scale)
        what = f"--hires-scale {hires.scale:g}"
    elif not hires.resize_height:
        up_w, up_h = hires.resize_width, hires.resize_width * height // width
        what = f"--hires-width {hires.resize_width}"
    elif not hires.resize_width:
        up_w, up_h = hires.resize_height * width // height, hires.resize_height
        what = f"--hires-height {hires.resize_height}"
    else:  # cover both sides, then cut the latents to them
        if width / height < hires.resize_width / hires.resize_height:
            up_w, up_h = hires.resize_width, hires.resize_width * height // width
        else:
            up_w, up_h = hires.resize_height * width // height, hires.resize_height
        tx, ty = (up_w - hires.resize_width) // factor, (up_h - hires.resize_height) // factor
        what = None
    if what is not None and (up_w % 8 or up_h % 8):
        raise UsageError(f"{what} makes {up_w}x{up_h} of the {width}x{height} first pass: the hires size must be "
                         "a multiple of 8 (choose another scale, or --hires-width and --hires-height)")
    if up_w > MAX_SIDE or up_h > MAX_SIDE:
        raise UsageError(f"the hires size {up_w}x{up_h} is larger than {MAX_SIDE} pixels a side")
    final_w = (up_w // factor - tx) * factor
    final_h = (up_h // factor - ty) * factor
    if final_w * final_h <= width * height:
        raise UsageError(f"the hires size {final_w}x{final_h} is not larger than the first pass ({width}x{height}): "
                         "give a larger --hires-width/--hires-height, or --hires-scale above 1")
    return Target(up_w, up_h, tx, ty, final_w, final_h)


# -- the upscale ----------------------------------------------------------------------------------
def _filter(mode: str, x: np.ndarray) -> np.ndarray:
    """The antialiased kernels of torch's _upsample_*_aa (Pillow's: bicubic with a = -0.5)."""
    x = np.abs(x)
    if mode == "bilinear":
        return np.where(x < 1.0, 1.0 - x, 0.0)
    a = -0.5
    return np.where(x < 1.0, ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0,
                    np.where(x < 2.0, (((x - 5.0) * x + 8.0) * x - 4.0) * a, 0.0))


def _cubic(t: float) -> list[float]:
    """torch's get_cubic_upsample_coefficients (A = -0.75) for the four taps around t."""
    a = -0.75

    def near(x):
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0

    def far(x):
        return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a

    return [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]


def resize_weights(size_in: int, size_out: int, mode: str, antialias: bool) -> np.ndarray:
    """[size_out, size_in]: the weights torch.nn.functional.interpolate(size=..., mode=mode,
    antialias=antialias, align_corners=False) gives each input along one axis."""
    w = np.zeros((size_out, size_in), dtype=np.float64)
    if size_in == size_out and mode in ("nearest", "nearest-exact"):
        np.fill_diagonal(w, 1.0)
        return w
    scale32 = np.float32(size_in) / np.float32(size_out)  # torch computes the scale in float
    scale = float(scale32)
    for i in range(size_out):
        if mode in ("nearest", "nearest-exact"):
            offset = np.float32(0.5) if mode == "nearest-exact" else np.float32(0.0)
            src = int(np.floor((np.float32(i) + offset) * scale32))
            w[i, min(src, size_in - 1)] = 1.0
        elif antialias:
            support = (1.0 if mode == "bilinear" else 2.0) * (scale if scale >= 1.0 else 1.0)
            center = scale * (i + 0.5)
            invscale = 1.0 / scale if scale >= 1.0 else 1.0
            xmin = max(int(center - support + 0.5), 0)
            xmax = min(int(center + support + 0.5), size_in)
            taps = _filter(mode, (np.arange(xmin, xmax) - center + 0.5) * invscale)
            total = taps.sum()
            w[i, xmin:xmax] = taps / total if total != 0 else taps
        elif mode == "bilinear":
            src = max(scale * (i + 0.5) - 0.5, 0.0)
            i0 = int(src)
            lam = min(max(src - i0, 0.0), 1.0)
            i1 = i0 + (1 if i0 < size_in - 1 else 0)
            w[i, i0] += 1.0 - lam
            w[i, i1] += lam
        elif mode == "bicubic":
            src = scale * (i + 0.5) - 0.5
            i0 = math.floor(src)
            for k, coefficient in enumerate(_cubic(src - i0)):
                w[i, min(max(i0 - 1 + k, 0), size_in - 1)] += coefficient
        else:
            raise ValueError(f"unknown interpolation mode {mode!r}")
    return w


def resize_latents(latents: np.ndarray, height: int, width: int, mode: str, antialias: bool = False) -> np.ndarray:
    """`latents` [N, C, H, W] resized to [N, C, height, width] as torch's interpolate does."""
    rows = resize_weights(latents.shape[2], height, mode, antialias)
    cols = resize_weights(latents.shape[3], width, mode, antialias)
    out = np.einsum("oh,nchw,pw->ncop", rows, latents.astype(np.float64), cols, optimize=True)
    return out.astype(np.float32)


def upscale_pixels(image: np.ndarray, width: int, height: int, upscaler) -> np.ndarray:
    """RGB uint8 `image` to `width` x `height` as A1111's resize_image(0, ...) does with an
    upscaler ("Lanczos", "Nearest", "None" or an engine.upscale.ModelUpscaler): its Upscaler.upscale by
    the scale that covers the target (engine/upscale.py: the upscaler, then Lanczos to a
    multiple of 8), then Lanczos to the target where that differs."""
    from PIL import Image

    from sdcli.engine.upscale import upscale

    scale = max(width / image.shape[1], height / image.shape[0])
    if scale > 1.0 and upscaler != "None":
        image = upscale(image, upscaler, scale)
    if image.shape[:2] != (height, width):
        image = np.asarray(Image.fromarray(image).resize((width, height), resample=Image.Resampling.LANCZOS))
    return np.ascontiguousarray(image[:, :, :3])


def model_upscaler(engine, hires: HiresFix):
    """The hires fix's pixel upscaler: "Lanczos", "Nearest", or the converted model upscaler of
    that name, compiled for `engine`'s device once (kept on the engine for its next images)."""
    from sdcli.engine.upscale import resolve

    if hires.upscaler in PIXEL_UPSCALERS:
        return hires.upscaler
    kept = engine.__dict__.setdefault("hires_upscalers", {})
    key = (hires.upscaler, hires.upscaler_dir)
    if key not in kept:
        kept[key] = resolve(hires.upscaler, engine.runtime, hires.upscaler_dir)
    return kept[key]


def check_upscaler(hires: HiresFix) -> None:
    """UsageError for an upscaler that is neither one of the nine named nor a converted model
    upscaler in the upscaler folder."""
    if hires.upscaler in LATENT_MODES or hires.upscaler in PIXEL_UPSCALERS:
        return
    from sdcli.model.upscalers import find_upscaler

    try:
        find_upscaler(hires.upscaler, hires.upscaler_dir)
    except UsageError as exc:
        raise UsageError(f"--hires-upscaler: {exc} (or one of {', '.join(upscaler_names())})") from None


def cut(latents: np.ndarray, tx: int, ty: int) -> np.ndarray:
    """The truncation of sample_hr_pass: tx columns and ty rows off, the odd one at the end."""
    h, w = latents.shape[2:]
    return np.ascontiguousarray(latents[:, :, ty // 2:h - (ty + 1) // 2, tx // 2:w - (tx + 1) // 2])


# -- the passes -----------------------------------------------------------------------------------
def check(engine, request) -> None:
    """UsageError where the hires fix does not apply to `request` on `engine`'s model."""
    hires = request.hires
    hires.validate(request)
    check_upscaler(hires)
    check_model(engine.folder, engine.family, hires)
    if engine.refiner is not None:
        raise UsageError("--refiner and the hires fix do not go together: run one or the other")


def flow(folder) -> bool:
    """Whether the hires fix on `folder` is Z-Image's: a flow-matching transformer whose second
    pass is image-to-image on the upscaled picture (ZImageImg2ImgPipeline's)."""
    return folder.denoiser == "transformer"


def check_model(folder, family, hires: HiresFix) -> None:
    """UsageError where the hires fix does not apply to the model of `folder` (its `family`),
    before anything loads (batch checks its command line's hires fix with this)."""
    if flow(folder):
        model = getattr(family, "model", family.name)
        if family.reference_images:
            raise UsageError(f"the hires fix is not supported on {model} models: its second pass is image-to-image "
                             f"with a denoising strength, which {model} has not (it edits with --reference-image)")
        if hires.latent:
            raise UsageError(f"--hires-upscaler {hires.upscaler}: the Latent upscalers interpolate Stable Diffusion's "
                             f"latents; on a {model} model (flow matching) give a pixel upscaler: Lanczos, Nearest, "
                             "None or a converted model upscaler's name")
        return
    if folder.latent_channels != 4:
        raise UsageError(f"the hires fix is for Stable Diffusion 1.x/2.x, SDXL and Z-Image models; this is a "
                         f"{family.name} model")
    if folder.is_lcm:
        raise UsageError("the hires fix is not supported on LCM models (their image-to-image schedule differs)")
    if int(folder.unet_config.get("in_channels", 4)) != 4:
        raise UsageError("the hires fix is not supported on inpainting models")


def plan(engine, request) -> tuple:
    """(first pass request, Target) for a request with `hires`."""
    check(engine, request)
    first = request.replace(hires=None)
    width, height = engine.resolve_size(first)
    tgt = target(request.hires, width, height, engine.folder.vae_scale_factor)
    step = 2 * engine.folder.vae_scale_factor  # (a transformer's 2x2 patches of latents)
    if flow(engine.folder) and (tgt.width % step or tgt.height % step):
        raise UsageError(f"the hires size {tgt.width}x{tgt.height} must be a multiple of {step} on this model (its "
                         "transformer takes 2x2 patches of latents): choose another --hires-scale, or "
                         "--hires-width/--hires-height")
    return first, tgt


def second_request(request, tgt: Target, latents: np.ndarray | None):
    """The second pass: image-to-image on `latents` at the target size."""
    hires = request.hires
    total, run = hires.second_pass_steps(request.steps)
    return request.replace(
        hires=None, init_latents=latents, width=tgt.width, height=tgt.height, steps=total,
        strength=min(1.0, (run + 0.5) / total),  # exactly `run` steps: int(total * strength) == run
        prompt=hires.prompt or request.prompt, negative_prompt=hires.negative_prompt or request.negative_prompt,
        scheduler=hires.scheduler or request.scheduler,
        guidance_scale=request.guidance_scale if hires.guidance_scale is None else hires.guidance_scale)


def flow_second_request(request, tgt: Target, pixels: np.ndarray):
    """Z-Image's second pass: ZImageImg2ImgPipeline on the upscaled picture at the target size,
    with strength = denoise and int(steps / denoise) steps (its get_timesteps then runs the
    last `steps` of them), the seed's generator drawn afresh (the VAE's sample, then the noise)."""
    hires = request.hires
    run = hires.steps or request.steps
    return request.replace(
        hires=None, init_image=pixels, width=tgt.width, height=tgt.height, steps=max(1, int(run / hires.denoise)),
        strength=hires.denoise, prompt=hires.prompt or request.prompt,
        negative_prompt=hires.negative_prompt or request.negative_prompt, scheduler=hires.scheduler or request.scheduler,
        guidance_scale=request.guidance_scale if hires.guidance_scale is None else hires.guidance_scale)


def cut_pixels(image: np.ndarray, tx: int, ty: int, factor: int) -> np.ndarray:
    """`cut` on pixels: tx and ty latent columns and rows (of `factor` pixels) off about the centre."""
    h, w = image.shape[:2]
    return np.ascontiguousarray(image[ty // 2 * factor:h - (ty + 1) // 2 * factor,
                                      tx // 2 * factor:w - (tx + 1) // 2 * factor])


def check_fits(engine, request, images: int = 1):
    """The memory check for both passes (the second at the size the first is upscaled to,
    with the VAE encoder where the pixels are upscaled)."""
    from sdcli.engine.memory import check_fits as fits

    first, tgt = plan(engine, request)
    fits(engine, first, images)
    probe = np.zeros((8, 8, 3), np.uint8) if not request.hires.latent else None  # (only whether there is one counts)
    return fits(engine, first.replace(width=tgt.upscale_width, height=tgt.upscale_height, init_image=probe), images)


def generate(engine, request, on_step=None, *, on_note=None, release_unet: bool = False, decode: bool = True):
    """Engine.generate for a request with `hires`: both passes, one Result of the final image
    (its `first_pass_size` the first pass's; step numbers run on through both passes)."""
    request = request.with_images_read()
    request.validate()
    first, tgt = plan(engine, request)
    hires = request.hires
    _, run = hires.second_pass_steps(request.steps)
    first_calls = [request.steps]  # the first pass's steps as its loop counts them (PNDM's: more)

    def first_step(info):
        first_calls[0] = info.total
        on_step(dataclasses.replace(info, total=info.total + run))

    def second_step(info):
        on_step(dataclasses.replace(info, index=info.index + first_calls[0], total=first_calls[0] + info.total))

    # (release_unet: the first pass's UNet, compiled for the smaller latents, is freed before the second's loads)
    one = engine.generate(first, on_step and first_step, on_note=on_note, release_unet=release_unet, decode=False)
    started = time.perf_counter()
    latents = one.latents
    if hires.latent:
        mode, antialias = LATENT_MODES[hires.upscaler]
        f = engine.folder.vae_scale_factor
        latents = resize_latents(latents, tgt.upscale_height // f, tgt.upscale_width // f, mode, antialias)
    else:
        from sdcli.util.rng import make_rng

        pixels = engine.decode(latents, request.vae, request.vae_tiling, request.vae_tile_size)
        pixels = upscale_pixels(pixels, tgt.upscale_width, tgt.upscale_height, model_upscaler(engine, hires))
        if flow(engine.folder):  # Z-Image: image-to-image on the picture (its pipeline encodes it)
            pixels = cut_pixels(pixels, tgt.truncate_x, tgt.truncate_y, engine.folder.vae_scale_factor)
        else:
            latents = engine.encode_image(pixels, make_rng(request.rng, request.seed), request.vae, request.vae_tiling,
                                          request.vae_tile_size)
    if flow(engine.folder):
        second = flow_second_request(request, tgt, pixels)
    else:
        second = second_request(request, tgt, cut(latents, tgt.truncate_x, tgt.truncate_y))
    upscale_seconds = time.perf_counter() - started
    two = engine.generate(second, on_step and second_step, on_note=on_note, release_unet=release_unet, decode=decode)
    timings = {key: one.timings.get(key, 0.0) + two.timings.get(key, 0.0) for key in {*one.timings, *two.timings}}
    timings.update(step_median=one.timings.get("step_median", 0.0), hires_step_median=two.timings.get("step_median", 0.0),
                   hires_upscale=upscale_seconds)
    timings["total"] += upscale_seconds
    return dataclasses.replace(
        two, seed=request.seed, scheduler=one.scheduler, timings=timings, notes=[*one.notes, *two.notes],
        lora_hashes=list(dict([*one.lora_hashes, *two.lora_hashes]).items()),
        ti_hashes=list(dict([*one.ti_hashes, *two.ti_hashes]).items()),
        first_pass_size=(one.width, one.height), hires_scheduler=two.scheduler)
