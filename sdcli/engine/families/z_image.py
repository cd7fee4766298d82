"""Z-Image (Tongyi-MAI/Z-Image-Turbo and its fine-tunes), as diffusers' ZImagePipeline runs it.

A flow-matching diffusion transformer fed the latents as they are (its IR cuts them into 2x2
patches), the timestep as 1 - sigma, and the caption: the penultimate hidden state of Qwen3 on
the prompt in Qwen3's chat template with thinking on, its padding dropped.  Its output is the
velocity with the opposite sign.  With guidance above 0 (not 1) the pipeline also runs the
negative prompt, rows [prompt, negative], and guides as prompt + scale * (prompt - negative).
The latents are decoded by a FLUX.1-style VAE after (latents / scaling) + shift.

The transformer pads the image's and each caption's tokens to multiples of 32 with learnt pad
tokens; rows of a batch (prompt and negative) are padded further to one length, masked out.
Its IR takes those masks and the RoPE positions as inputs (sdcli/convert/z_image.py), which
`conditioning` builds as diffusers' transformer does inside.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from sdcli.engine.families.base import Conditioning, EncodedPrompt
from sdcli.engine.families.flow_transformer import ENCODER, PATCH, FlowTransformer
from sdcli.util.errors import UsageError

MAX_TOKENS = 512  # ZImagePipeline's max_sequence_length: longer prompts are truncated
SEQ_MULTIPLE = 32  # the transformer's sequences are padded to multiples of this
DEFAULTS = (9, 0.0)  # Tongyi-MAI/Z-Image-Turbo's model card: (steps, guidance); 8 transformer calls


def rounded(length: int) -> int:
    return length + (-length) % SEQ_MULTIPLE


@dataclass
class ZImageConditioning(Conditioning):
    """Z-Image's conditioning, with ZImagePipeline's cfg_normalization and cfg_truncation."""

    cfg_normalization: float = 0.0  # the guided prediction's norm at most this times the prompt's (0: off)
    cfg_truncation: float = 1.0  # no guidance on steps whose timestep (1 - sigma) is above this


class ZImage(FlowTransformer):
    name = "z-image"
    model = "Z-Image"
    transformer = "Z-Image"
    thinking = True  # the chat template with thinking on
    max_tokens = MAX_TOKENS
    options = ("cfg_normalization", "cfg_truncation")

    # -- before anything is compiled -------------------------------------------------
    def classifier_free_guidance(self, guidance_scale: float) -> bool:
        """ZImagePipeline guides with any scale above 0 (its formula adds the difference to
        the prompt's prediction: scale 0 is the prompt alone)."""
        return guidance_scale > 0.0

    def few_step_defaults(self, scheduler: str | None) -> tuple[int, float] | None:
        """(steps, guidance) for a folder whose sdcli.json gives none (optimum-cli's): Z-Image-Turbo's."""
        return DEFAULTS

    def lora_layers(self, component: str, name: str) -> list[tuple[str, ...]]:
        from sdcli.engine.families.transformer_lora import z_image_layers

        return z_image_layers(component, name)

    # -- the prompt -------------------------------------------------------------------
    def texts(self, request, guidance: bool) -> list[str]:
        """The rows' texts: [prompt, negative] with guidance (diffusers' order), else [prompt]."""
        return [request.prompt, request.negative_prompt] if guidance else [request.prompt]

    def text_length(self, request, guidance: bool) -> int:
        """The caption slots the transformer is compiled for: the longest row's tokens rounded
        up to a multiple of 32."""
        return max(rounded(len(self.token_ids(text)[0])) for text in self.texts(request, guidance))

    @cached_property
    def caption_width(self) -> int:
        return int(self.folder.denoiser_config.get("cap_feat_dim", 2560))

    @staticmethod
    def _encoder(components):
        from sdcli.runtime.components import LLMTextEncoder

        return (ENCODER, "llm"), lambda: LLMTextEncoder(components.runtime, components.folder, ENCODER)

    def encode_prompt(self, components, request, guidance: bool) -> EncodedPrompt:
        """Each row's hidden states at its own length (the padding dropped, as diffusers drops it
        by the attention mask), zero-padded to the rows' common length; the lengths are kept."""
        encoder = components.get(*self._encoder(components))
        labelled = list(zip(["prompt", "negative prompt"], self.texts(request, guidance)))
        states = [encoder(self.token_ids(text)[0]) for _, text in labelled]
        notes = self.prompt.notes(labelled, request.emphasis)
        length = self.text_length(request, guidance)
        hidden = np.zeros((len(states), length, states[0].shape[-1]), np.float32)
        for row, state in enumerate(states):
            hidden[row, : len(state)] = state
        lengths = np.asarray([len(state) for state in states], np.int64)
        return EncodedPrompt(hidden, None, notes=notes, extra={"lengths": lengths})

    def conditioning(self, encoded: EncodedPrompt, request, size: tuple[int, int] | None = None) -> Conditioning:
        """The transformer's inputs besides the latents and the timestep: the caption mask (0 on
        each row's tokens, the lowest float after), the caption's RoPE positions (1, 2, ... up to
        its length rounded to 32) and the image's (after the caption's, then row and column of
        each patch; pad tokens at 0), as ZImageTransformer2DModel makes them."""
        from sdcli.engine.latents import resolve_size

        width, height = size or resolve_size(self.folder, request)
        f = self.folder.vae_scale_factor
        rows_h, cols = height // f // PATCH, width // f // PATCH
        lengths = encoded.extra["lengths"]
        rows, length = encoded.hidden_states.shape[:2]
        mask = np.full((rows, length), np.finfo(np.float32).min, np.float32)
        txt_ids = np.zeros((rows, length, 3), np.int32)
        img_ids = np.zeros((rows, rounded(rows_h * cols), 3), np.int32)
        patch = np.arange(rows_h * cols)
        for row, n in enumerate(lengths):
            caption = rounded(int(n))
            mask[row, :n] = 0.0
            txt_ids[row, :caption, 0] = np.arange(1, caption + 1)
            img_ids[row, : rows_h * cols] = np.stack([np.full_like(patch, caption + 1), patch // cols, patch % cols], -1)
        extra = {"encoder_attention_mask": mask, "txt_ids": txt_ids, "img_ids": img_ids}
        options = {} if request is None else {"cfg_normalization": request.cfg_normalization,
                                              "cfg_truncation": request.cfg_truncation}
        return ZImageConditioning(encoded.hidden_states, None, extra, **options)

    # -- stage 2 ----------------------------------------------------------------------
    def set_timesteps(self, request, scheduler) -> None:
        """Z-Image's sigmas, linspace(1, 1/n, n), shifted by the config (mu from the number of
        image tokens, used where the config shifts dynamically); steps from the first."""
        from sdcli.engine.latents import resolve_size
        from sdcli.schedulers.flow_match import mu_from_config, z_image_default_sigmas

        width, height = resolve_size(self.folder, request)
        f = self.folder.vae_scale_factor
        mu = mu_from_config(scheduler.config, (height // f // PATCH) * (width // f // PATCH))
        scheduler.set_timesteps(sigmas=z_image_default_sigmas(request.steps), mu=mu)
        scheduler.set_begin_index(0)

    def img2img_timesteps(self, request, scheduler) -> list:
        """ZImageImg2ImgPipeline's get_timesteps: the first int(n - n * strength) steps skipped
        (float arithmetic), the scheduler's begin index set there."""
        from sdcli.schedulers.flow_match import img2img_timesteps

        timesteps, left = img2img_timesteps(scheduler, request.steps, request.strength)
        if left < 1 or not len(timesteps):
            raise UsageError(f"--strength {request.strength} with --steps {request.steps} leaves no step to run; "
                             "raise either")
        return list(timesteps)

    def image_latents(self, mean: np.ndarray, logvar, rng, vae) -> np.ndarray:
        """A sample of the VAE encoder's distribution (one draw, as retrieve_latents with a
        generator), then (latents - shift) * scaling, as ZImageImg2ImgPipeline.prepare_latents."""
        from sdcli.engine.latents import latent_sample

        sample = latent_sample(mean, logvar, rng, 1.0)
        return ((sample - np.float32(vae.shift_factor)) * np.float32(vae.scaling_factor)).astype(np.float32)

    # -- stage 3: the transformer ---------------------------------------------------------
    def _shapes(self, rows: int, length: int, latent_hw) -> dict[str, list[int]]:
        h, w = latent_hw
        return {"hidden_states": [rows, self.folder.latent_channels, h, w], "timestep": [1],
                "encoder_hidden_states": [rows, length, self.caption_width], "encoder_attention_mask": [rows, length],
                "txt_ids": [rows, length, 3], "img_ids": [rows, rounded((h // PATCH) * (w // PATCH)), 3]}

    def denoiser_shapes(self, request, guidance: bool, latent_hw) -> dict[str, list[int]]:
        return self._shapes(2 if guidance else 1, self.text_length(request, guidance), latent_hw)

    def conditioned_shapes(self, conditioning: Conditioning, latent_hw) -> dict[str, list[int]]:
        rows, length = conditioning.hidden_states.shape[:2]
        return self._shapes(rows, length, latent_hw)

    def attention_size(self, request, guidance: bool, latent_hw) -> tuple[int, int]:
        """The image's patches and the caption's tokens (each rounded up to 32), the model's width."""
        shapes = self.denoiser_shapes(request, guidance, latent_hw)
        return shapes["img_ids"][1] + shapes["encoder_hidden_states"][1], int(self.folder.denoiser_config.get("dim", 3840))

    def denoiser_inputs(self, x: np.ndarray, t, conditioning: Conditioning) -> tuple[np.ndarray, object]:
        """The latents once per row; the timestep as (1000 - t) / 1000 (float32, as the pipeline)."""
        sample = np.concatenate([x] * conditioning.hidden_states.shape[0], axis=0)
        return sample, (np.float32(1000) - np.float32(t)) / np.float32(1000)

    def denoiser_output(self, out: np.ndarray, conditioning: Conditioning, guidance_scale: float,
                        guidance_rescale: float = 0.0, timestep=None) -> np.ndarray:
        """The negated prediction; with guidance of rows [prompt, negative]: prompt + scale *
        (prompt - negative) first, its norm capped at cfg_normalization times the prompt's
        where that is above 0; the prompt's alone on steps whose timestep (1 - sigma) is above
        cfg_truncation (ZImagePipeline then runs the prompt's row only: the same prediction)."""
        if conditioning.guidance_batch:
            normalization = getattr(conditioning, "cfg_normalization", 0.0)
            truncation = getattr(conditioning, "cfg_truncation", 1.0)
            positive, negative = out[0:1].astype(np.float32), out[1:2].astype(np.float32)
            if truncation <= 1 and timestep is not None and float(np.asarray(timestep).reshape(-1)[0]) > truncation:
                out = positive
            else:
                out = positive + np.float32(guidance_scale) * (positive - negative)
                if normalization > 0.0:
                    limit = np.float32(np.linalg.norm(positive.ravel())) * np.float32(normalization)
                    norm = np.float32(np.linalg.norm(out.ravel()))
                    if norm > limit:
                        out = out * (limit / norm)
        return -out

    # -- stage 4 ----------------------------------------------------------------------
    def decode_latents(self, latents: np.ndarray, vae) -> np.ndarray:
        """(latents / scaling) + shift, as ZImagePipeline before its VAE decodes."""
        return latents / np.float32(vae.scaling_factor) + np.float32(vae.shift_factor)
