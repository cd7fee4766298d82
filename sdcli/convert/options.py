"""The options of `sdcli convert`."""
from __future__ import annotations

from dataclasses import dataclass

from sdcli.convert.ir import Int4


@dataclass
class ConvertOptions:
    weight_format: str = "fp16"
    int4: Int4 | None = None  # --weight-format int4's parameters [default: Int4()]
    force: bool = False
    allow_pickle: bool = False
    config: str | None = None  # diffusers folder or repo giving the configs of a single-file checkpoint
    lora: str | None = None  # LoRA file, folder or Hub repo fused into the UNet (and text encoder)
    lora_scale: float = 1.0
    scheduler: str | None = None  # write this scheduler (one of sdcli's names) into scheduler_config.json
    timestep_spacing: str | None = None  # and/or this timestep_spacing (leading, trailing, linspace)
    default_steps: int | None = None  # the folder's own generation defaults (sdcli.json "defaults")
    default_guidance: float | None = None
    default_vae: str | None = None  # "full" or "tiny" (needs tiny_vae)
    tiny_vae: str | None = None  # AutoencoderTiny folder or repo to add as vae_decoder_tiny/, vae_encoder_tiny/
    quantize: str | None = None  # "hybrid": NNCF hybrid quantization of the UNet (the rest int8 weight-only)
    calibration_prompts: list[str] | None = None  # for --quantize hybrid [default: quantize.DEFAULT_PROMPTS]
    calibration_samples: int = 32  # UNet calls measured for --quantize hybrid

    @property
    def int4_config(self) -> Int4 | None:
        """The int4 compression to apply, None unless --weight-format int4."""
        return (self.int4 or Int4()) if self.weight_format == "int4" else None

    def weight_metadata(self) -> dict:
        """sdcli.json's record of the weight format (and int4's parameters)."""
        int4 = self.int4_config
        return {"weight_format": self.weight_format, **(int4.metadata() if int4 else {})}
