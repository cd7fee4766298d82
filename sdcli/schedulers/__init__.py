"""numpy noise schedulers, numerically matching their diffusers counterparts (float32).

``create_scheduler(name, model_config)`` builds one from a model's ``scheduler_config.json`` the way
``XScheduler.from_config(config)`` does in diffusers; ``name=None`` picks the class the config names.
"""

from __future__ import annotations

from typing import Any, Mapping

from .base import Scheduler, SchedulerConfigError
from .ddim import DDIMScheduler
from .euler import EulerDiscreteScheduler
from .euler_ancestral import EulerAncestralDiscreteScheduler
from .pndm import PNDMScheduler

SCHEDULERS: dict[str, type[Scheduler]] = {
    "pndm": PNDMScheduler,
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
}

_BY_DIFFUSERS_CLASS: dict[str, str] = {cls.diffusers_class: name for name, cls in SCHEDULERS.items()}

__all__ = [
    "SCHEDULERS",
    "Scheduler",
    "SchedulerConfigError",
    "PNDMScheduler",
    "DDIMScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "create_scheduler",
    "apply_sd_pipeline_fixups",
    "scheduler_names",
    "name_for_diffusers_class",
]


def scheduler_names() -> list[str]:
    return list(SCHEDULERS)


def name_for_diffusers_class(class_name: str) -> str:
    """Our scheduler name for a diffusers scheduler class name; ValueError if we have no such scheduler."""
    try:
        return _BY_DIFFUSERS_CLASS[class_name]
    except KeyError:
        supported = ", ".join(f"{cls} ({name})" for cls, name in _BY_DIFFUSERS_CLASS.items())
        raise ValueError(f"scheduler class {class_name!r} is not supported; supported: {supported}") from None


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

    ``name`` is one of ``scheduler_names()`` (a diffusers class name such as ``"EulerDiscreteScheduler"``
    is accepted too), or None for the class named by the config's ``_class_name``. The result is what
    ``XScheduler.from_config(model_config)`` gives; with ``sd_pipeline=True`` it is what a diffusers
    Stable Diffusion (img2img) pipeline actually runs with (see ``apply_sd_pipeline_fixups``): e.g. DDIM
    made from the SD 1.5 config has clip_sample=True by default, which that pipeline turns off.
    """
    if name is None:
        class_name = model_config.get("_class_name")
        if not class_name:
            raise ValueError("scheduler config has no _class_name; pass a scheduler name: " + ", ".join(SCHEDULERS))
        key = name_for_diffusers_class(str(class_name))
    elif name in SCHEDULERS:
        key = name
    elif name in _BY_DIFFUSERS_CLASS:
        key = _BY_DIFFUSERS_CLASS[name]
    else:
        raise ValueError(f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}")
    scheduler = SCHEDULERS[key].from_config(model_config)
    return apply_sd_pipeline_fixups(scheduler) if sd_pipeline else scheduler
