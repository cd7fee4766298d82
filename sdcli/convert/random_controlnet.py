"""Random-weight ControlNets (diffusers' ControlNetModel) that fit a UNet, built locally for
tests: every layer is drawn at random, the zero convolutions too (diffusers initialises them
at zero, which would make the control image change nothing); a full-size one (a benchmark's)
is filled from a pool of draws (random_weights.make_large).  Needs torch and diffusers."""
from __future__ import annotations

from pathlib import Path

from sdcli.convert.random_weights import make_large, spread_weights


def build_random_controlnet(unet_dir: str | Path, out_dir: str | Path, embedding_channels: tuple[int, ...] = (8, 16),
                            seed: int = 0, spread: float = 1.0, **overrides) -> Path:
    """A ControlNetModel shaped like the diffusers UNet in `unet_dir`, whose conditioning
    embedding downsamples the control image by 2 ** (len(embedding_channels) - 1) (the VAE's
    factor), saved to `out_dir`.  `spread` scales the zero convolutions' weights; `overrides`
    replace config entries (attention_head_dim, norm_num_groups, ...)."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    with torch.device("meta"):  # only its config is read
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(unet_dir))

    def make():
        controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=tuple(embedding_channels),
                                               load_weights_from_unet=False)
        if overrides:
            config = {k: v for k, v in controlnet.config.items() if k != "_use_default_values"}  # (else those reset)
            controlnet = ControlNetModel.from_config(dict(config, **overrides))
        return controlnet

    # a full-size one (a benchmark's) filled from a pool; a small one (a test's) drawn by spread_weights
    controlnet = make_large(make, torch.float32, seed, usual=lambda module: spread_weights(module, seed=seed))
    with torch.no_grad():
        for module in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                       controlnet.controlnet_cond_embedding.conv_out]:
            for p in module.parameters():
                p.mul_(spread)
    controlnet.save_pretrained(out_dir)
    return Path(out_dir)


def build_random_controlnet_union(unet_dir: str | Path, out_dir: str | Path,
                                  embedding_channels: tuple[int, ...] = (8, 16), seed: int = 0,
                                  num_control_type: int = 8, heads: int = 8) -> Path:
    """A ControlNetUnionModel (xinsir's ControlNet Union, diffusers' class) shaped like the SDXL
    UNet in `unet_dir`, every layer random: the zero convolutions, the zero-initialised
    spatial_ch_projs that carries the control type's task embedding into the picture, and the
    condition transformer's layer norms (drawn near 1, as spread_weights draws norms); its
    transformer is as wide as the UNet's first block (num_trans_channel, num_proj_channel), with
    xinsir's 8 heads."""
    import torch
    from diffusers import ControlNetUnionModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(unet_dir, torch_dtype=torch.float32)
    shaped = ControlNetUnionModel.from_unet(unet, conditioning_embedding_out_channels=tuple(embedding_channels),
                                            load_weights_from_unet=False)
    width = int(unet.config.block_out_channels[0])
    # (keyword overrides: a config dict's _use_default_values would put its defaults back)
    controlnet = ControlNetUnionModel.from_config(shaped.config, num_control_type=num_control_type,
                                                  num_trans_channel=width, num_proj_channel=width,
                                                  num_trans_head=heads, num_trans_layer=1)
    spread_weights(controlnet, seed=seed)
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for layer in controlnet.transformer_layes:
            for norm in (layer.ln_1, layer.ln_2):
                norm.weight.copy_(1.0 + 0.1 * torch.randn(norm.weight.shape, generator=g))
        # task embeddings as diffusers draws them (randn * sqrt(width)): a control type moves the picture
        controlnet.task_embedding.copy_(torch.randn(controlnet.task_embedding.shape, generator=g) * width ** 0.5)
        # the control image's embedding 3x the spread's: beside the task embedding it would move little
        controlnet.controlnet_cond_embedding.conv_out.weight.mul_(3.0)
    controlnet.save_pretrained(out_dir)
    return Path(out_dir)
