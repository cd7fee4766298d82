"""Running one batch row: a compiled engine (which keeps the rows' encoded prompts) and the
init images read for earlier rows.  Used by the loop here (local.py) and, one per worker,
by `sdcli batch --ray` (ray_runner.py)."""
from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from sdcli.batch.rows import BatchOptions, Job
from sdcli.engine.engine import Engine
from sdcli.engine.networks import NetworkFolders
from sdcli.engine.request import GenerationRequest
from sdcli.util.lru import LRUCache


@dataclass
class RowOutput:
    """What running one row gives back, wherever it ran: the PNG (with its `parameters` chunk) or
    None when the worker wrote it into DIR itself (--shared-output), and the manifest's facts."""

    seed: int
    width: int
    height: int
    scheduler: str
    model: str
    timings: dict[str, float]
    notes: list[str] = field(default_factory=list)  # prompt warnings (e.g. truncated to 77 tokens)
    png: Optional[bytes] = None
    worker: Optional[str] = None  # the Ray worker, "HOST:PID"; None when run here


def generation_options(opts: BatchOptions) -> dict:
    """The GenerationRequest fields the command line sets for every row, and under "networks" the
    engine's LoRA and embedding folders (NetworkFolders' fields)."""
    return {"vae": opts.vae, "deepcache": opts.deepcache, "clip_skip": opts.clip_skip,
            "cfg_normalization": opts.cfg_normalization, "cfg_truncation": opts.cfg_truncation,
            "networks": (opts.lora_dir, opts.embeddings_dir, opts.allow_pickle)}


class RowRunner:
    def __init__(self, model_dir: Path, device: str, precision: str, rng: str, threads: Optional[int] = None,
                 streams: Optional[int] = None, generation: Optional[dict] = None):
        """`streams`: compile for throughput (see Runtime) so that several threads can run rows at once.
        `generation`: GenerationRequest fields every row shares (vae, deepcache, clip_skip), and
        "networks": where the rows' LoRAs and embeddings are (see generation_options)."""
        generation = dict(generation or {})
        folders = generation.pop("networks", None)
        self.engine = Engine(model_dir, device=device, precision=precision, streams=streams,
                             networks=NetworkFolders(*folders) if folders else None)
        if threads and device.upper() == "CPU":
            with contextlib.suppress(Exception):  # a worker of N CPUs on a bigger node uses N threads
                self.engine.runtime.core.set_property("CPU", {"INFERENCE_NUM_THREADS": int(threads)})
        self.rng = rng
        self.generation = generation
        self.images = LRUCache(4)
        self._cache_lock = threading.Lock()

    def request(self, job: Job, image: Any = None) -> GenerationRequest:
        """The request of `job` (its init image read, or taken from the cache), checked."""
        from sdcli.imaging.image_io import read_rgb

        if image is None and job.init_image:
            with self._cache_lock:
                image = self.images.get_or(job.init_image, lambda: read_rgb(job.init_image))
        request = GenerationRequest(
            prompt=job.prompt, negative_prompt=job.negative_prompt, steps=job.steps,
            guidance_scale=job.guidance_scale, guidance_rescale=job.guidance_rescale, seed=job.seed, width=job.width,
            height=job.height, scheduler=job.scheduler, init_image=image, strength=job.strength, rng=self.rng, **self.generation,
        )
        request.validate()
        self.engine.check_fits(request, images=2)  # a row too large for memory fails before it compiles
        return request

    def optimal_requests(self, job: Job) -> int:
        """How many rows like `job` OpenVINO would run at once (compiles its UNet)."""
        return self.engine.optimal_requests(self.request(job))

    def run(self, job: Job, image: Any = None, on_step: Optional[Callable] = None,
            release_unet: bool = False) -> RowOutput:
        """Generate `job`; `image` is its decoded init image when the caller read it already."""
        from sdcli.engine.parameters import image_parameters
        from sdcli.imaging.image_io import encode_png

        request = self.request(job, image)
        result = self.engine.generate(request, on_step, release_unet=release_unet)
        t0 = time.perf_counter()
        png = encode_png(result.image, image_parameters(self.engine, request, result, self.engine.runtime.precision))
        timings = {name: round(value, 4) for name, value in result.timings.items()}
        timings.update(encode_prompt=timings.get("encode_prompt", 0.0), save=time.perf_counter() - t0)
        return RowOutput(result.seed, result.width, result.height, result.scheduler, self.engine.folder.name,
                         timings, result.notes, png)
