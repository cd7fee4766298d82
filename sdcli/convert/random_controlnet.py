"""Random-weight ControlNets (diffusers' ControlNetModel) that fit a UNet, built locally for
tests: every layer is drawn at random, the zero convolutions too (diffusers initialises them
at zero, which would make the control image change nothing).  Needs torch and diffusers."""
from __future__ import annotations

from pathlib import Path

from sdcli.convert.random_weights import spread_weights


def build_random_controlnet(unet_dir: str | Path, out_dir: str | Path, embedding_channels: tuple[int, ...] = (8, 16),
                            seed: int = 0, spread: float = 1.0, **overrides) -> Path:
    """A ControlNetModel shaped like the diffusers UNet in `unet_dir`, whose conditioning
    embedding downsamples the control image by 2 ** (len(embedding_channels) - 1) (the VAE's
    factor), saved to `out_dir`.  `spread` scales the zero convolutions' weights; `overrides`
    replace config entries (attention_head_dim, norm_num_groups, ...)."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(unet_dir, torch_dtype=torch.float32)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=tuple(embedding_channels),
                                           load_weights_from_unet=False)
    if overrides:
        controlnet = ControlNetModel.from_config(dict(controlnet.config, **overrides))
    spread_weights(controlnet, seed=seed)
    with torch.no_grad():
        for module in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                       controlnet.controlnet_cond_embedding.conv_out]:
            for p in module.parameters():
                p.mul_(spread)
    controlnet.save_pretrained(out_dir)
    return Path(out_dir)
