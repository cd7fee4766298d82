"""A model folder's own generation defaults: the `"defaults"` object of its sdcli.json,
set by `sdcli convert --default-steps N --default-guidance G --default-vae full|tiny` (or later
with `--into`).

    {"defaults": {"steps": 1, "guidance_scale": 0.0, "vae": "tiny"}}

A distilled model (SDXL-Turbo, Lightning, Hyper-SD, an LCM) is made for a few steps at a low
guidance; with these, `sdcli generate` needs no flags for it ("vae": "tiny" decodes with the
TAESD that `convert --tiny-vae` added, the fastest image).  Each key is optional; flags
given on the command line win.  The default scheduler (and its timestep spacing) is what
scheduler/scheduler_config.json says, as for any folder.  model_index.json is left as
optimum-cli writes it, so the folder stays interchangeable.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from sdcli.model.config_checks import Config, read_json
from sdcli.util.errors import UsageError

METADATA = "sdcli.json"  # sdcli's own file in a converted folder (what convert wrote, and these defaults)
KEY = "defaults"
# generate's --steps, --guidance-scale and --vae (engine.request uses these)
STEPS_MAX = 1000
GUIDANCE_MAX = 100.0  # ComfyUI's limit; far beyond it float32 guidance overflows to NaN pixels
VAES = ("full", "tiny")  # "tiny": the TAESD that `sdcli convert --tiny-vae` adds
KEYS = ("steps", "guidance_scale", "vae")


@dataclass(frozen=True)
class GenerationDefaults:
    """The folder's steps, guidance scale and VAE, each None where it gives none."""

    steps: int | None = None
    guidance_scale: float | None = None
    vae: str | None = None  # "full" or "tiny" (vae_decoder_tiny/)

    def __bool__(self) -> bool:
        return self.steps is not None or self.guidance_scale is not None or self.vae is not None

    def as_dict(self) -> dict:
        """The keys that are set (what sdcli.json holds)."""
        return {key: value for key, value in asdict(self).items() if value is not None}


def check_defaults(value) -> GenerationDefaults:
    """sdcli.json's "defaults" object, checked: UsageError naming the key for a wrong type,
    range or an unknown key (a misspelt one would be ignored without a word)."""
    where = f"{METADATA} {KEY}"
    if not isinstance(value, dict):
        raise UsageError(f'{METADATA}: "{KEY}" must be an object such as {{"steps": 4, "guidance_scale": 1.0}}, '
                         f"got {json.dumps(value)[:60]}")
    unknown = sorted(set(value) - set(KEYS))
    if unknown:
        raise UsageError(f"{where}: unknown key {unknown[0]!r} (steps, guidance_scale and vae can be set)")
    config = Config(value, where)
    return GenerationDefaults(config.integer("steps", 1, STEPS_MAX, None),
                              config.number("guidance_scale", 0.0, GUIDANCE_MAX, None),
                              config.text("vae", VAES, None))


def check_vae_flag(vae: str | None, flag: str = "--default-vae") -> None:
    """UsageError for a VAE name other than full or tiny."""
    if vae is not None and vae not in VAES:
        raise UsageError(f"{flag} must be one of {', '.join(VAES)}, got {vae!r}")


def read_metadata(root: Path) -> dict:
    """The folder's sdcli.json ({} when it has none, e.g. a folder optimum-cli wrote)."""
    return read_json(Path(root) / METADATA, required=False) or {}


def read_defaults(root: Path) -> GenerationDefaults:
    """The folder's defaults (none set when it has no sdcli.json or no "defaults" in it)."""
    value = read_metadata(root).get(KEY)
    return GenerationDefaults() if value is None else check_defaults(value)
