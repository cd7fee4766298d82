"""The hires fix in `sdcli batch` (engine/hires.py): a row's hires_* fields over the command
line's --hires-* options, checked into the row's HiresFix (or None), and the settings that go into
the row's key.

A row that gives any of hires_scale, hires_width, hires_height replaces all three of the command
line's (a row's scale over a command line's size); its other hires_* fields replace the command
line's one by one.  Without a scale or a size from either, the row has no hires fix, and a row's
other hires_* fields are refused (nothing would use them), as generate refuses its flags.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any, Optional

from sdcli.util.errors import UsageError

SIZE_FIELDS = ("hires_scale", "hires_width", "hires_height")
HIRES_FIELDS = (*SIZE_FIELDS, "hires_upscaler", "hires_steps", "hires_denoise", "hires_prompt",
                "hires_negative_prompt", "hires_scheduler", "hires_cfg")


def command_line(opts) -> dict[str, Any]:
    """The --hires-* options of `opts` (a BatchOptions: its `hires`) that were given, by field name."""
    return {name: value for name, value in (getattr(opts, "hires", None) or {}).items()
            if name in HIRES_FIELDS and value is not None}


def hires_fix(values: dict, opts, row_error=ValueError):
    """The HiresFix of a row (its `values`) over `opts`, or None; `row_error` (rows.RowError) for
    a field that cannot be used, naming it."""
    from sdcli.engine.hires import DEFAULT_DENOISE, DEFAULT_UPSCALER, MAX_SCALE, MAX_SIDE, HiresFix
    from sdcli.engine.request import GUIDANCE_MAX, STEPS_MAX
    from sdcli.schedulers import scheduler_names

    given = command_line(opts)
    if any(name in values for name in SIZE_FIELDS):
        given = {k: v for k, v in given.items() if k not in SIZE_FIELDS}
    given.update({k: v for k, v in values.items() if k in HIRES_FIELDS})
    if not any(given.get(name) is not None for name in SIZE_FIELDS):
        extra = [name for name in HIRES_FIELDS if name in values]
        if extra:
            raise row_error(f"{extra[0]} is for the hires fix: give hires_scale or hires_width/hires_height too "
                            "(in the row or on the command line)")
        return None

    def number(name, low, high, whole=False) -> Optional[float]:
        """A number field within [low, high] (as rows.py's _as_int/_as_float read them)."""
        value = given.get(name)
        if value is None:
            return None
        kind = "a whole number" if whole else "a number"
        try:
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise ValueError
            number = float(value.strip() if isinstance(value, str) else value)
            if not math.isfinite(number) or (whole and not number.is_integer()):
                raise ValueError
        except (ValueError, OverflowError):
            raise row_error(f"{name} must be {kind}, got {json.dumps(value)[:60]}") from None
        if not low <= number <= high:
            raise row_error(f"{name} must be between {low:g} and {high:g}, got {number:g}")
        return int(number) if whole else number

    def _as_text(value, name) -> str:
        if not isinstance(value, str):
            raise row_error(f"{name} must be text, got {json.dumps(value)[:60]}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise row_error(f"{name} is not valid Unicode text (it holds a lone surrogate)") from None
        return value

    scale = number("hires_scale", 0.0, MAX_SCALE)
    width, height = number("hires_width", 0, MAX_SIDE, True), number("hires_height", 0, MAX_SIDE, True)
    for name, side in (("hires_width", width), ("hires_height", height)):
        if side is not None and side % 8:
            raise row_error(f"{name} must be a multiple of 8, got {side}")
    if not (width or height) and not (scale is not None and scale > 1.0):
        raise row_error(f"hires_scale must be more than 1 and at most {MAX_SCALE:g}"
                        + (f", got {scale:g}" if scale is not None else " (or give hires_width/hires_height)"))
    denoise = number("hires_denoise", 0.0, 1.0)
    if denoise is not None and denoise <= 0.0:
        raise row_error(f"hires_denoise must be more than 0 and at most 1, got {denoise:g}")
    scheduler = given.get("hires_scheduler")
    if scheduler is not None:
        scheduler = _as_text(scheduler, "hires_scheduler").strip()
        if scheduler not in scheduler_names():
            raise row_error(f"hires_scheduler {scheduler!r} is not one of {', '.join(scheduler_names())}")
    upscaler = _as_text(given.get("hires_upscaler", DEFAULT_UPSCALER), "hires_upscaler").strip()
    fix = HiresFix(scale=2.0 if scale is None else scale, resize_width=width or 0, resize_height=height or 0,
                   upscaler=upscaler or DEFAULT_UPSCALER, steps=number("hires_steps", 0, STEPS_MAX, True) or 0,
                   denoise=DEFAULT_DENOISE if denoise is None else denoise,
                   prompt=_as_text(given.get("hires_prompt", ""), "hires_prompt"),
                   negative_prompt=_as_text(given.get("hires_negative_prompt", ""), "hires_negative_prompt"),
                   scheduler=scheduler, guidance_scale=number("hires_cfg", 0.0, GUIDANCE_MAX),
                   upscaler_dir=getattr(opts, "upscaler_dir", None))
    from sdcli.engine.hires import check_upscaler

    try:
        check_upscaler(fix)
    except UsageError as exc:
        raise row_error(str(exc).replace("--hires-upscaler", "hires_upscaler")) from None
    return fix


def key_settings(fix) -> Optional[dict]:
    """What of a row's HiresFix goes into its key (None: no hires fix, so older keys stay): every
    setting but where model upscalers are looked for."""
    if fix is None:
        return None
    settings = dataclasses.asdict(fix)
    settings.pop("upscaler_dir", None)
    return settings


def check_command_line(opts, folder, family) -> None:
    """UsageError for the command line's hires fix where the model refuses it whatever the row
    (FLUX.2-klein; a Latent upscaler on Z-Image; LCM and inpainting models)."""
    from sdcli.engine.hires import check_model

    try:
        fix = hires_fix({}, opts, UsageError)
    except UsageError as exc:  # (named as the options are)
        raise UsageError(re.sub(r"\bhires_(\w+)", lambda m: "--hires-" + m.group(1).replace("_", "-"), str(exc))) from None
    if fix is not None:
        check_model(folder, family, fix)
