"""A1111's ControlNet extension's web API (Mikubill/sd-webui-controlnet, API version 3) on
`sdcli serve`: the units of `alwayson_scripts.controlnet.args` on /sdapi/v1/txt2img and img2img,
and the /controlnet/* routes (version, model_list, module_list, control_types, settings, detect).

A unit is a dict with the extension's field names, aliases and defaults (its ControlNetUnit):
`enabled` (false unless given, as the extension has it), `module`, `model` (a converted
ControlNet's name in the ControlNet folder: $SDCLI_CONTROLNET_DIR, else models/ControlNet; a
" [hash]" after it is ignored), `weight`, `image` (base64, or {"image", "mask"}; `input_image`),
`resize_mode`, `processor_res`, `threshold_a`, `threshold_b`, `guidance_start`, `guidance_end`,
`control_mode`, `pixel_perfect`, `save_detected_map`, and `union_control_type` (a ControlNet
Union's control type, as the extension and webuiapi name it: "OpenPose", "Depth", "Soft Edge",
"Hard Edge", "Normal Map", "Segmentation", "Tile", "Inpaint"; "Unknown" or none for none; a Union
needs one, other ControlNets take none).  It becomes the engine's ControlUnit
(engine/controlnet.py) with rule "a1111": the extension's guidance start/end rule, not the CLI's.

The control map is made as the extension makes it: from the unit's image scaled so its short
side is processor_res (512 unless given within the Resolution slider), or the Pixel Perfect
size with pixel_perfect, by the preprocessor with threshold_a/threshold_b, then fitted to the
picture by the resize mode (`sdcli generate --control-resolution`; imaging/control.py's
control_map; inpaint units at the picture's size).  A unit's map is appended to `images` when
its save_detected_map (true unless given) asks, once per request, as the extension does.
"""
from __future__ import annotations

import base64
import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Optional

import numpy as np
from fastapi import Body, FastAPI, Query
from starlette.concurrency import run_in_threadpool

from sdcli.engine.controlnet import ControlUnit
from sdcli.serve import a1111
from sdcli.serve.a1111 import FieldError
from sdcli.util.errors import UsageError

API_VERSION = 3  # the extension's external_code.get_api_version()
SCRIPT = "controlnet"  # alwayson_scripts' key, matched case-insensitively
UNIT_COUNT = 3  # the extension's control_net_unit_count default

# A1111's resize mode labels (and the extension's aliases, its legacy ints) -> ours
RESIZE_NAMES = {"just resize": "just-resize", "crop and resize": "crop-and-resize", "resize and fill": "resize-and-fill",
                "inner fit (scale to fit)": "crop-and-resize", "scale to fit (inner fit)": "crop-and-resize",
                "outer fit (shrink to fit)": "resize-and-fill", "envelope (outer fit)": "resize-and-fill",
                "just resize (latent upscale)": "just-resize"}
RESIZE_INTS = ("just-resize", "crop-and-resize", "resize-and-fill", "just-resize")  # 3: Just Resize (Latent upscale)
CONTROL_NAMES = {"balanced": "balanced", "my prompt is more important": "prompt",
                 "controlnet is more important": "controlnet", "prompt": "prompt", "controlnet": "controlnet"}
CONTROL_INTS = ("balanced", "prompt", "controlnet")


@dataclass(frozen=True)
class Slider:
    """One of a preprocessor's sliders: `key` the unit's field it sets (processor_res, threshold_a,
    threshold_b); the rest as the extension's API lists it (PreprocessorParameter.api_json)."""

    key: str
    name: str
    value: float
    min: float
    max: float
    step: float

    def pick(self, given: float | None) -> float:
        """The extension's bound check: a value outside the slider (-1 among them) is its default."""
        if given is None or not math.isfinite(given) or not self.min <= given <= self.max:
            return self.value
        return given

    def as_json(self) -> dict:
        return {"name": self.name, "value": self.value, "min": self.min, "max": self.max, "step": self.step}


RESOLUTION = Slider("processor_res", "Resolution", 512, 64, 2048, 8)
# the extension's sliders, tags and sorting priority of its model-free preprocessors (used where
# imaging.control's PREPROCESSORS gives no sliders of its own; others: no slider, no tag, priority 0)
MODULES = {
    "none": ([], ["InstructP2P"], 10),
    "canny": ([RESOLUTION, Slider("threshold_a", "Low Threshold", 100, 1, 255, 1),
               Slider("threshold_b", "High Threshold", 200, 1, 255, 1)], ["Canny"], 100),
    "invert": ([], ["Canny", "Lineart", "Scribble", "MLSD"], 20),
    "lineart_standard": ([RESOLUTION], ["Lineart"], 0),
    "blur_gaussian": ([RESOLUTION, Slider("threshold_a", "Sigma", 9.0, 0.01, 64.0, 0.01)], ["Tile"], 0),
    "scribble_xdog": ([RESOLUTION, Slider("threshold_a", "XDoG Threshold", 32, 1, 64, 1)], ["Scribble"], 0),
    "shuffle": ([], ["Shuffle"], 0),
    "tile_resample": ([Slider("threshold_a", "Down Sampling Rate", 1.0, 1.0, 8.0, 0.01)], ["Tile"], 0),
    "tile_colorfix": ([Slider("threshold_a", "Variation", 8.0, 3.0, 32.0, 1.0)], ["Tile"], 0),
    "tile_colorfix+sharp": ([], ["Tile"], 0),
    "color": ([], ["T2I-Adapter"], 0),
    "inpaint_only": ([], ["Inpaint"], 100),
    "inpaint": ([], ["Inpaint"], 0),
    # the openpose modules' tags and priority (their sliders: imaging.control's PREPROCESSORS)
    **{name: ([], ["OpenPose"], 100 if name == "openpose_full" else 0)
       for name in ("openpose", "openpose_hand", "openpose_face", "openpose_faceonly", "openpose_full")},
    # the depth, lineart, soft-edge and scribble networks' tags (their sliders: imaging.control's PREPROCESSORS)
    "depth_anything_v2": ([], ["Depth"], 0),
    **{name: ([], ["Lineart"], 0) for name in ("lineart", "lineart_coarse", "lineart_anime")},
    **{name: ([], ["SoftEdge"], 0) for name in ("softedge_hed", "softedge_hedsafe", "softedge_pidisafe")},
    "scribble_hed": ([], ["Scribble"], 0),
    "recolor_luminance": ([], ["Recolor"], 100),
    "recolor_intensity": ([], ["Recolor"], 0),
    # the extension's defaults of their control types (priority 100)
    "softedge_pidinet": ([], ["SoftEdge"], 100),
    "scribble_pidinet": ([], ["Scribble"], 100),
}
# the extension's extra name filters of a control type (Preprocessor.tag_to_filters)
TYPE_FILTERS = {"instructp2p": ["ip2p"], "segmentation": ["seg"], "normalmap": ["normal"], "scribble": ["sketch"],
                "tile": ["blur"], "openpose": ["openpose", "densepose"],
                "t2i-adapter": ["t2i_adapter", "t2iadapter", "t2ia"], "ip-adapter": ["ip_adapter", "ipadapter"]}


def _spec(module: str):
    from sdcli.imaging.control import PREPROCESSORS

    return PREPROCESSORS.get(module) if isinstance(PREPROCESSORS, dict) else None


def modules(alias_names: bool = False) -> list[str]:
    """The preprocessors here (imaging.control.PREPROCESSORS), in the extension's order: none
    first, then by sorting priority and name, descending; `alias_names`: their labels."""
    from sdcli.imaging.control import PREPROCESSORS

    names = [name for name in PREPROCESSORS if name != "none"]
    names.sort(key=lambda name: str(MODULES.get(name, ((), (), 0))[2]).zfill(8) + name, reverse=True)
    names = ["none", *names]
    return [getattr(_spec(name), "label", name) or name for name in names] if alias_names else names


def sliders(module: str) -> list[Slider]:
    """The module's sliders: imaging.control's own where it has them, else the table above."""
    found = getattr(_spec(module), "sliders", None)
    if found is not None:
        return [Slider(s.name, getattr(s, "label", s.name), s.default, s.minimum, s.maximum, s.step) for s in found]
    return list(MODULES[module][0]) if module in MODULES else []


def module_detail(alias_names: bool = False) -> dict:
    return {label: {"model_free": False, "sliders": [s.as_json() for s in sliders(name)]}
            for name, label in zip(modules(), modules(alias_names))}


def find_module(name: Any, where: str) -> str:
    """The module a unit's `module` names (its name or the extension's label, any case), its
    networks converted where it runs some (FieldError naming `where` otherwise)."""
    from sdcli.engine.controlnet import check_networks
    from sdcli.imaging import control

    if name is None:
        return "none"
    text = str(name).strip()
    resolve = getattr(control, "resolve", None)
    if resolve is not None:
        try:
            module = resolve(text)
        except (ValueError, UsageError) as exc:
            raise FieldError(where, f"{exc} (GET /controlnet/module_list)") from None
        try:
            check_networks(module)
        except UsageError as exc:
            raise FieldError(where, str(exc)) from None
        return module
    for module in modules():
        if text.lower() == module.lower():
            return module
    raise FieldError(where, f"{text!r} is not a preprocessor here ({', '.join(modules())}; "
                            "GET /controlnet/module_list)")


# -- the ControlNet folder --------------------------------------------------------------------------
def folder():
    from sdcli.engine.controlnet import controlnet_folder

    return controlnet_folder(None)


def model_names() -> list[str]:
    from sdcli.engine.controlnet import is_converted_controlnet

    base, _ = folder()
    if not base.is_dir():
        return []
    return sorted(path.name for path in base.iterdir() if is_converted_controlnet(path))


def find_model(name: Any, where: str) -> str:
    """The converted ControlNet a unit's `model` names (A1111's "NAME [hash]": the hash is
    ignored; case is ignored when only one folder matches); FieldError naming the folder."""
    text = re.sub(r"\s*\[[^\]]*\]\s*$", "", str(name if name is not None else "")).strip()
    base, how = folder()
    if not text or text.lower() == "none":
        raise FieldError(where, f"the unit names no ControlNet ({name!r}): a name from GET /controlnet/model_list")
    names = model_names()
    if text in names:
        return text
    same = [n for n in names if n.lower() == text.lower()]
    if len(same) == 1:
        return same[0]
    have = f"it has {', '.join(names)}" if names else "it has none" if base.is_dir() else "it does not exist"
    raise FieldError(where, f"no converted ControlNet {text!r} in {base} (the ControlNet folder, {how}; {have}): "
                            "convert one there with sdcli convert")


# -- the units of a request ----------------------------------------------------------------------------
@dataclass(frozen=True)
class A1111Unit(ControlUnit):
    """The engine's ControlUnit with A1111's guidance start/end rule.  The extension's
    guidance_schedule_handler stops a unit on a step when sampling_step / steps < start or > end,
    and A1111's sampling_step while step i runs is the step before's (its sampler callback sets it
    after each step): max(i - 1, 0).  diffusers' rule (the CLI's, ControlUnit.runs_at) keeps
    i / n >= start and (i + 1) / n <= end.  A1111 takes start == end."""

    def runs_at(self, index: int, total: int) -> bool:
        done = max(index - 1, 0) / total
        return not (done < self.start or done > self.end)

    def check(self) -> None:
        if self.start == self.end:  # (ControlUnit.check refuses it: the CLI's rule runs no step then)
            return replace(self, start=0.0, end=1.0).check()
        super().check()



ALIASES = {"guidance": "guidance_end", "lowvram": "low_vram", "input_image": "image", "mask_image": "mask"}
REFUSED = {"advanced_weighting": "per-layer weights are not supported", "effective_region_mask":
           "effective region masks are not supported", "ipadapter_input": "IP-Adapter inputs are not supported"}


@dataclass
class ApiUnit:
    """One enabled unit of a request: what the engine runs it with, and its control map."""

    index: int
    unit: object  # the engine's ControlUnit, its image still the request's (fitted per request)
    image: np.ndarray | None  # None: img2img's init image (the extension's choice when a unit has none)
    module: str
    save_detected_map: bool
    maps: list = field(default_factory=list)  # the control maps made for the request's first image

    def engine_unit(self, engine, request):
        """The ControlUnit for `request` on `engine`: with the image it needs (the init image
        for one without); its map made here too when it is to be sent back."""
        image = self.image if self.image is not None else request.init_image
        if image is None:
            raise FieldError(self.where("image"), "txt2img needs the unit's image (img2img uses the init image)")
        if not isinstance(image, np.ndarray):
            from sdcli.imaging.image_io import read_rgb

            image = read_rgb(image)
        unit = replace(self.unit, image=image)
        if self.save_detected_map and not self.maps:
            from sdcli.imaging.control import control_map

            width, height = engine.resolve_size(request)
            # (the engine's own map: engine.controlnet.prepare_units)
            self.maps.append(control_map(image, self.module, width, height, unit.resize, unit.resolution,
                                         **unit.sliders))
        return unit

    def where(self, name: str) -> str:
        return f"alwayson_scripts.controlnet.args[{self.index}].{name}"


def _number(where: str, value: Any, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise FieldError(where, f"must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise FieldError(where, f"must be a number, got {value!r}") from None
    if not math.isfinite(number) or low is not None and number < low or high is not None and number > high:
        raise FieldError(where, f"must be between {low:g} and {high:g}, got {value!r}" if low is not None
                         else f"must be a finite number, got {value!r}")
    return number


def _flag(where: str, value: Any, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise FieldError(where, f"must be true or false, got {value!r}")


def _choice(where: str, value: Any, names: dict, ints: tuple, default: str, label: str, labels: dict) -> str:
    if value is None:
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < len(ints):
            return ints[value]
    elif isinstance(value, str):
        text = value.strip().lower()
        for prefix in ("controlmode.", "resizemode."):
            text = text.removeprefix(prefix)
        if text in names:
            return names[text]
        ours = {v: v for v in names.values()}
        if text in ours:
            return ours[text]
    raise FieldError(where, f"{value!r} is not a {label} ({', '.join(labels[v] for v in ints[:3])}, or 0 to 2)")


def _image(where: str, value: Any) -> np.ndarray | None:
    """A unit's image: base64, {"image": ..., "mask": ...}, [image, mask], or one such dict in a
    list; "" or null: none.  (Its mask: _mask.)"""
    value = _pair(where, value)[0]
    if value is None or isinstance(value, str) and not value.strip():
        return None
    if not isinstance(value, str):
        raise FieldError(where, "must be a base64-encoded image")
    return a1111.read_image(where, value)


def _pair(where: str, value: Any) -> tuple:
    """(image, mask) of a unit's image field, each as given (None: not given)."""
    if isinstance(value, (list, tuple)):
        if len(value) == 1 and isinstance(value[0], dict):
            value = value[0]
        elif len(value) == 2 and not isinstance(value[0], dict):
            return value[0], value[1]
        else:
            raise FieldError(where, "one image per unit (a list of several is the extension's IP-Adapter input)")
    if isinstance(value, dict):
        return value.get("image"), value.get("mask")
    return value, None


def _mask(base: str, values: dict) -> np.ndarray | None:
    """A unit's own mask, for the inpaint preprocessors (the extension's get_input_images_rgba: the
    image field's {"image", "mask"} or [image, mask], else the unit's `mask` / `mask_image`), as
    a float mask (white: repainted); None when it has none.  The image's alpha is not a mask (the
    extension reads the image through HWC3, which drops it)."""
    where, given = f"{base}.mask", values.get("mask")
    if given is None or isinstance(given, str) and not given.strip():
        where, given = f"{base}.image.mask", _pair(f"{base}.image", values.get("image"))[1]
    if given is None or isinstance(given, str) and not given.strip():
        return None
    if not isinstance(given, str):
        raise FieldError(where, "must be a base64-encoded image")
    return a1111.read_image(where, given, mask=True)


def parse_units(scripts: Any, kind: str, has_mask: bool = False) -> list[ApiUnit]:
    """The enabled units of a request's alwayson_scripts (its ControlNet entry, whatever its
    case), checked; FieldError naming the field.  `has_mask`: the request is img2img with an
    inpainting mask (what an inpaint unit without its own mask uses, as the extension does)."""
    from sdcli.engine.controlnet import CONTROL_MODES, INPAINT_MODULES
    from sdcli.imaging.control import RESIZE_MODES

    if not isinstance(scripts, dict):
        return []
    entry = next((value for key, value in scripts.items() if str(key).lower() == SCRIPT), None)
    if entry is None:
        return []
    args = entry.get("args") if isinstance(entry, dict) else entry
    if args is None:
        return []
    if not isinstance(args, list):
        raise FieldError("alwayson_scripts.controlnet.args", "must be a list of units")
    units = []
    for index, raw in enumerate(args):
        base = f"alwayson_scripts.controlnet.args[{index}]"
        if not isinstance(raw, dict):
            if raw in (None, False):
                continue
            raise FieldError(base, "a unit must be an object with the extension's fields (ControlNetUnit)")
        values = dict(raw)
        for alias, name in ALIASES.items():
            if alias in values:
                if name in values:
                    raise FieldError(f"{base}.{alias}", f"both {alias!r} and {name!r} are given")
                values[name] = values.pop(alias)
        if not _flag(f"{base}.enabled", values.get("enabled"), False):
            continue
        for name, why in REFUSED.items():
            if values.get(name) not in (None, [], ""):
                raise FieldError(f"{base}.{name}", why)
        module = find_module(values.get("module", "none"), f"{base}.module")
        model = find_model(values.get("model"), f"{base}.model")
        weight = _number(f"{base}.weight", values.get("weight", 1.0), 0.0, 2.0)
        start = _number(f"{base}.guidance_start", values.get("guidance_start", 0.0), 0.0, 1.0)
        end = _number(f"{base}.guidance_end", values.get("guidance_end", 1.0), 0.0, 1.0)
        if start > end:
            raise FieldError(f"{base}.guidance_start", f"guidance_start ({start:g}) is above guidance_end ({end:g})")
        resize = _choice(f"{base}.resize_mode", values.get("resize_mode"), RESIZE_NAMES, RESIZE_INTS,
                         "crop-and-resize", "resize mode", RESIZE_MODES)
        mode = _choice(f"{base}.control_mode", values.get("control_mode"), CONTROL_NAMES, CONTROL_INTS,
                       "balanced", "control mode", CONTROL_MODES)
        _flag(f"{base}.low_vram", values.get("low_vram"), False)
        resolution = _resolution(base, values)
        save = _flag(f"{base}.save_detected_map", values.get("save_detected_map"), True)
        given = [None if values.get(name) is None else _number(f"{base}.{name}", values[name])
                 for name in ("threshold_a", "threshold_b")]
        given = dict(zip(("threshold_a", "threshold_b"), given))
        picked = {s.key: s.pick(given[s.key]) for s in sliders(module) if s.key in given}
        defaults = {s.key: s.value for s in sliders(module)}
        thresholds = picked if any(value != defaults[key] for key, value in picked.items()) else {}
        image = _image(f"{base}.image", values.get("image"))
        if image is None and kind == "txt2img":
            raise FieldError(f"{base}.image", "the unit has no image (txt2img needs one; img2img uses the init image)")
        mask = _mask(base, values) if module in INPAINT_MODULES else None
        if module in INPAINT_MODULES and mask is None and not has_mask:
            raise FieldError(f"{base}.mask", f"module {module} needs a mask: the unit's mask (or image "
                             "{\"image\", \"mask\"}), or img2img's inpainting mask")
        kind = union_control_type(f"{base}.union_control_type", values.get("union_control_type"), model)
        unit = A1111Unit(model, image if image is not None else np.zeros((8, 8, 3), np.uint8), weight,
                         start, end, mode, resize, module, image_name=f"controlnet {index}", type=kind, mask=mask,
                         resolution=resolution, **thresholds)
        units.append(ApiUnit(index, unit, image, module, save))
    return units


def _resolution(base: str, values: dict) -> str:
    """A unit's preprocessor resolution as the extension takes it: pixel_perfect, else processor_res
    within the Resolution slider, else (-1, none, out of range) the slider's default, 512."""
    from sdcli.imaging.control import PIXEL_PERFECT

    if _flag(f"{base}.pixel_perfect", values.get("pixel_perfect"), False):
        return PIXEL_PERFECT
    given = values.get("processor_res")
    value = None if given is None else _number(f"{base}.processor_res", given)
    return str(int(RESOLUTION.pick(value)))


def union_control_type(where: str, value: Any, model: str) -> str:
    """A unit's union_control_type (engine.controlnet.union_type), checked against its ControlNet:
    a Union needs one it knows, another ControlNet takes none."""
    from sdcli.engine.controlnet import check_union
    from sdcli.model.config_checks import read_json

    if value is not None and not isinstance(value, (str, int)) or isinstance(value, bool):
        raise FieldError(where, f"must be a control type's name, got {value!r}")
    unit = ControlUnit(model, None, type=str(value) if value is not None else "")
    try:
        unit.check_type()
        path = folder()[0] / model
        check_union(path, read_json(path / "config.json"), unit)
    except UsageError as exc:
        raise FieldError(where, str(exc).replace("--control-type", "union_control_type")
                         .replace("--controlnet ", "")) from None
    return unit.type


def add_units(plan) -> None:
    """The request's enabled ControlNet units put on `plan` (a1111.Plan), checked (txt2img,
    img2img and inpainting: the engine fits the control image to the init image's size)."""
    body = plan.body
    plan.controlnet_units = tuple(parse_units(getattr(body, "alwayson_scripts", None), plan.kind,
                                              getattr(plan, "mask", None) is not None))


def detected_maps(plan) -> list[str]:
    """The base64 PNGs of the control maps the request's units asked to send back."""
    from sdcli.imaging.image_io import encode_png

    out = []
    for unit in getattr(plan, "controlnet_units", ()):
        if unit.save_detected_map and unit.maps:
            out.append(base64.b64encode(encode_png(np.ascontiguousarray(unit.maps[0]))).decode("ascii"))
    return out


# -- preprocessing ---------------------------------------------------------------------------------------
def run_detect(module: str, images: list[str], processor_res: float, threshold_a: float,
               threshold_b: float) -> dict:
    """POST /controlnet/detect: imaging.control's detect (the image resized to processor_res first,
    for the modules the extension resizes)."""
    from sdcli.imaging import control
    from sdcli.imaging.image_io import encode_png

    module = find_module(module, "controlnet_module")
    if not images:
        raise FieldError("controlnet_input_images", "no image given")
    out = []
    for i, text in enumerate(images):
        image = a1111.read_image(f"controlnet_input_images[{i}]", text)
        detected = control.detect(image, module, processor_res=processor_res, threshold_a=threshold_a,
                                  threshold_b=threshold_b)
        out.append(base64.b64encode(encode_png(np.ascontiguousarray(detected))).decode("ascii"))
    return {"images": out, "info": "Success"}


# -- the routes ----------------------------------------------------------------------------------------
def control_types() -> dict:
    """The extension's control types: All, and each tag of the preprocessors here, with their
    preprocessors and the ControlNets whose names fit it."""
    names = modules()
    models = model_names()
    tags = sorted({tag for name in names for tag in (MODULES[name][1] if name in MODULES else [])})
    out = {"All": {"module_list": names, "model_list": ["None", *models], "default_option": "none",
                   "default_model": "None"}}
    for tag in tags:
        filters = {tag.lower(), *TYPE_FILTERS.get(tag.lower(), [])}
        chosen = [n for n in names if n == "none" or n in MODULES and tag in MODULES[n][1]]
        fitting = ["None", *(m for m in models if any(f in m.lower() for f in filters))]
        default_model = "None"
        if len(fitting) > 1:
            default_model = next((m for m in fitting[1:] if "11" in m.split("[")[0]), fitting[1])
        out[tag] = {"module_list": chosen, "model_list": fitting,
                    "default_option": chosen[0] if len(chosen) == 1 else chosen[1], "default_model": default_model}
    return {"control_types": out}


def add_controlnet_routes(app: FastAPI) -> None:
    @app.get("/controlnet/version", tags=["controlnet"])
    async def version():
        """The ControlNet extension's API version this follows."""
        return {"version": API_VERSION}

    @app.get("/controlnet/model_list", tags=["controlnet"])
    async def model_list(update: bool = Query(True, description="Accepted: the folder is read on every call.")):
        """The converted ControlNets in the ControlNet folder ($SDCLI_CONTROLNET_DIR, else models/ControlNet)."""
        return {"model_list": await run_in_threadpool(model_names)}

    @app.get("/controlnet/module_list", tags=["controlnet"])
    async def module_list(alias_names: bool = Query(False, description="Accepted: the names are their own aliases.")):
        """The preprocessors a unit's `module` can name, with their sliders (threshold_a, threshold_b)."""
        return {"module_list": modules(alias_names), "module_detail": module_detail(alias_names)}

    @app.get("/controlnet/control_types", tags=["controlnet"])
    async def list_control_types():
        return await run_in_threadpool(control_types)

    @app.get("/controlnet/settings", tags=["controlnet"])
    async def settings():
        return {"control_net_unit_count": UNIT_COUNT, "control_net_max_models_num": UNIT_COUNT}

    @app.post("/controlnet/detect", tags=["controlnet"])
    async def run_detection(
            controlnet_module: str = Body("none", description="A preprocessor from /controlnet/module_list."),
            controlnet_input_images: list[str] = Body([], description="Base64 images."),
            controlnet_images: Optional[list[str]] = Body(None, description="webuiapi's name of controlnet_input_images."),
            controlnet_processor_res: float = Body(-1, description="The preprocessor's resolution [-1: 512]."),
            controlnet_threshold_a: float = Body(-1, description="Its first slider [-1: its default]."),
            controlnet_threshold_b: float = Body(-1, description="Its second slider [-1: its default]."),
            controlnet_masks: list[str] = Body([], description="Accepted and unused (the inpaint modules' map is the image)."),
            low_vram: bool = Body(False, description="Accepted and unused.")):
        """The control maps of the images (A1111's ControlNet preprocessors)."""
        images = controlnet_input_images or controlnet_images or []
        return await run_in_threadpool(run_detect, controlnet_module, images, controlnet_processor_res,
                                       controlnet_threshold_a, controlnet_threshold_b)
