"""A model folder's own generation defaults, set by `sdcli convert`: `--default-steps`,
`--default-guidance`, `--default-vae` (kept in sdcli.json, see sdcli/model/defaults.py) and the scheduler
with its timestep spacing (`--scheduler`, `--timestep-spacing`: scheduler_config.json).

At convert time they are written with the rest of the folder; `--into FOLDER` sets them on a
folder already converted (ours or optimum-cli's) without converting it again.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from sdcli.convert.lora import replacement_scheduler_config
from sdcli.model.defaults import KEY, METADATA, GenerationDefaults, check_defaults, check_vae_flag, read_metadata
from sdcli.schedulers import create_scheduler
from sdcli.schedulers.base import SPACINGS
from sdcli.util.errors import UsageError
from sdcli.util.fsutil import atomic_write_bytes

SCHEDULER_CONFIG = Path("scheduler") / "scheduler_config.json"


def check_spacing(spacing: str | None) -> None:
    if spacing is not None and spacing not in SPACINGS:
        raise UsageError(f"--timestep-spacing must be one of {', '.join(SPACINGS)}, got {spacing!r}")


def model_scheduler_config(name: str | None, spacing: str | None, config: dict, unet_config) -> dict:
    """The scheduler_config.json for `--scheduler NAME` (the folder's own scheduler becomes
    NAME, as replacement_scheduler_config makes it) and `--timestep-spacing` (how its steps are
    spread: SDXL-Turbo and Lightning want trailing)."""
    check_spacing(spacing)
    new = replacement_scheduler_config(name, config, unet_config) if name else dict(config)
    if spacing is not None:
        new["timestep_spacing"] = spacing
        try:
            create_scheduler(None, new)
        except ValueError as exc:
            raise UsageError(f"--timestep-spacing: {exc}") from None
    return new


def new_defaults(steps: int | None, guidance: float | None, current: dict | None = None,
                 vae: str | None = None) -> dict:
    """The "defaults" object with `steps`, `guidance` and `vae` set over `current` (sdcli.json's),
    checked."""
    check_vae_flag(vae)
    merged = dict(current) if isinstance(current, dict) else {}
    merged.update(GenerationDefaults(steps, guidance, vae).as_dict())
    return check_defaults(merged).as_dict()


def check_default_vae(vae: str | None, has_tiny_vae: bool, folder: str) -> None:
    """--default-vae: full or tiny, and tiny only where `folder` will have a tiny VAE (its own, or
    the --tiny-vae of the same command)."""
    check_vae_flag(vae)
    if vae == "tiny" and not has_tiny_vae:
        raise UsageError(f"--default-vae tiny: {folder} has no tiny VAE (vae_decoder_tiny/); add one with "
                         "--tiny-vae TAESD (in the same command, or before)")


def defaults_metadata(steps: int | None, guidance: float | None, vae: str | None = None) -> dict:
    """What a new folder's sdcli.json gets for --default-steps / --default-guidance / --default-vae."""
    defaults = new_defaults(steps, guidance, vae=vae)
    return {KEY: defaults} if defaults else {}


def _json_bytes(data: dict) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def plan_folder_defaults(root: Path, steps: int | None = None, guidance: float | None = None,
                         scheduler: str | None = None, spacing: str | None = None, vae: str | None = None,
                         adding_tiny_vae: bool = False) -> list[tuple[Path, bytes]]:
    """The files to rewrite in the converted folder `root` for these settings, every value
    checked before anything is written (UsageError); see write_planned.  `adding_tiny_vae`: the
    same command adds a tiny VAE (so `vae` "tiny" may be set on a folder without one yet)."""
    from sdcli.model.folder import ModelFolder

    folder = ModelFolder.open(root)
    check_default_vae(vae, adding_tiny_vae or folder.has_tiny_vae, str(root))
    planned = []
    if scheduler is not None or spacing is not None:
        config = model_scheduler_config(scheduler, spacing, folder.scheduler_config, folder.unet_config)
        planned.append((folder.root / SCHEDULER_CONFIG, _json_bytes(config)))
    if steps is not None or guidance is not None or vae is not None:
        metadata = read_metadata(folder.root)
        metadata[KEY] = new_defaults(steps, guidance, metadata.get(KEY), vae)
        planned.append((folder.root / METADATA, _json_bytes(metadata)))
    return planned


def write_planned(planned: list[tuple[Path, bytes]], log: Callable[[str], None] = print) -> None:
    """Write each planned file atomically (a reader sees the old file or the new, never half)."""
    for path, data in planned:
        atomic_write_bytes(path, data)
        log(f"wrote {path}")
