"""LMS, Heun, DPM-Solver++ (2M, 2M Karras, variants), UniPC against diffusers (torch, float32), and the
scheduler name aliases (A1111 sampler names)."""

from __future__ import annotations

import numpy as np
import pytest

from sdcli.util.rng import TorchRNG
from sdcli.schedulers import (
    A1111_NAMES,
    SCHEDULERS,
    DPMSolverMultistepKarrasScheduler,
    DPMSolverMultistepScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    UniPCMultistepScheduler,
    create_scheduler,
    name_for_diffusers_class,
    resolve_scheduler_name,
    scheduler_names,
)
from sdcli.schedulers.lms import lms_coefficient
from tests.scheduler_checks import (
    ATOL,
    CONFIG_IDS,
    CONFIGS,
    FIXED,
    RTOL,
    SD15,
    SHAPE,
    compare_schedules,
    diffusers_defaults,
    img2img_timesteps,
    init_args,
    noised_init_latents,
    record,
    run_loop,
    scheduler_pair,
    sd15_config,
)

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

DIFFUSERS_CLASSES = {
    "lms": diffusers.LMSDiscreteScheduler,
    "heun": diffusers.HeunDiscreteScheduler,
    "dpmpp_2m": diffusers.DPMSolverMultistepScheduler,
    "dpmpp_2m_karras": diffusers.DPMSolverMultistepScheduler,
    "unipc": diffusers.UniPCMultistepScheduler,
}
# what the name forces on top of the config
FORCED = {"dpmpp_2m_karras": {"use_karras_sigmas": True}}

SPACINGS = {
    "sd15": {},
    "linspace": {"timestep_spacing": "linspace"},
    "leading": {"timestep_spacing": "leading"},
    "trailing": {"timestep_spacing": "trailing"},
}
EXTRA_VARIANTS = {
    "lms": {
        "karras": {"use_karras_sigmas": True},
        "exponential": {"use_exponential_sigmas": True},
        "linear_betas": {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02, "steps_offset": 0},
    },
    "heun": {
        "karras": {"use_karras_sigmas": True},
        "karras_leading": {"use_karras_sigmas": True, "timestep_spacing": "leading"},
        "clip": {"clip_sample": True, "clip_sample_range": 1.5},
    },
    "dpmpp_2m": {
        "order3": {"solver_order": 3},
        "heun_solver": {"solver_type": "heun"},
        "sde": {"algorithm_type": "sde-dpmsolver++"},
        "sde_order3": {"algorithm_type": "sde-dpmsolver++", "solver_order": 3},
        "dpmsolver": {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"},
        "sigma_min": {"final_sigmas_type": "sigma_min"},
        "euler_at_final": {"euler_at_final": True, "final_sigmas_type": "sigma_min"},
        "lu_lambdas": {"use_lu_lambdas": True},
        "exponential": {"use_exponential_sigmas": True},
        "lambda_clip": {"lambda_min_clipped": -2.5},
        "zero_snr": {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"},
        "cosine_betas": {"beta_schedule": "squaredcos_cap_v2"},
    },
    "dpmpp_2m_karras": {
        "sde": {"algorithm_type": "sde-dpmsolver++"},
        "sigma_min": {"final_sigmas_type": "sigma_min"},
        # (not cosine betas: the unrounded Karras timesteps truncate to a repeated 999 there, and
        # diffusers' own loop then runs off the end of its sigmas)
    },
    "unipc": {
        "karras": {"use_karras_sigmas": True},
        # bh1 and noise prediction end in NaN in diffusers when the final sigma is 0 (inf * 0 in the
        # last step; ours returns the finite limit for bh1): compared with final_sigmas_type="sigma_min"
        "bh1": {"solver_type": "bh1", "final_sigmas_type": "sigma_min"},
        "order3": {"solver_order": 3},
        "noise_pred": {"predict_x0": False, "final_sigmas_type": "sigma_min"},
        "sigma_min": {"final_sigmas_type": "sigma_min"},
        "no_corrector": {"disable_corrector": [0, 3]},
        "karras_range": {"use_karras_sigmas": True, "sigma_min": 0.05, "sigma_max": 10.0},
    },
}

# Timesteps / sigmas derived from sigmas through log (Karras, exponential, log-linear): float32 log in
# torch and numpy can differ by one ulp, which moves an interpolated timestep by ~1e-5 (and, once
# rounded to an integer, could in principle flip it; it does not in these cases).
LOOSE_TIMESTEPS = {("lms", "karras"), ("lms", "exponential"), ("heun", "karras"), ("heun", "karras_leading")}


def _cases():
    for name in DIFFUSERS_CLASSES:
        for vname, extra in {**SPACINGS, **EXTRA_VARIANTS[name]}.items():
            preds = ["epsilon", "v_prediction"]
            if vname == "sd15":
                preds.append("sample")
            for pred in preds:
                if vname == "zero_snr" and pred == "epsilon":
                    continue  # x0 = (x - sigma * eps) / alpha with alpha ~ 2**-12 at the first step
                yield pytest.param(name, vname, extra, pred, id=f"{name}-{vname}-{pred}")


def _build(name: str, cfg: dict):
    """Ours via create_scheduler; diffusers' the way a pipeline switches schedulers:
    ``XScheduler.from_config(pipe.scheduler.config)`` from the loaded PNDM."""
    return scheduler_pair(name, cfg, DIFFUSERS_CLASSES[name], **FORCED.get(name, {}))


def _compare_schedules(ours, theirs, key):
    compare_schedules(ours, theirs, key in LOOSE_TIMESTEPS)
    assert ours.order == theirs.order


def _record(name: str, value: float) -> None:
    """The largest |ours - diffusers| latent difference of a loop (run_loop compares within 1e-5
    relative + 1e-5 absolute: the sigmas themselves can differ by one float32 ulp, as torch's
    vectorised float32 sqrt is not correctly rounded (about 1 in 5 of the training sigmas), nor are
    its log / exp, which the DPM / UniPC coefficients go through)."""
    record(f"largest latent difference {name}", value)


@pytest.mark.parametrize("steps", [10, 16])
@pytest.mark.parametrize("name,vname,extra,pred", list(_cases()))
def test_txt2img_loop_matches_diffusers(name, vname, extra, pred, steps):
    cfg = sd15_config(extra, pred)
    ours, theirs = _build(name, cfg)
    ours.set_timesteps(steps)
    theirs.set_timesteps(steps)
    _compare_schedules(ours, theirs, (name, vname))

    seed = 1000 + steps
    noise = TorchRNG(seed).randn(SHAPE)
    lat_ours = noise * np.float32(ours.init_noise_sigma)
    lat_theirs = (torch.from_numpy(noise) * theirs.init_noise_sigma).numpy()
    _record(name, run_loop(ours, theirs, lat_ours, lat_theirs, ours.timesteps, theirs.timesteps, seed=seed + 1))


IMG2IMG_CASES = [
    pytest.param(name, vname, extra, pred, id=f"{name}-{vname}-{pred}")
    for name in DIFFUSERS_CLASSES
    for vname, extra, pred in [
        ("sd15", {}, "epsilon"),
        ("trailing", {"timestep_spacing": "trailing"}, "v_prediction"),
    ]
] + [
    pytest.param("heun", "karras", {"use_karras_sigmas": True}, "epsilon", id="heun-karras-epsilon"),
    pytest.param("dpmpp_2m", "sde", {"algorithm_type": "sde-dpmsolver++"}, "epsilon", id="dpmpp_2m-sde-epsilon"),
    pytest.param("unipc", "order3", {"solver_order": 3}, "epsilon", id="unipc-order3-epsilon"),
]


@pytest.mark.parametrize("strength", [0.3, 0.6, 1.0])
@pytest.mark.parametrize("name,vname,extra,pred", IMG2IMG_CASES)
def test_img2img_matches_diffusers(name, vname, extra, pred, strength):
    """StableDiffusionImg2ImgPipeline: get_timesteps, set_begin_index, add_noise at the first timestep."""
    cfg = sd15_config(extra, pred)
    ours, theirs = _build(name, cfg)
    t_start, ts_ours, ts_theirs = img2img_timesteps(ours, theirs, strength)
    if (name, vname) in LOOSE_TIMESTEPS:
        np.testing.assert_allclose(ts_ours, ts_theirs.numpy(), rtol=1e-6)
    else:
        np.testing.assert_array_equal(ts_ours, ts_theirs.numpy())
    ours.set_begin_index(t_start * ours.order)
    theirs.set_begin_index(t_start * theirs.order)
    lat_ours, lat_theirs = noised_init_latents(ours, theirs, ts_ours[:1], ts_theirs[:1])
    _record(name, run_loop(ours, theirs, lat_ours, lat_theirs, ts_ours, ts_theirs, seed=5))


@pytest.mark.parametrize("name", list(DIFFUSERS_CLASSES))
def test_add_noise_without_begin_index(name):
    """Without set_begin_index the timestep is looked up in the schedule (second match if repeated)."""
    ours, theirs = _build(name, sd15_config({"timestep_spacing": "leading"}, "epsilon"))
    ours.set_timesteps(15)
    theirs.set_timesteps(15)
    x0 = TorchRNG(1).randn(SHAPE)
    noise = TorchRNG(2).randn(SHAPE)
    k = 6 * ours.order
    got = ours.add_noise(x0, noise, ours.timesteps[k : k + 1])
    ref = theirs.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), theirs.timesteps[k : k + 1]).numpy()
    np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------------------------------------------
# LMS coefficients
# ---------------------------------------------------------------------------------------------------


def test_lms_coefficients_are_exact_integrals():
    """Exact polynomial integrals vs scipy's adaptive quadrature of the same float64 integrand, and vs
    diffusers' own (quadrature of a float32 integrand, hence only ~1e-6)."""
    integrate = pytest.importorskip("scipy.integrate")
    ours = create_scheduler("lms", SD15)
    theirs = diffusers.LMSDiscreteScheduler.from_config(SD15)
    ours.set_timesteps(25)
    theirs.set_timesteps(25)
    sig = ours.sigmas.astype(np.float64)
    checked = 0
    for t in range(len(ours.timesteps)):
        order = min(t + 1, 4)
        for j in range(order):
            got = lms_coefficient(ours.sigmas, order, t, j)

            def basis(tau, j=j, order=order, t=t):
                prod = 1.0
                for k in range(order):
                    if k != j:
                        prod *= (tau - sig[t - k]) / (sig[t - j] - sig[t - k])
                return prod

            ref = integrate.quad(basis, sig[t], sig[t + 1], epsabs=0, epsrel=1e-13)[0]
            np.testing.assert_allclose(got, ref, rtol=1e-7, atol=1e-12)
            np.testing.assert_allclose(got, theirs.get_lms_coefficient(order, t, j), rtol=1e-5, atol=1e-7)
            checked += 1
    assert checked == 25 * 4 - 6
    # the coefficients of a step sum to the step length (they integrate a partition of unity)
    total = sum(lms_coefficient(ours.sigmas, 4, 10, j) for j in range(4))
    np.testing.assert_allclose(total, sig[11] - sig[10], rtol=1e-12)


# ---------------------------------------------------------------------------------------------------
# config handling and names
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(DIFFUSERS_CLASSES))
def test_defaults_are_diffusers_defaults(name):
    assert SCHEDULERS[name].defaults == diffusers_defaults(DIFFUSERS_CLASSES[name])
    assert SCHEDULERS[name].order == DIFFUSERS_CLASSES[name].order
    assert SCHEDULERS[name].diffusers_class == DIFFUSERS_CLASSES[name].__name__


@pytest.mark.parametrize("name", list(DIFFUSERS_CLASSES))
@pytest.mark.parametrize("cfg", CONFIGS, ids=CONFIG_IDS)
def test_from_config_carries_keys_like_diffusers(name, cfg):
    ours = create_scheduler(name, cfg)
    ref = DIFFUSERS_CLASSES[name].from_config(cfg, **FORCED.get(name, {}))
    assert ours.config == init_args(name, ref.config)
    loaded = getattr(diffusers, cfg["_class_name"]).from_config(cfg).config
    via_loaded = DIFFUSERS_CLASSES[name].from_config(loaded, **FORCED.get(name, {}))
    assert SCHEDULERS[name].from_config(loaded).config == init_args(name, via_loaded.config)


def test_sd15_defaults_of_new_schedulers():
    dpm = create_scheduler("dpmpp_2m", SD15)
    assert isinstance(dpm, DPMSolverMultistepScheduler)
    assert dpm.config["algorithm_type"] == "dpmsolver++" and dpm.config["solver_order"] == 2
    assert dpm.config["use_karras_sigmas"] is False
    karras = create_scheduler("dpmpp_2m_karras", {**SD15, "use_karras_sigmas": False})
    assert isinstance(karras, DPMSolverMultistepKarrasScheduler) and karras.config["use_karras_sigmas"] is True
    uni = create_scheduler("unipc", SD15)
    assert uni.config["solver_type"] == "bh2" and uni.config["predict_x0"] is True and uni.config["solver_order"] == 2
    heun = create_scheduler("heun", SD15)
    assert heun.order == 2
    heun.set_timesteps(10)
    assert len(heun.timesteps) == 19  # every timestep but the first twice: one UNet call per entry
    for name in DIFFUSERS_CLASSES:
        assert create_scheduler(name, SD15).config["steps_offset"] == 1


def test_registry_names_and_aliases():
    assert scheduler_names() == [
        "pndm", "ddim", "euler", "euler_a", "lms", "heun", "dpmpp_2m", "dpmpp_2m_karras", "dpmpp_sde",
        "dpmpp_sde_karras", "unipc", "lcm",
    ]
    assert set(A1111_NAMES) == set(SCHEDULERS)
    expected = {
        "pndm": "PLMS", "ddim": "DDIM", "euler": "Euler", "euler_a": "Euler a", "lms": "LMS",
        "dpmpp_2m": "DPM++ 2M", "dpmpp_2m_karras": "DPM++ 2M Karras", "heun": "Heun", "unipc": "UniPC",
        "lcm": "LCM", "dpmpp_sde": "DPM++ SDE", "dpmpp_sde_karras": "DPM++ SDE Karras",
    }
    assert A1111_NAMES == expected
    for name, a1111 in A1111_NAMES.items():
        assert SCHEDULERS[name].name == name
        for alias in (name, name.upper(), a1111, a1111.lower(), a1111.upper(), f"  {a1111} "):
            assert resolve_scheduler_name(alias) == name
            assert type(create_scheduler(alias, SD15)) is SCHEDULERS[name]
    assert resolve_scheduler_name("UniPCMultistepScheduler") == "unipc"
    assert resolve_scheduler_name("dpmsolvermultistepscheduler") == "dpmpp_2m"
    with pytest.raises(ValueError) as err:
        resolve_scheduler_name("DPM++ 3M SDE")
    for name, a1111 in A1111_NAMES.items():
        assert name in str(err.value) and a1111 in str(err.value)
    with pytest.raises(ValueError, match="dpmpp_2m_karras"):
        create_scheduler("DPM++ 2S a Karras", SD15)  # not implemented

    # a model's own scheduler class: Karras variants map to the base name, its config decides
    assert name_for_diffusers_class("LMSDiscreteScheduler") == "lms"
    assert name_for_diffusers_class("HeunDiscreteScheduler") == "heun"
    assert name_for_diffusers_class("DPMSolverMultistepScheduler") == "dpmpp_2m"
    assert name_for_diffusers_class("UniPCMultistepScheduler") == "unipc"
    assert name_for_diffusers_class("DPMSolverSDEScheduler") == "dpmpp_sde"
    with pytest.raises(ValueError):
        name_for_diffusers_class("KDPM2DiscreteScheduler")
    own = create_scheduler(None, {**SD15, "_class_name": "DPMSolverMultistepScheduler", "use_karras_sigmas": True})
    assert type(own) is DPMSolverMultistepScheduler and own.config["use_karras_sigmas"] is True
    assert isinstance(create_scheduler(None, {**SD15, "_class_name": "LMSDiscreteScheduler"}), LMSDiscreteScheduler)
    assert isinstance(create_scheduler(None, {**SD15, "_class_name": "HeunDiscreteScheduler"}), HeunDiscreteScheduler)
    assert isinstance(
        create_scheduler(None, {**SD15, "_class_name": "UniPCMultistepScheduler"}), UniPCMultistepScheduler
    )


def test_karras_name_gives_karras_sigmas():
    plain = create_scheduler("dpmpp_2m", SD15)
    karras = create_scheduler("dpm++ 2m karras", SD15)
    plain.set_timesteps(20)
    karras.set_timesteps(20)
    assert not np.array_equal(plain.sigmas, karras.sigmas)
    ref = diffusers.DPMSolverMultistepScheduler.from_config(SD15, use_karras_sigmas=True)
    ref.set_timesteps(20)
    np.testing.assert_array_equal(karras.timesteps, ref.timesteps.numpy())


@pytest.mark.parametrize(
    "name,extra",
    [
        ("dpmpp_2m", {"thresholding": True}),
        ("dpmpp_2m", {"use_beta_sigmas": True}),
        ("dpmpp_2m", {"use_flow_sigmas": True}),
        ("dpmpp_2m", {"algorithm_type": "dpmsolver"}),  # needs final_sigmas_type="sigma_min"
        ("dpmpp_2m", {"algorithm_type": "unknown"}),
        ("dpmpp_2m", {"variance_type": "learned_range"}),
        ("dpmpp_2m", {"use_karras_sigmas": True, "use_exponential_sigmas": True}),
        ("unipc", {"thresholding": True}),
        ("unipc", {"solver_type": "bh3"}),
        ("unipc", {"use_flow_sigmas": True}),
        ("lms", {"use_beta_sigmas": True}),
        ("lms", {"prediction_type": "flow"}),
        ("heun", {"beta_schedule": "exp"}),
        ("heun", {"timestep_spacing": "karras"}),
    ],
)
def test_unsupported_options_raise(name, extra):
    with pytest.raises(ValueError):
        create_scheduler(name, {**SD15, **extra})


def test_step_needs_set_timesteps_and_rng():
    for name in DIFFUSERS_CLASSES:
        s = create_scheduler(name, SD15)
        with pytest.raises(RuntimeError):
            s.step(FIXED, s.timesteps[0], FIXED, TorchRNG(0))
    sde = create_scheduler("dpmpp_2m", {**SD15, "algorithm_type": "sde-dpmsolver++"})
    sde.set_timesteps(5)
    with pytest.raises(ValueError):
        sde.step(FIXED, sde.timesteps[0], FIXED, None)
