"""ControlNet in `sdcli batch` (engine/controlnet.py): a row's controlnet, control_image and
control_* fields over the command line's --controlnet, --control-image and --control-* options,
checked into the row's ControlUnits, and what of them goes into the row's key.

The fields are generate's flags: `controlnet` and `control_image` one per unit (a Union unit
whose control_type names several, canny+depth, takes one control image per type, in order),
each control_* setting once for all units or once per unit.  A field holds one value, a JSON
list, or (a CSV cell) values separated by `|`.  A row that gives `controlnet` replaces the command line's units
(and must give its control images); one that gives only `control_image` keeps the command line's
ControlNets with its own images; its control_* fields replace the command line's one by one.  An
empty `controlnet` ("" or []) runs the row without a ControlNet.  Relative control images are
FILE's folder's, as init images are; a control image is part of the row's key by its content, so
that a changed image makes the row again.  `control_mask` is a unit's own mask (generate's
--control-mask; `none`: the unit has none), relative as control images are, in the key by its
content when given.  `control_resolution` is generate's --control-resolution (in the key when not
picture).
"""
from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any

from sdcli.util.errors import UsageError

UNIT_FIELDS = ("controlnet", "control_image")
SETTING_FIELDS = ("control_weight", "control_start", "control_end", "control_mode", "control_resize",
                  "control_preprocessor", "control_type", "control_threshold_a", "control_threshold_b", "control_mask",
                  "control_resolution")
CONTROL_FIELDS = (*UNIT_FIELDS, *SETTING_FIELDS)
NUMBERS = ("control_weight", "control_start", "control_end", "control_threshold_a", "control_threshold_b")


def command_line(opts) -> dict[str, list]:
    """The --controlnet/--control-* options of `opts` (a BatchOptions: its `control`) that were
    given, by field name, each a list."""
    return {name: list(value) for name, value in (getattr(opts, "control", None) or {}).items()
            if name in CONTROL_FIELDS and value}


def _values(value: Any, name: str, row_error) -> list:
    """A row's field as a list: a JSON list's items, text split at `|`, or the one value."""
    if isinstance(value, list):
        items = value
    elif isinstance(value, str):
        items = value.split("|")
    else:
        items = [value]
    out = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise row_error(f"{name} must hold text or numbers, got {item!r}"[:120])
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise row_error(f"{name} is not valid Unicode text (it holds a lone surrogate)") from None
            item = item.strip()
            if not item or "\0" in item:
                raise row_error(f"{name} holds an empty value or a NUL character")
        out.append(item)
    return out


def _number(value: Any, name: str, row_error) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise row_error(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise row_error(f"{name} must be a number, got {value!r}")
    return number


def control_units(values: dict, opts, root: Path, row_error=ValueError) -> tuple:
    """The ControlUnits of a row (its `values`) over `opts` (images as paths, `root` the folder
    relative ones are in), () for none; `row_error` (rows.RowError) for a field that cannot be
    used, naming it."""
    from sdcli.engine.controlnet import ControlUnit, per_unit, unit_default, unit_images

    given = command_line(opts)
    if "controlnet" in values:
        given.pop("controlnet", None)
        given.pop("control_image", None)
        names = values["controlnet"]
        if names == [] or (isinstance(names, str) and not names.strip()):
            extra = [name for name in CONTROL_FIELDS[1:] if name in values]
            if extra:
                raise row_error(f"{extra[0]} is for a ControlNet unit, and this row's controlnet is empty")
            return ()
    for name in CONTROL_FIELDS:
        if name in values:
            given[name] = _values(values[name], name, row_error)
    names = [str(name) for name in given.get("controlnet", ())]
    images = given.get("control_image", [])
    if not names:
        extra = [name for name in CONTROL_FIELDS[1:] if name in values]
        if extra:
            raise row_error(f"{extra[0]} is for a ControlNet unit: give controlnet too (in the row or as --controlnet)")
        return ()

    def per_unit_values(name: str) -> list:
        column = per_unit(given.get(name), len(names), unit_default(name.removeprefix("control_")))
        if column is None:
            raise row_error(f"{name} holds {len(given[name])} values for {len(names)} ControlNets: give one (for all) "
                            "or one per ControlNet")
        if name in NUMBERS:
            return [_number(value, name, row_error) for value in column]
        if name == "control_mask":  # (a unit's own mask; none: the unit has none)
            return [None if value is None or str(value).lower() == "none" else str(value) for value in column]
        return [str(value) for value in column]

    columns = {name.removeprefix("control_"): per_unit_values(name) for name in SETTING_FIELDS}
    mask_from_row = "control_mask" in values
    columns["mask"] = [None if mask is None else (root / Path(mask).expanduser() if mask_from_row
                                                  else Path(mask).expanduser()) for mask in columns["mask"]]
    groups = unit_images(images, columns["type"], len(names), row_error,
                         ("controlnet", "control_image", "control_type"))
    units = []
    from_row = "control_image" in values  # (the command line's images are the current folder's)
    for index, (name, group) in enumerate(zip(names, groups)):
        paths = [Path(str(image)).expanduser() for image in group]
        paths = [root / path if from_row else path for path in paths]
        unit = ControlUnit(name, paths[0], image_name=paths[0].name, more_images=tuple(paths[1:]),
                           **{setting: column[index] for setting, column in columns.items()})
        try:
            unit.check()
        except UsageError as exc:  # named as the row's fields
            text = re.sub(r"--control-(\w+)", lambda m: "control_" + m.group(1).replace("-", "_"), str(exc))
            raise row_error(text.replace("--controlnet", "controlnet")) from None
        units.append(unit)
    return tuple(units)


def key_settings(units, row_error=ValueError) -> list | None:
    """What of a row's units goes into its key (None: no ControlNet, so older keys stay): each
    unit's settings and its control image's path and content (a file that cannot be read: row_error)."""
    if not units:
        return None
    settings = []
    for unit in units:
        path = Path(unit.image)
        settings.append({"model": str(unit.model), "image": str(path.resolve()), "image_sha256": _digest(path, row_error),
                         "weight": unit.weight, "start": unit.start, "end": unit.end, "mode": unit.mode,
                         "resize": unit.resize, "preprocessor": unit.preprocessor,
                         **({"type": unit.type} if unit.type else {}), **unit.sliders,  # (given only: older keys stay)
                         **({"resolution": unit.resolution} if unit.resolution != "picture" else {})})
        if unit.mask is not None:  # (its own mask, by content: only then, so that older keys stay)
            mask = Path(unit.mask)
            settings[-1].update(mask=str(mask.resolve()), mask_sha256=_digest(mask, row_error, "control_mask"))
        if unit.more_images:  # (a Union unit's further control images: only then, so that older keys stay)
            settings[-1]["more_images"] = [{"image": str(Path(more).resolve()), "image_sha256": _digest(Path(more),
                                                                                                        row_error)}
                                           for more in unit.more_images]
    return settings


def _digest(path: Path, row_error, field: str = "control_image") -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise row_error(f"{field} {path}: {exc.strerror or exc}") from None


def check_command_line(opts, folder) -> None:
    """UsageError for the command line's ControlNet units where they cannot run whatever the row
    (a flag without --controlnet, counts that differ, a setting out of range, an unreadable control
    image, a ControlNet not found or made for another base model, a model without a UNet), named
    as the options are."""
    from sdcli.engine.controlnet import check_fits, find_controlnet

    given = command_line(opts)
    if not given:
        return
    try:
        if "controlnet" not in given:
            raise UsageError(f"{next(iter(given))} is for a ControlNet unit: give controlnet too")
        units = control_units({}, opts, Path("."), UsageError)
    except UsageError as exc:
        raise UsageError(re.sub(r"\b(controlnet|control_\w+)\b", lambda m: "--" + m.group(1).replace("_", "-"),
                                str(exc))) from None
    if units and folder.denoiser != "unet":
        raise UsageError("--controlnet is for Stable Diffusion and SDXL models (a UNet); this model has a "
                         f"{folder.denoiser}")
    for unit in units:
        unit.read_image()  # (--control-image: its errors)
        check_fits(find_controlnet(unit.model, getattr(opts, "controlnet_dir", None)), folder.unet_config,
                   folder.is_sdxl, unit)
