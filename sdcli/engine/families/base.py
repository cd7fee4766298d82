"""The seam between the engine's one orchestration and what a model family does its own way.

A family says which text encoders it has and how a prompt becomes a `Conditioning` — the
hidden states the denoiser attends to, an optional pooled embedding, and any extra denoiser
inputs by the names its IR declares (an LCM's `timestep_cond`; SDXL's `text_embeds`,
`time_ids`; Z-Image's caption mask and RoPE positions) — how its denoiser (a UNet, or a
flow-matching transformer) is fed and what its output means (denoiser_shapes,
denoiser_inputs, denoiser_output), what its VAE decodes (decode_latents), and how its
scheduler is made and stepped through for image-to-image.  The engine sequences the four
stages the same way for every family; the defaults here are Stable Diffusion's UNet's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from sdcli.engine.request import DEFAULT_GUIDANCE, DEFAULT_STEPS

if TYPE_CHECKING:
    from sdcli.engine.loader import ComponentCache
    from sdcli.engine.request import GenerationRequest
    from sdcli.model.folder import ModelFolder


@dataclass
class EncodedPrompt:
    """What the text encoders gave for a prompt (cached by the engine across requests)."""

    hidden_states: np.ndarray  # [rows, seq, dim]: [negative, prompt] with classifier-free guidance, else [prompt]
    pooled: np.ndarray | None = None  # [rows, dim]
    notes: list[str] = field(default_factory=list)  # warnings, e.g. a prompt truncated to 77 tokens
    embeddings_used: tuple[str, ...] = ()  # names of the textual-inversion embeddings put in (TI hashes)
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # the family's own (Z-Image: each row's length)


@dataclass
class Conditioning:
    """Everything the UNet is conditioned on for one request."""

    hidden_states: np.ndarray  # encoder_hidden_states, [rows, seq, dim]
    pooled: np.ndarray | None = None
    unet_inputs: dict[str, np.ndarray] = field(default_factory=dict)  # extra UNet inputs, by IR input name
    embeddings_used: tuple[str, ...] = ()  # the EncodedPrompt's (the engine copies them)
    own: dict = field(default_factory=dict)  # the family's own, not fed as such (FLUX.2-klein: its patch grid,
    # its reference images' tokens)

    @property
    def guidance_batch(self) -> bool:
        """Whether the UNet runs on [negative, prompt] pairs (classifier-free guidance)."""
        return self.hidden_states.shape[0] == 2

    def unet_input_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(value.shape) for name, value in self.unet_inputs.items()}


# request fields that only some families take: (field, flag, its default, whose option it is)
FAMILY_OPTIONS = (("cfg_normalization", "--cfg-normalization", 0.0, "Z-Image models (ZImagePipeline's option)"),
                  ("cfg_truncation", "--cfg-truncation", 1.0, "Z-Image models (ZImagePipeline's option)"))


class ModelFamily:
    """One family of models: the methods the engine calls, in the order it calls them."""

    name = "?"
    options: tuple[str, ...] = ()  # the FAMILY_OPTIONS fields this family takes
    reference_images = False  # whether it takes --reference-image (condition_on_images)

    def __init__(self, folder: "ModelFolder"):
        self.folder = folder

    # -- before anything is compiled -------------------------------------------------
    def generation_defaults(self, scheduler: str | None) -> tuple[int, float] | None:
        """(steps, guidance scale) for what a run does not give, where the model has its own: the
        folder's (its sdcli.json "defaults", set at convert time) over the family's few-step
        defaults (few_step_defaults); None where neither has any.  Flags given win over both."""
        few_step = self.few_step_defaults(scheduler)
        own = self.folder.generation_defaults
        if own.steps is None and own.guidance_scale is None:  # (none, or only a VAE: folder.default_vae)
            return few_step
        steps, guidance = few_step or (DEFAULT_STEPS, DEFAULT_GUIDANCE)
        return (steps if own.steps is None else own.steps,
                guidance if own.guidance_scale is None else own.guidance_scale)

    def few_step_defaults(self, scheduler: str | None) -> tuple[int, float] | None:
        """(steps, guidance scale) for a run that gives neither, where the family wants its own
        (an LCM's); the front ends ask generation_defaults, which puts the folder's first."""
        return None

    def classifier_free_guidance(self, guidance_scale: float) -> bool:
        """Whether the UNet runs on [negative, prompt] pairs for this guidance scale."""
        return guidance_scale > 1.0

    def make_scheduler(self, name: str | None):
        raise NotImplementedError

    def text_length(self, request: "GenerationRequest", guidance: bool) -> int:
        """The number of text tokens the UNet will attend to (its static shape)."""
        raise NotImplementedError

    def extra_unet_shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
        """Shapes of the UNet inputs this family adds (see Conditioning.unet_inputs)."""
        return {}

    def start_text_encoders(self, components: "ComponentCache", request: "GenerationRequest") -> None:
        """Start compiling the text encoders the request needs (in the background)."""
        raise NotImplementedError

    def release_text_encoders(self, components: "ComponentCache") -> None:
        raise NotImplementedError

    # -- stage 1 ----------------------------------------------------------------------
    def prompt_key(self, request: "GenerationRequest", guidance: bool) -> tuple:
        """What an EncodedPrompt depends on (the engine's cache key)."""
        networks = request.networks.text_key() if request.networks is not None else None
        return (request.prompt, request.negative_prompt, guidance, request.emphasis, request.clip_skip, networks)

    @staticmethod
    def text_encoder_options(request: "GenerationRequest", name: str = "text_encoder") -> dict:
        """ComponentCache.text_encoder's arguments for the prompt's networks: whether it takes
        embeddings, and the LoRAs fused into text encoder `name`."""
        networks = request.networks
        if networks is None:
            return {"embeddings": False, "patch": None}
        return {"embeddings": bool(networks.embeddings), "patch": networks.patch(name)}

    def encode_prompt(self, components: "ComponentCache", request: "GenerationRequest", guidance: bool) -> EncodedPrompt:
        raise NotImplementedError

    def conditioning(self, encoded: EncodedPrompt, request: "GenerationRequest",
                     size: tuple[int, int] | None = None) -> Conditioning:
        """The UNet's conditioning for `request` at `size` (width, height of the image)."""
        return Conditioning(encoded.hidden_states, encoded.pooled)

    def condition_on_images(self, conditioning: Conditioning, request: "GenerationRequest",
                            encode) -> Conditioning:
        """`conditioning` with the request's reference images added (where the family takes
        them: reference_images), each encoded by `encode(pixels [1, 3, H, W] in [-1, 1])` ->
        (mean, log-variance or None) of the VAE encoder compiled for its size."""
        return conditioning

    # -- stage 2 ----------------------------------------------------------------------
    def set_timesteps(self, request: "GenerationRequest", scheduler) -> None:
        scheduler.set_timesteps(request.steps)

    def img2img_timesteps(self, request: "GenerationRequest", scheduler) -> list:
        """The timesteps an image-to-image run goes through (after set_timesteps)."""
        from sdcli.engine.latents import strength_timesteps

        return strength_timesteps(request, scheduler)

    def image_latents(self, mean: np.ndarray, logvar: np.ndarray | None, rng, vae) -> np.ndarray:
        """Image-to-image: the init image's latents from the VAE encoder's distribution (one draw
        from `rng` where it has a variance), as the denoiser takes them: scaled by the VAE's
        scaling factor (`vae`: a model.folder.Vae)."""
        from sdcli.engine.latents import latent_sample

        return latent_sample(mean, logvar, rng, vae.scaling_factor)

    # -- LoRAs (engine/lora.py) -------------------------------------------------------
    lora_components: tuple[str, ...] = ("unet", "text_encoder", "text_encoder_2")  # what a LoRA may change ("unet":
    # the denoiser); a file with layers for another is refused
    whitespace_tokens = False  # whether its text encoder's tokens include whitespace (an LLM's): a prompt's
    # <lora:...> tags are then removed with the whitespace before them (engine/networks.py: parse_tags)

    def lora_layers(self, component: str, name: str) -> list[tuple[str, ...]]:
        """Where a LoRA module named `name` (kohya's flat form, model/lora_names.py) may be in the
        IR of `component`, most likely first: each a tuple of the IR's flat layer names, one, or
        several over which the module's output rows are split in equal parts (a file's fused
        projection, the IR's separate ones)."""
        from sdcli.model.lora_names import lora_layer_candidates

        return [(n,) for n in lora_layer_candidates(component, name, self.folder.unet_config)]

    # -- stage 3: the denoiser ----------------------------------------------------------
    def check(self, request: "GenerationRequest") -> None:
        """What the engine calls: the options only some families take (FAMILY_OPTIONS, which
        this family lists in `options`) refused where they are given to another, then
        check_request."""
        from sdcli.util.errors import UsageError

        for field, flag, default, whose in FAMILY_OPTIONS:
            if field not in self.options and getattr(request, field) != default:
                raise UsageError(f"{flag} is for {whose}; this is a {self.name} model")
        if request.reference_images and not self.reference_images:
            raise UsageError(f"--reference-image is for FLUX.2-klein models (editing with reference images); this is "
                             f"a {self.name} model (image-to-image: --init-image)")
        self.check_request(request)

    def check_request(self, request: "GenerationRequest") -> None:
        """UsageError for what this family cannot do with `request` (before anything loads)."""

    def denoiser_shapes(self, request: "GenerationRequest", guidance: bool,
                        latent_hw: tuple[int, int]) -> dict[str, list[int]]:
        """The denoiser's static input shapes for `request`, known before its prompt is encoded
        (the engine compiles the denoiser meanwhile); conditioned_shapes must agree."""
        from sdcli.runtime.components import UNet

        batch = 2 if guidance else 1
        return UNet.input_shapes(self.folder, batch, tuple(latent_hw), self.text_length(request, guidance),
                                 self.extra_unet_shapes(batch))

    def attention_size(self, request: "GenerationRequest", guidance: bool,
                       latent_hw: tuple[int, int]) -> tuple[int, int] | None:
        """(tokens, width) of a transformer's sequence for `request`: every token its attention
        runs over in a row (the image's, the text's, reference images'), and its model width,
        for the memory estimate (engine/memory.py); None for a UNet (estimated by its levels)."""
        return None

    def conditioned_shapes(self, conditioning: Conditioning, latent_hw: tuple[int, int]) -> dict[str, list[int]]:
        """The denoiser's static input shapes for an encoded prompt."""
        from sdcli.runtime.components import UNet

        rows, seq = conditioning.hidden_states.shape[:2]
        return UNet.input_shapes(self.folder, rows, tuple(latent_hw), seq, conditioning.unet_input_shapes())

    def denoiser_inputs(self, x: np.ndarray, t, conditioning: Conditioning) -> tuple[np.ndarray, object]:
        """(sample, timestep) of the denoiser's call at the scheduler's timestep `t` on `x` (the
        latents as the scheduler scaled them); the context and extra inputs are `conditioning`'s.
        A UNet: the latents twice with classifier-free guidance, the scheduler's timestep."""
        return (np.concatenate([x, x], axis=0) if conditioning.guidance_batch else x), t

    def denoiser_output(self, out: np.ndarray, conditioning: Conditioning, guidance_scale: float,
                        guidance_rescale: float = 0.0, timestep=None) -> np.ndarray:
        """What the scheduler steps with, from the denoiser's output (`timestep`: what the
        denoiser was given, from denoiser_inputs): a UNet's [negative, prompt] predictions
        combined by classifier-free guidance (guidance.classifier_free)."""
        if not conditioning.guidance_batch:
            return out
        from sdcli.engine.guidance import classifier_free

        return classifier_free(out, guidance_scale, guidance_rescale)

    # -- stage 4 ----------------------------------------------------------------------
    def decode_latents(self, latents: np.ndarray, vae) -> np.ndarray:
        """What the VAE decoder `vae` (a model.folder.Vae) takes for the denoised `latents`."""
        return latents / np.float32(vae.scaling_factor)
