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


def create_scheduler(name: str | None, model_config: Mapping[str, Any]) -> Scheduler:
    """A scheduler configured from a model's scheduler config (dict from scheduler_config.json).

    ``name`` is one of ``scheduler_names()`` (a diffusers class name such as ``"EulerDiscreteScheduler"``
    is accepted too), or None for the class named by the config's ``_class_name``.
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
    return SCHEDULERS[key].from_config(model_config)
