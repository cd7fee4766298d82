"""A1111's ControlNet extension's preprocessors that need no neural network, in numpy/OpenCV:
each the extension's formula and slider defaults (Mikubill/sd-webui-controlnet,
scripts/preprocessor/model_free_preprocessors.py, scripts/preprocessor/legacy/processor.py,
annotator/), re-implemented here.

`PREPROCESSORS` maps each module's name to its `Preprocessor` (label, sliders with the
extension's API names: processor_res, threshold_a, threshold_b).  `preprocess(image, name,
**params)` runs a module on the image at its own size (what generate does, on the image fitted to
the picture); `detect(image, module, processor_res, threshold_a, threshold_b)` is the extension's
/controlnet/detect: the image first resized so its short side is processor_res, for the modules
whose resolution the extension uses, then the module.

As in the extension, canny, scribble_xdog and lineart_standard run on the image edge-padded to
multiples of 64 (its resize_image_with_pad), the padding cut off the map again; only the pixels
near the right and bottom borders can tell the difference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from sdcli.imaging import depth_lineart
from sdcli.imaging import openpose
from sdcli.util.errors import UsageError

PROCESSOR_RES = 512  # the extension's Resolution slider default
SHUFFLE_SEED = 0  # shuffle's random flow fields come from numpy's default_rng(seed)


@dataclass(frozen=True)
class Slider:
    """One of a module's sliders: `name` as the extension's API (ControlNetUnit) calls it,
    `label` as its UI shows it, and its default and range."""

    name: str  # processor_res, threshold_a, threshold_b
    label: str
    default: float
    minimum: float
    maximum: float
    step: float

    def pick(self, given: float | None) -> float:
        """The extension's bound check (ControlNetUnit.bound_check_params): a value outside the
        slider's range (its API's -1 among them), or none, is the default."""
        if given is None or not math.isfinite(given) or not self.minimum <= given <= self.maximum:
            return self.default
        return given

    def as_json(self) -> dict:
        return {"name": self.name, "label": self.label, "value": self.default, "min": self.minimum,
                "max": self.maximum, "step": self.step}


RESOLUTION = Slider("processor_res", "Resolution", PROCESSOR_RES, 64, 2048, 8)


@dataclass(frozen=True)
class Preprocessor:
    """A module: `run(rgb uint8 [H, W, 3], **sliders and params)` makes its map at the image's size;
    `sliders` are those the extension shows (RESOLUTION first when the module resizes to it)."""

    name: str
    label: str  # the extension's label (its module_list with alias_names)
    run: Callable[..., np.ndarray]
    sliders: tuple = ()
    what: str = ""  # one line for the docs and messages
    needs_mask: bool = False
    resize: Callable[[np.ndarray, int], np.ndarray] | None = None  # its own resize to processor_res (detect)

    @property
    def resizes(self) -> bool:
        """Whether detect resizes the image to processor_res first."""
        return any(s.name == "processor_res" for s in self.sliders)

    def slider(self, name: str) -> Slider | None:
        return next((s for s in self.sliders if s.name == name), None)

    @property
    def defaults(self) -> dict:
        """The sliders' defaults by API name: {"processor_res": 512, "threshold_a": 100, ...}."""
        return {s.name: s.default for s in self.sliders}

    def check_value(self, name: str, value: float, flag: str) -> None:
        """UsageError naming `flag` where the module has no slider `name` or `value` is outside it
        (where the extension's API would silently use the default)."""
        slider = self.slider(name)
        if slider is None:
            raise UsageError(f"{flag}: preprocessor {self.name} has no such slider (its sliders: "
                             f"{', '.join(s.name for s in self.sliders) or 'none'})")
        if not (math.isfinite(value) and slider.minimum <= value <= slider.maximum):
            raise UsageError(f"{flag} ({slider.label} of {self.name}) must be between {slider.minimum:g} and "
                             f"{slider.maximum:g}, got {value:g}")

    def settings(self, processor_res=None, threshold_a=None, threshold_b=None) -> dict:
        """The values detect runs with: each of the module's sliders, given or its default."""
        given = {"processor_res": processor_res, "threshold_a": threshold_a, "threshold_b": threshold_b}
        return {s.name: s.pick(given[s.name]) for s in self.sliders}


# --- the extension's helpers ------------------------------------------------------------------------

def hwc3(image: np.ndarray) -> np.ndarray:
    """The extension's HWC3: uint8 grey [H, W] or [H, W, 1] to 3 channels; RGBA composited over
    white by its alpha; RGB as it is."""
    x = np.asarray(image)
    if x.dtype != np.uint8:
        raise ValueError(f"a control image must be uint8, got {x.dtype}")
    if x.ndim == 2:
        x = x[:, :, None]
    if x.ndim != 3 or x.shape[2] not in (1, 3, 4):
        raise ValueError(f"a control image must be [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got {x.shape}")
    if x.shape[2] == 1:
        return np.repeat(x, 3, axis=2)
    if x.shape[2] == 4:
        alpha = x[:, :, 3:].astype(np.float32) / 255.0
        return (x[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)).clip(0, 255).astype(np.uint8)
    return x


def resize_short_side(image: np.ndarray, resolution: int) -> np.ndarray:
    """The image scaled so its short side is `resolution` (the extension's resize_image_with_pad
    without the padding): bicubic when enlarging, area when shrinking, sides rounded half to even."""
    import cv2

    h, w = image.shape[:2]
    k = float(resolution) / float(min(h, w))
    size = (int(np.round(w * k)), int(np.round(h * k)))
    return cv2.resize(image, size, interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)


def padded64(image: np.ndarray, detector: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """`detector` run on the image edge-padded at the bottom and right to multiples of 64, its
    result cropped back to the image's size (the extension's pad64 and remove_pad)."""
    h, w = image.shape[:2]
    pad = [(0, -h % 64), (0, -w % 64)] + [(0, 0)] * (image.ndim - 2)
    out = detector(np.ascontiguousarray(np.pad(image, pad, mode="edge")))
    return np.ascontiguousarray(out[:h, :w])


def grey3(x: np.ndarray) -> np.ndarray:
    return np.repeat(x[:, :, None], 3, axis=2) if x.ndim == 2 else x


# --- the modules ---------------------------------------------------------------------------------------

def run_none(image: np.ndarray, **_) -> np.ndarray:
    return image


def run_canny(image: np.ndarray, threshold_a: float = 100, threshold_b: float = 200, **_) -> np.ndarray:
    """OpenCV's Canny with the thresholds as whole numbers (the extension's int(slider))."""
    import cv2

    return grey3(padded64(image, lambda x: cv2.Canny(x, int(threshold_a), int(threshold_b))))


def run_invert(image: np.ndarray, **_) -> np.ndarray:
    return 255 - image


def lineart_standard_map(image: np.ndarray) -> np.ndarray:
    """How much darker each pixel is than its surroundings (a Gaussian of sigma 6), least over the
    channels, clipped at 0, scaled so the median of the values above 8 becomes 127 (a median under
    16 counts as 16), clipped to 255 and truncated to uint8."""
    import cv2

    x = image.astype(np.float32)
    darker = np.min(cv2.GaussianBlur(x, (0, 0), 6.0) - x, axis=2).clip(0, 255)
    strong = darker[darker > 8]
    scale = max(16.0, float(np.median(strong))) if strong.size else 16.0
    return (darker / scale * 127).clip(0, 255).astype(np.uint8)


def run_lineart_standard(image: np.ndarray, **_) -> np.ndarray:
    return grey3(padded64(image, lineart_standard_map))


def xdog_map(image: np.ndarray, threshold: float) -> np.ndarray:
    """The extension's XDoG: d = min over channels of (Gaussian sigma 5 - Gaussian sigma 0.5),
    dog = uint8(clip(255 - d)), white where 2 * (255 - dog) > threshold.  2 * (255 - dog) is
    computed in uint8 there, so it wraps past 255: a d of 128..144 (whole part) is black at the
    default threshold 32.  Kept, so the maps equal the extension's."""
    import cv2

    x = image.astype(np.float32)
    d = np.min(cv2.GaussianBlur(x, (0, 0), 5.0) - cv2.GaussianBlur(x, (0, 0), 0.5), axis=2)
    dog = (255 - d).clip(0, 255).astype(np.uint8)
    doubled = ((255 - dog.astype(np.int32)) * 2) % 256  # numpy's uint8 arithmetic, as the extension does it
    return np.where(doubled > threshold, 255, 0).astype(np.uint8)


def run_scribble_xdog(image: np.ndarray, threshold_a: float = 32, **_) -> np.ndarray:
    return grey3(padded64(image, lambda x: xdog_map(x, threshold_a)))


def noise_disk(rng: np.random.Generator, h: int, w: int, f: int = 256) -> np.ndarray:
    """The extension's make_noise_disk (one channel): uniform noise on a grid of cells of f pixels,
    bicubic-upsampled, cropped to h x w and normalised to [0, 1]."""
    import cv2

    coarse = rng.uniform(0.0, 1.0, size=(h // f + 2, w // f + 2))
    noise = cv2.resize(coarse, (w + 2 * f, h + 2 * f), interpolation=cv2.INTER_CUBIC)[f:f + h, f:f + w]
    noise = noise - noise.min()
    return noise / noise.max()


def run_shuffle(image: np.ndarray, seed: int = SHUFFLE_SEED, **_) -> np.ndarray:
    """The extension's content shuffle (ContentShuffleDetector): each pixel taken, bilinearly, from
    where two smooth random fields (x, y) point.  The fields come from numpy's default_rng(seed)
    (seed 0 unless given), so a map is the same every run; the extension draws them from numpy's
    global RNG, so no seed gives its exact map."""
    import cv2

    h, w = image.shape[:2]
    rng = np.random.default_rng(seed)
    flow_x = (noise_disk(rng, h, w) * float(w - 1)).astype(np.float32)
    flow_y = (noise_disk(rng, h, w) * float(h - 1)).astype(np.float32)
    return cv2.remap(image, flow_x, flow_y, cv2.INTER_LINEAR)


def run_tile_resample(image: np.ndarray, threshold_a: float = 1.0, **_) -> np.ndarray:
    """Down-sampled by the rate (area), each side int(side / rate); a rate under 1.1: as it is."""
    import cv2

    if threshold_a < 1.1:
        return image
    h, w = image.shape[:2]
    return cv2.resize(image, (int(w / float(threshold_a)), int(h / float(threshold_a))), interpolation=cv2.INTER_AREA)


def run_tile_colorfix(image: np.ndarray, **_) -> np.ndarray:
    """The map is the image (the extension's identity); its sliders are for the colour fix generate
    applies to the UNet's output (engine/colorfix.py)."""
    return image


def run_blur_gaussian(image: np.ndarray, threshold_a: float = 9.0, **_) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(image, (0, 0), float(threshold_a))


def run_threshold(image: np.ndarray, threshold_a: float = 127, **_) -> np.ndarray:
    """White (all three channels) where the pixel's least channel is over the threshold, else black."""
    return np.where((np.min(image, axis=2) > threshold_a)[:, :, None], 255, 0).astype(np.uint8).repeat(3, axis=2)


def recolor(channel: np.ndarray, gamma: float) -> np.ndarray:
    """recolor's step after the channel: / 255 in float32, ** gamma, * 255 clipped and truncated, grey RGB."""
    x = (channel.astype(np.float32) / np.float32(255.0)) ** np.float32(gamma)
    return grey3((x * np.float32(255.0)).clip(0, 255).astype(np.uint8))


def run_recolor_luminance(image: np.ndarray, threshold_a: float = 1.0, **_) -> np.ndarray:
    """The lightness (L of OpenCV's 8-bit Lab) with the gamma.  The extension converts its RGB image
    with COLOR_BGR2LAB, so the weights of red and blue are swapped; kept, so the maps are its."""
    import cv2

    return recolor(cv2.cvtColor(image, cv2.COLOR_BGR2LAB)[:, :, 0], threshold_a)


def run_recolor_intensity(image: np.ndarray, threshold_a: float = 1.0, **_) -> np.ndarray:
    """The value (V of HSV: the largest channel) with the gamma."""
    return recolor(np.max(image, axis=2), threshold_a)


def area_short_side(image: np.ndarray, resolution: int) -> np.ndarray:
    """The image scaled so its short side is `resolution`, by area whether it shrinks or grows, the
    long side rounded half to even (the extension's cv2_resize_shortest_edge, t2ia_color_grid's)."""
    import cv2

    h, w = image.shape[:2]
    size = (resolution, int(round(h / w * resolution))) if h >= w else (int(round(w / h * resolution)), resolution)
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def run_color_grid(image: np.ndarray, **_) -> np.ndarray:
    """The colour grid: the image shrunk to a cell per 64 pixels (sides floored, bicubic), each cell
    spread back over its pixels (nearest) at the image's size."""
    import cv2

    h, w = image.shape[:2]
    cells = cv2.resize(image, (max(w // 64, 1), max(h // 64, 1)), interpolation=cv2.INTER_CUBIC)  # (under 64: one)
    return cv2.resize(cells, (w, h), interpolation=cv2.INTER_NEAREST)


def run_inpaint_only(image: np.ndarray, **_) -> np.ndarray:
    """The map is the image (the extension's identity, for inpaint and inpaint_only alike); the mask
    is applied by inpaint_map (generate: engine.controlnet's inpaint_cond)."""
    return image


def inpaint_map(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """inpaint_only's controlnet_cond in diffusers' convention (make_inpaint_condition): the image
    as float32 [H, W, 3] in [0, 1] with the masked pixels (mask > 0.5 of its range: uint8 > 127,
    float > 0.5) set to -1, which is the extension's inpaint protocol (c * (1 - m) - m) too."""
    out = hwc3(image).astype(np.float32) / 255.0
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[:, :, 0]
    if m.shape != out.shape[:2]:
        raise ValueError(f"the mask is {m.shape[1]}x{m.shape[0]}, the image {out.shape[1]}x{out.shape[0]}")
    masked = m > 127 if m.dtype == np.uint8 else m.astype(np.float32) > 0.5
    out[masked] = -1.0
    return out


def _modules() -> dict[str, Preprocessor]:
    threshold = lambda label, value, low, high, step, name="threshold_a": Slider(name, label, value, low, high, step)  # noqa: E731
    found = [
        Preprocessor("none", "none", run_none, (), "the image is the map"),
        Preprocessor("canny", "canny", run_canny,
                     (RESOLUTION, threshold("Low Threshold", 100, 1, 255, 1),
                      threshold("High Threshold", 200, 1, 255, 1, "threshold_b")),
                     "OpenCV's Canny edges"),
        Preprocessor("invert", "invert (from white bg & black line)", run_invert, (), "255 - the image"),
        Preprocessor("lineart_standard", "lineart_standard (from white bg & black line)", run_lineart_standard,
                     (RESOLUTION,), "dark lines: the image subtracted from its Gaussian blur (sigma 6), normalised"),
        Preprocessor("scribble_xdog", "scribble_xdog", run_scribble_xdog,
                     (RESOLUTION, threshold("XDoG Threshold", 32, 1, 64, 1)),
                     "a difference of Gaussians (sigma 0.5, 5) thresholded to white lines"),
        Preprocessor("shuffle", "shuffle", run_shuffle, (RESOLUTION,),
                     f"the image's content moved along random smooth flows (numpy seed {SHUFFLE_SEED})"),
        Preprocessor("tile_resample", "tile_resample", run_tile_resample,
                     (threshold("Down Sampling Rate", 1.0, 1.0, 8.0, 0.01),), "the image shrunk by the rate"),
        Preprocessor("tile_colorfix", "tile_colorfix", run_tile_colorfix,
                     (threshold("Variation", 8.0, 3.0, 32.0, 1.0),), "the image as it is"),
        Preprocessor("tile_colorfix+sharp", "tile_colorfix+sharp", run_tile_colorfix,
                     (threshold("Variation", 8.0, 3.0, 32.0, 1.0),
                      threshold("Sharpness", 1.0, 0.0, 2.0, 0.01, "threshold_b")), "the image as it is"),
        Preprocessor("color", "t2ia_color_grid", run_color_grid, (RESOLUTION,),
                     "a grid of the image's colours, a cell per 64 pixels (for the T2I colour adapter)",
                     resize=area_short_side),
        Preprocessor("blur_gaussian", "blur_gaussian", run_blur_gaussian,
                     (RESOLUTION, threshold("Sigma", 9.0, 0.01, 64.0, 0.01)), "a Gaussian blur"),
        Preprocessor("threshold", "threshold", run_threshold,
                     (RESOLUTION, threshold("Binarization Threshold", 127, 0, 255, 0.01)),
                     "white where every channel is over the threshold, else black"),
        *(Preprocessor(name, name, run, (threshold("Gamma Correction", 1.0, 0.1, 2.0, 0.001),), what)
          for name, run, what in (("recolor_luminance", run_recolor_luminance, "the lightness, grey, with a gamma"),
                                  ("recolor_intensity", run_recolor_intensity,
                                   "the value (largest channel), grey, with a gamma"))),
        Preprocessor("inpaint", "inpaint_global_harmonious", run_inpaint_only, (),
                     "the image, its masked pixels -1 (the mask: generate's --mask)", needs_mask=True),
        Preprocessor("inpaint_only", "inpaint_only", run_inpaint_only, (),
                     "the image, its masked pixels -1 (the mask: generate's --mask)", needs_mask=True),
        *(Preprocessor(name, label, run, (RESOLUTION,), what) for name, label, run, what in depth_lineart.MODULES),
        *(Preprocessor(name, name, openpose.runner(name), (RESOLUTION,), what) for name, what in openpose.ENTRIES),
    ]
    return {p.name: p for p in found}


PREPROCESSORS: dict[str, Preprocessor] = _modules()

# the extension's modules sdcli has not got (names and labels): a neural network not converted, or
# not implemented here yet
NEURAL_PREFIXES = ("openpose", "dw_openpose", "animal_openpose", "densepose", "depth", "normal", "lineart",
                   "softedge", "hed", "pidinet", "te_hed", "scribble_hed", "scribble_pidinet", "mlsd", "seg",
                   "oneformer", "anime_face", "mediapipe", "inpaint_only+lama", "clip_vision", "t2ia_style",
                   "t2ia_sketch", "revision", "ip-adapter", "instant_id", "mobile_sam", "pulid", "facexlib",
                   "segmentation", "anyline", "teed", "dsine", "sam")
NOT_IMPLEMENTED = ("reference_only", "reference_adain", "reference_adain+attn")


class UnknownPreprocessor(UsageError, ValueError):
    """A module name sdcli does not have (a usage error: exit 2 from the CLI)."""


def resolve(name: str) -> str:
    """The module `name` stands for (its name or the extension's label, any case); else
    UnknownPreprocessor saying whether sdcli has it not yet or does not know it."""
    text = str(name).strip()
    if text in PREPROCESSORS:
        return text
    for key, spec in PREPROCESSORS.items():
        if text.lower() in (key.lower(), spec.label.lower()):
            return key
    lower = text.lower()
    known = ", ".join(PREPROCESSORS)
    if lower in NOT_IMPLEMENTED:
        raise UnknownPreprocessor(f"preprocessor {text!r} is not available yet in sdcli (the ones here: {known})")
    if any(lower.startswith(prefix) for prefix in NEURAL_PREFIXES):
        raise UnknownPreprocessor(f"preprocessor {text!r} runs a neural network sdcli has not converted: not "
                                  f"available yet (the ones here: {known})")
    raise UnknownPreprocessor(f"unknown preprocessor {text!r}: one of {known}")


def preprocess(image: np.ndarray, name: str, **params) -> np.ndarray:
    """The control map of `image` (uint8 RGB, grey or RGBA: the extension's HWC3) by module `name`
    at the image's size, RGB uint8 (tile_resample: smaller).  `params`: threshold_a/threshold_b
    (default: the module's slider defaults; one it lacks is refused), seed (shuffle); with
    processor_res it is `detect`."""
    if "processor_res" in params:
        return detect(image, name, **params)
    spec = PREPROCESSORS[resolve(name)]
    extra = {key: value for key, value in params.items() if key not in ("threshold_a", "threshold_b")}
    for key in ("threshold_a", "threshold_b"):
        if params.get(key) is not None:
            if spec.slider(key) is None:
                raise UnknownPreprocessor(f"preprocessor {spec.name} has no {key}")
            extra[key] = params[key]
        elif spec.slider(key) is not None:
            extra[key] = spec.slider(key).default
    return grey3(spec.run(hwc3(image), **extra))


def detect(image: np.ndarray, module: str, processor_res: int = PROCESSOR_RES, threshold_a: float | None = None,
           threshold_b: float | None = None, **params) -> np.ndarray:
    """The extension's /controlnet/detect of one image: HWC3, then for the modules whose resolution
    the extension uses (those with a processor_res slider; t2ia_color_grid by its own resize) the
    image resized so its short side is processor_res, then the module with the
    thresholds given.  As in the extension, a value outside a slider's range (-1 among them) or
    None is its default; invert, tile_*, inpaint_only and none work at the image's own size.
    `params`: seed (shuffle)."""
    spec = PREPROCESSORS[resolve(module)]
    image = hwc3(image)
    settings = spec.settings(processor_res, threshold_a, threshold_b)
    if spec.resizes:
        image = (spec.resize or resize_short_side)(image, int(settings.pop("processor_res")))
    return grey3(spec.run(image, **settings, **params))
