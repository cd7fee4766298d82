"""DPM++ SDE (Karras): the numpy Brownian tree against torchsde, and the scheduler against diffusers'
DPMSolverSDEScheduler (torch, float32) step by step."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from sdcli.util.rng import NumpyRNG, TorchRNG
from sdcli.schedulers import (
    A1111_NAMES,
    SCHEDULERS,
    DPMSolverSDEKarrasScheduler,
    DPMSolverSDEScheduler,
    create_scheduler,
    name_for_diffusers_class,
    resolve_scheduler_name,
)
from sdcli.schedulers import dpmpp_sde
from sdcli.schedulers.brownian import BrownianInterval, BrownianTreeNoiseSampler, numpy_randn
from tests.scheduler_checks import (
    ATOL,
    FIXED,
    RTOL,
    SD15,
    SHAPE,
    diffusers_defaults,
    fake_model,
    img2img_timesteps,
    noised_init_latents,
    record,
    scheduler_pair,
)

torch = pytest.importorskip("torch")
torchsde = pytest.importorskip("torchsde")
diffusers = pytest.importorskip("diffusers")
from diffusers.schedulers import scheduling_dpmsolver_sde as diffusers_sde  # noqa: E402


# ---------------------------------------------------------------------------------------------------
# the Brownian tree
# ---------------------------------------------------------------------------------------------------


def _torchsde_interval(t0, t1, shape, seed):
    # what diffusers' BatchedBrownianTree builds
    return torchsde.BrownianInterval(t0=t0, t1=t1, size=shape, dtype=torch.float32, entropy=seed,
                                     tol=1e-6, pool_size=24, halfway_tree=True)


def _scheduler_like_queries(sigmas):
    """The (low, high) pairs a DPM++ SDE run asks for: sigma -> log-midpoint, then sigma -> next sigma."""
    out = []
    for hi, lo in zip(sigmas[:-1], sigmas[1:]):
        mid = float(np.exp((np.log(hi) + np.log(lo)) / 2))
        out += [(mid, hi), (lo, hi)]
    return out


def _query_sets(t0, t1, rs):
    random_pairs = [tuple(sorted(rs.uniform(t0, t1, 2))) for _ in range(25)]
    karras = np.array([t1, t1 * 0.45, t1 * 0.2, t1 * 0.07, t1 * 0.02, t0])
    return {
        "random": random_pairs,
        "repeated_and_out_of_order": random_pairs[5:10] + random_pairs[:3] + random_pairs[5:10][::-1],
        "scheduler": _scheduler_like_queries(karras),
        "whole_and_edges": [(t0, t1), (t0, t0 + 1e-3), (t1 - 0.25, t1), (t0, t1)],
        "clamped_and_empty": [(t0 - 1.0, t0 + 0.5), (t1 - 0.5, t1 + 3.0), (t0 + 0.3, t0 + 0.3)],
        "tiny_steps": [(t0 + k * 2e-6, t0 + (k + 1) * 2e-6) for k in range(6)],
    }


@pytest.mark.parametrize(
    "seed,shape,t0,t1",
    [
        (0, (1, 4, 8, 8), 0.0291675, 14.614642),
        (1234, (2, 3), 0.1, 1.0),
        (2**31 + 7, (17,), 0.5, 3.25),
        (42, (1, 4, 16, 24), 0.03, 10.0),
        (2**40 + 3, (), 0.25, 7.5),
    ],
)
def test_brownian_interval_matches_torchsde(seed, shape, t0, t1):
    rs = np.random.default_rng(seed % 1000)
    for name, queries in _query_sets(t0, t1, rs).items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchsde warns about the clamped queries
            ref = _torchsde_interval(t0, t1, shape, seed)
            theirs = [ref(a, b).numpy() for a, b in queries]
        ours_tree = BrownianInterval(t0, t1, shape, seed)
        for (a, b), want in zip(queries, theirs):
            got = ours_tree(a, b)
            assert got.dtype == np.float32 and got.shape == tuple(shape)
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=f"{name}: [{a}, {b}]")
            record("tree max abs difference", np.max(np.abs(got - want), initial=0.0))


def test_brownian_interval_small_cache_recomputes_the_same_values():
    """Intervals evicted from the cache are redrawn from their seeds: the same numbers come back."""
    big = BrownianInterval(0.03, 14.6, SHAPE, 5)
    small = BrownianInterval(0.03, 14.6, SHAPE, 5, cache_size=2)
    queries = _scheduler_like_queries(np.geomspace(14.6, 0.03, 12))
    for a, b in queries + queries[::-1]:
        np.testing.assert_array_equal(small(a, b), big(a, b))


def test_brownian_interval_increments_add_up():
    tree = BrownianInterval(0.0, 2.0, (1000,), 3)
    whole = tree(0.25, 1.75)
    parts = tree(0.25, 0.6) + tree(0.6, 1.1) + tree(1.1, 1.75)
    np.testing.assert_allclose(parts, whole, rtol=1e-5, atol=1e-5)
    assert 0.8 < np.std(whole) / np.sqrt(1.5) < 1.2


@pytest.mark.parametrize("seed", [0, 1234])
def test_noise_sampler_matches_diffusers(seed):
    sigmas = np.array([14.614642, 6.2, 2.5, 0.9, 0.2, 0.0291675], dtype=np.float32)
    x = torch.zeros(SHAPE)
    theirs = diffusers_sde.BrownianTreeNoiseSampler(x, float(sigmas[-1]), float(sigmas[0]), seed)
    ours = BrownianTreeNoiseSampler(SHAPE, sigmas[-1], sigmas[0], seed)
    pairs = [(hi, lo) for hi, lo in zip(sigmas[:-1], sigmas[1:])] + [(sigmas[2], sigmas[0]), (sigmas[1], sigmas[3])]
    for a, b in pairs:
        want = theirs(torch.tensor(a), torch.tensor(b)).numpy()
        np.testing.assert_allclose(ours(a, b), want, rtol=1e-6, atol=1e-6)
        # (the division by sqrt(|sigma_next - sigma|) may round differently: torch's float32 sqrt is MKL's)
        record("noise sampler max abs difference", np.max(np.abs(ours(a, b) - want)))


# ---------------------------------------------------------------------------------------------------
# the scheduler against diffusers
# ---------------------------------------------------------------------------------------------------


def _build(name: str, cfg: dict, seed: int):
    """Ours via create_scheduler; diffusers' from the loaded PNDM config, with the tree seed that sdcli
    takes from the rng (diffusers' own default is a random one)."""
    extra = {"noise_sampler_seed": seed}
    if name == "dpmpp_sde_karras":
        extra["use_karras_sigmas"] = True
    return scheduler_pair(name, cfg, diffusers.DPMSolverSDEScheduler, **extra)


def _torch_scalar(fn):
    return lambda x: np.float32(fn(torch.tensor(np.float32(x))).item())


@pytest.fixture
def torch_scalar_maths(monkeypatch):
    """Our scheduler with torch's float32 log / exp / expm1 (on x86 builds log and exp are MKL's, within
    one ulp of ours but not always the same float).

    The tree is sampled on a 1e-6 grid: a query point one float32 ulp away can round to the next grid
    point, which changes the noise by about 1e-3 of its size. The query points are sigmas sent through
    log and exp, so with torch's functions here and diffusers' sigmas (see ``_align``; torch's float32
    sqrt, which makes the training sigmas, is MKL's too) they, and the noise, are the same as diffusers'
    and the loop must match to float32 rounding."""
    monkeypatch.setattr(dpmpp_sde, "log32", _torch_scalar(torch.log))
    monkeypatch.setattr(dpmpp_sde, "exp32", _torch_scalar(torch.exp))
    monkeypatch.setattr(dpmpp_sde, "expm1_32", _torch_scalar(torch.expm1))


def _align(ours, theirs) -> None:
    """Give ours diffusers' float32 sigmas (checked within 1e-6 relative by _compare_schedules)."""
    ours.sigmas = theirs.sigmas.numpy().copy()


def _run_loop(ours, theirs, lat_ours, lat_theirs, ts_ours, ts_theirs, seed, rtol=RTOL, atol=ATOL):
    """Both sides denoise their own latents; compare after every model call, each element within
    ``rtol`` of itself plus ``atol`` of the largest |value| (float32 rounding of latents of size 100
    leaves 1e-5 on small elements). Returns the largest |ours - diffusers| relative to the largest |latent|."""
    rng = TorchRNG(seed)
    worst = 0.0
    assert len(ts_ours) == len(ts_theirs)
    for i, (t_o, t_t) in enumerate(zip(ts_ours, ts_theirs)):
        x_o = ours.scale_model_input(lat_ours, t_o)
        x_t = theirs.scale_model_input(torch.from_numpy(lat_theirs), t_t).numpy()
        x_scale = max(1.0, float(np.max(np.abs(x_t))))
        np.testing.assert_allclose(x_o, x_t, rtol=rtol, atol=atol * x_scale, err_msg=f"scale_model_input, call {i}")
        lat_ours = ours.step(fake_model(x_o, t_o), t_o, lat_ours, rng)
        out = fake_model(x_t, float(t_t))
        lat_theirs = theirs.step(torch.from_numpy(out), t_t, torch.from_numpy(lat_theirs), return_dict=False)[0].numpy()
        assert lat_ours.dtype == np.float32 and np.all(np.isfinite(lat_ours))
        scale = max(1.0, float(np.max(np.abs(lat_theirs))))
        np.testing.assert_allclose(lat_ours, lat_theirs, rtol=rtol, atol=atol * scale, err_msg=f"latents after call {i}")
        worst = max(worst, float(np.max(np.abs(lat_ours - lat_theirs))) / scale)
    return worst


def _compare_schedules(ours, theirs):
    ref_ts = theirs.timesteps.numpy()
    assert ours.timesteps.dtype == ref_ts.dtype == np.float64
    # the midpoint timesteps go through float32 sigmas and log: ~1e-5 apart at most
    np.testing.assert_allclose(ours.timesteps, ref_ts, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(ours.sigmas, theirs.sigmas.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ours.init_noise_sigma, float(theirs.init_noise_sigma), rtol=1e-6)
    assert ours.order == theirs.order == 2


VARIANTS = {
    "sd15": {},
    "linspace": {"timestep_spacing": "linspace"},
    "trailing": {"timestep_spacing": "trailing"},
    "linear_betas": {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02, "steps_offset": 0},
}
CASES = [
    pytest.param(name, vname, extra, pred, id=f"{name}-{vname}-{pred}")
    for name in ("dpmpp_sde", "dpmpp_sde_karras")
    for vname, extra in VARIANTS.items()
    for pred in ("epsilon", "v_prediction")
] + [pytest.param("dpmpp_sde", "exponential", {"use_exponential_sigmas": True}, "epsilon", id="dpmpp_sde-exp")]


@pytest.mark.parametrize("steps", [10, 16])
@pytest.mark.parametrize("name,vname,extra,pred", CASES)
def test_txt2img_loop_matches_diffusers(torch_scalar_maths, name, vname, extra, pred, steps):
    seed = 1000 + steps
    ours, theirs = _build(name, {**SD15, **extra, "prediction_type": pred}, seed)
    ours.set_timesteps(steps)
    theirs.set_timesteps(steps)
    _compare_schedules(ours, theirs)
    _align(ours, theirs)
    noise = TorchRNG(seed).randn(SHAPE)
    lat_ours = noise * np.float32(ours.init_noise_sigma)
    lat_theirs = (torch.from_numpy(noise) * theirs.init_noise_sigma).numpy()
    worst = _run_loop(ours, theirs, lat_ours, lat_theirs, ours.timesteps, theirs.timesteps, seed)
    record(f"{name} relative difference (torch log/exp)", worst)


@pytest.mark.parametrize("strength", [0.3, 0.6, 1.0])
@pytest.mark.parametrize("name,pred", [("dpmpp_sde", "epsilon"), ("dpmpp_sde_karras", "v_prediction")])
def test_img2img_matches_diffusers(torch_scalar_maths, name, pred, strength):
    """StableDiffusionImg2ImgPipeline: get_timesteps (order 2), set_begin_index, add_noise; the tree still
    spans all the schedule's sigmas."""
    seed = 5
    ours, theirs = _build(name, {**SD15, "prediction_type": pred}, seed)
    t_start, ts_ours, ts_theirs = img2img_timesteps(ours, theirs, strength)
    _compare_schedules(ours, theirs)
    _align(ours, theirs)
    ours.set_begin_index(t_start * ours.order)
    theirs.set_begin_index(t_start * theirs.order)
    lat_ours, lat_theirs = noised_init_latents(ours, theirs, ts_ours[:1], ts_theirs[:1])
    worst = _run_loop(ours, theirs, lat_ours, lat_theirs, ts_ours, ts_theirs, seed)
    record(f"{name} relative difference (torch log/exp)", worst)


@pytest.mark.parametrize("steps", [10, 20, 30])
@pytest.mark.parametrize("name", ["dpmpp_sde", "dpmpp_sde_karras"])
def test_loop_with_our_own_maths_stays_close(name, steps):
    """Nothing aligned: the tree's query points are within 1e-6 relative of diffusers' (a few float32
    ulps), and where one lands on the other side of a 1e-6 grid point the noise moves by ~1e-3 of its size."""
    seed = 7 + steps
    ours, theirs = _build(name, {**SD15, "prediction_type": "epsilon"}, seed)
    ours.set_timesteps(steps)
    theirs.set_timesteps(steps)
    queries = {"ours": [], "theirs": []}
    ours_call = BrownianTreeNoiseSampler.__call__
    theirs_call = diffusers_sde.BrownianTreeNoiseSampler.__call__

    def record_ours(sampler, a, b):
        queries["ours"].append((float(a), float(b)))
        return ours_call(sampler, a, b)

    def record_theirs(sampler, a, b):
        queries["theirs"].append((float(a), float(b)))
        return theirs_call(sampler, a, b)

    noise = TorchRNG(seed).randn(SHAPE)
    lat = noise * np.float32(ours.init_noise_sigma)
    mp = pytest.MonkeyPatch()
    with mp.context() as patch:
        patch.setattr(BrownianTreeNoiseSampler, "__call__", record_ours)
        patch.setattr(diffusers_sde.BrownianTreeNoiseSampler, "__call__", record_theirs)
        worst = _run_loop(ours, theirs, lat, lat.copy(), ours.timesteps, theirs.timesteps, seed, rtol=0, atol=1e-3)
    q_ours, q_theirs = np.array(queries["ours"], np.float32), np.array(queries["theirs"], np.float32)
    assert q_ours.shape == q_theirs.shape == (2 * steps - 2, 2)
    # a float32 ulp of t = -log(sigma) is a few ulps of sigma at the log-midpoints
    np.testing.assert_allclose(q_ours, q_theirs, rtol=1e-6, atol=0)
    record("query points max ulps apart", np.max(np.abs(q_ours - q_theirs) / np.spacing(q_theirs)))
    record("query points on another 1e-6 grid point (fraction)",
            np.mean(np.round(q_ours.astype(np.float64), 6) != np.round(q_theirs.astype(np.float64), 6)))
    record(f"{name} relative difference (own log/exp)", worst)


# ---------------------------------------------------------------------------------------------------
# seed, config, names
# ---------------------------------------------------------------------------------------------------


def _one_step(scheduler, rng):
    scheduler.set_timesteps(6)
    t = scheduler.timesteps[0]
    x = FIXED * np.float32(scheduler.init_noise_sigma)
    return scheduler.step(fake_model(scheduler.scale_model_input(x, t), t), t, x, rng)


def test_tree_seed_comes_from_config_else_rng():
    from_rng = _one_step(create_scheduler("dpmpp_sde_karras", SD15), TorchRNG(11))
    from_config = _one_step(create_scheduler("dpmpp_sde_karras", {**SD15, "noise_sampler_seed": 11}), TorchRNG(99))
    np.testing.assert_array_equal(from_rng, from_config)
    other = _one_step(create_scheduler("dpmpp_sde_karras", SD15), TorchRNG(12))
    assert not np.allclose(from_rng, other)
    # no rng at all is fine when the config names the seed
    np.testing.assert_array_equal(
        _one_step(create_scheduler("dpmpp_sde_karras", {**SD15, "noise_sampler_seed": 11}), None), from_rng
    )
    with pytest.raises(ValueError, match="rng"):
        _one_step(create_scheduler("dpmpp_sde_karras", SD15), None)


def test_numpy_rng_draws_the_tree_with_numpy():
    s = create_scheduler("dpmpp_sde_karras", SD15)
    _one_step(s, NumpyRNG(3))
    assert s.noise_sampler.tree._randn is numpy_randn
    torch_side = _one_step(create_scheduler("dpmpp_sde_karras", SD15), TorchRNG(3))
    assert not np.allclose(_one_step(create_scheduler("dpmpp_sde_karras", SD15), NumpyRNG(3)), torch_side)


def test_set_timesteps_starts_a_new_tree():
    s = create_scheduler("dpmpp_sde", SD15)
    first = _one_step(s, TorchRNG(4))
    np.testing.assert_array_equal(_one_step(s, TorchRNG(4)), first)


def test_step_needs_set_timesteps():
    s = create_scheduler("dpmpp_sde", SD15)
    with pytest.raises(RuntimeError):
        s.step(FIXED, s.timesteps[0], FIXED, TorchRNG(0))


def test_defaults_and_config_like_diffusers():
    assert DPMSolverSDEScheduler.defaults == diffusers_defaults(diffusers.DPMSolverSDEScheduler)
    ref = diffusers.DPMSolverSDEScheduler.from_config(SD15)
    assert create_scheduler("dpmpp_sde", SD15).config == {k: ref.config[k] for k in DPMSolverSDEScheduler.defaults}
    karras = create_scheduler("dpmpp_sde_karras", {**SD15, "use_karras_sigmas": False})
    assert isinstance(karras, DPMSolverSDEKarrasScheduler) and karras.config["use_karras_sigmas"] is True
    s = create_scheduler("dpmpp_sde", SD15)
    s.set_timesteps(10)
    assert len(s.timesteps) == 19  # one model call per entry: two per step but the last


@pytest.mark.parametrize(
    "extra",
    [{"use_beta_sigmas": True}, {"prediction_type": "sample"}, {"timestep_spacing": "karras"},
     {"use_karras_sigmas": True, "use_exponential_sigmas": True}],
)
def test_unsupported_options_raise(extra):
    with pytest.raises(ValueError):
        create_scheduler("dpmpp_sde", {**SD15, **extra})


def test_names():
    assert A1111_NAMES["dpmpp_sde_karras"] == "DPM++ SDE Karras"
    assert resolve_scheduler_name("DPM++ SDE Karras") == "dpmpp_sde_karras"
    assert resolve_scheduler_name("dpm++ sde") == "dpmpp_sde"
    assert SCHEDULERS["dpmpp_sde_karras"] is DPMSolverSDEKarrasScheduler
    assert name_for_diffusers_class("DPMSolverSDEScheduler") == "dpmpp_sde"
    own = create_scheduler(None, {**SD15, "_class_name": "DPMSolverSDEScheduler", "use_karras_sigmas": True})
    assert type(own) is DPMSolverSDEScheduler and own.config["use_karras_sigmas"] is True


def test_cli_lists_it():
    from typer.testing import CliRunner

    from sdcli.cli.app import app

    result = CliRunner().invoke(app, ["generate", "--list-schedulers"])
    assert result.exit_code == 0
    assert "dpmpp_sde_karras" in result.output and "DPM++ SDE Karras" in result.output
