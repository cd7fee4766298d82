"""numpy noise schedulers, numerically matching their diffusers counterparts (float32).

``create_scheduler(name, model_config)`` builds one from a model's ``scheduler_config.json`` the way
``XScheduler.from_config(config)`` does in diffusers; ``name=None`` picks the class the config names.
"""

from __future__ import annotations

from typing import Any, Mapping

from .base import Scheduler, SchedulerConfigError
from .ddim import DDIMScheduler
from .dpm_multistep import DPMSolverMultistepKarrasScheduler, DPMSolverMultistepScheduler
from .dpmpp_sde import DPMSolverSDEKarrasScheduler, DPMSolverSDEScheduler
from .euler import EulerDiscreteScheduler
from .euler_ancestral import EulerAncestralDiscreteScheduler
from .flow_match import A1111_NAME as FLOW_A1111_NAME
from .flow_match import A1111_SCHEDULE_TYPE as FLOW_A1111_SCHEDULE_TYPE
from .flow_match import FlowMatchEulerDiscreteScheduler
from .heun import HeunDiscreteScheduler
from .lcm import LCMScheduler
from .lms import LMSDiscreteScheduler
from .pndm import PNDMScheduler
from .unipc import UniPCMultistepScheduler

SCHEDULERS: dict[str, type[Scheduler]] = {
    "pndm": PNDMScheduler,
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "lms": LMSDiscreteScheduler,
    "heun": HeunDiscreteScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler,
    "dpmpp_2m_karras": DPMSolverMultistepKarrasScheduler,
    "dpmpp_sde": DPMSolverSDEScheduler,
    "dpmpp_sde_karras": DPMSolverSDEKarrasScheduler,
    "unipc": UniPCMultistepScheduler,
    "lcm": LCMScheduler,
}

# The flow-matching schedulers (FLUX, Z-Image...): picked by a model family's own code, not through
# SCHEDULERS / create_scheduler (whose names and A1111 aliases are for the UNet models). In PNG
# parameters flow_euler is "Sampler: Euler" with "Schedule type: Simple" (FLOW_A1111_NAME,
# FLOW_A1111_SCHEDULE_TYPE).
FLOW_SCHEDULERS: dict[str, type[Scheduler]] = {
    "flow_euler": FlowMatchEulerDiscreteScheduler,
}

# Our name -> the sampler's name in the AUTOMATIC1111 web UI (also accepted by create_scheduler).
A1111_NAMES: dict[str, str] = {
    "pndm": "PLMS",
    "ddim": "DDIM",
    "euler": "Euler",
    "euler_a": "Euler a",
    "lms": "LMS",
    "heun": "Heun",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_karras": "DPM++ 2M Karras",
    "dpmpp_sde": "DPM++ SDE",
    "dpmpp_sde_karras": "DPM++ SDE Karras",
    "unipc": "UniPC",
    "lcm": "LCM",
}

# diffusers class -> our name; a class with a Karras variant maps to the base name (the config's
# use_karras_sigmas then decides), so the first name registered for a class wins.
_BY_DIFFUSERS_CLASS: dict[str, str] = {}
for _name, _cls in SCHEDULERS.items():
    _BY_DIFFUSERS_CLASS.setdefault(_cls.diffusers_class, _name)

_ALIASES: dict[str, str] = {}
for _name in SCHEDULERS:
    _ALIASES[_name.lower()] = _name
for _name, _a1111 in A1111_NAMES.items():
    _ALIASES.setdefault(_a1111.lower(), _name)
for _cls_name, _name in _BY_DIFFUSERS_CLASS.items():
    _ALIASES.setdefault(_cls_name.lower(), _name)
del _name, _cls, _a1111, _cls_name

__all__ = [
    "SCHEDULERS",
    "Scheduler",
    "SchedulerConfigError",
    "A1111_NAMES",
    "PNDMScheduler",
    "DDIMScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "LMSDiscreteScheduler",
    "HeunDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverMultistepKarrasScheduler",
    "DPMSolverSDEScheduler",
    "DPMSolverSDEKarrasScheduler",
    "UniPCMultistepScheduler",
    "LCMScheduler",
    "FlowMatchEulerDiscreteScheduler",
    "FLOW_SCHEDULERS",
    "FLOW_A1111_NAME",
    "FLOW_A1111_SCHEDULE_TYPE",
    "create_scheduler",
    "resolve_scheduler_name",
    "apply_sd_pipeline_fixups",
    "pipeline_switch_config",
    "scheduler_names",
    "name_for_diffusers_class",
]


def scheduler_names() -> list[str]:
    """Our short scheduler names, classic samplers first."""
    return list(SCHEDULERS)


def resolve_scheduler_name(name: str) -> str:
    """Our short name for ``name``: one of ``scheduler_names()``, an A1111 sampler name (``"DPM++ 2M
    Karras"``) or a diffusers class name, matched case-insensitively. ValueError if none matches."""
    key = _ALIASES.get(str(name).strip().lower())
    if key is None:
        choices = ", ".join(f"{n} ({A1111_NAMES[n]})" for n in SCHEDULERS)
        raise ValueError(f"unknown scheduler {name!r}; choose one of: {choices}")
    return key


def name_for_diffusers_class(class_name: str) -> str:
    """Our scheduler name for a diffusers scheduler class name; ValueError if we have no such scheduler."""
    try:
        return _BY_DIFFUSERS_CLASS[class_name]
    except KeyError:
        supported = ", ".join(f"{cls} ({name})" for cls, name in _BY_DIFFUSERS_CLASS.items())
        raise ValueError(f"scheduler class {class_name!r} is not supported; supported: {supported}") from None


def pipeline_switch_config(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """The config another scheduler is built from when a diffusers Stable Diffusion pipeline switches
    to it (``XScheduler.from_config(pipe.scheduler.config)``): the model's, with the fix-ups the
    pipeline made at load time (see ``apply_sd_pipeline_fixups``) as set values."""
    fixed = dict(model_config)
    if "steps_offset" in fixed and fixed["steps_offset"] != 1:
        fixed["steps_offset"] = 1
    if fixed.get("clip_sample") is True:
        fixed["clip_sample"] = False
    return fixed


def apply_sd_pipeline_fixups(scheduler: Scheduler) -> Scheduler:
    """What diffusers' StableDiffusionPipeline / StableDiffusionImg2ImgPipeline do to the scheduler they
    are given (in ``__init__``, with a deprecation warning): ``steps_offset`` other than 1 becomes 1 and
    ``clip_sample=True`` becomes False. Both are read at set_timesteps / step time, so changing the config
    is enough. Returns the same scheduler."""
    if scheduler.config.get("steps_offset", 1) != 1:
        scheduler.config["steps_offset"] = 1
    if scheduler.config.get("clip_sample", False) is True:
        scheduler.config["clip_sample"] = False
    return scheduler


def create_scheduler(name: str | None, model_config: Mapping[str, Any], sd_pipeline: bool = False) -> Scheduler:
    """A scheduler configured from a model's scheduler config (dict from scheduler_config.json).

    ``name`` is one of ``scheduler_names()`` (an A1111 sampler name such as ``"DPM++ 2M Karras"`` or a
    diffusers class name such as ``"EulerDiscreteScheduler"`` is accepted too, any case), or None for the class named by the config's ``_class_name``. The result is what
    ``XScheduler.from_config(model_config)`` gives; with ``sd_pipeline=True`` it is what a diffusers
    Stable Diffusion (img2img) pipeline actually runs with (see ``apply_sd_pipeline_fixups``): e.g. DDIM
    made from the SD 1.5 config has clip_sample=True by default, which that pipeline turns off.
    """
    if name is None:
        class_name = model_config.get("_class_name")
        if not class_name:
            raise ValueError("scheduler config has no _class_name; pass a scheduler name: " + ", ".join(SCHEDULERS))
        key = name_for_diffusers_class(str(class_name))
    else:
        key = resolve_scheduler_name(name)
    scheduler = SCHEDULERS[key].from_config(model_config)
    return apply_sd_pipeline_fixups(scheduler) if sd_pipeline else scheduler
