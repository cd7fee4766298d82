"""The Stable Diffusion engine: four stages — encode prompt, prepare latents, denoise,
decode — on OpenVINO-compiled components, with the scheduler loop in numpy.

Text-to-image and image-to-image differ only in how the latents are prepared; inpainting
(see inpaint.py) also feeds the mask to the UNet or puts the kept region back after each step.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from sdcli.imaging import image_io
from sdcli.util.errors import UsageError
from sdcli.engine.lcm import guidance_scale_embedding
from sdcli.runtime.deepcache import DeepCacheUNet
from sdcli.model.folder import ModelFolder, TextEncoder, UNet, VaeDecoder, VaeEncoder, default_cache_dir
from sdcli.runtime.core import Runtime
from sdcli.util.rng import make_rng
from sdcli.schedulers import create_scheduler, name_for_diffusers_class, pipeline_switch_config
from sdcli.engine.prompt_syntax import CHUNK, Chunk, chunk_prompt, parse_emphasis
from sdcli.model.tokenizer import PromptTokenizer


@dataclass
class GenerationConfig:
    """One request.  Defaults are those of `sdcli generate`."""

    prompt: str = ""
    negative_prompt: str = ""
    steps: int = 20
    guidance_scale: float = 7.5
    seed: int = 0
    width: int | None = None  # None: the model's default size (or the init image's)
    height: int | None = None
    scheduler: str | None = None  # None: the model's own scheduler
    init_image: np.ndarray | None = None  # RGB uint8 [H, W, 3]
    strength: float = 0.8  # img2img: how much of the init image is repainted (1.0: all of it)
    rng: str = "torch"  # "torch": the same draws as diffusers with torch.Generator().manual_seed(seed)
    emphasis: bool = True  # A1111's (word), [word], (word:1.3) syntax
    mask: np.ndarray | None = None  # inpainting: float [H, W] in [0, 1] (1 repaint, 0 keep), any size
    mask_blur: int = 4  # inpainting: Gaussian sigma in pixels; 0: diffusers' result exactly (no overlay)
    deepcache: int = 1  # run the full UNet every N-th call, the shallow branch in between (1: off)
    clip_skip: int = 1  # A1111's Clip skip: the text encoder's N-th layer from the end (1: the last)
    vae: str = "full"  # "tiny": the TAESD that `sdcli convert --tiny-vae` adds, for decoding and encoding

    def validate(self) -> None:
        if self.steps < 1:
            raise UsageError("--steps must be at least 1")
        if not 0.0 <= self.strength <= 1.0:
            raise UsageError("--strength must be between 0 and 1")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None and (value <= 0 or value % 8):
                raise UsageError(f"--{name} must be a positive multiple of 8, got {value}")
        if self.rng not in ("torch", "numpy"):
            raise UsageError("--rng must be torch or numpy")
        if self.mask is not None and self.init_image is None:
            raise UsageError("--mask needs --init-image (the image to inpaint)")
        if self.mask_blur < 0:
            raise UsageError("--mask-blur must be 0 or more")
        if self.deepcache < 1:
            raise UsageError("--deepcache must be 1 (off) or more")
        if self.clip_skip < 1:
            raise UsageError("--clip-skip must be 1 (off) or more")
        if self.vae not in ("full", "tiny"):
            raise UsageError(f"--vae must be full or tiny, got {self.vae!r}")


@dataclass
class StepInfo:
    index: int  # 0-based
    total: int
    timestep: float
    seconds: float  # this step's wall time


@dataclass
class Result:
    image: np.ndarray  # RGB uint8 [H, W, 3]
    seed: int
    width: int
    height: int
    scheduler: str
    timings: dict[str, float] = field(default_factory=dict)


class StableDiffusionEngine:
    """Compiles a converted model for one device and generates images with it.

    Components are compiled lazily for each (size, batch) they are asked for and kept,
    so a batch of requests of one size compiles once.
    """

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "CPU",
        precision: str = "auto",
        cache_dir: Path | None | bool = True,
        low_memory: bool = False,
        streams: int | None = None,
    ):
        """`low_memory` keeps only one large component in memory at a time (each is
        loaded again when needed next: slower for several images, same result).
        `streams` compiles for throughput (see Runtime): several threads may then call
        generate() at once, each on its own infer requests."""
        self.folder = ModelFolder.open(model_dir)
        self.low_memory = low_memory
        if cache_dir is True:
            cache_dir = default_cache_dir()
        self.runtime = Runtime(device, precision, cache_dir or None, streams)
        self.tokenizer = PromptTokenizer(self.folder.root / "tokenizer")
        self._components: dict[tuple, Future] = {}
        self._fixed_sequence: int | None = None  # the UNet's fixed text length; 0: any
        # one loader thread: components load in the order asked for, off the main thread
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdcli-load")
        self.timings: dict[str, float] = {}
        self._lock = threading.Lock()
        self._per_thread = threading.local()

    @property
    def unet_seconds(self) -> float:
        """Time inside UNet inference in this thread's generate(), to tell the Python loop's own cost."""
        return getattr(self._per_thread, "unet_seconds", 0.0)

    @unet_seconds.setter
    def unet_seconds(self, value: float) -> None:
        self._per_thread.unet_seconds = value

    # -- components, compiled on first use -------------------------------------------
    def _start(self, key: tuple, build: Callable[[], object]) -> Future:
        with self._lock:
            return self._start_locked(key, build)

    def _start_locked(self, key: tuple, build: Callable[[], object]) -> Future:
        if key not in self._components:
            def timed():
                started = time.perf_counter()
                component = build()
                name = f"compile_{key[0]}"
                self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - started
                return component

            self._components[key] = self._loader.submit(timed)
        return self._components[key]

    def _get(self, key: tuple, build: Callable[[], object]):
        return self._start(key, build).result()

    def _text_encoder_key(self, clip_skip: int = 1):
        return ("text_encoder", clip_skip), lambda: TextEncoder(self.runtime, self.folder, CHUNK + 2, clip_skip)

    def text_encoder(self, clip_skip: int = 1) -> TextEncoder:
        return self._get(*self._text_encoder_key(clip_skip))

    def _unet_key(self, batch: int, latent_hw: tuple[int, int], seq: int, variant: str | None = None):
        return (("unet", batch, tuple(latent_hw), seq, variant),
                lambda: UNet(self.runtime, self.folder, batch, latent_hw, seq, variant))

    def unet(self, batch: int, latent_hw: tuple[int, int], seq: int, variant: str | None = None) -> UNet:
        return self._get(*self._unet_key(batch, latent_hw, seq, variant))

    @staticmethod
    def _unet_variants(deepcache: int) -> tuple:
        return ("full", "shallow") if deepcache > 1 else (None,)

    def denoising_unet(self, batch: int, latent_hw: tuple[int, int], seq: int, deepcache: int = 1):
        """What the loop calls: the UNet, or with `deepcache` > 1 DeepCache's pair (fresh state)."""
        if deepcache <= 1:
            return self.unet(batch, latent_hw, seq)
        full, shallow = (self.unet(batch, latent_hw, seq, v) for v in self._unet_variants(deepcache))
        return DeepCacheUNet(full, shallow, deepcache)

    def preload(self, config: GenerationConfig) -> list[Future]:
        """Start loading the UNet for `config` in the background, so that it overlaps with
        prompt encoding (OpenVINO releases the GIL while it loads); returns the UNet's futures."""
        self.folder.vae(config.vae)  # a missing tiny VAE is reported before anything loads
        width, height = self.resolve_size(config)
        f = self.folder.vae_scale_factor
        guidance = self.classifier_free_guidance(config.guidance_scale)
        chunked, _ = self.prompt_chunks(config.prompt, config.negative_prompt, guidance, config.emphasis)
        self._start(*self._text_encoder_key(config.clip_skip))
        return [self._start(*self._unet_key(2 if guidance else 1, (height // f, width // f), len(chunked[0]) * (CHUNK + 2), variant))
                for variant in self._unet_variants(config.deepcache)]

    def optimal_requests(self, config: GenerationConfig) -> int:
        """How many requests OpenVINO would keep in flight on the UNet for `config` (1 when
        compiled for latency); compiles it if needed."""
        compiled = self.preload(config)[0].result().compiled
        try:
            return max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        except (RuntimeError, TypeError, ValueError):
            return 1

    def vae_decoder(self, latent_hw: tuple[int, int], vae: str = "full") -> VaeDecoder:
        name = self.folder.vae(vae).decoder
        return self._get((name, latent_hw), lambda: VaeDecoder(self.runtime, self.folder, latent_hw, name))

    def vae_encoder(self, image_hw: tuple[int, int], vae: str = "full") -> VaeEncoder:
        name = self.folder.vae(vae).encoder
        return self._get((name, image_hw), lambda: VaeEncoder(self.runtime, self.folder, image_hw, name))

    def _release(self, component: str) -> None:
        with self._lock:
            for key in [k for k in self._components if k[0] == component]:
                del self._components[key]

    def release_text_encoder(self) -> None:
        self._release("text_encoder")

    def release_unet(self) -> None:
        self._release("unet")

    def make_scheduler(self, name: str | None):
        """The scheduler diffusers would run: the model's own as its pipeline loads it, or
        `name` configured as `XScheduler.from_config(pipe.scheduler.config)` does.

        A Latent Consistency Model runs with lcm only, made from the model's config as it is
        (diffusers' LCM pipelines make no load-time fix-ups)."""
        raw = self.folder.scheduler_config
        try:
            if self.folder.is_lcm:
                if name not in (None, "lcm"):
                    raise UsageError(f"--scheduler {name}: this is a Latent Consistency Model (its UNet takes "
                                     "timestep_cond), which runs with --scheduler lcm only")
                return create_scheduler("lcm", raw)
            own = name_for_diffusers_class(str(raw.get("_class_name")))
            if name is None or name == own:
                return create_scheduler(None, raw, sd_pipeline=True)
            return create_scheduler(name, pipeline_switch_config(raw))
        except ValueError as exc:
            raise UsageError(f"scheduler: {exc}") from None

    def classifier_free_guidance(self, guidance_scale: float) -> bool:
        """Whether the UNet runs on [negative, prompt] pairs: guidance above 1, unless the UNet is
        an LCM's, which takes the guidance as an embedding instead (diffusers' rule too)."""
        return guidance_scale > 1.0 and not self.folder.is_lcm

    # -- stage 1: prompt ---------------------------------------------------------------
    def _chunks(self, text: str, emphasis: bool) -> list[Chunk]:
        pairs = parse_emphasis(text) if emphasis else [(text, 1.0)]
        tokens: list[int] = []
        weights: list[float] = []
        for fragment, weight in pairs:
            ids = self.tokenizer.ids(fragment)
            tokens += ids
            weights += [weight] * len(ids)
        t = self.tokenizer
        return chunk_prompt(tokens, weights, t.bos, t.eos, t.pad, t.comma)

    def prompt_chunks(self, prompt: str, negative_prompt: str, guidance: bool, emphasis: bool = True):
        """Token chunks of [negative, prompt] (just [prompt] without guidance), padded to
        the same number of chunks, and warnings for anything truncated."""
        labels = ["negative prompt", "prompt"] if guidance else ["prompt"]
        texts = [negative_prompt, prompt] if guidance else [prompt]
        chunked = [self._chunks(text, emphasis) for text in texts]
        warnings = []
        if self.folder.is_lcm and negative_prompt.strip():
            warnings.append("a Latent Consistency Model takes no negative prompt (its guidance is built in); "
                            "the negative prompt is ignored")
        if self._fixed_sequence is None:
            self._fixed_sequence = self.folder.unet_sequence_length or 0
        if self._fixed_sequence:
            for label, chunks in zip(labels, chunked):
                if len(chunks) > 1:
                    warnings.append(f"the {label} is longer than {CHUNK} tokens and was truncated "
                                    f"(this model's UNet takes {self._fixed_sequence} tokens)")
            chunked = [chunks[:1] for chunks in chunked]
        n = max(len(chunks) for chunks in chunked)
        t = self.tokenizer
        for chunks in chunked:
            while len(chunks) < n:
                chunks += chunk_prompt([], [], t.bos, t.eos, t.pad, t.comma)
        return chunked, warnings

    def encode_prompt(self, prompt: str, negative_prompt: str, guidance: bool, emphasis: bool = True,
                      clip_skip: int = 1) -> tuple[np.ndarray, list[str]]:
        """Return the UNet context ([uncond, cond] when guidance is on) and any warnings."""
        chunked, warnings = self.prompt_chunks(prompt, negative_prompt, guidance, emphasis)
        encoder = self.text_encoder(clip_skip)
        started = time.perf_counter()
        rows = []
        for chunks in chunked:
            parts = []
            for chunk in chunks:
                z = encoder(np.asarray([chunk.ids], dtype=np.int64))
                weights = np.asarray(chunk.weights, dtype=np.float32)
                if (weights != 1.0).any():
                    # A1111: scale each token's embedding, then restore the chunk's mean
                    mean = z.mean()
                    z = z * weights[None, :, None]
                    z = z * (mean / z.mean())
                parts.append(z)
            rows.append(np.concatenate(parts, axis=1))
        self.timings["encode_prompt"] = time.perf_counter() - started
        return np.concatenate(rows, axis=0), warnings

    # -- stage 2: latents --------------------------------------------------------------
    def resolve_size(self, config: GenerationConfig) -> tuple[int, int]:
        if config.init_image is not None and config.width is None and config.height is None:
            h, w = config.init_image.shape[:2]
            w, h = w - w % 8, h - h % 8
            if w == 0 or h == 0:
                raise UsageError("the init image must be at least 8x8 pixels")
            return w, h
        size = self.folder.default_size
        return config.width or size, config.height or size

    def prepare_latents(self, config: GenerationConfig, scheduler, rng, width: int, height: int):
        """Return (latents, timesteps to run)."""
        f = self.folder.vae_scale_factor
        shape = (1, self.folder.latent_channels, height // f, width // f)
        self._set_timesteps(config, scheduler)
        if config.init_image is None:
            latents = rng.randn(shape) * np.float32(scheduler.init_noise_sigma)
            return latents.astype(np.float32), list(scheduler.timesteps)

        # an LCM's img2img runs the whole schedule _set_timesteps made from the strength
        timesteps = list(scheduler.timesteps) if self.folder.is_lcm else self._strength_timesteps(config, scheduler)
        image = image_io.resize(config.init_image, width, height)
        mean, logvar = self.vae_encoder((height, width), config.vae)(image_io.to_model_input(image))
        if self.low_memory:
            self._release(self.folder.vae(config.vae).encoder)
        init_latents = self._latent_sample(mean, logvar, rng, config.vae)
        noise = rng.randn(shape)
        latents = scheduler.add_noise(init_latents, noise, timesteps[0])
        return latents.astype(np.float32), timesteps

    def _set_timesteps(self, config: GenerationConfig, scheduler) -> None:
        """scheduler.set_timesteps(steps).  An LCM model's img2img takes its `steps` timesteps from
        the first `strength` part of the LCM schedule (LatentConsistencyModelImg2ImgPipeline),
        where Stable Diffusion's drops the first steps of the whole schedule."""
        try:
            if self.folder.is_lcm and config.init_image is not None and config.mask is None:
                scheduler.set_timesteps(config.steps, strength=config.strength)
            else:
                scheduler.set_timesteps(config.steps)
        except ValueError as exc:
            raise UsageError(f"--steps {config.steps}: {exc}") from None

    @staticmethod
    def _strength_timesteps(config: GenerationConfig, scheduler) -> list:
        """The timesteps left to run at `config.strength` (diffusers' img2img get_timesteps);
        sets the scheduler's begin index."""
        init_steps = min(int(config.steps * config.strength), config.steps)
        t_start = max(config.steps - init_steps, 0)
        timesteps = list(scheduler.timesteps[t_start * scheduler.order :])
        if init_steps < 1 or not timesteps:
            raise UsageError(
                f"--strength {config.strength} with --steps {config.steps} leaves no step to run; raise either"
            )
        scheduler.set_begin_index(t_start * scheduler.order)
        return timesteps

    def _latent_sample(self, mean: np.ndarray, logvar: np.ndarray | None, rng, vae: str = "full") -> np.ndarray:
        """The VAE encoder's latents, scaled: a sample of its distribution (one draw from
        `rng`, as diffusers' latent_dist.sample(generator)), or its output as it is (no
        draw: the tiny VAE's encoder, as diffusers' retrieve_latents with AutoencoderTiny)."""
        if logvar is None:
            sample = mean
        else:
            std = np.exp(0.5 * np.clip(logvar, -30.0, 20.0))
            sample = mean + std * rng.randn(mean.shape)
        return (np.float32(self.folder.vae(vae).scaling_factor) * sample).astype(np.float32)

    def prepare_inpaint(self, config: GenerationConfig, scheduler, rng, width: int, height: int):
        """Inpainting's stage 2: return (latents, timesteps to run, Inpainting).

        The random draws come in diffusers' StableDiffusionInpaintPipeline order: the init
        image's latent sample (unless a 9-channel UNet starts from pure noise at strength 1),
        the noise, then the masked image's latent sample (drawn for 4-channel UNets too,
        which do not use it)."""
        from sdcli.engine.inpaint import Inpainting, prepare_mask

        nine = int(self.folder.unet_config.get("in_channels", 4)) == 9
        if not nine and int(self.folder.unet_config.get("in_channels", 4)) != self.folder.latent_channels:
            raise UsageError(
                f"--mask: this model's UNet takes {self.folder.unet_config.get('in_channels')} input channels; "
                "inpainting needs 4 (an ordinary model) or 9 (an inpainting model)"
            )
        f = self.folder.vae_scale_factor
        shape = (1, self.folder.latent_channels, height // f, width // f)
        self._set_timesteps(config, scheduler)
        timesteps = self._strength_timesteps(config, scheduler)
        strength_max = config.strength == 1.0
        image = image_io.resize(config.init_image, width, height)
        pixels = image_io.to_model_input(image)
        soft, binary = prepare_mask(config.mask, width, height, config.mask_blur)
        encoder = self.vae_encoder((height, width), config.vae)

        sampled = []  # whether the encoder gives a distribution to sample from

        def encode(x):
            mean, logvar = encoder(x)
            sampled.append(logvar is not None)
            return self._latent_sample(mean, logvar, rng, config.vae)

        image_latents = None
        if not nine or not strength_max:
            image_latents = encode(pixels)
        noise = rng.randn(shape)
        if strength_max:
            latents = noise * np.float32(scheduler.init_noise_sigma)
        else:
            latents = scheduler.add_noise(image_latents, noise, timesteps[0])
        masked_latents = None
        if nine:
            masked_latents = encode((pixels * (binary < 0.5)[None, None]).astype(np.float32))
        elif sampled[0]:
            rng.randn(image_latents.shape)  # diffusers draws the unused masked-image sample too
        if self.low_memory:
            self._release(self.folder.vae(config.vae).encoder)
        state = Inpainting(
            nine_channel=nine,
            mask_latent=np.ascontiguousarray(binary[::f, ::f])[None, None].astype(np.float32),
            masked_image_latents=masked_latents,
            image_latents=None if nine else image_latents,
            noise=noise,
            original=image,
            soft_mask=soft,
            overlay=config.mask_blur > 0,
        )
        return latents.astype(np.float32), timesteps, state

    # -- stage 3: denoise --------------------------------------------------------------
    def denoise(self, latents, timesteps, scheduler, context, guidance_scale, rng,
                inpaint=None, deepcache: int = 1) -> Iterator[tuple[np.ndarray, StepInfo]]:
        """Yield the latents after every step (`inpaint`: the Inpainting of prepare_inpaint)."""
        guidance = context.shape[0] == 2
        unet = self.denoising_unet(context.shape[0], tuple(latents.shape[2:]), context.shape[1], deepcache)
        extra = {}
        if self.folder.is_lcm:
            extra["timestep_cond"] = guidance_scale_embedding(guidance_scale - 1, self.folder.time_cond_proj_dim)
        for i, t in enumerate(timesteps):
            started = time.perf_counter()
            x = scheduler.scale_model_input(latents, t).astype(np.float32)
            if inpaint is not None:
                x = inpaint.unet_input(x)
            if guidance:
                x = np.concatenate([x, x], axis=0)
            t_unet = time.perf_counter()
            out = unet(x, t, context, **extra)
            self.unet_seconds += time.perf_counter() - t_unet
            if guidance:
                uncond, cond = out[0:1], out[1:2]
                out = uncond + np.float32(guidance_scale) * (cond - uncond)
            latents = scheduler.step(out, t, latents, rng).astype(np.float32)
            if inpaint is not None:
                latents = inpaint.after_step(latents, i, timesteps, scheduler)
            yield latents, StepInfo(i, len(timesteps), float(t), time.perf_counter() - started)

    # -- stage 4: decode ---------------------------------------------------------------
    def decode(self, latents: np.ndarray, vae: str = "full") -> np.ndarray:
        decoder = self.vae_decoder(latents.shape[2:], vae)
        return image_io.to_pixels(decoder(latents / np.float32(self.folder.vae(vae).scaling_factor)))

    # -- all four ----------------------------------------------------------------------
    def generate(
        self,
        config: GenerationConfig,
        on_step: Callable[[StepInfo], None] | None = None,
        context: np.ndarray | None = None,
        release_unet: bool = False,
    ) -> Result:
        config.validate()
        self.folder.vae(config.vae)
        timings: dict[str, float] = {}
        started = time.perf_counter()
        width, height = self.resolve_size(config)
        guidance = self.classifier_free_guidance(config.guidance_scale)
        scheduler = self.make_scheduler(config.scheduler)
        if context is None:
            context, _ = self.encode_prompt(config.prompt, config.negative_prompt, guidance, config.emphasis,
                                            config.clip_skip)
            timings["encode_prompt"] = self.timings["encode_prompt"]

        t0 = time.perf_counter()
        rng = make_rng(config.rng, config.seed)
        inpaint = None
        if config.mask is not None:
            latents, timesteps, inpaint = self.prepare_inpaint(config, scheduler, rng, width, height)
        else:
            if int(self.folder.unet_config.get("in_channels", 4)) == 9:
                raise UsageError("this is an inpainting model (its UNet takes 9 channels): pass --init-image and --mask")
            latents, timesteps = self.prepare_latents(config, scheduler, rng, width, height)
        timings["prepare_latents"] = time.perf_counter() - t0

        # compiled before the loop's clock starts
        self.denoising_unet(context.shape[0], tuple(latents.shape[2:]), context.shape[1], config.deepcache)
        t0 = time.perf_counter()
        step_times = []
        self.unet_seconds = 0.0
        for latents, info in self.denoise(latents, timesteps, scheduler, context, config.guidance_scale, rng, inpaint,
                                          config.deepcache):
            step_times.append(info.seconds)
            if on_step:
                on_step(info)
        timings["denoise"] = time.perf_counter() - t0
        timings["unet"] = self.unet_seconds
        timings["step_median"] = float(np.median(step_times)) if step_times else 0.0
        if release_unet or self.low_memory:
            self.release_unet()

        t0 = time.perf_counter()
        image = self.decode(latents, config.vae)
        if inpaint is not None:
            image = inpaint.finish(image)
        if self.low_memory:
            self._release(self.folder.vae(config.vae).decoder)
        timings["decode"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - started
        return Result(image, config.seed, width, height, scheduler.name, timings)
