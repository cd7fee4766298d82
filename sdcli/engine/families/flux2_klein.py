"""FLUX.2-klein (black-forest-labs/FLUX.2-klein-4B / -9B, distilled or Base), text-to-image, as
diffusers' Flux2KleinPipeline runs it.

The prompt: Qwen3's chat template with thinking off, padded to 512 tokens; the hidden states
after layers 9, 18 and 27 side by side per token, the padding's included (the transformer has
no text mask).  The transformer takes the latents in 2x2 patches packed as tokens, text and
image positions (t, h, w, l), and the timestep as sigma (t / 1000).  Distilled models run
without guidance; Base models guide above 1 with the empty prompt as the negative, rows
[prompt, negative]: negative + scale * (prompt - negative).  Sigmas linspace(1, 1/n, n)
shifted by compute_empirical_mu.  Before decoding, the patches are de-normalised by the VAE's
BatchNorm statistics and unpatchified.

Editing (--reference-image, the pipeline's image=[...]): each reference is sized and cropped as
the pipeline does (engine/references.py), encoded by the VAE encoder (its mean: the pipeline's
sample_mode "argmax"), patchified and normalised by the BatchNorm statistics, and packed as
tokens after the noise's, at positions (10 + 10 i, row, column, 0) for the i-th reference; the
transformer's static input lengths include them, and only the noise tokens' output is kept.

The engine keeps latents as [1, C, h, w] (the VAE's latent shape); this family stores in that
buffer the pipeline's patchified latents [1, 4C, h/2, w/2] as they lie in memory, so that the
engine's noise, drawn as torch.randn over as many numbers, is the pipeline's noise (prepare_latents
draws it in the patchified shape), and the scheduler's elementwise steps are the pipeline's.
"""
from __future__ import annotations

from functools import cached_property

import numpy as np

from sdcli.engine.families.base import Conditioning, EncodedPrompt
from sdcli.engine.families.flow_transformer import ENCODER, PATCH, FlowTransformer
from sdcli.util.errors import UsageError

MAX_TOKENS = 512  # Flux2KleinPipeline's max_sequence_length: every prompt is padded (or cut) to it
DISTILLED_DEFAULTS = (4, 1.0)  # black-forest-labs/FLUX.2-klein-4B's model card: (steps, guidance)
BASE_DEFAULTS = (50, 4.0)  # Flux2KleinPipeline.__call__'s


class Flux2Klein(FlowTransformer):
    name = "flux2-klein"
    model = "FLUX.2-klein"
    transformer = "FLUX.2"
    thinking = False  # the chat template with thinking off
    max_tokens = MAX_TOKENS
    reference_images = True

    def __init__(self, folder):
        super().__init__(folder)
        from sdcli.model.config_checks import read_json

        index = read_json(folder.root / "model_index.json", required=False) or {}
        self.distilled = bool(index.get("is_distilled", False))

    # -- before anything is compiled -------------------------------------------------
    def classifier_free_guidance(self, guidance_scale: float) -> bool:
        """Base models guide above 1; distilled ones ignore the guidance scale (as the pipeline)."""
        return guidance_scale > 1.0 and not self.distilled

    def few_step_defaults(self, scheduler: str | None) -> tuple[int, float] | None:
        """(steps, guidance) for a folder whose sdcli.json gives none (optimum-cli's): the model
        card's for distilled models, the pipeline's for Base (what sdcli convert writes)."""
        return DISTILLED_DEFAULTS if self.distilled else BASE_DEFAULTS

    def refusals(self, request) -> list[tuple[bool, str]]:
        return [(request.init_image is not None, "--init-image: FLUX.2-klein has no image-to-image strength; "
                 "use --reference-image (repeatable) to edit an image"), *super().refusals(request)]

    def check_images(self, request) -> None:
        """The reference images: a VAE encoder to encode them, each one as the pipeline takes it."""
        from sdcli.engine.references import check_reference

        if request.reference_images and not self.folder.ir("vae_encoder").is_file():
            raise UsageError(f"model folder {self.folder.root} has no vae_encoder/, which --reference-image needs "
                             "(convert the model again)")
        names = request.reference_names or ()
        for i, image in enumerate(request.reference_images):
            if isinstance(image, np.ndarray):
                check_reference(image, names[i] if i < len(names) else f"#{i + 1}")

    def lora_layers(self, component: str, name: str) -> list[tuple[str, ...]]:
        from sdcli.engine.families.transformer_lora import flux2_layers

        return flux2_layers(component, name)

    # -- the prompt -------------------------------------------------------------------
    def texts(self, request, guidance: bool) -> list[str]:
        """[prompt, ""] with guidance (the pipeline's negative is always the empty prompt), else [prompt]."""
        return [request.prompt, ""] if guidance else [request.prompt]

    def prompt_key(self, request, guidance: bool) -> tuple:
        return (request.prompt, guidance, request.emphasis)

    def text_length(self, request, guidance: bool) -> int:
        return MAX_TOKENS

    @cached_property
    def text_width(self) -> int:
        return int(self.folder.denoiser_config.get("joint_attention_dim", 7680))

    @cached_property
    def guidance_input(self) -> bool:
        return bool(self.folder.denoiser_config.get("guidance_embeds", False))

    @staticmethod
    def _encoder(components):
        from sdcli.runtime.components import StackedLLMTextEncoder

        return (ENCODER, "stacked", MAX_TOKENS), lambda: StackedLLMTextEncoder(components.runtime, components.folder,
                                                                               MAX_TOKENS, ENCODER)

    def encode_prompt(self, components, request, guidance: bool) -> EncodedPrompt:
        """Each row's ids padded to MAX_TOKENS (the padding encoded too: the transformer has no text mask)."""
        encoder = components.get(*self._encoder(components))
        labelled = list(zip(["prompt", "negative prompt"], self.texts(request, guidance)))
        states = [encoder(*self.prompt.padded(self.token_ids(text)[0], MAX_TOKENS)) for _, text in labelled]
        return EncodedPrompt(np.stack(states).astype(np.float32), None,
                             notes=self.prompt.notes(labelled, request.emphasis))

    def conditioning(self, encoded: EncodedPrompt, request, size: tuple[int, int] | None = None) -> Conditioning:
        """The text positions (0, 0, 0, l) and the image's (0, row, column, 0) of each 2x2 patch,
        as float32 [rows, tokens, 4]; the guidance scale where the transformer embeds one."""
        from sdcli.engine.latents import resolve_size

        width, height = size or resolve_size(self.folder, request)
        f = self.folder.vae_scale_factor
        rows_h, cols = height // f // PATCH, width // f // PATCH
        rows, length = encoded.hidden_states.shape[:2]
        txt_ids = np.zeros((rows, length, 4), np.float32)
        txt_ids[..., 3] = np.arange(length)
        img_ids = np.zeros((rows, rows_h * cols, 4), np.float32)
        patch = np.arange(rows_h * cols)
        img_ids[..., 1], img_ids[..., 2] = patch // cols, patch % cols
        extra = {"txt_ids": txt_ids, "img_ids": img_ids}
        if self.guidance_input:  # (klein's transformers have none; genai feeds the scale)
            extra["guidance"] = np.full((rows,), request.guidance_scale if request is not None else 1.0, np.float32)
        return Conditioning(encoded.hidden_states, None, extra, own={"grid": (rows_h, cols)})

    # -- editing: the reference images --------------------------------------------------
    @property
    def _multiple(self) -> int:
        return PATCH * self.folder.vae_scale_factor

    def reference_tokens(self, request) -> int:
        """How many tokens the request's reference images add to the transformer's input."""
        from sdcli.engine.references import reference_size
        from sdcli.imaging.image_io import read_rgb

        total = 0
        for image in request.reference_images:
            array = image if isinstance(image, np.ndarray) else read_rgb(image)
            width, height = reference_size(array, self._multiple)
            total += (height // self._multiple) * (width // self._multiple)
        return total

    def condition_on_images(self, conditioning: Conditioning, request, encode) -> Conditioning:
        """The references' normalised latent patches [1, R, 4C] (in `own`) and their positions
        (10 + 10 i, row, column, 0) after the noise's in img_ids, as prepare_image_latents."""
        if not request.reference_images:
            return conditioning
        from dataclasses import replace

        from sdcli.engine.references import reference_pixels

        mean, std = self._batch_norm
        tokens, ids = [], []
        for i, image in enumerate(request.reference_images):
            latents, _ = encode(reference_pixels(image, self._multiple))  # the distribution's mode
            _, channels, h, w = latents.shape
            patches = latents.reshape(1, channels, h // PATCH, PATCH, w // PATCH, PATCH).transpose(0, 1, 3, 5, 2, 4)
            patches = (patches.reshape(1, channels * PATCH * PATCH, h // PATCH, w // PATCH) - mean) / std
            tokens.append(patches.reshape(channels * PATCH * PATCH, -1).T)
            position = np.zeros((h // PATCH, w // PATCH, 4), np.float32)
            position[..., 0] = 10 + 10 * i
            position[..., 1] = np.arange(h // PATCH)[:, None]
            position[..., 2] = np.arange(w // PATCH)[None, :]
            ids.append(position.reshape(-1, 4))
        rows = conditioning.hidden_states.shape[0]
        reference_ids = np.broadcast_to(np.concatenate(ids)[None], (rows, sum(len(i) for i in ids), 4))
        inputs = dict(conditioning.unet_inputs)
        inputs["img_ids"] = np.ascontiguousarray(np.concatenate([inputs["img_ids"], reference_ids], axis=1))
        own = {**conditioning.own, "references": np.concatenate(tokens)[None].astype(np.float32)}
        return replace(conditioning, unet_inputs=inputs, own=own)

    # -- stage 2 ----------------------------------------------------------------------
    def set_timesteps(self, request, scheduler) -> None:
        """linspace(1, 1/n, n) (none where the config uses flow sigmas), mu from the number of
        image tokens and of steps (compute_empirical_mu)."""
        from sdcli.engine.latents import resolve_size
        from sdcli.schedulers.flow_match import compute_empirical_mu, flux_default_sigmas

        width, height = resolve_size(self.folder, request)
        f = self.folder.vae_scale_factor
        tokens = (height // f // PATCH) * (width // f // PATCH)
        mu = compute_empirical_mu(image_seq_len=tokens, num_steps=request.steps)
        if scheduler.config.get("use_flow_sigmas"):
            scheduler.set_timesteps(request.steps, mu=mu)
        else:
            scheduler.set_timesteps(sigmas=flux_default_sigmas(request.steps), mu=mu)
        scheduler.set_begin_index(0)

    # -- stage 3: the transformer ---------------------------------------------------------
    def _shapes(self, rows: int, length: int, latent_hw, references: int = 0) -> dict[str, list[int]]:
        """With `references` tokens of reference images after the noise's."""
        h, w = latent_hw
        tokens = (h // PATCH) * (w // PATCH) + references
        channels = PATCH * PATCH * self.folder.latent_channels
        shapes = {"hidden_states": [rows, tokens, channels], "timestep": [rows],
                  "encoder_hidden_states": [rows, length, self.text_width], "txt_ids": [rows, length, 4],
                  "img_ids": [rows, tokens, 4]}
        if self.guidance_input:
            shapes["guidance"] = [rows]
        return shapes

    def denoiser_shapes(self, request, guidance: bool, latent_hw) -> dict[str, list[int]]:
        return self._shapes(2 if guidance else 1, MAX_TOKENS, latent_hw, self.reference_tokens(request))

    def attention_size(self, request, guidance: bool, latent_hw) -> tuple[int, int]:
        """The noise's tokens, the references' after them, and the 512 text tokens; the width of
        its attention (heads x head size)."""
        shapes = self.denoiser_shapes(request, guidance, latent_hw)
        config = self.folder.denoiser_config
        width = int(config.get("num_attention_heads", 24)) * int(config.get("attention_head_dim", 128))
        return shapes["hidden_states"][1] + shapes["encoder_hidden_states"][1], width

    def conditioned_shapes(self, conditioning: Conditioning, latent_hw) -> dict[str, list[int]]:
        rows, length = conditioning.hidden_states.shape[:2]
        references = conditioning.own.get("references")
        return self._shapes(rows, length, latent_hw, 0 if references is None else references.shape[1])

    @staticmethod
    def _patch_grid(conditioning: Conditioning) -> tuple[int, int]:
        if "grid" in conditioning.own:
            return conditioning.own["grid"]
        ids = conditioning.unet_inputs["img_ids"]
        return int(ids[0, -1, 1]) + 1, int(ids[0, -1, 2]) + 1

    def denoiser_inputs(self, x: np.ndarray, t, conditioning: Conditioning) -> tuple[np.ndarray, object]:
        """The buffer's patchified latents packed as tokens [rows, N, 4C], the reference images'
        tokens after them; sigma = t / 1000 (float32)."""
        h2, w2 = self._patch_grid(conditioning)
        packed = x.reshape(1, -1, h2 * w2).transpose(0, 2, 1)
        references = conditioning.own.get("references")
        if references is not None:
            packed = np.concatenate([packed, references], axis=1)
        rows = conditioning.hidden_states.shape[0]
        sample = np.ascontiguousarray(np.concatenate([packed] * rows, axis=0) if rows > 1 else packed)
        return sample, np.float32(t) / np.float32(1000)

    def denoiser_output(self, out: np.ndarray, conditioning: Conditioning, guidance_scale: float,
                        guidance_rescale: float = 0.0, timestep=None) -> np.ndarray:
        """The noise tokens' output (the references' is dropped); rows [prompt, negative] guided
        as negative + scale * (prompt - negative); unpacked into the engine's latent buffer."""
        h2, w2 = self._patch_grid(conditioning)
        out = out[:, : h2 * w2]
        if conditioning.guidance_batch:
            positive, negative = out[0:1], out[1:2]
            out = negative + np.float32(guidance_scale) * (positive - negative)
        channels = out.shape[2] // (PATCH * PATCH)
        return np.ascontiguousarray(out.transpose(0, 2, 1)).reshape(1, channels, PATCH * h2, PATCH * w2)

    # -- stage 4 ----------------------------------------------------------------------
    @cached_property
    def _batch_norm(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) per patch channel, [1, 4C, 1, 1] float32: std = sqrt(var + eps) as the pipeline."""
        config = self.folder.vae_config
        mean = np.asarray(config["bn_running_mean_data"], np.float32).reshape(1, -1, 1, 1)
        var = np.asarray(config["bn_running_var_data"], np.float32).reshape(1, -1, 1, 1)
        eps = np.float32(config.get("batch_norm_eps", 1e-4))
        return mean, np.sqrt(var + eps).astype(np.float32)

    def decode_latents(self, latents: np.ndarray, vae) -> np.ndarray:
        """The patches de-normalised (* std + mean), then unpatchified to [1, C, h, w]."""
        batch, channels, h, w = latents.shape
        patches = latents.reshape(batch, channels * PATCH * PATCH, h // PATCH, w // PATCH)
        mean, std = self._batch_norm
        patches = patches * std + mean
        x = patches.reshape(batch, channels, PATCH, PATCH, h // PATCH, w // PATCH).transpose(0, 1, 4, 2, 5, 3)
        return np.ascontiguousarray(x.reshape(batch, channels, h, w)).astype(np.float32)
