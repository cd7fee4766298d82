"""The engine: a converted model compiled for one device, and the one place where the four
stages — encode prompt, prepare latents, denoise, decode — are sequenced (`generate`).

Text-to-image, image-to-image and inpainting differ only in how the latents are prepared
(latents.py, inpaint.py); model families only in what their ModelFamily says (families/).
`sdcli generate`, `sdcli batch` (here and on Ray workers) and the quantization's
calibration all call `generate`.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from sdcli.engine import inpaint as inpainting
from sdcli.engine.decode import decode
from sdcli.engine.deepcache import DeepCacheUNet
from sdcli.engine.denoise import StepInfo, denoise
from sdcli.engine.families import Conditioning, family_for
from sdcli.engine.handoff import check_refiner, from_switch, refiner_request, until_switch
from sdcli.engine.latents import prepare_latents, resolve_size
from sdcli.engine.loader import ComponentCache
from sdcli.engine.networks import NetworkFolders, Networks, hash_name
from sdcli.engine.request import GenerationRequest
from sdcli.imaging import image_io
from sdcli.model.folder import ModelFolder
from sdcli.runtime.core import Runtime, default_cache_dir
from sdcli.runtime.lora import WeightPatch
from sdcli.util.errors import UsageError
from sdcli.util.lru import LRUCache
from sdcli.util.rng import make_rng

PROMPT_CACHE = 16  # encoded prompts kept for later requests (a batch's rows often share them)


@dataclass
class Result:
    image: np.ndarray | None  # RGB uint8 [H, W, 3]; None when generate(decode=False)
    seed: int
    width: int
    height: int
    scheduler: str
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # prompt warnings, when the prompt was encoded for this image
    lora_hashes: list[tuple[str, str]] = field(default_factory=list)  # (name as in the prompt, A1111's short hash)
    ti_hashes: list[tuple[str, str]] = field(default_factory=list)  # embeddings used: (name, short hash)
    latents: np.ndarray | None = None  # the denoised latents, with generate(decode=False)
    first_pass_size: tuple[int, int] | None = None  # the hires fix: (width, height) of its first pass (hires.py)
    hires_scheduler: str | None = None  # ... and the scheduler its second pass ran


def run_steps(unet, latents: np.ndarray, timesteps: list, scheduler, conditioning: Conditioning,
              request: GenerationRequest, rng, inpaint, clock: dict, on_step, step_times: list,
              done: int = 0, family=None) -> np.ndarray:
    """Stage 3's loop: the latents after the last of `timesteps`, each step's seconds appended
    to `step_times` and reported to `on_step` (numbered on from `done`: a refiner's steps follow
    the base's); `family` feeds the denoiser `unet` (see denoise)."""
    total = done + len(timesteps)
    for latents, info in denoise(unet, latents, timesteps, scheduler, conditioning, request.guidance_scale, rng,
                                 inpaint, clock, request.guidance_rescale, family):
        step_times.append(info.seconds)
        if on_step:
            on_step(dataclasses.replace(info, index=info.index + done, total=total) if done else info)
    return latents


class Engine:
    """Compiles a converted model for one device and generates images with it."""

    def __init__(self, model_dir: str | Path, device: str = "CPU", precision: str = "auto",
                 cache_dir: Path | None | bool = True, low_memory: bool = False, streams: int | None = None,
                 keep_text_encoder: bool = True, networks: NetworkFolders | None = None,
                 refiner: str | Path | None = None, controlnet_dir: Path | None = None):
        """`low_memory` keeps only one large component in memory at a time (each is loaded
        again when needed next: slower for several images, same result).  `streams` compiles
        for throughput (see Runtime): several threads may then call generate() at once, each
        on its own infer requests.  `keep_text_encoder=False` frees the text encoder once a
        prompt is encoded (for a run whose images all share one prompt).  `networks`: where
        the prompts' LoRAs and embeddings are looked for (default: $SDCLI_LORA_DIR or
        models/Lora, $SDCLI_EMBEDDINGS_DIR or models/embeddings).  `refiner`: an SDXL refiner's
        folder, which takes the latents over at each request's `refiner_switch` and decodes
        them (engine/handoff.py).  `controlnet_dir`: where a request's ControlNets are looked for
        (default: $SDCLI_CONTROLNET_DIR or models/ControlNet; engine/controlnet.py)."""
        self.folder = ModelFolder.open(model_dir)
        self.controlnet_dir = controlnet_dir
        self.family = family_for(self.folder)
        self.low_memory = low_memory
        self.keep_text_encoder = keep_text_encoder and not low_memory
        if cache_dir is True:
            cache_dir = default_cache_dir()
        self.runtime = Runtime(device, precision, cache_dir or None, streams)
        self.components = ComponentCache(self.runtime, self.folder, lanes=not low_memory)
        self.networks = Networks(networks or NetworkFolders(), self.folder, self.family)
        self.timings = self.components.timings
        self.unet_recorder: Callable[[dict], None] | None = None  # sees every UNet call's inputs
        self._prompts = LRUCache(PROMPT_CACHE)
        self._prompts_lock = threading.Lock()
        self.last_vae_tiling = None  # the tiling of the last decode (None: whole)
        self.refiner = None
        if refiner is not None:
            self.refiner = Engine(refiner, device, precision, cache_dir, low_memory, streams, keep_text_encoder)
            check_refiner(self.folder, self.refiner.folder)

    # -- what a request needs ------------------------------------------------------------
    def resolve_size(self, request: GenerationRequest) -> tuple[int, int]:
        return resolve_size(self.folder, request)

    def classifier_free_guidance(self, guidance_scale: float) -> bool:
        return self.family.classifier_free_guidance(guidance_scale)

    def check_fits(self, request: GenerationRequest, images: int = 1):
        """UsageError when `request` (followed by `images` - 1 more) would not fit in memory."""
        from sdcli.engine.memory import check_fits

        self.family.check(request)
        self._check_controlnets(request)
        if request.vae == "tiny" and request.vae_tiling is not False:  # a tile size it cannot blend: refused now
            from sdcli.engine.vae_tiling import tiling_for

            tiling_for(self.folder, "tiny", request.vae_tile_size)
        if request.hires is not None:  # both passes (engine/hires.py)
            from sdcli.engine import hires

            return hires.check_fits(self, self.networks.activate(request), images)
        return check_fits(self, self.networks.activate(request), images)

    def _check_controlnets(self, request: GenerationRequest) -> None:
        if request.controlnets:
            from sdcli.engine.controlnet import check_request

            check_request(request, self)

    def _unet_shapes(self, request: GenerationRequest) -> dict[str, list[int]]:
        """The denoiser's input shapes for `request` (its UNet's or transformer's)."""
        request = self.networks.activate(request)
        width, height = self.resolve_size(request)
        f = self.folder.vae_scale_factor
        guidance = self.classifier_free_guidance(request.guidance_scale)
        return self.family.denoiser_shapes(request, guidance, (height // f, width // f))

    @staticmethod
    def _unet_variants(deepcache: int, controlnet: bool = False) -> tuple:
        if controlnet:  # the UNet with ControlNet residual inputs (runtime/controlnet.py)
            return ("controlnet-deepcache-full", "controlnet-deepcache-shallow") if deepcache > 1 else ("controlnet",)
        return ("full", "shallow") if deepcache > 1 else (None,)

    def preload(self, request: GenerationRequest) -> list[Future]:
        """Start compiling the text encoder and the UNet for `request` in the background, so
        that the UNet compiles while the prompt is encoded, and then the VAE decoder (not with
        low_memory); returns the UNet's futures."""
        self.folder.vae(request.vae)  # a missing tiny VAE is reported before anything loads
        request = self.networks.activate(request)
        shapes = self._unet_shapes(request)
        guidance = self.classifier_free_guidance(request.guidance_scale)
        with self._prompts_lock:
            encoded = self.family.prompt_key(request, guidance) in self._prompts
        if not encoded:  # an encoded prompt needs no text encoder (it may have been freed)
            self.family.start_text_encoders(self.components, request)
        patch = request.networks.patch(self.folder.denoiser)
        if self.refiner is not None and not self.low_memory:
            self.refiner.preload(refiner_request(request))
        started = [self.components.start_denoiser(shapes, variant, patch)
                   for variant in self._unet_variants(request.deepcache, bool(request.controlnets))]
        if request.controlnets:  # beside the UNet and the encoders, on a lane of their own (engine/loader.py)
            from sdcli.engine.controlnet import start_compiling

            start_compiling(self, request, shapes)
        if not self.low_memory:  # the decoder loads during the loop, after the denoiser (engine/loader.py)
            width, height = self.resolve_size(request)
            decoding = self.refiner or self
            f = decoding.folder.vae_scale_factor
            latent_hw = (height // f, width // f)
            if request.vae_tiling:  # (tiled only where more than one tile, as decode)
                from sdcli.engine.vae_tiling import tiling_for

                tiling = tiling_for(decoding.folder, request.vae, request.vae_tile_size)
                if tiling is not None and tiling.decodes_tiled(latent_hw):
                    latent_hw = (-1, -1)
            decoding.components.start_vae_decoder(latent_hw, decoding.folder.vae(request.vae).decoder)
        return started

    def optimal_requests(self, request: GenerationRequest) -> int:
        """How many requests OpenVINO would keep in flight on the UNet for `request` (1 when
        compiled for latency); compiles it if needed."""
        compiled = self.preload(request)[0].result().compiled
        try:
            return max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        except (RuntimeError, TypeError, ValueError):
            return 1

    def release_text_encoder(self) -> None:
        self.family.release_text_encoders(self.components)

    def release_unet(self) -> None:
        self.components.release_denoiser()
        if self.refiner is not None:
            self.refiner.release_unet()

    # -- the stages ------------------------------------------------------------------------
    def encode_prompt(self, request: GenerationRequest, guidance: bool,
                      size: tuple[int, int] | None = None) -> tuple[Conditioning, list[str], float | None]:
        """Stage 1: (conditioning, notes, seconds spent encoding or None when the prompt came
        from the cache).  Notes come with the first encoding of a prompt only."""
        request = self.networks.activate(request)
        key = self.family.prompt_key(request, guidance)
        with self._prompts_lock:
            encoded = self._prompts.get(key)
            seconds = None
            if encoded is None:
                started = time.perf_counter()  # (its waits for models count in load_wait_encode too)
                if self.folder.denoiser_4bit and not self.low_memory:  # (engine/loader.py: int4 folders)
                    self.components.wait_for_denoiser()
                encoded = self.family.encode_prompt(self.components, request, guidance)
                seconds = time.perf_counter() - started
                self.timings["encode_prompt"] = seconds
                self._prompts.put(key, encoded)
        notes = list(encoded.notes) if seconds is not None else []
        conditioning = self.family.conditioning(encoded, request, size or self.resolve_size(request))
        conditioning.embeddings_used = encoded.embeddings_used
        return conditioning, notes, seconds

    def condition_on_images(self, conditioning: Conditioning, request: GenerationRequest) -> Conditioning:
        """Stage 1's images: `conditioning` with the request's reference images, which the family
        has encoded by the VAE encoder (families/base.py: condition_on_images)."""
        if not request.reference_images:
            return conditioning
        vae = self.folder.vae(request.vae)

        def encode(pixels: np.ndarray):
            return self.components.vae_encoder(pixels.shape[2:], vae.encoder)(pixels)

        try:
            return self.family.condition_on_images(conditioning, request, encode)
        finally:
            if self.low_memory:
                self.components.release(vae.encoder)

    def prepare_latents(self, request: GenerationRequest, scheduler, rng, width: int, height: int):
        """Stage 2: (latents, timesteps to run, Inpainting or None)."""
        vae = self.folder.vae(request.vae)

        def encode(pixels: np.ndarray):  # (compiled only when an image is encoded)
            return self.vae_encoder(request.vae, (height, width), request.vae_tiling, request.vae_tile_size)(pixels)

        try:
            if request.mask is not None:
                return inpainting.prepare(self.folder, self.family, request, scheduler, rng, width, height, encode)
            if int(self.folder.unet_config.get("in_channels", 4)) == 9:
                raise UsageError("this is an inpainting model (its UNet takes 9 channels): pass --init-image and --mask")
            return (*prepare_latents(self.folder, self.family, request, scheduler, rng, width, height, encode), None)
        finally:
            if self.low_memory:
                self.components.release(vae.encoder)

    def vae_encoder(self, vae_kind: str, image_hw: tuple[int, int], tiling: bool | None = None,
                    tile_size: int | None = None) -> Callable[[np.ndarray], tuple]:
        """The VAE encoder for `image_hw` pixels (-> mean, log-variance or None); in tiles as
        diffusers' enable_tiling() with `tiling` True, or None and a whole encode too large for
        the memory left (engine/vae_tiling.py)."""
        from sdcli.engine.memory import decode_fits
        from sdcli.engine.vae_tiling import choose_encode_tiling, tiled_encoder, tiling_for

        vae = self.folder.vae(vae_kind)
        tiles = None
        if tiling is not False:
            tiles = choose_encode_tiling(tiling, tiling_for(self.folder, vae_kind, tile_size), tuple(image_hw),
                                         lambda: decode_fits(self, image_hw[1], image_hw[0], vae_kind))
        if tiles is None:
            return self.components.vae_encoder(tuple(image_hw), vae.encoder)
        return tiled_encoder(self.components.vae_encoder((-1, -1), vae.encoder), tiles)

    def encode_image(self, image: np.ndarray, rng, vae_kind: str = "full", tiling: bool | None = None,
                     tile_size: int | None = None) -> np.ndarray:
        """The latents of RGB uint8 `image` as the denoiser takes them (one draw from `rng` where
        the VAE has a variance: the family's image_latents)."""
        vae = self.folder.vae(vae_kind)
        try:
            encode = self.vae_encoder(vae_kind, image.shape[:2], tiling, tile_size)
            mean, logvar = encode(image_io.to_model_input(image))
            return self.family.image_latents(mean, logvar, rng, vae)
        finally:
            if self.low_memory:
                self.components.release(vae.encoder)

    def denoising_unet(self, conditioning: Conditioning, latent_hw: tuple[int, int], deepcache: int = 1,
                       patch: WeightPatch | None = None, controlnet: bool = False):
        """What the loop calls: the denoiser (the UNet or transformer, with the LoRAs of `patch`
        fused), or with `deepcache` > 1 DeepCache's pair of UNets (fresh state); `controlnet`:
        the UNet with ControlNet residual inputs (engine/controlnet.py wraps it)."""
        shapes = self.family.conditioned_shapes(conditioning, latent_hw)
        unets = [self.components.denoiser(shapes, variant, patch)
                 for variant in self._unet_variants(deepcache, controlnet)]
        for unet in unets:
            unet.recorder = self.unet_recorder
        return unets[0] if deepcache <= 1 else DeepCacheUNet(*unets, deepcache)

    def decode(self, latents: np.ndarray, vae_kind: str = "full", tiling: bool | None = None,
               tile_size: int | None = None) -> np.ndarray:
        """Stage 4: RGB pixels of `latents`; the VAE (full or tiny) in tiles with `tiling` True, or
        None and a whole decode too large for the memory left (engine/decode.py: choose_tiling)."""
        from sdcli.engine.decode import choose_tiling
        from sdcli.engine.memory import decode_fits
        from sdcli.engine.vae_tiling import tiling_for

        vae = self.folder.vae(vae_kind)
        z = self.family.decode_latents(latents, vae)
        tiles = None
        if tiling is not False:
            f = self.folder.vae_scale_factor
            tiles = choose_tiling(tiling, tiling_for(self.folder, vae_kind, tile_size), z.shape[2:],
                                  lambda: decode_fits(self, z.shape[3] * f, z.shape[2] * f, vae_kind))
        self.last_vae_tiling = tiles
        decoder = self.components.vae_decoder((-1, -1) if tiles else z.shape[2:], vae.decoder)
        image = decode(decoder, z, tiles)
        if self.low_memory:
            self.components.release(vae.decoder)
        return image

    def refine(self, latents: np.ndarray, request: GenerationRequest, rng, on_step, done: int, step_times: list,
               clock: dict) -> np.ndarray:
        """A refiner's part of a request: its own prompt encoding and UNet from the switch on,
        continuing the base's latents and random draws (StepInfo numbers continue from `done`)."""
        request = refiner_request(request)
        guidance = self.classifier_free_guidance(request.guidance_scale)
        f = self.folder.vae_scale_factor
        conditioning, _, _ = self.encode_prompt(request, guidance, (latents.shape[3] * f, latents.shape[2] * f))
        if not self.keep_text_encoder:
            self.release_text_encoder()
        scheduler = self.family.make_scheduler(request.scheduler)
        self.family.set_timesteps(request, scheduler)
        timesteps = from_switch(scheduler, request.refiner_switch)
        unet = self.denoising_unet(conditioning, latents.shape[2:])
        return run_steps(unet, latents, timesteps, scheduler, conditioning, request, rng, None, clock, on_step,
                         step_times, done, self.family)

    # -- all four --------------------------------------------------------------------------
    def generate(self, request: GenerationRequest, on_step: Callable[[StepInfo], None] | None = None, *,
                 on_note: Callable[[str], None] | None = None, release_unet: bool = False,
                 decode: bool = True) -> Result:
        """One image.  `on_step` is called after every denoising step (raise in it to stop);
        `on_note` with each prompt warning as it arises; `release_unet` frees the UNet before
        decoding (no image follows); `decode=False` stops after the last step (the Result then
        holds the latents).  A request with `hires` runs both passes of the hires fix
        (engine/hires.py), each through here."""
        if request.hires is not None:
            from sdcli.engine import hires

            return hires.generate(self, request, on_step, on_note=on_note, release_unet=release_unet, decode=decode)
        request = request.with_images_read()
        request.validate()
        self.family.check(request)
        self._check_controlnets(request)
        self.folder.vae(request.vae)
        request = self.networks.activate(request)  # the prompt's LoRAs and embeddings; its tags removed
        active = request.networks
        started = time.perf_counter()
        compiled_before = self.components.compile_seconds()
        width, height = self.resolve_size(request)
        guidance = self.classifier_free_guidance(request.guidance_scale)
        scheduler = self.family.make_scheduler(request.scheduler)
        self.preload(request)
        timings: dict[str, float] = {}
        waited_before = self.components.waited  # the time this call waits for components still loading

        conditioning, notes, encode_seconds = self.encode_prompt(request, guidance, (width, height))  # 1. encode
        timings["load_wait_encode"] = self.components.waited - waited_before
        notes = [*active.notes, *notes] if encode_seconds is not None else notes
        if encode_seconds is not None:
            timings["encode_prompt"] = encode_seconds
        for note in notes if on_note else ():
            on_note(note)
        if not self.keep_text_encoder:
            self.release_text_encoder()
        if request.reference_images:  # (images the picture is conditioned on: FLUX.2-klein's references)
            t0 = time.perf_counter()
            conditioning = self.condition_on_images(conditioning, request)
            timings["encode_images"] = time.perf_counter() - t0

        t0 = time.perf_counter()  # 2. prepare the latents
        rng = make_rng(request.rng, request.seed)
        latents, timesteps, inpaint = self.prepare_latents(request, scheduler, rng, width, height)
        scheduled = len(timesteps)  # (what a ControlNet's start/end count: the refiner's steps too)
        if self.refiner is not None:
            timesteps = until_switch(timesteps, scheduler, request.refiner_switch)
        timings["prepare_latents"] = time.perf_counter() - t0

        unet = self.denoising_unet(conditioning, latents.shape[2:], request.deepcache,  # 3. denoise
                                   active.patch(self.folder.denoiser), bool(request.controlnets))
        if request.controlnets:  # the ControlNet units around the UNet (engine/controlnet.py)
            from sdcli.engine.controlnet import control

            unet = control(self, unet, request, width, height, scheduled, scheduler)
        t0 = time.perf_counter()  # (the UNet is compiled before the loop's clock starts)
        clock: dict[str, float] = {"unet": 0.0}
        step_times: list[float] = []
        waited = self.components.waited
        latents = run_steps(unet, latents, timesteps, scheduler, conditioning, request, rng, inpaint, clock, on_step,
                            step_times, family=self.family)
        timings["load_wait_denoise"] = self.components.waited - waited  # (a ControlNet got at its first call)
        finish = getattr(unet, "overlays", [])  # what is laid over the decoded picture (ControlNet units')
        del unet  # else this frame keeps a released UNet (and its weights) alive through decoding
        if release_unet or self.low_memory:
            self.components.release_denoiser()
            self.components.release("controlnet")
        if self.refiner is not None:  # the refiner's part of the schedule
            latents = self.refiner.refine(latents, request, rng, on_step, len(step_times), step_times, clock)
            if release_unet or self.low_memory:
                self.refiner.release_unet()
        timings["denoise"] = time.perf_counter() - t0
        timings["unet"] = clock["unet"]
        timings["step_median"] = float(np.median(step_times)) if step_times else 0.0

        image = None
        if decode:  # 4. decode
            t0 = time.perf_counter()
            waited = self.components.waited
            image = (self.refiner or self).decode(latents, request.vae, request.vae_tiling, request.vae_tile_size)
            timings["load_wait_decode"] = self.components.waited - waited
            if inpaint is not None:
                image = inpaint.finish(image)
            for overlay in finish:
                image = overlay(image)
            timings["decode"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - started
        timings["compile"] = self.components.compile_seconds() - compiled_before
        timings["load_wait"] = self.components.waited - waited_before
        return Result(image, request.seed, width, height, scheduler.name, timings, notes, list(active.lora_hashes),
                      [(hash_name(name), active.embedding_hashes[name]) for name in conditioning.embeddings_used],
                      latents=None if decode else latents)
