"""Stable Diffusion 1.x and 2.x, and Latent Consistency Models of them.

One CLIP text encoder; the UNet attends to its last hidden states (or an earlier layer's,
with clip skip).  An LCM UNet (IR input `timestep_cond`, config `time_cond_proj_dim`) was
distilled with the guidance baked in: it takes the guidance scale as an embedding, runs
one batch-1 call per step (no negative prompt) and steps with the LCM scheduler.
"""
from __future__ import annotations

from functools import cached_property

from sdcli.engine.families.base import Conditioning, EncodedPrompt, ModelFamily
from sdcli.engine.lcm import guidance_scale_embedding, lcm_defaults
from sdcli.engine.prompt_encoder import TOKENS_PER_CHUNK, ClipPromptEncoder, embeddings_used
from sdcli.model.tokenizer import PromptTokenizer
from sdcli.schedulers import create_scheduler, name_for_diffusers_class, pipeline_switch_config
from sdcli.util.errors import UsageError


ENCODER_INDEX = {"text_encoder": 0, "text_encoder_2": 1}  # which vectors of an SDXL embedding (clip_l, clip_g)


class StableDiffusion(ModelFamily):
    name = "stable-diffusion"
    pipeline_fixups = True  # diffusers' SD pipelines fix steps_offset and clip_sample when they load a scheduler

    def __init__(self, folder):
        super().__init__(folder)
        self.encoders = folder.text_encoders  # text encoder folders, each with its tokenizer
        self.tokenizers = {name: PromptTokenizer(folder.root / name.replace("text_encoder", "tokenizer"))
                           for name in self.encoders}

    @property
    def is_lcm(self) -> bool:
        return self.folder.is_lcm

    @cached_property
    def prompt_encoders(self) -> dict[str, ClipPromptEncoder]:
        fixed = self.folder.unet_sequence_length or None
        return {name: ClipPromptEncoder(tokenizer, fixed) for name, tokenizer in self.tokenizers.items()}

    def few_step_defaults(self, scheduler: str | None) -> tuple[int, float] | None:
        return lcm_defaults(self.folder, scheduler)

    def classifier_free_guidance(self, guidance_scale: float) -> bool:
        """Guidance above 1, unless the UNet is an LCM's, which takes the guidance as an
        embedding instead (diffusers' rule too)."""
        return guidance_scale > 1.0 and not self.is_lcm

    def make_scheduler(self, name: str | None):
        """The scheduler diffusers would run: the model's own as its pipeline loads it, or
        `name` configured as `XScheduler.from_config(pipe.scheduler.config)` does.

        A Latent Consistency Model runs with lcm only, made from the model's config as it is
        (diffusers' LCM pipelines make no load-time fix-ups)."""
        raw = self.folder.scheduler_config
        try:
            if self.is_lcm:
                if name not in (None, "lcm"):
                    raise UsageError(f"--scheduler {name}: this is a Latent Consistency Model (its UNet takes "
                                     "timestep_cond), which runs with --scheduler lcm only")
                return create_scheduler("lcm", raw)
            own = name_for_diffusers_class(str(raw.get("_class_name")))
            if name is None or name == own:
                return create_scheduler(None, raw, sd_pipeline=self.pipeline_fixups)
            return create_scheduler(name, pipeline_switch_config(raw) if self.pipeline_fixups else raw)
        except ValueError as exc:
            raise UsageError(f"scheduler: {exc}") from None

    # -- the prompt -------------------------------------------------------------------
    def prompt_chunks(self, request, guidance: bool, encoder: str | None = None):
        """Token chunks of [negative, prompt] (just [prompt] without guidance) for text encoder
        `encoder` (default: the first), padded to the same number of chunks, and warnings for
        anything truncated or ignored."""
        encoder = encoder or self.encoders[0]
        labels = ["negative prompt", "prompt"] if guidance else ["prompt"]
        texts = [request.negative_prompt, request.prompt] if guidance else [request.prompt]
        embeddings = request.networks.embeddings if request.networks is not None else ()
        prompt_encoder = self.prompt_encoders[encoder]
        vocabulary = prompt_encoder.vocabulary(embeddings, ENCODER_INDEX[encoder], self.encoder_widths[encoder]) \
            if embeddings else ()
        chunked, warnings = prompt_encoder.prompt_chunks(texts, labels, request.emphasis, vocabulary)
        if self.is_lcm and request.negative_prompt.strip():
            warnings.insert(0, "a Latent Consistency Model takes no negative prompt (its guidance is built in); "
                               "the negative prompt is ignored")
        return chunked, warnings

    def text_length(self, request, guidance: bool) -> int:
        chunked, _ = self.prompt_chunks(request, guidance)
        return len(chunked[0]) * TOKENS_PER_CHUNK

    @cached_property
    def encoder_widths(self) -> dict[str, int]:
        """Each text encoder's hidden size (its config.json)."""
        from sdcli.model.config_checks import read_json

        return {name: int(read_json(self.folder.root / name / "config.json").get("hidden_size", 768))
                for name in self.encoders}

    def start_text_encoders(self, components, request) -> None:
        for name in self.encoders:
            components.start_text_encoder(TOKENS_PER_CHUNK, request.clip_skip, name,
                                          **self.text_encoder_options(request, name))

    def release_text_encoders(self, components) -> None:
        for name in self.encoders:
            components.release(name)

    def encode_prompt(self, components, request, guidance: bool) -> EncodedPrompt:
        chunked, warnings = self.prompt_chunks(request, guidance)
        encoder = components.text_encoder(TOKENS_PER_CHUNK, request.clip_skip, **self.text_encoder_options(request))
        return EncodedPrompt(self.prompt_encoders["text_encoder"].embed(chunked, encoder), notes=warnings,
                             embeddings_used=embeddings_used(chunked))

    def extra_unet_shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
        return {"timestep_cond": (batch, self.folder.time_cond_proj_dim)} if self.is_lcm else {}

    def conditioning(self, encoded: EncodedPrompt, request, size: tuple[int, int] | None = None) -> Conditioning:
        extra = {}
        if self.is_lcm:
            extra["timestep_cond"] = guidance_scale_embedding(request.guidance_scale - 1, self.folder.time_cond_proj_dim)
        return Conditioning(encoded.hidden_states, encoded.pooled, extra)

    # -- the schedule -------------------------------------------------------------------
    def set_timesteps(self, request, scheduler) -> None:
        """scheduler.set_timesteps(steps).  An LCM model's img2img takes its `steps` timesteps from
        the first `strength` part of the LCM schedule (LatentConsistencyModelImg2ImgPipeline),
        where Stable Diffusion's drops the first steps of the whole schedule."""
        try:
            if self.is_lcm and request.init_image is not None and request.mask is None:
                scheduler.set_timesteps(request.steps, strength=request.strength)
            else:
                scheduler.set_timesteps(request.steps)
        except ValueError as exc:
            raise UsageError(f"--steps {request.steps}: {exc}") from None

    def img2img_timesteps(self, request, scheduler) -> list:
        if self.is_lcm:  # the whole schedule set_timesteps made from the strength
            return list(scheduler.timesteps)
        return super().img2img_timesteps(request, scheduler)
