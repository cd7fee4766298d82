"""The engine's compiled components: compiled on first use, for each (size, batch) they are
asked for, and kept, so that a batch of requests of one size compiles once.

They load off the main thread, on lanes of one thread each, in the order asked for: the
denoiser's (the UNet or transformer, and the VAE decoder), the encoders' (text encoders,
the VAE encoder) and the ControlNets'.  OpenVINO releases the GIL while it compiles, so the text encoder compiles
beside the UNet and the prompt is encoded while the UNet is still compiling (on an empty
cache the text encoder's compile is no longer added to the UNet's: on the 16-core Xeon,
SD 1.5's takes 1.0-1.3 s).  The engine starts the VAE decoder on the denoiser's lane after
the UNet, so that it loads during the loop: loaded when the decode asked for it, it kept
the decode waiting 0.15-0.37 s on the 16-core Xeon and about 1.5 s on two cores (SD 1.5,
512x512, warm cache; scripts/decode_in_context.py), for +110 MiB on the loop's peak.  With
`lanes=False` (--low-memory) one thread loads everything in turn, each when it is needed,
so that one large component is in memory at a time.  ControlNets have a lane of their own:
on the encoders' lane, after SDXL's two text encoders, the 16-core Xeon's first step waited
3.5 s for one (bench-results/xeon16/session34/diag/gen-1.json: encoders 3.1 s, then the
ControlNet's import 3.9 s, while the UNet and the decoder were ready after 2.6 s).

On a folder whose denoiser has 4-bit weights the engine encodes the prompt only once the
denoiser is compiled (the text encoder still compiles beside it): on the 16-core Xeon an int4
Z-Image transformer's compile (5.5-6.2 s alone) and the int4 Qwen3's first inference (4.3 s)
took 35.3 s and 18.2 s at once (bench-results/xeon16/session35/diag/), while int8 folders
overlap well there.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Callable

from sdcli.model.folder import ModelFolder
from sdcli.runtime.components import TextEncoder, Transformer, UNet, VaeDecoder, VaeEncoder
from sdcli.runtime.core import Runtime
from sdcli.runtime.lora import WeightPatch


DENOISER_LANE = ("unet", "transformer", "vae_decoder")  # names (prefixes) of the components on the denoiser's lane
CONTROL_LANE = ("controlnet",)  # and on the ControlNets' lane


class ComponentCache:
    def __init__(self, runtime: Runtime, folder: ModelFolder, lanes: bool = True):
        self.runtime = runtime
        self.folder = folder
        self.timings: dict[str, float] = {}  # compile_<component>: seconds spent compiling (or importing)
        self.waited = 0.0  # seconds callers of get() spent waiting for a component still loading
        self._components: dict[tuple, Future] = {}
        self._encoders = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdcli-load")
        self._denoiser = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdcli-load-denoiser") if lanes \
            else self._encoders
        self._control = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdcli-load-control") if lanes \
            else self._encoders
        self._lock = threading.Lock()

    def start(self, key: tuple, build: Callable[[], object]) -> Future:
        """The future of component `key` (key[0] is its name), built with `build()` unless started before."""
        with self._lock:
            if key not in self._components:
                def timed():
                    started = time.perf_counter()
                    component = build()
                    name = f"compile_{key[0]}"
                    self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - started
                    return component

                lane = self._denoiser if key[0].startswith(DENOISER_LANE) else \
                    self._control if key[0].startswith(CONTROL_LANE) else self._encoders
                self._components[key] = lane.submit(timed)
            return self._components[key]

    def get(self, key: tuple, build: Callable[[], object]):
        future = self.start(key, build)
        self._wait([future])
        return future.result()

    def wait_for_denoiser(self) -> None:
        """Wait for the folder's denoiser (every variant) still compiling."""
        with self._lock:
            loading = [f for key, f in self._components.items() if key[0] == self.folder.denoiser]
        self._wait(loading)

    def _wait(self, futures: list[Future]) -> None:
        """Wait for `futures`, the time counted in `waited` where any was still loading."""
        if all(f.done() for f in futures):
            return
        started = time.perf_counter()
        wait(futures)
        with self._lock:
            self.waited += time.perf_counter() - started

    def has(self, name: str) -> bool:
        """Whether some variant of component `name` is compiled or compiling."""
        with self._lock:
            return any(key[0] == name for key in self._components)

    def release(self, name: str) -> None:
        """Drop every compiled variant of component `name` (each is compiled again when asked
        for)."""
        self._drop(lambda key: key[0] == name)

    def _drop(self, which: Callable[[tuple], bool]) -> None:
        with self._lock:
            released = [self._components.pop(key) for key in [k for k in self._components if which(k)]]
        for future in released:
            # a component still compiling is waited for, so that it is freed here and not by the
            # loader thread while another component runs (that crashed OpenVINO's CPU plugin)
            wait([future])

    def compile_seconds(self) -> float:
        # (the engine keeps its encode_prompt time in the same dict)
        return sum(v for k, v in self.timings.items() if k.startswith("compile_"))

    def _keep_one_patch(self, name: str, tag: str | None) -> None:
        """Drop the compiled `name` components fused with other LoRAs than `tag` (each holds a
        whole copy of the weights; a request in flight keeps its own until it ends)."""
        self._drop(lambda key: key[0] == name and key[-1] != tag)

    # -- the components ---------------------------------------------------------------
    def _text_encoder(self, seq_len: int, clip_skip: int, name: str, embeddings: bool, patch: WeightPatch | None):
        tag = patch.tag if patch is not None else None
        self._keep_one_patch(name, tag)
        return (name, clip_skip, embeddings, tag), lambda: TextEncoder(self.runtime, self.folder, seq_len, clip_skip,
                                                                     embeddings, patch, name)

    def start_text_encoder(self, seq_len: int, clip_skip: int = 1, name: str = "text_encoder", embeddings: bool = False,
                           patch: WeightPatch | None = None) -> Future:
        return self.start(*self._text_encoder(seq_len, clip_skip, name, embeddings, patch))

    def text_encoder(self, seq_len: int, clip_skip: int = 1, name: str = "text_encoder", embeddings: bool = False,
                     patch: WeightPatch | None = None) -> TextEncoder:
        return self.get(*self._text_encoder(seq_len, clip_skip, name, embeddings, patch))

    def _unet(self, shapes: dict[str, list[int]], variant: str | None, patch: WeightPatch | None):
        tag = patch.tag if patch is not None else None
        self._keep_one_patch("unet", tag)
        key = ("unet", tuple((name, tuple(shape)) for name, shape in sorted(shapes.items())), variant, tag)
        return key, lambda: UNet(self.runtime, self.folder, shapes, variant, patch)

    def start_unet(self, shapes: dict[str, list[int]], variant: str | None = None,
                   patch: WeightPatch | None = None) -> Future:
        return self.start(*self._unet(shapes, variant, patch))

    def unet(self, shapes: dict[str, list[int]], variant: str | None = None, patch: WeightPatch | None = None) -> UNet:
        return self.get(*self._unet(shapes, variant, patch))

    def _transformer(self, shapes: dict[str, list[int]], patch: WeightPatch | None):
        tag = patch.tag if patch is not None else None
        self._keep_one_patch("transformer", tag)
        key = ("transformer", tuple((name, tuple(shape)) for name, shape in sorted(shapes.items())), None, tag)
        return key, lambda: Transformer(self.runtime, self.folder, shapes, patch)

    # the denoiser, whichever the folder has (its UNet or its transformer)
    def start_denoiser(self, shapes: dict[str, list[int]], variant: str | None = None,
                       patch: WeightPatch | None = None) -> Future:
        if self.folder.denoiser == "transformer":
            return self.start(*self._transformer(shapes, patch))
        return self.start_unet(shapes, variant, patch)

    def denoiser(self, shapes: dict[str, list[int]], variant: str | None = None, patch: WeightPatch | None = None):
        if self.folder.denoiser == "transformer":
            return self.get(*self._transformer(shapes, patch))
        return self.unet(shapes, variant, patch)

    def release_denoiser(self) -> None:
        self.release(self.folder.denoiser)

    def start_vae_decoder(self, latent_hw: tuple[int, int], name: str = "vae_decoder") -> Future:
        return self.start((name, tuple(latent_hw)), lambda: VaeDecoder(self.runtime, self.folder, latent_hw, name))

    def vae_decoder(self, latent_hw: tuple[int, int], name: str = "vae_decoder") -> VaeDecoder:
        return self.get((name, tuple(latent_hw)), lambda: VaeDecoder(self.runtime, self.folder, latent_hw, name))

    def vae_encoder(self, image_hw: tuple[int, int], name: str = "vae_encoder") -> VaeEncoder:
        return self.get((name, tuple(image_hw)), lambda: VaeEncoder(self.runtime, self.folder, image_hw, name))
