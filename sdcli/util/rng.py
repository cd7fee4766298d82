"""Random normal draws for the numpy denoising loop.

``TorchRNG`` reproduces ``torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))``
(float32, CPU) without importing torch, so a seed gives the same initial latents as diffusers.
``NumpyRNG`` is the plain numpy alternative (fast, but different numbers).

How torch draws on the CPU (checked empirically against torch 2.x):

* The engine is the reference 32-bit MT19937, seeded with ``init_genrand(seed & 0xffffffff)``.
* A float32 uniform is ``(u32 & 0xffffff) * 2**-24``; a float64 uniform takes two draws,
  ``((hi << 32 | lo) & (2**53 - 1)) * 2**-53``.
* Tensors with 16 or more elements: all uniforms are drawn first, then every block of 16 is turned
  into normals with Box-Muller (pairs ``j`` / ``j + 8``). If the size is not a multiple of 16, 16 fresh
  uniforms are drawn for the last 16 positions and that (overlapping) block is redone. On CPUs with
  AVX2 (torch also uses this kernel when it reports AVX512) the log / sin / cos are the Cephes
  polynomials of ``avx_mathfun.h`` evaluated with fused multiply-adds; without AVX2 they are libm's.
* Fewer than 16 elements: one element at a time with the float64 Box-Muller of
  ``at::normal_distribution<double>``; the second value of each pair is cached in the generator and
  used by the next small draw (the cache survives large draws in between).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["TorchRNG", "NumpyRNG", "make_rng", "fma_f32", "RNG_KINDS"]

RNG_KINDS = ("torch", "numpy")

_F32 = np.float32
_MASK53 = (1 << 53) - 1


def _shape_tuple(shape) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)):
        return (int(shape),)
    return tuple(int(s) for s in shape)


# --------------------------------------------------------------------------------------------------
# float32 fused multiply-add, exact
# --------------------------------------------------------------------------------------------------


def fma_f32(a, b, c) -> np.ndarray:
    """Return ``a * b + c`` rounded once to float32, for float32 inputs (any broadcastable shapes).

    The product of two float32 values is exact in float64, so only the float64 addition and the final
    narrowing round. Narrowing a float64 that lies exactly half-way between two float32 values can
    round the wrong way when the addition was inexact (double rounding); those few elements are nudged
    one float64 ulp towards the exact sum (its sign is known from the TwoSum error) before narrowing.
    """
    a64, b64, c64 = np.broadcast_arrays(
        np.atleast_1d(np.asarray(a, dtype=np.float64)),
        np.asarray(b, dtype=np.float64),
        np.asarray(c, dtype=np.float64),
    )
    prod = a64 * b64
    total = prod + c64
    out = total.astype(np.float32)
    # float64 -> float32 drops 29 mantissa bits; a tie is exactly 1 followed by 28 zeros.
    tie = (total.view(np.int64) & 0x1FFFFFFF) == 0x10000000
    if tie.any():
        idx = np.nonzero(tie)
        p, c_, s = prod[idx], c64[idx], total[idx]
        bv = s - p
        err = (p - (s - bv)) + (c_ - bv)
        nudged = np.where(err != 0.0, np.nextafter(s, np.where(err > 0.0, np.inf, -np.inf)), s)
        out[idx] = nudged.astype(np.float32)
    return out


# --------------------------------------------------------------------------------------------------
# Box-Muller kernels (float32, blocks of 16)
# --------------------------------------------------------------------------------------------------

_MIN_NORM_POS = np.array(0x00800000, dtype=np.int32).view(np.float32)
_HALF_BITS = np.int32(np.array(0.5, dtype=np.float32).view(np.int32))
_LOG_POLY = tuple(
    _F32(v)
    for v in (
        -1.1514610310e-1,
        1.1676998740e-1,
        -1.2420140846e-1,
        1.4249322787e-1,
        -1.6668057665e-1,
        2.0000714765e-1,
        -2.4999993993e-1,
        3.3333331174e-1,
    )
)
_LOG_P0 = _F32(7.0376836292e-2)
_LOG_Q1 = _F32(-2.12194440e-4)
_LOG_Q2 = _F32(0.693359375)
_SQRTHF = _F32(0.707106781186547524)
_FOPI = _F32(1.27323954473516)
_DP = (_F32(-0.78515625), _F32(-2.4187564849853515625e-4), _F32(-3.77489497744594108e-8))
_COS_P = (_F32(2.443315711809948e-5), _F32(-1.388731625493765e-3), _F32(4.166664568298827e-2))
_SIN_P = (_F32(-1.9515295891e-4), _F32(8.3321608736e-3), _F32(-1.6666654611e-1))
_TWO_PI_F32 = _F32(2.0 * math.pi)
_SIGN_BIT = np.int32(-(2**31))


def _cephes_log(x: np.ndarray) -> np.ndarray:
    """Natural log of positive float32 values, as avx_mathfun's log256_ps compiled with FMA."""
    x = np.maximum(x, _MIN_NORM_POS)
    bits = x.view(np.int32)
    e = ((bits >> 23) - 0x7F).astype(np.float32) + _F32(1.0)
    m = ((bits & np.int32(~0x7F800000)) | _HALF_BITS).view(np.float32)  # mantissa in [0.5, 1)
    small = m < _SQRTHF
    x = (m - _F32(1.0)) + np.where(small, m, _F32(0.0))
    e = e - np.where(small, _F32(1.0), _F32(0.0))
    z = x * x
    y = fma_f32(_LOG_P0, x, _LOG_POLY[0])
    for coef in _LOG_POLY[1:]:
        y = fma_f32(y, x, coef)
    y = y * x
    y = fma_f32(y, z, e * _LOG_Q1)
    y = fma_f32(z, _F32(-0.5), y)
    return fma_f32(e, _LOG_Q2, x + y)


def _cephes_sincos(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sin, cos) of float32 values, as avx_mathfun's sincos256_ps compiled with FMA."""
    tbits = theta.view(np.int32)
    sign_sin = tbits & _SIGN_BIT
    x = (tbits & np.int32(0x7FFFFFFF)).view(np.float32)
    j = (x * _FOPI).astype(np.int32)  # truncation, like cvttps
    j = (j + 1) & np.int32(~1)
    q = j.astype(np.float32)
    sign_sin = sign_sin ^ ((j & 4) << 29)
    sign_cos = (~(j - 2) & 4) << 29
    use_sin_poly = (j & 2) == 0
    for dp in _DP:
        x = fma_f32(q, dp, x)
    z = x * x
    yc = fma_f32(_COS_P[0], z, _COS_P[1])
    yc = fma_f32(yc, z, _COS_P[2])
    yc = yc * z
    yc = fma_f32(yc, z, -(z * _F32(0.5)))
    yc = yc + _F32(1.0)
    ys = fma_f32(_SIN_P[0], z, _SIN_P[1])
    ys = fma_f32(ys, z, _SIN_P[2])
    ys = ys * z
    ys = fma_f32(ys, x, x)
    s = np.where(use_sin_poly, ys, yc)
    c = np.where(use_sin_poly, yc, ys)
    s = (s.view(np.int32) ^ sign_sin).view(np.float32)
    c = (c.view(np.int32) ^ sign_cos).view(np.float32)
    return s, c


def _box_muller16_avx2(u: np.ndarray) -> np.ndarray:
    blocks = u.reshape(-1, 16)
    u1 = np.ascontiguousarray(_F32(1.0) - blocks[:, :8])
    u2 = np.ascontiguousarray(blocks[:, 8:])
    radius = np.sqrt(_F32(-2.0) * _cephes_log(u1))
    s, c = _cephes_sincos(_TWO_PI_F32 * u2)
    out = np.empty_like(blocks)
    # torch finishes with fmadd(n, std=1, mean=0): exact, except that it turns -0.0 into +0.0.
    out[:, :8] = radius * c + _F32(0.0)
    out[:, 8:] = radius * s + _F32(0.0)
    return out.reshape(-1)


def _box_muller16_libm(u: np.ndarray) -> np.ndarray:
    # Non-AVX2 torch build: logf/cosf/sinf from libm (emulated here as float64 then rounded, which
    # may differ from glibc by one float32 ulp now and then); theta is computed in double.
    blocks = u.reshape(-1, 16)
    u1 = _F32(1.0) - blocks[:, :8]
    u2 = blocks[:, 8:]
    radius = np.sqrt(_F32(-2.0) * np.log(u1.astype(np.float64)).astype(np.float32))
    theta = (2.0 * math.pi * u2.astype(np.float64)).astype(np.float32).astype(np.float64)
    out = np.empty_like(blocks)
    out[:, :8] = radius * np.cos(theta).astype(np.float32) + _F32(0.0)
    out[:, 8:] = radius * np.sin(theta).astype(np.float32) + _F32(0.0)
    return out.reshape(-1)


_KERNELS = {"avx2": _box_muller16_avx2, "libm": _box_muller16_libm}


# --------------------------------------------------------------------------------------------------
# Generators
# --------------------------------------------------------------------------------------------------


def _init_genrand(seed32: int) -> np.ndarray:
    """The 624-word MT19937 state of the reference ``init_genrand``."""
    key = np.empty(624, dtype=np.uint32)
    s = seed32
    for i in range(624):
        key[i] = s
        s = (1812433253 * (s ^ (s >> 30)) + i + 1) & 0xFFFFFFFF
    return key


class TorchRNG:
    """Successive ``randn`` calls equal successive ``torch.randn(..., generator=g)`` calls (CPU, float32)
    for ``g = torch.Generator("cpu").manual_seed(seed)``.

    ``kernel`` picks torch's Box-Muller variant for tensors of 16+ elements: ``"avx2"`` (torch on any
    x86 CPU with AVX2, and on AVX512 CPUs; bit-exact) or ``"libm"`` (torch's non-vectorised build,
    within one float32 ulp).
    """

    kind = "torch"

    def __init__(self, seed: int, kernel: str = "avx2"):
        seed = int(seed)
        if not -(2**63) <= seed < 2**64:
            raise ValueError(f"seed {seed} is outside torch's range [-2**63, 2**64)")
        if kernel not in _KERNELS:
            raise ValueError(f"unknown TorchRNG kernel {kernel!r}; expected one of {sorted(_KERNELS)}")
        self.seed = seed
        self._box_muller = _KERNELS[kernel]
        self._bitgen = np.random.MT19937()
        self._bitgen.state = {
            "bit_generator": "MT19937",
            "state": {"key": _init_genrand(seed & 0xFFFFFFFF), "pos": 624},
        }
        self._cached_normal: float | None = None  # torch's next_double_normal_sample

    def _u32(self, n: int) -> np.ndarray:
        return self._bitgen.random_raw(n).astype(np.uint32)

    def _uniform_f32(self, n: int) -> np.ndarray:
        return (self._u32(n) & np.uint32(0xFFFFFF)).astype(np.float32) * _F32(2.0**-24)

    def _normal_f64(self) -> float:
        if self._cached_normal is not None:
            value, self._cached_normal = self._cached_normal, None
            return value
        w = [int(v) for v in self._u32(4)]
        u1 = (((w[0] << 32) | w[1]) & _MASK53) * 2.0**-53
        u2 = (((w[2] << 32) | w[3]) & _MASK53) * 2.0**-53
        radius = math.sqrt(-2.0 * math.log1p(-u2))
        theta = 2.0 * math.pi * u1
        self._cached_normal = radius * math.sin(theta)
        return radius * math.cos(theta)

    def randn(self, shape: int | Sequence[int]) -> np.ndarray:
        shape = _shape_tuple(shape)
        n = math.prod(shape)
        if n < 16:
            return np.array([self._normal_f64() for _ in range(n)], dtype=np.float64).astype(np.float32).reshape(shape)
        u = self._uniform_f32(n)
        whole = n - n % 16
        out = np.empty(n, dtype=np.float32)
        out[:whole] = self._box_muller(u[:whole])
        if whole != n:
            out[n - 16 :] = self._box_muller(self._uniform_f32(16))
        return out.reshape(shape)


class NumpyRNG:
    """numpy's default generator (PCG64) with its ziggurat normals; not comparable with torch."""

    kind = "numpy"

    def __init__(self, seed: int):
        self.seed = int(seed)
        self._gen = np.random.default_rng(self.seed)

    def randn(self, shape: int | Sequence[int]) -> np.ndarray:
        return self._gen.standard_normal(_shape_tuple(shape), dtype=np.float32)


def make_rng(kind: str, seed: int) -> TorchRNG | NumpyRNG:
    """``kind`` is ``"torch"`` (same numbers as torch.randn with a seeded CPU generator) or ``"numpy"``."""
    if kind == "torch":
        return TorchRNG(seed)
    if kind == "numpy":
        return NumpyRNG(seed)
    raise ValueError(f"unknown rng kind {kind!r}; expected one of {', '.join(RNG_KINDS)}")
