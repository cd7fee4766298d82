"""sdcli.util.rng.TorchRNG must reproduce torch.randn with a seeded CPU generator (without importing torch)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from fractions import Fraction

import numpy as np
import pytest

from sdcli.util.rng import NumpyRNG, TorchRNG, fma_f32, make_rng

torch = pytest.importorskip("torch")

SHAPES = [1, 3, 15, 16, 17, 31, 32, 100, (1, 4, 8, 8), (2, 4, 64, 64), (1, 4, 96, 64)]
SEEDS = [0, 1, 42, 2**32 + 5, 2**63 - 1, 2**64 - 1, -5]

# torch picks its Box-Muller kernel by CPU capability: the avx_mathfun one (AVX2 and AVX512 builds)
# or the libm one (no AVX2); our "libm" emulation is within one float32 ulp, not bit-exact.
_CAPABILITY = torch.backends.cpu.get_cpu_capability()
KERNEL = "libm" if _CAPABILITY == "DEFAULT" else "avx2"
EXACT = KERNEL == "avx2"


def _torch_gen(seed: int):
    return torch.Generator("cpu").manual_seed(seed)


def _assert_same(ours: np.ndarray, ref: np.ndarray, exact: bool = EXACT) -> float:
    assert ours.dtype == np.float32
    assert ours.shape == ref.shape
    diff = float(np.max(np.abs(ours.astype(np.float64) - ref.astype(np.float64)))) if ref.size else 0.0
    assert diff <= 1e-6
    if exact:
        np.testing.assert_array_equal(ours.view(np.int32), ref.view(np.int32))
    return diff


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_single_draw_matches_torch(seed, shape):
    ref = torch.randn(shape, generator=_torch_gen(seed), dtype=torch.float32).numpy()
    ours = TorchRNG(seed, kernel=KERNEL).randn(shape)
    _assert_same(ours, ref)


@pytest.mark.parametrize("seed", [0, 42, 2**32 + 5, 2**63 - 1])
def test_successive_draws_mixing_sizes(seed):
    # small draws (< 16) use a float64 Box-Muller whose second value is cached in the generator, and the
    # cache survives large draws in between; sizes not divisible by 16 redraw the tail block
    shapes = [3, (2, 8), 1, 100, 5, (1, 4, 8, 8), 1, 17, 15, (2, 4, 64, 64), 2, 31, (), 7, (1, 4, 96, 64), 1]
    g = _torch_gen(seed)
    rng = TorchRNG(seed, kernel=KERNEL)
    for shape in shapes:
        ref = torch.randn(shape, generator=g, dtype=torch.float32).numpy()
        _assert_same(rng.randn(shape), ref)


def test_many_values_bit_exact():
    # about 1.5M values: enough to hit the rare rounding corner cases of the polynomial kernel
    rng = TorchRNG(80085, kernel=KERNEL)
    g = _torch_gen(80085)
    for shape in [(3, 4, 128, 128), (1, 4, 96, 128), (1, 16, 210, 140)]:
        _assert_same(rng.randn(shape), torch.randn(shape, generator=g).numpy())


def test_zero_size_and_int_shape():
    rng = TorchRNG(3)
    assert rng.randn((0, 4)).shape == (0, 4)
    assert rng.randn(5).shape == (5,)
    assert rng.randn(()).shape == ()


def test_seed_is_masked_to_32_bits():
    a = TorchRNG(5).randn((1, 4, 8, 8))
    b = TorchRNG(2**32 + 5).randn((1, 4, 8, 8))
    np.testing.assert_array_equal(a, b)


def test_init_state_is_reference_init_genrand():
    # numpy's legacy seeding is the reference init_genrand too
    for seed in (0, 1, 5489, 2**32 - 1):
        ours = TorchRNG(seed)._bitgen.state["state"]["key"]
        legacy = np.random.MT19937()
        legacy._legacy_seeding(seed)
        np.testing.assert_array_equal(ours, legacy.state["state"]["key"])


def test_seed_out_of_torch_range():
    with pytest.raises(ValueError):
        TorchRNG(2**64)
    with pytest.raises(ValueError):
        TorchRNG(-(2**63) - 1)


def test_speed():
    rng = TorchRNG(0)
    rng.randn((1, 4, 64, 64))
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        rng.randn((1, 4, 64, 64))
        best = min(best, time.perf_counter() - t0)
    assert best < 0.010, f"1x4x64x64 draw took {best * 1e3:.2f} ms"


def _f32_nearest(exact) -> np.float32:
    """Correctly rounded float32 (ties to even) of a Fraction."""
    guess = np.float32(float(exact))
    cands = [guess, np.nextafter(guess, np.float32(np.inf)), np.nextafter(guess, np.float32(-np.inf))]
    return min(cands, key=lambda v: (abs(Fraction(float(v)) - exact), int(np.array(v).view(np.int32)) & 1))


def test_fma_f32_is_single_rounding():
    rng = np.random.default_rng(0)
    a, b, c = (rng.standard_normal((3, 2000)) * [[3.0], [3.0], [1e-3]]).astype(np.float32)
    got = fma_f32(a, b, c)
    for i in range(0, 2000, 7):
        exact = Fraction(float(a[i])) * Fraction(float(b[i])) + Fraction(float(c[i]))
        assert got[i] == _f32_nearest(exact)
    # a case where rounding the float64 sum to float32 would round the wrong way (double rounding)
    a1, b1, c1 = np.float32(256 * (1 + 2**-23)), np.float32(256 * (1 - 2**-23)), np.float32(2**40 + 2**17)
    assert np.float32(np.float64(a1) * np.float64(b1) + np.float64(c1)) != c1
    assert fma_f32(a1, b1, c1)[0] == c1


def test_libm_kernel_close_to_torch_default_build():
    """torch without AVX2 (ATEN_CPU_CAPABILITY=default) uses libm in Box-Muller: within one ulp."""
    code = textwrap.dedent(
        """
        import sys, numpy as np, torch
        g = torch.Generator().manual_seed(7)
        np.save(sys.argv[1], np.concatenate([torch.randn(s, generator=g).numpy().ravel()
                                             for s in [(1, 4, 32, 32), 17, 3]]))
        """
    )
    out = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"sdcli_randn_default_{os.getpid()}.npy")
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    subprocess.run([sys.executable, "-c", code, out], check=True, env=env, timeout=120)
    try:
        ref = np.load(out)
    finally:
        os.unlink(out)
    rng = TorchRNG(7, kernel="libm")
    ours = np.concatenate([rng.randn(s).ravel() for s in [(1, 4, 32, 32), 17, 3]])
    _assert_same(ours, ref, exact=False)


def test_numpy_rng_and_factory():
    a = NumpyRNG(11).randn((2, 3))
    np.testing.assert_array_equal(a, np.random.default_rng(11).standard_normal((2, 3), dtype=np.float32))
    assert a.dtype == np.float32
    assert isinstance(make_rng("torch", 1), TorchRNG)
    assert isinstance(make_rng("numpy", 1), NumpyRNG)
    with pytest.raises(ValueError):
        make_rng("cuda", 1)
