"""Stable Diffusion XL: base, refiner, inpainting, and its few-step descendants (Turbo,
Lightning, Hyper-SD, DMD2, LCM-SDXL), as diffusers' StableDiffusionXL*Pipelines run them.

Two CLIP text encoders (the refiner has only the second): the UNet attends to their
penultimate hidden states side by side, and takes two added inputs: the second encoder's
pooled projection (`text_embeds`) and the micro-conditioning `time_ids` — original size,
crop's top-left corner and target size (six numbers), or for the refiner original size,
crop and an aesthetic score (five).  With `force_zeros_for_empty_prompt` (the base's
model_index.json) an empty negative prompt is zeros, not the encoding of "".
"""
from __future__ import annotations

from functools import cached_property

import numpy as np

from sdcli.engine.families.base import Conditioning, EncodedPrompt
from sdcli.engine.families.sd import StableDiffusion
from sdcli.engine.lcm import guidance_scale_embedding
from sdcli.engine.prompt_encoder import TOKENS_PER_CHUNK, embeddings_used
from sdcli.model.config_checks import read_json
from sdcli.model.folder import ir_input_shape
from sdcli.util.errors import UsageError


def _width(dims: list[str] | None, index: int) -> int | None:
    return int(dims[index]) if dims and len(dims) > index and dims[index].strip().isdigit() else None


class StableDiffusionXL(StableDiffusion):
    name = "stable-diffusion-xl"
    pipeline_fixups = False  # diffusers' SDXL pipelines take the scheduler config as it is

    def __init__(self, folder):
        super().__init__(folder)
        if "text_encoder_2" not in self.encoders:
            raise UsageError(f"model folder {folder.root} is an SDXL model without text_encoder_2/openvino_model.xml")

    # -- what the folder says ---------------------------------------------------------------
    @cached_property
    def pooled_width(self) -> int:
        width = _width(ir_input_shape(self.folder.ir("unet"), "text_embeds"), 1)
        if width is None:
            width = int(read_json(self.folder.root / "text_encoder_2" / "config.json").get("projection_dim", 1280))
        return width

    @cached_property
    def time_ids_width(self) -> int:
        width = _width(ir_input_shape(self.folder.ir("unet"), "time_ids"), 1)
        if width is None:
            cfg = self.folder.unet_config
            width = (int(cfg.get("projection_class_embeddings_input_dim", 2816)) - self.pooled_width) // int(
                cfg.get("addition_time_embed_dim", 256))
        if width not in (5, 6):
            raise UsageError(f"unet: time_ids of {width} numbers; SDXL's take 6 (the refiner's 5)")
        return width

    @property
    def takes_aesthetic_score(self) -> bool:
        """The refiner's micro-conditioning: an aesthetic score in place of the target size."""
        return self.time_ids_width == 5

    @property
    def force_zeros_for_empty_prompt(self) -> bool:
        return bool(self.folder.model_index.get("force_zeros_for_empty_prompt", True))

    # -- the prompt -------------------------------------------------------------------------
    def zero_negative(self, request, guidance: bool) -> bool:
        """diffusers' force_zeros_for_empty_prompt (with no negative_prompt): the negative row is zeros."""
        return guidance and self.force_zeros_for_empty_prompt and not request.negative_prompt.strip()

    def encode_prompt(self, components, request, guidance: bool) -> EncodedPrompt:
        """Each encoder's hidden states, side by side; the pooled projection of the second
        encoder from each text's first chunk (as A1111 takes it)."""
        hidden, warnings, used, pooled = [], [], (), []
        for name in self.encoders:
            chunked, notes = self.prompt_chunks(request, guidance, name)
            warnings, used = warnings or notes, used or embeddings_used(chunked)
            encoder = components.text_encoder(TOKENS_PER_CHUNK, request.clip_skip, name,
                                              **self.text_encoder_options(request, name))
            pooled_per_call = []

            def encode(ids, *ti, encoder=encoder, name=name, calls=pooled_per_call):
                out = encoder(ids, *ti)
                if name == "text_encoder_2":
                    calls.append(encoder.pooled())
                return out

            hidden.append(self.prompt_encoders[name].embed(chunked, encode))
            if pooled_per_call:  # embed() encodes each text's chunks in turn, all texts with as many
                pooled = np.concatenate(pooled_per_call[::len(chunked[0])], axis=0)
        states = np.concatenate(hidden, axis=-1)
        if self.zero_negative(request, guidance):
            states[0] = 0.0
            pooled[0] = 0.0
        return EncodedPrompt(states, pooled, notes=warnings, embeddings_used=used)

    # -- the UNet's added inputs --------------------------------------------------------------
    def extra_unet_shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
        shapes = {"text_embeds": (batch, self.pooled_width), "time_ids": (batch, self.time_ids_width)}
        return {**shapes, **super().extra_unet_shapes(batch)}

    def time_ids(self, request, size: tuple[int, int], guidance: bool) -> np.ndarray:
        """[rows, 5 or 6]: (original height, width, crop top, left, target height, width), or the
        refiner's (original height, width, crop top, left, aesthetic score); one row per UNet
        batch row (the negative's first)."""
        width, height = size
        original = request.original_size or (width, height)
        crop = request.crop_coords or (0, 0)
        head = [original[1], original[0], crop[1], crop[0]]
        if self.takes_aesthetic_score:
            rows = [head + [request.aesthetic_score]]
            if guidance:
                rows.insert(0, head + [request.negative_aesthetic_score])
        else:
            target = request.target_size or (width, height)
            rows = [head + [target[1], target[0]]] * (2 if guidance else 1)
        return np.asarray(rows, dtype=np.float32)

    def conditioning(self, encoded: EncodedPrompt, request, size: tuple[int, int] | None = None) -> Conditioning:
        rows = encoded.hidden_states.shape[0]
        extra = {"text_embeds": encoded.pooled.astype(np.float32),
                 "time_ids": self.time_ids(request, size, rows == 2)}
        if self.is_lcm:
            extra["timestep_cond"] = guidance_scale_embedding(request.guidance_scale - 1, self.folder.time_cond_proj_dim)
        return Conditioning(encoded.hidden_states, encoded.pooled, extra)
