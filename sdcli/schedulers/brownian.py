"""Brownian motion sampled on a binary tree of intervals, in numpy: a port of torchsde's
``BrownianInterval`` as diffusers' DPMSolverSDEScheduler configures it (``halfway_tree=True``,
``tol=1e-6``, ``pool_size=24``, no Levy area), so that the same entropy gives the same increments
as torchsde, to float32 rounding.

How the tree works: the root holds the increment W over [t0, t1]. A query [ta, tb] is answered by
splitting intervals at their (rounded) halves until ta and tb are interval ends, then summing the
increments of the intervals that cover [ta, tb]. A child's increment is drawn from the Brownian
bridge given its parent's increment; the normal draw of a parent comes from its own seed (derived
with numpy's SeedSequence from the entropy and the parent's position in the tree), so any interval
can be recomputed identically after it falls out of the cache.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable, Sequence

import numpy as np

from sdcli.util.rng import NumpyRNG, TorchRNG

F32 = np.float32

# (seed, shape) -> float32 standard normals
Randn = Callable[[int, tuple], np.ndarray]


def torch_randn(seed: int, shape: tuple) -> np.ndarray:
    """``torch.randn(shape, generator=torch.Generator().manual_seed(seed))``, as torchsde draws."""
    return TorchRNG(int(seed)).randn(shape)


def numpy_randn(seed: int, shape: tuple) -> np.ndarray:
    return NumpyRNG(int(seed)).randn(shape)


class _Interval:
    __slots__ = ("start", "end", "parent", "is_left", "midway", "w_seed", "left", "right", "spawn_key", "depth")

    def __init__(self, start: float, end: float, parent: "_Interval | None", is_left: bool | None, round_):
        self.start = round_(start)
        self.end = round_(end)
        self.parent = parent
        self.is_left = is_left
        self.midway: float | None = None
        if parent is None:
            self.spawn_key, self.depth = 0, 0
        else:
            self.spawn_key = 2 * parent.spawn_key + (0 if is_left else 1)
            self.depth = parent.depth + 1


class BrownianInterval:
    """``torchsde.BrownianInterval(t0, t1, size=shape, entropy=entropy, tol=tol, pool_size=pool_size,
    halfway_tree=True)`` (float32, CPU). Calling it with (ta, tb) gives the increment W(tb) - W(ta)."""

    def __init__(
        self,
        t0: float,
        t1: float,
        shape: Sequence[int],
        entropy: int,
        tol: float = 1e-6,
        pool_size: int = 24,
        cache_size: int = 128,
        randn: Randn = torch_randn,
    ):
        t0, t1 = float(t0), float(t1)
        if t0 > t1:
            raise ValueError(f"initial time {t0} should be less than terminal time {t1}")
        if tol <= 0:
            raise ValueError("tol should be positive (the halfway tree needs it)")
        ndigits = -int(math.log10(tol))
        self._round = lambda x: round(x, ndigits)
        self._shape = tuple(int(s) for s in shape)
        self._entropy = int(entropy)
        self._pool_size = int(pool_size)
        self._randn = randn
        # LRU of interval increments. torchsde keeps 45; the values do not depend on it, and 128 holds the
        # working set of a DPM++ SDE run (about 40% fewer draws than 45)
        self._cache: OrderedDict[_Interval, np.ndarray] = OrderedDict()
        self._cache_size = int(cache_size)

        self._root = _Interval(t0, t1, None, None, self._round)
        w_seed = np.random.SeedSequence(entropy=self._entropy, pool_size=self._pool_size).generate_state(3)[0]
        # scaled by the unrounded length, as torchsde does
        self._root_w = self._draw(w_seed) * F32(math.sqrt(t1 - t0))
        self._last = self._root

    def _draw(self, seed) -> np.ndarray:
        return np.asarray(self._randn(int(seed), self._shape), dtype=F32)

    # -- queries ------------------------------------------------------------------------------------
    def __call__(self, ta: float, tb: float) -> np.ndarray:
        ta, tb = float(ta), float(tb)
        root = self._root
        ta = min(max(ta, root.start), root.end)
        tb = min(max(tb, root.start), root.end)
        if ta > tb:
            raise ValueError(f"query times ta={ta} and tb={tb} must have ta <= tb")
        if ta == tb:
            return np.zeros(self._shape, dtype=F32)
        pieces: list[_Interval] = []
        self._locate(self._last, self._round(ta), self._round(tb), pieces)
        self._last = pieces[-1]
        total = self._increment(pieces[0])
        for piece in pieces[1:]:
            total = total + self._increment(piece)
        return total

    def _locate(self, node: _Interval, ta: float, tb: float, out: list) -> None:
        """Append the intervals that make up [ta, tb], splitting where needed. The search starts at the
        last interval queried and climbs to the first one covering [ta, tb], as torchsde's does."""
        while True:
            if ta < node.start or tb > node.end:
                node = node.parent
            elif ta == node.start and tb == node.end:
                out.append(node)
                return
            elif node.midway is None:
                if ta == node.start:
                    self._split(node, tb)
                    node = node.left
                else:
                    self._split(node, ta)
                    node = node.right
            elif tb <= node.midway:
                node = node.left
            elif ta >= node.midway:
                node = node.right
            else:
                self._locate(node.left, ta, node.midway, out)
                node, ta = node.right, node.midway

    def _split(self, node: _Interval, point: float) -> None:
        """Halve ``node``, then keep halving the child that holds ``point`` until ``point`` is a midway."""
        while True:
            self._split_in_half(node)
            if point > node.midway:
                node = node.right
            elif point < node.midway:
                node = node.left
            else:
                return

    def _split_in_half(self, node: _Interval) -> None:
        midway = 0.5 * (node.end + node.start)
        node.midway = self._round(midway)
        seeds = np.random.SeedSequence(
            entropy=self._entropy, spawn_key=(node.spawn_key, node.depth), pool_size=self._pool_size
        ).generate_state(4)
        node.w_seed = seeds[0]
        node.left = _Interval(node.start, midway, node, True, self._round)
        node.right = _Interval(midway, node.end, node, False, self._round)

    # -- increments ---------------------------------------------------------------------------------
    def _increment(self, node: _Interval) -> np.ndarray:
        """W over ``node``: its parent's increment split by a Brownian bridge at the parent's midway."""
        chain = []
        w = None
        while node.parent is not None:
            w = self._cached(node)
            if w is not None:
                break
            chain.append(node)
            node = node.parent
        if w is None:
            w = self._root_w
        for child in reversed(chain):
            w = self._child_increment(child, w)
            self._remember(child, w)
        return w

    def _child_increment(self, child: _Interval, parent_w: np.ndarray) -> np.ndarray:
        parent = child.parent
        h_reciprocal = 1 / (parent.end - parent.start)
        left_diff = parent.midway - parent.start
        right_diff = parent.end - parent.midway
        # float32 arithmetic with each Python scalar rounded to float32 first, as torch does
        mean = parent_w * F32(left_diff) * F32(h_reciprocal)
        std = math.sqrt(left_diff * right_diff * h_reciprocal)
        left_w = mean + F32(std) * self._draw(parent.w_seed)
        return left_w if child.is_left else parent_w - left_w

    def _cached(self, node: _Interval) -> np.ndarray | None:
        w = self._cache.get(node)
        if w is not None:
            self._cache.move_to_end(node)
        return w

    def _remember(self, node: _Interval, w: np.ndarray) -> None:
        self._cache[node] = w
        self._cache.move_to_end(node)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)


class BrownianTreeNoiseSampler:
    """diffusers' BrownianTreeNoiseSampler for one seed: unit-variance noise for a step from ``sigma``
    to ``sigma_next``, the tree's increment over that interval divided by sqrt(|sigma_next - sigma|)."""

    def __init__(self, shape: Sequence[int], sigma_min: float, sigma_max: float, seed: int, randn: Randn = torch_randn):
        t0, t1 = float(sigma_min), float(sigma_max)
        self._sign = 1.0 if t0 < t1 else -1.0
        self.tree = BrownianInterval(min(t0, t1), max(t0, t1), shape, entropy=seed, randn=randn)

    def __call__(self, sigma, sigma_next) -> np.ndarray:
        a, b = F32(sigma), F32(sigma_next)
        lo, hi, sign = (a, b, 1.0) if a < b else (b, a, -1.0)
        w = self.tree(lo, hi) * F32(self._sign * sign)
        return w / np.sqrt(np.abs(b - a))
