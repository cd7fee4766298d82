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
            "networks": (opts.lora_dir, opts.embeddings_dir, opts.allow_pickle),
            "controlnet_dir": getattr(opts, "controlnet_dir", None)}


class RowRunner:
    def __init__(self, model_dir: Path, device: str, precision: str, rng: str, threads: Optional[int] = None,
                 streams: Optional[int] = None, generation: Optional[dict] = None):
        """`streams`: compile for throughput (see Runtime) so that several threads can run rows at once.
        `generation`: GenerationRequest fields every row shares (vae, deepcache, clip_skip), and
        "networks": where the rows' LoRAs and embeddings are (see generation_options)."""
        generation = dict(generation or {})
        folders = generation.pop("networks", None)
        controlnet_dir = generation.pop("controlnet_dir", None)
        self.engine = Engine(model_dir, device=device, precision=precision, streams=streams,
                             networks=NetworkFolders(*folders) if folders else None, controlnet_dir=controlnet_dir)
        if threads and device.upper() == "CPU":
            with contextlib.suppress(Exception):  # a worker of N CPUs on a bigger node uses N threads
                self.engine.runtime.core.set_property("CPU", {"INFERENCE_NUM_THREADS": int(threads)})
        self.rng = rng
        self.generation = generation
        self.images = LRUCache(4)
        self._cache_lock = threading.Lock()

    def read_image(self, path: Path, label: str = ""):
        """The RGB pixels of `path`, from the cache of the rows' images when read before (a
        file that cannot be read: UsageError, its message after `label`)."""
        from sdcli.imaging.image_io import read_rgb
        from sdcli.util.errors import UsageError

        try:
            with self._cache_lock:
                return self.images.get_or(path, lambda: read_rgb(path))
        except UsageError as exc:
            if not label:
                raise
            raise UsageError(f"{label}: {exc}") from None

    def request(self, job: Job, image: Any = None, references: Optional[tuple] = None) -> GenerationRequest:
        """The request of `job` (its init image and reference images read, or taken from the
        cache; `references`: the latter as read by the caller), checked."""
        if image is None and job.init_image:
            image = self.read_image(job.init_image)
        paths = tuple(getattr(job, "reference_images", ()))
        if references is None:
            references = tuple(self.read_image(path, "reference_images") for path in paths)
        request = GenerationRequest(
            prompt=job.prompt, negative_prompt=job.negative_prompt, steps=job.steps,
            guidance_scale=job.guidance_scale, guidance_rescale=job.guidance_rescale, seed=job.seed, width=job.width,
            height=job.height, scheduler=job.scheduler, init_image=image, strength=job.strength, rng=self.rng,
            reference_images=tuple(references), reference_names=tuple(Path(path).name for path in paths),
            hires=getattr(job, "hires", None), controlnets=self.control_units(job), **self.generation,
        )
        request.validate()
        self.engine.check_fits(request, images=2)  # a row too large for memory fails before it compiles
        return request

    def control_units(self, job: Job) -> tuple:
        """`job`'s ControlNet units with their control images read (or taken from the cache)."""
        return tuple(unit.read_image(self.read_image, "control_image") for unit in getattr(job, "controlnets", ()))

    def optimal_requests(self, job: Job) -> int:
        """How many rows like `job` OpenVINO would run at once (compiles its UNet)."""
        return self.engine.optimal_requests(self.request(job))

    def run(self, job: Job, image: Any = None, on_step: Optional[Callable] = None,
            release_unet: bool = False, references: Optional[tuple] = None) -> RowOutput:
        """Generate `job`; `image` is its decoded init image, `references` its reference images,
        when the caller read them already."""
        from sdcli.engine.parameters import image_parameters
        from sdcli.imaging.image_io import encode_png

        request = self.request(job, image, references)
        result = self.engine.generate(request, on_step, release_unet=release_unet)
        t0 = time.perf_counter()
        png = encode_png(result.image, image_parameters(self.engine, request, result, self.engine.runtime.precision))
        timings = {name: round(value, 4) for name, value in result.timings.items()}
        timings.update(encode_prompt=timings.get("encode_prompt", 0.0), save=time.perf_counter() - t0)
        return RowOutput(result.seed, result.width, result.height, result.scheduler, self.engine.folder.name,
                         timings, result.notes, png)
