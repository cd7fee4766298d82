"""LoRA files made for the tests, with random tensors and the real key names (kohya's, with an
alpha per module), and the diffusers pipeline they are compared with."""
from __future__ import annotations

from pathlib import Path


def fresh_pipe(model):
    """A diffusers pipeline of its own (the tests change its weights or adapters)."""
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model.diffusers_dir, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def layers(pipe, kinds: set[str]):
    """(component, module path, module) of the layers a LoRA of `kinds` changes: "linear"
    (attention, feed-forward, text encoders: SDXL's two), "conv1x1", "conv3x3", "time" (time_emb_proj)."""
    import torch

    encoders = [(name, model) for name in ("text_encoder", "text_encoder_2")
                if (model := getattr(pipe, name, None)) is not None]
    for component, model in (("unet", pipe.unet), *encoders):
        for path, module in model.named_modules():
            if component != "unet" and "layers" not in path:
                continue
            if isinstance(module, torch.nn.Linear):
                kind = "time" if "time_emb" in path else "linear"
                if "time_embedding" in path or "add_embedding" in path:
                    continue
            elif isinstance(module, torch.nn.Conv2d):
                kind = "conv3x3" if module.kernel_size == (3, 3) else "conv1x1"
                if path in ("conv_in", "conv_out"):
                    continue
            else:
                continue
            if kind in kinds:
                yield component, path, module


def kohya_lora(pipe, kinds: set[str], seed: int, rank: int = 4, te: bool = True, name=None,
               alphas: dict | None = None) -> dict:
    """kohya's format: lora_unet_/lora_te_ + the path with '_' (or `name(component, path)`),
    lora_down/lora_up, an alpha per module, also put in `alphas` by (component, path) when given
    (LoCon: the down matrix of a 3x3 convolution is 3x3, the up matrix 1x1)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    sd = {}
    for component, path, module in layers(pipe, kinds):
        if component == "text_encoder" and not te:
            continue
        key = name(component, path) if name else ("lora_unet_" if component == "unet" else "lora_te_") + path.replace(".", "_")
        if isinstance(module, torch.nn.Linear):
            down = torch.randn(rank, module.in_features, generator=g)
            up = torch.randn(module.out_features, rank, generator=g)
        else:
            down = torch.randn(rank, module.in_channels, *module.kernel_size, generator=g)
            up = torch.randn(module.out_channels, rank, 1, 1, generator=g)
        alpha = float(torch.randint(1, 2 * rank + 1, (1,), generator=g))
        sd[key + ".lora_down.weight"] = down * 0.25
        sd[key + ".lora_up.weight"] = up * 0.25
        sd[key + ".alpha"] = torch.tensor(alpha)
        if alphas is not None:
            alphas[(component, path)] = alpha
    return sd


def save(sd: dict, path: Path) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def set_file_alphas(pipe, sd: dict, adapter: str) -> None:
    """Each LoRA layer's alpha as the kohya file gives it (see the module's docstring)."""
    for prefix, model in (("lora_unet_", pipe.unet), ("lora_te_", pipe.text_encoder)):
        for path, module in model.named_modules():
            alpha = sd.get(prefix + path.replace(".", "_") + ".alpha")
            if alpha is not None and adapter in getattr(module, "lora_alpha", {}):
                module.lora_alpha[adapter] = float(alpha)
