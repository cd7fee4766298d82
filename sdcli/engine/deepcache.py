"""DeepCache at run time: the full UNet every N-th call, its shallow branch in between
(the two graphs are cut at load time: see sdcli/runtime/deepcache.py)."""
from __future__ import annotations

import numpy as np

from sdcli.runtime.deepcache import FEATURE


class DeepCacheUNet:
    """Called like a UNet; alternates the full UNet (every `interval`-th call, counted from
    the first) and the shallow one fed with the last full call's feature."""

    def __init__(self, full, shallow, interval: int):
        self.full = full
        self.shallow = shallow
        self.interval = interval
        self.calls = 0
        self._feature: np.ndarray | None = None

    def __call__(self, sample: np.ndarray, timestep, context: np.ndarray, **extra) -> np.ndarray:
        if self.calls % self.interval == 0:
            out = self.full(sample, timestep, context, **extra)
            self._feature = self.full.output(1)
        else:
            out = self.shallow(sample, timestep, context, **{FEATURE: self._feature}, **extra)
        self.calls += 1
        return out
