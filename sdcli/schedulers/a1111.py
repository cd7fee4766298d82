"""AUTOMATIC1111's sampler and schedule-type vocabulary (its 1.9+ split), both ways.

Since 1.9, A1111 names a sampler (`Sampler: DPM++ 2M`) and, separately, how its noise levels
are spaced (`Schedule type: Karras`).  `Schedule type: Automatic` (or none at all, in a PNG
written before 1.9 or by another tool) means the sampler's own default, which is Karras for
DPM++ 2M and DPM++ SDE.  The older combined names (`DPM++ 2M Karras`) still read as a sampler
plus its schedule type.

Writing: `a1111_sampler(name)` is A1111's sampler for one of our schedulers, and
`schedule_type(name, config)` the schedule type that spaces its steps the way the scheduler
does with that (diffusers) config: diffusers' "leading" timesteps are A1111's "DDIM" schedule
(every (1000 // n)-th training step from steps_offset), "linspace" its "Uniform", "trailing"
its "SGM Uniform", and Karras sigmas "Karras".

Reading: `from_a1111(sampler, schedule)` is our scheduler for A1111's pair, or raises
A1111Unsupported when we have no scheduler that steps that way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from sdcli.schedulers import A1111_NAMES

# Our scheduler -> A1111's sampler (1.9+ names, without a schedule-type suffix: the Karras
# variants are the same sampler with the "Karras" schedule type)
SAMPLERS: dict[str, str] = {name: a1111.removesuffix(" Karras") for name, a1111 in A1111_NAMES.items()}

# A1111's aliases of those samplers (its sd_samplers_* tables), and each sampler's default
# schedule type ("Automatic" means this one), and A1111's option flags we report
SAMPLER_ALIASES: dict[str, list[str]] = {
    "PLMS": [], "DDIM": [], "UniPC": [],
    "Euler": ["k_euler"], "Euler a": ["k_euler_a", "k_euler_ancestral"], "LMS": ["k_lms"], "Heun": ["k_heun"],
    "DPM++ 2M": ["k_dpmpp_2m"], "DPM++ SDE": ["k_dpmpp_sde"], "LCM": ["k_lcm"],
}
SAMPLER_DEFAULT_SCHEDULE: dict[str, str] = {"DPM++ 2M": "karras", "DPM++ SDE": "karras"}
KARRAS_VARIANTS: dict[str, str] = {"dpmpp_2m": "dpmpp_2m_karras", "dpmpp_sde": "dpmpp_sde_karras"}


@dataclass(frozen=True)
class ScheduleType:
    name: str
    label: str
    aliases: list[str] = field(default_factory=list)
    default_rho: float = -1.0
    need_inner_model: bool = False


# A1111 1.10's schedule types (sd_schedulers.py), in its order
SCHEDULE_TYPES: list[ScheduleType] = [
    ScheduleType("automatic", "Automatic"),
    ScheduleType("uniform", "Uniform", need_inner_model=True),
    ScheduleType("karras", "Karras", default_rho=7.0),
    ScheduleType("exponential", "Exponential"),
    ScheduleType("polyexponential", "Polyexponential", default_rho=1.0),
    ScheduleType("sgm_uniform", "SGM Uniform", ["SGMUniform"], need_inner_model=True),
    ScheduleType("kl_optimal", "KL Optimal"),
    ScheduleType("align_your_steps", "Align Your Steps"),
    ScheduleType("simple", "Simple", need_inner_model=True),
    ScheduleType("normal", "Normal", need_inner_model=True),
    ScheduleType("ddim", "DDIM", need_inner_model=True),
    ScheduleType("beta", "Beta", need_inner_model=True),
]
_SCHEDULE_BY_KEY = {key.lower(): s for s in SCHEDULE_TYPES for key in (s.name, s.label, *s.aliases)}
_SCHEDULES = {s.name: s for s in SCHEDULE_TYPES}

# diffusers' timestep spacing -> the schedule type that spaces steps the same way
SPACING_SCHEDULE = {"leading": "ddim", "linspace": "uniform", "trailing": "sgm_uniform"}
# schedule types that only choose the spacing: a scheduler without Karras sigmas runs them all
# with the model's own spacing
SPACING_TYPES = ("uniform", "ddim", "sgm_uniform", "simple", "normal")


class A1111Unsupported(ValueError):
    """An A1111 sampler or schedule type that none of our schedulers reproduces."""


def a1111_sampler(name: str) -> str:
    return SAMPLERS.get(name, name)


def schedule_label(key: str) -> str:
    return _SCHEDULES[key].label


def find_schedule_type(text: str | None) -> ScheduleType | None:
    """A1111's schedule type for a name, label or alias (any case); None for none given."""
    if text is None or not str(text).strip():
        return None
    found = _SCHEDULE_BY_KEY.get(str(text).strip().lower())
    if found is None:
        raise A1111Unsupported(f"unknown schedule type {text!r}; A1111's are: "
                               + ", ".join(s.label for s in SCHEDULE_TYPES))
    return found


def schedule_type(name: str, config: Mapping[str, Any] | None = None) -> str:
    """The label of A1111's schedule type that spaces the steps as our scheduler `name` does
    with scheduler `config` (the one it runs with; None: its defaults)."""
    config = config or {}
    if name.endswith("_karras") or config.get("use_karras_sigmas"):
        return "Karras"
    if config.get("use_exponential_sigmas"):
        return "Exponential"
    if config.get("use_beta_sigmas"):
        return "Beta"
    if name == "lcm":  # LCM's own skipping schedule is closest to evenly spaced from the top
        return "SGM Uniform"
    spacing = config.get("timestep_spacing") or ("leading" if name in ("ddim", "pndm") else "linspace")
    return schedule_label(SPACING_SCHEDULE.get(spacing, "uniform"))


def _split_sampler(sampler: str) -> tuple[str, ScheduleType | None]:
    """A1111's sampler name and the schedule type its old combined name carries
    ("DPM++ 2M Karras" -> "DPM++ 2M", Karras), as A1111 1.9+ splits them."""
    text = sampler.strip()
    for s in SCHEDULE_TYPES:
        for option in (s.label, s.name, *s.aliases):
            if text.lower().endswith(" " + option.lower()) and len(text) > len(option) + 1:
                return text[: -(len(option) + 1)].strip(), s
    return text, None


def _base_scheduler(sampler: str) -> str | None:
    key = sampler.strip().lower()
    for ours, a1111 in SAMPLERS.items():
        if key == a1111.lower() or key in (a.lower() for a in SAMPLER_ALIASES.get(a1111, [])):
            return "dpmpp_2m" if a1111 == "DPM++ 2M" else "dpmpp_sde" if a1111 == "DPM++ SDE" else ours
    return None


def _own_name(sampler: str) -> str:
    """One of our scheduler names ("dpmpp_2m"), or a diffusers class name, taken as it is."""
    from sdcli.schedulers import resolve_scheduler_name

    try:
        return resolve_scheduler_name(sampler)
    except ValueError:
        raise A1111Unsupported(f"unknown sampler {sampler!r}; the samplers are: "
                               + ", ".join(dict.fromkeys(SAMPLERS.values()))) from None


def from_a1111(sampler: str, schedule: str | None = None, *, automatic_is_default: bool = True) -> str:
    """Our scheduler for A1111's `sampler` (1.9+ name, old combined name, or an alias) and
    `schedule` (a schedule type's label or name; None or "" as Automatic).

    Automatic is the sampler's own default (Karras for DPM++ 2M and DPM++ SDE), unless
    `automatic_is_default` is False (a PNG sdcli wrote before it recorded the schedule type).
    One of our own names (`dpmpp_2m`) is taken as it is.  A1111Unsupported when no scheduler
    of ours steps that way."""
    base_name, suffix = _split_sampler(sampler)
    ours = _base_scheduler(base_name)
    literal = False
    if ours is None:
        ours, suffix, literal = _own_name(sampler), None, True
    given = find_schedule_type(schedule)
    chosen = suffix or given
    if chosen is None or chosen.name == "automatic":
        if literal or not automatic_is_default:
            return ours
        default = SAMPLER_DEFAULT_SCHEDULE.get(SAMPLERS[ours])
        return KARRAS_VARIANTS[ours] if default == "karras" else ours
    if chosen.name == "karras":
        if ours not in KARRAS_VARIANTS:
            raise A1111Unsupported(f"schedule type Karras is not available with {SAMPLERS[ours]} here "
                                   f"(only with {', '.join(SAMPLERS[k] for k in KARRAS_VARIANTS)})")
        return KARRAS_VARIANTS[ours]
    if chosen.name in SPACING_TYPES:
        return ours
    raise A1111Unsupported(f"schedule type {chosen.label} is not available here (Automatic, Karras, or the "
                           "model's own spacing: Uniform, DDIM or SGM Uniform)")
