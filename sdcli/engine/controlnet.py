"""ControlNet units in the denoise stage.

A request's units (ControlUnit: a converted ControlNet, its control image and settings) wrap
the denoiser the loop calls (ControlledUNet): each call runs the units whose guidance range
holds the step, sums their scaled residuals and feeds them to the UNet compiled with residual
inputs (runtime/controlnet.py).  The loop itself knows nothing of it.  Without units the
UNet is compiled and called as it always is.

diffusers' rules (StableDiffusionControlNetPipeline, 0.42):
- a unit runs on step i of n when not (i / n < start or (i + 1) / n > end); on the others it
  adds nothing (diffusers runs it at scale 0; here it is not run);
- its residuals are scaled by its weight; several units' are summed (MultiControlNetModel);
- control mode "controlnet" (A1111's "ControlNet is more important") is diffusers' guess
  mode: residual k of n + 1 scaled by logspace(-1, 0, n + 1)[k], and with classifier-free
  guidance the ControlNet runs on the prompt's row only, the negative row getting none;
- control mode "prompt" (A1111's "My prompt is more important") scales residual k by
  0.825 ** (n - k) (A1111's soft injection), on both rows;
- a ControlNet that pools its residuals (global_pool_conditions: the shuffle ControlNet) runs
  on the prompt's row only with classifier-free guidance, as in guess mode, but without its
  logspace scales (diffusers turns guess mode on for it; the extension's cond-only injection);
- with a refiner (StableDiffusionXLControlNetPipeline's denoising_end) the units run in the
  base's steps only, and n is the whole schedule's count, the refiner's steps included:
  diffusers works out controlnet_keep before it cuts the timesteps at denoising_end.

A ControlNet Union (xinsir's controlnet-union-sdxl-1.0 and its ProMax: diffusers'
ControlNetUnionModel) needs a control type on each unit (--control-type; the A1111 API's
union_control_type): the IR takes it as `control_type`, diffusers' one-hot vector, and each
unit runs the model on its control image, as diffusers' StableDiffusionXLControlNetUnionPipeline
does with one image and its control_mode (several units of one Union model: as
MultiControlNetUnionModel, each on its own).  A unit may give several control types
(`canny+depth`) and one control image for each (ProMax's multi-condition use): they go into one
call of the model, as diffusers' control_image=[a, b], control_mode=[3, 1] on one
ControlNetUnionModel does: control_type multi-hot, each image scaled by the unit's weight inside
the model (diffusers' conditioning_scale per condition), the residuals then unscaled by it.  That
needs a Union IR converted with several conditions (convert/controlnet.py; earlier folders run
one image a call).  A plain ControlNet takes no control type.

ControlNets are found by name in --controlnet-dir, else $SDCLI_CONTROLNET_DIR, else
models/ControlNet (a folder written by `sdcli convert` of a ControlNetModel), or given as
the path of such a folder.
"""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from sdcli.util.errors import UsageError
from sdcli.util.fsutil import chosen_folder

CONTROLNET_ENV = "SDCLI_CONTROLNET_DIR"
DEFAULT_CONTROLNET_DIR = Path("models/ControlNet")
CONTROL_MODES = {"balanced": "Balanced", "prompt": "My prompt is more important",
                 "controlnet": "ControlNet is more important"}
SOFT_INJECTION = 0.825  # A1111's per-residual factor for "My prompt is more important"
# A ControlNet Union's control types, in diffusers' control_mode order for xinsir's models (the
# index is the mode), by our name and A1111's label (its union_control_type)
UNION_TYPES = {"openpose": "OpenPose", "depth": "Depth", "softedge": "Soft Edge", "hardedge": "Hard Edge",
               "normal": "Normal Map", "segmentation": "Segmentation", "tile": "Tile", "inpaint": "Inpaint"}
# other names people use for them (xinsir's and ComfyUI's lists, the extension's tags)
UNION_ALIASES = {"pose": "openpose", "hed": "softedge", "pidi": "softedge", "scribble": "softedge",
                 "ted": "softedge", "soft_edge": "softedge", "canny": "hardedge", "lineart": "hardedge",
                 "anime_lineart": "hardedge", "mlsd": "hardedge", "hard_edge": "hardedge", "normalmap": "normal",
                 "normal_map": "normal", "segment": "segmentation", "seg": "segmentation", "blur": "tile",
                 "repaint": "inpaint"}


# the extension's labels that are not their module's name (imaging.preprocessors' Preprocessor.label)
PREPROCESSOR_LABELS = {"inpaint_global_harmonious": "inpaint"}


def union_type(value) -> str:
    """The control type `value` names (ours, A1111's label, an alias, or diffusers' mode number),
    "" for none; UsageError for another."""
    text = str(value if value is not None else "").strip().lower()
    if text in ("", "none", "unknown"):
        return ""
    if text.isdigit() and int(text) < len(UNION_TYPES):
        return list(UNION_TYPES)[int(text)]
    text = text.replace("-", "_")
    labels = {label.lower().replace(" ", "_"): key for key, label in UNION_TYPES.items()}
    found = text if text in UNION_TYPES else UNION_ALIASES.get(text) or labels.get(text.replace(" ", "_"))
    if found is None:
        raise UsageError(f"--control-type must be one of {', '.join(UNION_TYPES)} (or canny, lineart, mlsd, "
                         f"scribble, hed, segment, blur, repaint..., or 0 to 7), got {value!r}")
    return found


def union_types(value) -> tuple[str, ...]:
    """The control types of a unit's `value` ("canny+depth": several, for one call of a Union
    on as many control images), () for none; UsageError for a part that is not one."""
    parts = [part for part in str(value if value is not None else "").split("+")]
    if len(parts) == 1:
        found = union_type(parts[0])
        return (found,) if found else ()
    found = tuple(union_type(part) for part in parts)
    if not all(found):
        raise UsageError(f"--control-type {value}: each of several control types (joined by +) must be one, "
                         f"none of them empty or none")
    return found


def is_union(config: dict) -> bool:
    """Whether a ControlNet's config is a ControlNet Union's (diffusers' ControlNetUnionModel)."""
    return config.get("_class_name") == "ControlNetUnionModel" or "num_control_type" in config


@dataclass(frozen=True)
class ControlUnit:
    """One ControlNet unit of a request (generate's --controlnet and its --control-* flags)."""

    model: str  # a converted ControlNet's name (in the ControlNet folder) or its folder
    image: object  # RGB uint8 [H, W, 3], or its file (read by read_image)
    weight: float = 1.0
    start: float = 0.0  # the fraction of the steps from which it runs
    end: float = 1.0  # ... up to which
    mode: str = "balanced"  # CONTROL_MODES
    resize: str = "crop-and-resize"  # imaging.control.RESIZE_MODES (A1111's default)
    preprocessor: str = "none"  # imaging.control.PREPROCESSORS
    image_name: str = ""  # the control image's file name (for the PNG's parameters)
    type: str = ""  # a ControlNet Union's control type (UNION_TYPES, an alias or a number; "" for none)
    mask: object = None  # the unit's own inpaint mask (float [H, W] in [0, 1], or uint8), the API's; None: --mask
    more_images: tuple = ()  # a Union unit with several control types: the control images of the 2nd, 3rd, ...
    threshold_a: float = -1.0  # the preprocessor's first slider (canny's low threshold, ...); -1: its default
    threshold_b: float = -1.0  # ... its second (canny's high threshold)
    resolution: str = "picture"  # where the map is made: imaging.control.RESOLUTIONS (inpaint units: the picture)

    def __post_init__(self):
        from sdcli.imaging.control import check_resolution

        label = str(self.preprocessor).strip().lower()
        if label in PREPROCESSOR_LABELS:  # the extension's label of a module here
            object.__setattr__(self, "preprocessor", PREPROCESSOR_LABELS[label])
        with contextlib.suppress(UsageError):  # ("512.0" as "512"; one that is none: check() says so)
            object.__setattr__(self, "resolution", check_resolution(self.resolution))

    def check(self) -> None:
        from sdcli.imaging.control import PREPROCESSORS, RESIZE_MODES, check_resolution

        if not self.model or not str(self.model).strip():
            raise UsageError("--controlnet: empty name")
        if not (math.isfinite(self.weight) and 0.0 <= self.weight <= 2.0):
            raise UsageError(f"--control-weight must be between 0 and 2, got {self.weight}")
        for flag, value in (("--control-start", self.start), ("--control-end", self.end)):
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise UsageError(f"{flag} must be between 0 and 1, got {value}")
        if self.start >= self.end:
            raise UsageError(f"--control-start ({self.start}) must be below --control-end ({self.end})")
        for flag, value, allowed in (("--control-mode", self.mode, CONTROL_MODES),
                                     ("--control-resize", self.resize, RESIZE_MODES),
                                     ("--control-preprocessor", self.preprocessor, PREPROCESSORS)):
            if value not in allowed:
                raise UsageError(f"{flag} must be one of {', '.join(allowed)}, got {value!r}")
        if self.mask is not None and self.preprocessor not in INPAINT_MODULES:
            raise UsageError(f"--control-mask is for the inpaint preprocessors ({', '.join(INPAINT_MODULES)}); this "
                             f"unit's is {self.preprocessor}")
        check_resolution(self.resolution)
        self.check_sliders()
        self.check_type()

    def check_sliders(self) -> None:
        """A threshold given (not -1) must be a slider of the unit's preprocessor, within its range
        (the extension's API puts the default in place of a value out of range; a flag is refused)."""
        from sdcli.imaging.control import PREPROCESSORS

        spec = PREPROCESSORS[self.preprocessor]
        for name, value in (("threshold_a", self.threshold_a), ("threshold_b", self.threshold_b)):
            if value != -1:
                spec.check_value(name, value, "--control-" + name.replace("_", "-"))

    @property
    def sliders(self) -> dict:
        """The thresholds given (not -1), by the preprocessor's parameter names."""
        return {name: float(value) for name, value in (("threshold_a", self.threshold_a),
                                                       ("threshold_b", self.threshold_b)) if value != -1}

    def check_type(self) -> None:
        count = len(union_types(self.type))
        if len(self.more_images) != max(count - 1, 0):
            raise UsageError(f"--control-type {self.type}: {count} control types take {count} control images (one "
                             f"each, in order), this unit has {1 + len(self.more_images)}")

    @property
    def type_index(self) -> int | None:
        """diffusers' control_mode of its (first) control type (None: none given)."""
        indices = self.type_indices
        return indices[0] if indices else None

    @property
    def type_indices(self) -> tuple[int, ...]:
        """diffusers' control_mode of each of its control types (one per control image)."""
        return tuple(list(UNION_TYPES).index(found) for found in union_types(self.type))

    @property
    def images(self) -> tuple:
        """Its control images: one, or a Union unit's one per control type."""
        return (self.image, *self.more_images)

    def read_image(self, read=None, label: str = "--control-image") -> "ControlUnit":
        """This unit with its control images read (a file's errors after `label`: the flag, or a
        batch row's field), by `read(path)` if given (a cache's), else read_rgb."""
        if not any(isinstance(item, (str, Path)) for item in (*self.images, self.mask)):
            return self
        from sdcli.imaging.image_io import read_rgb

        def loaded(image):
            if not isinstance(image, (str, Path)):
                return image
            try:
                return (read or read_rgb)(Path(image))
            except UsageError as exc:
                raise UsageError(f"{label}: {exc}") from None

        name = Path(self.image).name if isinstance(self.image, (str, Path)) else ""
        mask = self.mask
        if isinstance(mask, (str, Path)):  # (--control-mask's file)
            from sdcli.imaging.image_io import read_mask

            try:
                mask = read_mask(Path(mask))
            except UsageError as exc:  # (named as the images are: --control-mask, or a row's control_mask)
                raise UsageError(f"{label.replace('image', 'mask')}: {exc}") from None
        return replace(self, image=loaded(self.image), more_images=tuple(loaded(i) for i in self.more_images),
                       image_name=self.image_name or name, mask=mask)

    def runs_at(self, index: int, total: int) -> bool:
        """diffusers' controlnet_keep: whether the unit runs on step `index` of `total`."""
        return not (index / total < self.start or (index + 1) / total > self.end)

    def scales(self, count: int, pooled: bool = False) -> np.ndarray:
        """The factors of its `count` residuals (the down ones, then the mid one).  A unit of
        several control images has its weight applied inside the Union (diffusers'
        conditioning_scale per condition), so not here.  `pooled`: a ControlNet that pools its
        residuals (pools): diffusers' guess mode leaves its residuals unscaled by logspace."""
        weight = self.weight if len(self.more_images) == 0 else 1.0
        if self.mode == "controlnet" and not pooled:
            return np.logspace(-1, 0, count).astype(np.float32) * np.float32(weight)
        if self.mode == "prompt":
            return np.asarray([weight * SOFT_INJECTION ** (count - 1 - k) for k in range(count)], np.float32)
        return np.full(count, weight, np.float32)


def unit_default(setting: str):
    """ControlUnit's default for `setting` (weight, start, end, mode, resize, preprocessor)."""
    return ControlUnit.__dataclass_fields__[setting].default


def per_unit(values, count: int, default) -> list | None:
    """A --control-* setting for `count` units: none given, `default` for each; one, for all; else
    one per unit (None when the count is neither, for the caller's own message)."""
    values = list(values or ())
    if not values:
        return [default] * count
    if len(values) == 1:
        return values * count
    return values if len(values) == count else None


def unit_images(images: list, types: list, units: int, error=UsageError,
                flags=("--controlnet", "--control-image", "--control-type")) -> list[list]:
    """`images` (--control-image's, in order) shared out to `units` units whose control types
    are `types`: one each, and a Union unit with several control types (canny+depth) one per
    type; `error` (naming `flags`) when the counts differ."""
    counts = [len(str(kind).split("+")) for kind in types]  # (a part that is not a type: the unit's check says so)
    if len(images) != sum(counts):
        several = f" (their control types asking for {sum(counts)} images)" if sum(counts) != units else ""
        raise error(f"{flags[0]} given {units} time(s){several}, {flags[1]} {len(images)}: one control image per "
                    f"ControlNet, and one per control type of a Union unit that has several ({flags[2]} canny+depth)")
    groups, at = [], 0
    for count in counts:
        groups.append(list(images[at:at + count]))
        at += count
    return groups


def controlnet_folder(given: Path | None) -> tuple[Path, str]:
    """The folder converted ControlNets live in, and how it was chosen (for messages)."""
    return chosen_folder(given, "--controlnet-dir", CONTROLNET_ENV, DEFAULT_CONTROLNET_DIR)


def is_converted_controlnet(path: Path) -> bool:
    return (path / "openvino_model.xml").is_file() and (path / "config.json").is_file()


def find_controlnet(name: str, folder: Path | None = None) -> Path:
    """The converted ControlNet `name`: a folder of that name in the ControlNet folder, or the
    path of one; UsageError naming what was searched."""
    base, how = controlnet_folder(folder)
    candidates = [base / name]
    direct = Path(name).expanduser()
    if direct.is_absolute() or os.sep in name or name.startswith("."):
        candidates.insert(0, direct)
    for path in candidates:
        if is_converted_controlnet(path):
            return path
    names = sorted(p.name for p in base.iterdir() if is_converted_controlnet(p)) if base.is_dir() else []
    have = f" (it has: {', '.join(names)})" if names else " (it has none)" if base.is_dir() else \
        " (which does not exist)"
    raise UsageError(f"--controlnet {name}: no converted ControlNet of that name in {base}, {how}{have}; "
                     f"convert one with sdcli convert, or pass --controlnet-dir")


def check_union(path: Path, config: dict, unit: ControlUnit) -> None:
    """UsageError for a Union ControlNet without a control type, or a control type on another, or
    one the Union model was not trained with."""
    name = Path(str(unit.model)).name
    index = unit.type_index
    if not is_union(config):
        if index is not None:
            raise UsageError(f"--control-type {unit.type}: {name} is not a ControlNet Union (a control type is for "
                             "union models such as xinsir's controlnet-union-sdxl-1.0); leave it out")
        return
    count = int(config.get("num_control_type", 6))
    if index is None:
        raise UsageError(f"--controlnet {name} is a ControlNet Union: give its --control-type "
                         f"({', '.join(list(UNION_TYPES)[:count])})")
    for index in unit.type_indices:
        if index >= count:
            raise UsageError(f"--control-type {unit.type}: {name} knows {count} control types "
                             f"({', '.join(list(UNION_TYPES)[:count])}); {list(UNION_TYPES)[index]} is not one of "
                             "them (ProMax adds tile and inpaint)")
    if len(unit.type_indices) > 1 and not takes_conditions(path):
        raise UsageError(f"--control-type {unit.type}: {name} was converted by an earlier sdcli, for one control "
                         "image a call; convert it again (sdcli convert ... --force) for several control types in one "
                         "unit")


def takes_conditions(path: Path) -> bool:
    """Whether a Union ControlNet's IR takes several control images a call (control_type_idx)."""
    from sdcli.model.config_checks import ir_header

    xml = path / "openvino_model.xml"
    return xml.is_file() and "control_type_idx" in ir_header(xml)[1]


def check_fits(path: Path, unet_config: dict, is_sdxl: bool, unit: ControlUnit | None = None) -> dict:
    """The ControlNet's config, or UsageError when it was made for another base than the UNet's
    (or, with `unit`, when its control type does not go with it: check_union)."""
    from sdcli.model.config_checks import read_json

    config = read_json(path / "config.json")
    if unit is not None:
        check_union(path, config, unit)
    xl = config.get("addition_embed_type") == "text_time"
    if xl != is_sdxl:
        kinds = ("SDXL", "SD 1.x/2.x")
        raise UsageError(f"--controlnet {path.name}: it is a ControlNet for {kinds[not xl]} models; this is an "
                         f"{kinds[not is_sdxl]} model")
    for key in ("cross_attention_dim", "block_out_channels", "layers_per_block", "in_channels"):
        ours, theirs = unet_config.get(key), config.get(key)
        if key == "in_channels":  # a ControlNet reads the latents (an inpainting UNet's 9 channels hold more)
            ours = unet_config.get("out_channels", ours)
        if isinstance(ours, list) or isinstance(theirs, list):
            ours, theirs = list(ours or []), list(theirs or [])
        if ours is not None and theirs is not None and ours != theirs:
            raise UsageError(f"--controlnet {path.name}: it does not fit this model (its {key} is {theirs}, the "
                             f"UNet's {ours}): a ControlNet for another base model")
    return config


class ControlNetRuntime:
    """A converted ControlNet compiled for one set of shapes."""

    def __init__(self, runtime, path: Path, shapes: dict[str, list[int]]):
        from sdcli.runtime.components import CompiledComponent
        from sdcli.model.config_checks import ir_header

        xml = path / "openvino_model.xml"
        declared = list(ir_header(xml)[1])
        self.inputs = declared
        shapes = {name: shape for name, shape in shapes.items() if name in declared}
        missing = [name for name in declared if name not in shapes]
        if missing:
            raise UsageError(f"--controlnet {path.name}: its IR takes {', '.join(missing)}, which this model does not "
                             "provide")
        self.compiled, self._mapping = runtime.load(f"controlnet-{path.name}", xml, shapes)
        self._component = CompiledComponent()
        self._component.compiled = self.compiled

    def __call__(self, inputs: dict) -> list[np.ndarray]:
        request = self._component.request
        request.infer({name: value for name, value in inputs.items() if name in self.inputs})
        return [request.get_output_tensor(i).data.copy() for i in range(len(self.compiled.outputs))]


@dataclass
class PreparedUnit:
    unit: ControlUnit
    image: np.ndarray  # controlnet_cond [1, 3, H, W]; a Union IR of several conditions': [1, K, 3, H, W]
    path: Path
    control_type: np.ndarray | None = None  # a Union's: diffusers' multi-hot control_type [1, num_control_type]
    conditions: dict | None = None  # a Union IR of several conditions': control_type_idx, conditioning_scale
    kept: tuple | None = None  # inpaint_only keeping the unmasked area: (fitted image uint8, mask float [H, W])
    pooled: bool = False  # its residuals are averaged over the picture (pools)


def pools(config: dict) -> bool:
    """Whether a ControlNet of `config` averages its residuals over the picture (diffusers'
    global_pool_conditions; A1111's global_average_pooling: the shuffle ControlNet).  As diffusers
    and the extension do, such a unit runs on the prompt's row only under classifier-free
    guidance (guess mode's rule, whatever its control mode), its residuals unscaled by logspace."""
    return bool(config.get("global_pool_conditions"))


def prompt_row_only(unit: ControlUnit, pooled: bool, rows: int) -> bool:
    """Whether `unit`'s ControlNet runs on the prompt's row alone (the negative row getting no
    residuals): guess mode, or a pooling ControlNet, with classifier-free guidance (2 rows)."""
    return (unit.mode == "controlnet" or pooled) and rows == 2


def control_type_vector(config: dict, unit: ControlUnit) -> np.ndarray | None:
    """diffusers' control_type of `unit` on a Union ControlNet of `config` (None: not a Union):
    a one for each of its control types."""
    if not is_union(config) or unit.type_index is None:
        return None
    vector = np.zeros((1, int(config.get("num_control_type", 6))), np.float32)
    vector[0, list(unit.type_indices)] = 1.0
    return vector


def union_conditions(unit: ControlUnit) -> dict:
    """A Union IR's control_type_idx and conditioning_scale for `unit`: diffusers scales the
    images inside the model when there are several, the residuals after it when there is one
    (then the IR's scale is 1 and ControlledUNet scales the residuals)."""
    indices = unit.type_indices
    weight = unit.weight if len(indices) > 1 else 1.0
    return {"control_type_idx": np.asarray(indices, np.int64),
            "conditioning_scale": np.full(len(indices), weight, np.float32)}


# the extension's inpaint preprocessors: the control image with the masked pixels at -1 (inpaint is
# its inpaint_global_harmonious)
INPAINT_MODULES = ("inpaint", "inpaint_only")


def needs_mask(unit: ControlUnit) -> bool:
    return unit.preprocessor in INPAINT_MODULES


def missing_mask(unit: ControlUnit, mask) -> str | None:
    """The message for an inpaint unit without a mask (its own, or the request's `mask`), else None."""
    if needs_mask(unit) and unit.mask is None and mask is None:
        return (f"--control-preprocessor {unit.preprocessor} needs a mask: give --mask (the inpainting mask, with "
                "--init-image) or the unit's own --control-mask; the masked pixels of the control image are what "
                "the ControlNet repaints")
    return None


def inpaint_mask(unit: ControlUnit, mask, blur: int, width: int, height: int, source: np.ndarray | None = None
                 ) -> np.ndarray:
    """An inpaint unit's mask, uint8 [height, width] (255: repainted): the unit's own, else the
    request's `mask` blurred by `blur` as inpainting blurs it, fitted as its control image
    (`source`, else the unit's) was fitted."""
    from sdcli.imaging.control import fit_mask
    from sdcli.imaging.image_io import blur_mask, resize_mask

    own = unit.mask is not None
    m = unit.mask if own else mask
    if isinstance(m, (str, Path)):
        from sdcli.imaging.image_io import read_mask

        m = read_mask(Path(m))
    m = np.asarray(m)
    if m.ndim == 3:
        m = m[:, :, 0]
    if m.dtype == np.uint8:
        m = m.astype(np.float32) / 255.0
    source = unit.image if source is None else source  # (the control image `image` was fitted from)
    m = resize_mask(m, source.shape[1], source.shape[0])
    if not own:
        m = blur_mask(m, blur)
    return fit_mask(np.clip(np.round(m * 255.0), 0, 255).astype(np.uint8), width, height, unit.resize)


def inpaint_cond(image: np.ndarray, fitted_mask: np.ndarray) -> np.ndarray:
    """An inpaint unit's controlnet_cond [1, 3, H, W]: `image` (its control image fitted to the
    picture) in [0, 1] with the pixels of `fitted_mask` (inpaint_mask's) at -1, as diffusers'
    make_inpaint_condition and the extension's inpaint protocol make it (the mask cut at 0.5)."""
    from sdcli.imaging.preprocessors import inpaint_map

    return np.ascontiguousarray(inpaint_map(image, fitted_mask).transpose(2, 0, 1)[None])


def prepare_units(units, width: int, height: int, folder: Path | None, unet_config: dict,
                  is_sdxl: bool, mask=None, mask_blur: int = 0) -> list[PreparedUnit]:
    """Each unit's ControlNet found and checked against the model, and its control image
    fitted to width x height and preprocessed (an inpaint unit's with its mask, else `mask`:
    the request's inpainting mask, blurred by `mask_blur` as inpainting blurs it)."""
    from sdcli.engine.inpaint_only import keeps_unmasked
    from sdcli.imaging.control import control_input, control_map

    prepared = []
    for unit in units:
        path = find_controlnet(unit.model, folder)
        config = check_fits(path, unet_config, is_sdxl, unit)
        unit = unit.read_image()
        conds, kept = [], None
        for source in unit.images:  # (a Union unit's several: each fitted and preprocessed alike)
            image = control_map(source, unit.preprocessor, width, height, unit.resize, unit.resolution, **unit.sliders)
            if needs_mask(unit):
                message = missing_mask(unit, mask)
                if message:
                    raise UsageError(message)
                fitted = inpaint_mask(unit, mask, mask_blur, width, height, source)
                conds.append(inpaint_cond(image, fitted))
                if kept is None and keeps_unmasked(unit, mask):  # (engine/inpaint_only.py)
                    kept = (image, fitted.astype(np.float32) / np.float32(255.0))
            else:
                conds.append(control_input(image))
        conditions = union_conditions(unit) if is_union(config) and takes_conditions(path) else None
        cond = np.stack(conds, axis=1) if conditions is not None else conds[0]
        prepared.append(PreparedUnit(unit, cond, path, control_type_vector(config, unit), conditions, kept,
                                     pools(config)))
    return prepared


class ControlledUNet:
    """Called like the UNet by the denoise loop (call i is step i of `total`): the UNet with
    residual inputs, fed the units' summed residuals (zeros when none runs)."""

    def __init__(self, unet, units: list[PreparedUnit], load, total: int, channels: int | None = None):
        """`load(path, shapes)`: the ControlNetRuntime of a ControlNet for input shapes;
        `channels`: the latents' channels, the part of the UNet's sample a ControlNet reads (an
        inpainting UNet's sample also holds the mask and the masked image's latents)."""
        from sdcli.runtime.controlnet import residual_shapes

        self.unet = unet
        self.units = units
        self.load = load
        self.total = total
        self.channels = channels
        self.calls = 0
        self.recorder = None
        # edits of the UNet's output (output_edits: tile_colorfix's, then inpaint_only's), the scheduler's
        # alphas_cumprod they need, and inpaint_only's overlays of the decoded picture
        self.fixes: list = []
        self.alphas_cumprod = None
        self.overlays: list = []
        self.residual_shapes = residual_shapes(unet.compiled)
        self.names = sorted((n for n in self.residual_shapes if n.startswith("down_block_res_")),
                            key=lambda n: int(n.rsplit("_", 1)[1])) + ["mid_block_res"]

    @cached_property
    def zeros(self) -> dict[str, np.ndarray]:
        return {name: np.zeros(shape, np.float32) for name, shape in self.residual_shapes.items()}

    def _residuals(self, sample: np.ndarray, timestep, context: np.ndarray, extra: dict) -> dict[str, np.ndarray]:
        index = self.calls
        total = {name: None for name in self.names}
        rows = sample.shape[0]
        if self.channels is not None:  # the latents only (diffusers' control_model_input)
            sample = np.ascontiguousarray(sample[:, :self.channels])
        for prepared in self.units:
            unit = prepared.unit
            if not unit.runs_at(index, self.total):
                continue
            cond_only = prompt_row_only(unit, prepared.pooled, rows)
            take = (lambda a: a[1:]) if cond_only else (lambda a: a)
            batch = 1 if cond_only else rows
            inputs = {"sample": take(sample), "timestep": np.full((batch,), timestep, np.float32),
                      "encoder_hidden_states": take(context),
                      "controlnet_cond": np.repeat(prepared.image, batch, axis=0),
                      **{name: take(value) for name, value in extra.items()}}
            if prepared.control_type is not None:
                inputs["control_type"] = np.repeat(prepared.control_type, batch, axis=0)
            inputs.update(prepared.conditions or {})
            controlnet = self.load(prepared.path, {name: list(value.shape) for name, value in inputs.items()})
            outputs = controlnet(inputs)
            if len(outputs) != len(self.names) or not all(self._fits(out, name, prepared.pooled)
                                                           for out, name in zip(outputs, self.names)):
                raise UsageError(f"--controlnet {prepared.path.name}: its residuals do not fit this UNet's skip "
                                 "connections (a ControlNet for another base model)")
            scales = unit.scales(len(outputs), prepared.pooled)
            for name, out, scale in zip(self.names, outputs, scales):
                out = out * scale
                if out.shape[2:] != tuple(self.residual_shapes[name][2:]):  # a pooling ControlNet's 1x1
                    out = np.ascontiguousarray(np.broadcast_to(out, (out.shape[0], *self.residual_shapes[name][1:])))
                if cond_only:
                    out = np.concatenate([np.zeros_like(out), out], axis=0)
                total[name] = out if total[name] is None else total[name] + out
        return {name: (value if value is not None else self.zeros[name]) for name, value in total.items()}

    def _fits(self, out: np.ndarray, name: str, pooled: bool) -> bool:
        """Whether a ControlNet's residual `out` fits the UNet's input `name` (a pooling
        ControlNet's is 1x1, broadcast over the picture)."""
        shape = tuple(self.residual_shapes[name][1:])
        return out.shape[1:] == shape or (pooled and out.shape[1:] == (shape[0], 1, 1))

    def __call__(self, sample: np.ndarray, timestep, context: np.ndarray, **extra) -> np.ndarray:
        residuals = self._residuals(sample, timestep, context, extra)
        self.calls += 1
        out = self.unet(sample, timestep, context, **extra, **residuals)
        for fix in self.fixes:  # (on every call, as the extension's hook: not only in the unit's range)
            out = fix(out, sample[:, :out.shape[1]], timestep, self.alphas_cumprod)
        return out

    def output(self, index: int) -> np.ndarray:
        return self.unet.output(index)


def check_request(request, engine) -> None:
    """UsageError for a request whose ControlNet units this engine cannot run (before anything
    loads): the model, the other options, and each unit's ControlNet found and fitting."""
    if engine.folder.denoiser != "unet":
        raise UsageError(f"--controlnet is for Stable Diffusion and SDXL models (a UNet); this is a "
                         f"{engine.family.name} model")
    in_channels = int(engine.folder.unet_config.get("in_channels", 4))
    if in_channels not in (engine.folder.latent_channels, 9):  # (9: an inpainting UNet, with --mask)
        raise UsageError(f"--controlnet: this UNet takes {in_channels} input channels; ControlNet runs on plain "
                         "Stable Diffusion and SDXL UNets and on inpainting ones (9)")
    for unit in request.controlnets:
        message = missing_mask(unit, getattr(request, "mask", None))
        if message:
            raise UsageError(message)
        check_networks(unit.preprocessor)
        check_fits(find_controlnet(unit.model, engine.controlnet_dir), engine.folder.unet_config,
                   engine.folder.is_sdxl, unit)


def check_networks(module: str) -> None:
    """MissingAnnotator (a usage error) when preprocessor `module` runs networks not converted
    (openpose's, depth_anything_v2's, the lineart modules'), so that it is said before anything
    loads."""
    from sdcli.imaging import depth_lineart, openpose

    if module in openpose.MODULES:
        openpose.networks(module)
    elif module in depth_lineart.SOURCES:
        depth_lineart.network(module)


def _component(components, path: Path, shapes: dict[str, list[int]]):
    """(key, build) of ControlNet `path` compiled for the inputs of `shapes` it declares."""
    from sdcli.model.config_checks import ir_header

    declared = set(ir_header(path / "openvino_model.xml")[1])
    shapes = {name: list(shape) for name, shape in shapes.items() if name in declared}
    key = ("controlnet", str(path), tuple((name, tuple(shape)) for name, shape in sorted(shapes.items())))
    return key, lambda: ControlNetRuntime(components.runtime, path, shapes)


def unit_shapes(unet_shapes: dict[str, list[int]], unit: ControlUnit, width: int, height: int,
                channels: int | None = None, control_types: int | None = None, conditions: bool = False,
                pooled: bool = False) -> dict:
    """The input shapes of `unit`'s ControlNet beside a UNet of `unet_shapes` (the prompt's row
    only in guess mode with classifier-free guidance; `channels`: the latents' channels, which
    is all of the sample it reads; `control_types`: a Union's num_control_type; `conditions`: a
    Union IR that takes several control images)."""
    rows = unet_shapes["sample"][0]
    batch = 1 if prompt_row_only(unit, pooled, rows) else rows
    shapes = {name: [batch, *shape[1:]] for name, shape in unet_shapes.items()}
    if channels is not None:
        shapes["sample"][1] = channels
    shapes["controlnet_cond"] = [batch, 3, height, width]
    if control_types:
        shapes["control_type"] = [batch, control_types]
    if conditions:
        count = len(unit.images)
        shapes.update(controlnet_cond=[batch, count, 3, height, width], control_type_idx=[count],
                      conditioning_scale=[count])
    return shapes


def start_compiling(engine, request, unet_shapes: dict[str, list[int]]) -> None:
    """Compile the request's ControlNets in the background (engine.preload), for the shapes the
    loop will call them with."""
    from sdcli.model.config_checks import read_json

    width, height = engine.resolve_size(request)
    for unit in request.controlnets:
        path = find_controlnet(unit.model, engine.controlnet_dir)
        config = read_json(path / "config.json")
        types = int(config.get("num_control_type", 6)) if is_union(config) else None
        shapes = unit_shapes(unet_shapes, unit, width, height, engine.folder.latent_channels, types,
                             bool(types) and takes_conditions(path), pools(config))
        engine.components.start(*_component(engine.components, path, shapes))


def control(engine, unet, request, width: int, height: int, steps: int, scheduler=None) -> ControlledUNet:
    """The UNet `unet` (compiled with residual inputs) wrapped with `request`'s units, for a
    loop of `steps` calls on a width x height picture by `scheduler` (its alphas_cumprod: the
    edits of its UNet output: output_edits)."""
    units = prepare_units(request.controlnets, width, height, engine.controlnet_dir, engine.folder.unet_config,
                          engine.folder.is_sdxl, getattr(request, "mask", None), getattr(request, "mask_blur", 0))
    components = engine.components

    def load(path: Path, shapes: dict[str, list[int]]) -> ControlNetRuntime:
        return components.get(*_component(components, path, shapes))

    controlled = ControlledUNet(unet, units, load, steps, engine.folder.latent_channels)
    controlled.recorder = getattr(unet, "recorder", None)
    output_edits(engine, controlled, request, scheduler)
    return controlled


def output_edits(engine, controlled: ControlledUNet, request, scheduler) -> None:
    """The edits of the UNet's output that the extension makes from a control image's latents
    (the VAE encoder's mean, scaled), with the scheduler's alphas_cumprod: each tile_colorfix
    unit's colour fix, then each inpaint_only unit's keeping of the unmasked area (and its
    final overlay), in unit order as the extension's hook runs them."""
    from sdcli.engine.colorfix import COLORFIX_MODULES, colorfix_for
    from sdcli.engine.inpaint_only import Overlay, Restore, latent_mask, overlay_mask
    from sdcli.imaging.control import control_input

    fixed = [prepared for prepared in controlled.units if prepared.unit.preprocessor in COLORFIX_MODULES]
    kept = [prepared for prepared in controlled.units if prepared.kept is not None]
    if not fixed and not kept:
        return
    alphas = getattr(scheduler, "alphas_cumprod", None)
    if alphas is None:
        what = "its colour fix" if fixed else "keeping the unmasked area"
        raise UsageError(f"--control-preprocessor {(fixed or kept)[0].unit.preprocessor}: {what} needs a scheduler "
                         "with alphas_cumprod (a DDPM-trained model's)")
    vae = engine.folder.vae(request.vae)
    size = (fixed or kept)[0].image.shape[-2:]
    try:  # (every unit's image is the picture's size: one encoder)
        encode = engine.vae_encoder(request.vae, size, request.vae_tiling, request.vae_tile_size)

        def latents(pixels: np.ndarray) -> np.ndarray:  # [1, 3, H, W] in [0, 1]
            mean, _ = encode(np.ascontiguousarray(pixels * np.float32(2.0) - np.float32(1.0)))
            return engine.family.image_latents(mean, None, None, vae)

        for prepared in fixed:
            image = prepared.image[:, 0] if prepared.image.ndim == 5 else prepared.image  # (a Union's first)
            controlled.fixes.append(colorfix_for(prepared.unit, latents(image)))
        for prepared in kept:
            image, mask = prepared.kept
            controlled.fixes.append(Restore(latents(control_input(image)),
                                            latent_mask(mask, engine.folder.vae_scale_factor), float(prepared.unit.weight)))
            controlled.overlays.append(Overlay(image, overlay_mask(mask)))
    finally:
        if engine.low_memory:
            engine.components.release(vae.encoder)
    controlled.alphas_cumprod = np.asarray(alphas)


# --- the PNG's parameters (A1111's ControlNet extension's fields) -----------------------------------

INFOTEXT_KEY = "ControlNet {}"
UNION_INFOTEXT = "Union Control Type"


def infotext_fields(units) -> dict[str, str]:
    """`ControlNet 0: "Module: canny, Model: NAME, Weight: 1.0, ..."` for each unit, as A1111's
    ControlNet extension writes them (format_parameters quotes the value)."""
    from sdcli.imaging.control import PIXEL_PERFECT, PREPROCESSORS, RESIZE_MODES

    fields = {}
    for i, unit in enumerate(units):
        parts = {"Module": unit.preprocessor, "Model": Path(str(unit.model)).name, "Weight": float(unit.weight),
                 "Resize Mode": RESIZE_MODES[unit.resize]}
        if unit.resolution.isdigit():  # (picture: none; pixel-perfect: the extension's -1, recomputed when read)
            parts["Processor Res"] = int(unit.resolution)
        spec = PREPROCESSORS.get(unit.preprocessor)
        for name, label in (("threshold_a", "Threshold A"), ("threshold_b", "Threshold B")):
            slider = spec.slider(name) if spec is not None else None
            if slider is not None:  # (the value it ran with: given, or the slider's default)
                parts[label] = float(unit.sliders.get(name, slider.default))
        parts.update({"Guidance Start": float(unit.start), "Guidance End": float(unit.end),
                      "Pixel Perfect": unit.resolution == PIXEL_PERFECT,
                      "Control Mode": CONTROL_MODES[unit.mode]})
        if union_types(unit.type):  # (the unit's union_control_type, as the extension names the field)
            parts[UNION_INFOTEXT] = "+".join(UNION_TYPES[found] for found in union_types(unit.type))
        fields[INFOTEXT_KEY.format(i)] = ", ".join(f"{key}: {value}" for key, value in parts.items())
    return fields


def read_infotext(fields: dict[str, str], notes: list[str]) -> list[dict]:
    """The units a PNG's `ControlNet N` fields describe, in order: each a dict of ControlUnit's
    settings (model, weight, start, end, mode, resize, preprocessor, type, threshold_a, threshold_b:
    -1 where the preprocessor has no such slider or the value is outside it, as the extension's
    bound check; resolution); what sdcli does not do goes to `notes`.  ValueError for a number that is not one."""
    from sdcli.imaging.control import PREPROCESSORS, RESIZE_MODES

    by_label = {label.lower(): key for key, label in RESIZE_MODES.items()}
    modes = {label.lower(): key for key, label in CONTROL_MODES.items()}
    units = []
    for index in range(100):
        text = fields.get(INFOTEXT_KEY.format(index))
        if text is None:
            break
        parts = {}
        for item in text.split(", "):
            key, _, value = item.partition(": ")
            parts[key.strip()] = value.strip()
        model = parts.get("Model", "").split(" [")[0]  # A1111 adds the file's short hash: NAME [abcd1234]
        module = parts.get("Module", "none")
        module = next((key for key, spec in PREPROCESSORS.items() if module.lower() == spec.label.lower()), module)
        if module not in PREPROCESSORS:
            notes.append(f"ControlNet {index} ran the preprocessor {module}, which sdcli does not have: its control "
                         "image is used as the map (--control-preprocessor none)")
            module = "none"
        mode = parts.get("Control Mode", "Balanced").lower().replace("controlmode.", "")
        units.append({"model": model, "weight": float(parts.get("Weight", 1.0)),
                      "start": float(parts.get("Guidance Start", 0.0)), "end": float(parts.get("Guidance End", 1.0)),
                      "mode": modes.get(mode, {"prompt": "prompt", "control": "controlnet"}.get(mode, "balanced")),
                      "resize": by_label.get(parts.get("Resize Mode", "Crop and Resize").lower(), "crop-and-resize"),
                      "preprocessor": module, "type": _stored_type(parts.get(UNION_INFOTEXT), index, notes),
                      "resolution": _stored_resolution(parts),
                      **{name: _stored_slider(PREPROCESSORS[module], name, parts.get(label))
                         for name, label in (("threshold_a", "Threshold A"), ("threshold_b", "Threshold B"))}})
    return units


def _stored_resolution(parts: dict) -> str:
    """A PNG's preprocessor resolution: pixel-perfect for `Pixel Perfect: True`, else its `Processor
    Res` where check_resolution takes it (64..2048), else picture (sdcli's own, which writes none)."""
    from sdcli.imaging.control import PICTURE, PIXEL_PERFECT, check_resolution

    if parts.get("Pixel Perfect", "False").strip().lower() == "true":
        return PIXEL_PERFECT
    try:
        return check_resolution(parts.get("Processor Res", PICTURE))
    except UsageError:
        return PICTURE


def _stored_slider(spec, name: str, text: str | None) -> float:
    """A PNG's threshold for the preprocessor's slider `name`: the value, -1 (its default) where
    it has no such slider or the value is missing or outside the slider's range."""
    slider = spec.slider(name)
    if slider is None or text is None:
        return -1.0
    value = float(text)
    return value if math.isfinite(value) and slider.minimum <= value <= slider.maximum else -1.0


def _stored_type(text: str | None, index: int, notes: list[str]) -> str:
    """A PNG's `Union Control Type` as ours ("" for none or one sdcli does not know: in `notes`;
    several joined by +)."""
    try:
        return "+".join(union_types(text))
    except UsageError:
        notes.append(f"ControlNet {index} has the union control type {text!r}, which sdcli does not know: "
                     "pass --control-type")
        return ""
