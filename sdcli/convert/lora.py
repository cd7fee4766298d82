"""LoRAs fused at convert time (`sdcli convert --lora`), and a replacement scheduler config
(`--scheduler`, e.g. lcm for an LCM-LoRA)."""
from __future__ import annotations

from pathlib import Path

from sdcli.schedulers import create_scheduler, pipeline_switch_config, resolve_scheduler_name
from sdcli.util.errors import UsageError


def fuse_lora(parts, lora: str, scale: float) -> None:
    """Fuse a LoRA (a .safetensors file, a folder holding one, or a Hub repo such as
    latent-consistency/lcm-lora-sdv1-5 or ByteDance/SDXL-Lightning's) into the UNet, and into
    the text encoders where it has weights for them, in place (`parts`: sources.Parts):
    diffusers' load_lora_weights, fuse_lora(lora_scale), unload."""
    try:
        import peft  # noqa: F401  (diffusers' LoRA loading needs it)
    except ImportError as exc:
        raise UsageError('--lora needs peft: pip install "sdcli[convert]"') from exc
    from diffusers import DDPMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    path = Path(lora).expanduser()
    if path.is_file():
        source, kwargs = str(path.parent), {"weight_name": path.name}
    elif path.is_dir() or (lora.count("/") == 1 and not path.exists()):
        source, kwargs = str(path) if path.is_dir() else lora, {}
    else:
        raise UsageError(f"--lora: not a LoRA file, folder or Hub repo id: {lora}")
    common = dict(vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=parts.unet,
                  scheduler=DDPMScheduler())
    if parts.is_sdxl:
        pipe = StableDiffusionXLPipeline(**common, text_encoder_2=parts.text_encoder_2, tokenizer_2=parts.tokenizer_2)
    else:
        pipe = StableDiffusionPipeline(**common, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    try:
        pipe.load_lora_weights(source, **kwargs)
    except Exception as exc:  # diffusers raises many kinds here; the first line says which
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"--lora: cannot load {lora}: {first}") from exc
    pipe.fuse_lora(lora_scale=scale)
    pipe.unload_lora_weights()  # the fused weights stay; the LoRA layers go


def replacement_scheduler_config(name: str, config: dict, unet_config) -> dict:
    """The scheduler_config.json that makes `name` the folder's own scheduler: what `sdcli
    generate --scheduler NAME` (diffusers' XScheduler.from_config(pipe.scheduler.config))
    runs on the original folder."""
    try:
        key = resolve_scheduler_name(name)
        lcm_unet = bool(unet_config.get("time_cond_proj_dim"))
        if lcm_unet and key != "lcm":
            raise UsageError(f"--scheduler {name}: this is a Latent Consistency Model, which runs with lcm only")
        scheduler = create_scheduler(key, config if lcm_unet else pipeline_switch_config(config))
    except ValueError as exc:
        raise UsageError(f"--scheduler: {exc}") from None
    return {"_class_name": scheduler.diffusers_class, **scheduler.config}
