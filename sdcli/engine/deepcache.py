"""DeepCache at run time: the full UNet every N-th call, its shallow branch in between
(the two graphs are cut at load time: see sdcli/runtime/deepcache.py).

With a ControlNet (engine/controlnet.py wraps this as it wraps a UNet) both graphs take
residual inputs (runtime/controlnet.py): the full one all of them, the shallow one only
down_block_res_0, conv_in's skip, the one skip connection it runs; the ControlNet runs on
every step, as A1111's ControlNet extension does beside its DeepCache extension, and each
graph is fed the residuals it takes."""
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
        self._shallow_inputs: set[str] | None = None

    @property
    def compiled(self):
        """The full UNet's compiled model (its inputs are all a caller may feed)."""
        return self.full.compiled

    def __call__(self, sample: np.ndarray, timestep, context: np.ndarray, **extra) -> np.ndarray:
        if self.calls % self.interval == 0:
            out = self.full(sample, timestep, context, **extra)
            self._feature = self.full.output(1)
        else:
            if self._shallow_inputs is None:
                self._shallow_inputs = {name for port in self.shallow.compiled.inputs for name in port.get_names()}
            extra = {name: value for name, value in extra.items() if name in self._shallow_inputs}
            out = self.shallow(sample, timestep, context, **{FEATURE: self._feature}, **extra)
        self.calls += 1
        return out
