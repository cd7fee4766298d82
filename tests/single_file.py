"""A diffusers SDXL folder written as one Stability-layout checkpoint (the single `.safetensors`
file civitai hands out), for testing `sdcli convert FILE.safetensors` without a download.

The layout is the original repository's (generative-models): the UNet under
`model.diffusion_model.` (LDM block names: input_blocks, middle_block, output_blocks), the VAE
under `first_stage_model.` (encoder.down.N.block.M, mid.attn_1 with 1x1-convolution weights),
CLIP ViT-L under `conditioner.embedders.0.transformer.` (the Hugging Face layout as it is) and
OpenCLIP bigG under `conditioner.embedders.1.model.` (OpenCLIP's: resblocks with one in_proj
for q, k and v, ln_final, a text_projection matrix multiplied from the right). The refiner
has only the OpenCLIP encoder, as embedder 0.

Every key the diffusers folder has is written under exactly one name; a key the mapping does
not know fails loudly rather than being left out.
"""
from __future__ import annotations

import json
from pathlib import Path

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
SD_CLIP_PREFIX = "cond_stage_model.transformer."  # SD 1.x's one text encoder

# inside a UNet resnet: diffusers' name -> LDM's (ResBlock: in_layers = norm, SiLU, conv)
UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
               "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
# the VAE's mid-block attention: diffusers' name -> LDM's (its weights are 1x1 convolutions there)
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
# an OpenCLIP residual block: diffusers' (CLIP) name -> OpenCLIP's
OPEN_CLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                   "self_attn.out_proj": "attn.out_proj"}


def unet_blocks(config: dict) -> dict[str, tuple[str, dict]]:
    """diffusers module prefix -> (LDM module prefix, renames inside it) for a UNet2DConditionModel
    of this config (SD's and SDXL's block structure: layers_per_block resnets per down block, one
    more per up block, a downsampler after every down block but the last, an upsampler after
    every up block but the last)."""
    per_block = config["layers_per_block"]
    count = len(config["block_out_channels"])
    blocks: dict[str, tuple[str, dict]] = {
        "conv_in": ("input_blocks.0.0", {}),
        "time_embedding.linear_1": ("time_embed.0", {}),
        "time_embedding.linear_2": ("time_embed.2", {}),
        "add_embedding.linear_1": ("label_emb.0.0", {}),
        "add_embedding.linear_2": ("label_emb.0.2", {}),
        "mid_block.resnets.0": ("middle_block.0", UNET_RESNET),
        "mid_block.attentions.0": ("middle_block.1", {}),
        "mid_block.resnets.1": ("middle_block.2", UNET_RESNET),
        "conv_norm_out": ("out.0", {}),
        "conv_out": ("out.2", {}),
    }
    for b in range(count):
        first = 1 + b * (per_block + 1)  # input_blocks.0 is conv_in
        for layer in range(per_block):
            blocks[f"down_blocks.{b}.resnets.{layer}"] = (f"input_blocks.{first + layer}.0", UNET_RESNET)
            blocks[f"down_blocks.{b}.attentions.{layer}"] = (f"input_blocks.{first + layer}.1", {})
        if b < count - 1:
            blocks[f"down_blocks.{b}.downsamplers.0.conv"] = (f"input_blocks.{first + per_block}.0.op", {})
        first = b * (per_block + 1)
        for layer in range(per_block + 1):
            blocks[f"up_blocks.{b}.resnets.{layer}"] = (f"output_blocks.{first + layer}.0", UNET_RESNET)
            blocks[f"up_blocks.{b}.attentions.{layer}"] = (f"output_blocks.{first + layer}.1", {})
        if b < count - 1:  # after the attention where the block has one
            position = 2 if "CrossAttn" in config["up_block_types"][b] else 1
            blocks[f"up_blocks.{b}.upsamplers.0.conv"] = (f"output_blocks.{first + per_block}.{position}.conv", {})
    return blocks


def vae_blocks(config: dict) -> dict[str, tuple[str, dict]]:
    """The same for an AutoencoderKL: LDM numbers the decoder's up blocks from the bottom."""
    count = len(config["block_out_channels"])
    resnet = {"conv_shortcut": "nin_shortcut"}
    blocks: dict[str, tuple[str, dict]] = {}
    for part in ("encoder", "decoder"):
        for name in ("conv_in", "conv_out"):
            blocks[f"{part}.{name}"] = (f"{part}.{name}", {})
        blocks[f"{part}.conv_norm_out"] = (f"{part}.norm_out", {})
        blocks[f"{part}.mid_block.resnets.0"] = (f"{part}.mid.block_1", resnet)
        blocks[f"{part}.mid_block.resnets.1"] = (f"{part}.mid.block_2", resnet)
        blocks[f"{part}.mid_block.attentions.0"] = (f"{part}.mid.attn_1", VAE_ATTENTION)
    for name in ("quant_conv", "post_quant_conv"):
        blocks[name] = (name, {})
    for i in range(count):
        for layer in range(config["layers_per_block"] + 1):
            blocks[f"encoder.down_blocks.{i}.resnets.{layer}"] = (f"encoder.down.{i}.block.{layer}", resnet)
            blocks[f"decoder.up_blocks.{i}.resnets.{layer}"] = (f"decoder.up.{count - 1 - i}.block.{layer}", resnet)
        blocks[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = (f"encoder.down.{i}.downsample.conv", {})
        blocks[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = (f"decoder.up.{count - 1 - i}.upsample.conv", {})
    return blocks


def renamed(state: dict, blocks: dict[str, tuple[str, dict]], prefix: str) -> dict:
    """`state` under LDM names: each key's longest matching module prefix replaced, then the
    renames inside that module; a key no module holds is an error."""
    out = {}
    for key, value in state.items():
        module = max((m for m in blocks if key.startswith(m + ".")), key=len, default=None)
        if module is None:
            raise KeyError(f"no LDM name for {key}")
        target, inner = blocks[module]
        rest = key[len(module) + 1:]
        for old, new in inner.items():
            if rest.startswith(old + "."):
                rest = new + rest[len(old):]
                break
        out[prefix + target + "." + rest] = value
    return out


def vae_to_ldm(state: dict, config: dict) -> dict:
    out = renamed(state, vae_blocks(config), VAE_PREFIX)
    for key, value in out.items():  # the mid-block attention's linear layers are 1x1 convolutions there
        if ".mid.attn_1." in key and key.endswith("weight") and value.ndim == 2:
            out[key] = value[:, :, None, None].contiguous()
    return out


def clip_to_ldm(state: dict, prefix: str = CLIP_L_PREFIX) -> dict:
    """CLIP ViT-L keeps the Hugging Face layout, under `text_model.` (as transformers before 5.6 wrote it)."""
    return {prefix + (k if k.startswith("text_model.") else "text_model." + k): v
            for k, v in state.items() if not k.endswith("position_ids")}


def open_clip_to_ldm(state: dict, prefix: str) -> dict:
    """A CLIPTextModelWithProjection's weights in OpenCLIP's layout, under `prefix`
    (conditioner.embedders.N.model.)."""
    import torch

    state = {(k if k.startswith(("text_model.", "text_projection")) else "text_model." + k): v
             for k, v in state.items() if not k.endswith("position_ids")}
    fixed = {"text_model.embeddings.token_embedding.weight": "token_embedding.weight",
             "text_model.embeddings.position_embedding.weight": "positional_embedding",
             "text_model.final_layer_norm.weight": "ln_final.weight",
             "text_model.final_layer_norm.bias": "ln_final.bias"}
    out = {prefix + new: state.pop(old) for old, new in fixed.items()}
    out[prefix + "text_projection"] = state.pop("text_projection.weight").T.contiguous()  # x @ text_projection
    layers = sorted({int(k.split(".")[3]) for k in state if k.startswith("text_model.encoder.layers.")})
    for n in layers:
        ours = f"text_model.encoder.layers.{n}."
        theirs = f"{prefix}transformer.resblocks.{n}."
        for kind in ("weight", "bias"):
            out[theirs + f"attn.in_proj_{kind}"] = torch.cat(
                [state.pop(ours + f"self_attn.{p}_proj.{kind}") for p in "qkv"], dim=0)
            for old, new in OPEN_CLIP_LAYER.items():
                out[theirs + f"{new}.{kind}"] = state.pop(ours + f"{old}.{kind}")
    if state:
        raise KeyError(f"no OpenCLIP name for {sorted(state)}")
    return out


def read_folder_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if len(files) != 1:
        raise FileNotFoundError(f"expected one .safetensors file in {folder}, found {len(files)}")
    return load_file(str(files[0]))


def write_sdxl_single_file(diffusers_dir: Path, path: Path) -> Path:
    """The SDXL base (two text encoders) or refiner (text_encoder_2 only) in `diffusers_dir`
    written to `path` in Stability's single-file layout. Returns `path`."""
    from safetensors.torch import save_file

    diffusers_dir = Path(diffusers_dir)
    config = {name: json.loads((diffusers_dir / name / "config.json").read_text()) for name in ("unet", "vae")}
    tensors = renamed(read_folder_weights(diffusers_dir / "unet"), unet_blocks(config["unet"]), UNET_PREFIX)
    tensors.update(vae_to_ldm(read_folder_weights(diffusers_dir / "vae"), config["vae"]))
    refiner = not (diffusers_dir / "text_encoder").is_dir()
    if not refiner:
        tensors.update(clip_to_ldm(read_folder_weights(diffusers_dir / "text_encoder")))
    open_clip = f"conditioner.embedders.{0 if refiner else 1}.model."
    tensors.update(open_clip_to_ldm(read_folder_weights(diffusers_dir / "text_encoder_2"), open_clip))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})
    return Path(path)


def write_sd_single_file(diffusers_dir: Path, path: Path) -> Path:
    """An SD 1.x folder in the original (CompVis/A1111) single-file layout: the same UNet and VAE
    names, CLIP ViT-L under `cond_stage_model.transformer.`."""
    from safetensors.torch import save_file

    diffusers_dir = Path(diffusers_dir)
    config = {name: json.loads((diffusers_dir / name / "config.json").read_text()) for name in ("unet", "vae")}
    tensors = renamed(read_folder_weights(diffusers_dir / "unet"), unet_blocks(config["unet"]), UNET_PREFIX)
    tensors.update(vae_to_ldm(read_folder_weights(diffusers_dir / "vae"), config["vae"]))
    tensors.update(clip_to_ldm(read_folder_weights(diffusers_dir / "text_encoder"), SD_CLIP_PREFIX))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})
    return Path(path)


# TINY_SDXL with a second text encoder wider than the first (48 against 32), as SDXL's are (1280
# against 768): diffusers' single-file loader tells CLIP ViT-L's tensors from OpenCLIP's by
# their width, and with TINY_SDXL's two encoders of 32 it fills text_encoder_2 from ViT-L's.
def wide_sdxl_sizes() -> dict:
    from sdcli.convert.random_model import TINY_SDXL

    return dict(TINY_SDXL, text_2=dict(TINY_SDXL["text_2"], hidden_size=48),
                unet=dict(TINY_SDXL["unet"], cross_attention_dim=32 + 48))


def build_wide_tiny_sdxl(out_dir: Path, seed: int = 0):
    """A tiny SDXL base (diffusers folder, not converted) of wide_sdxl_sizes(), its weights
    spread as the suite's tiny models' are (random_model._spread_weights), so that prompt and
    latents move the pixels."""
    from sdcli.convert import random_model

    pipe = random_model.build_random_sdxl(out_dir, wide_sdxl_sizes(), seed=seed)
    random_model._spread_weights(pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2, seed=seed)
    pipe.save_pretrained(out_dir)
    random_model._hub_key_names(Path(out_dir) / "text_encoder")
    return Path(out_dir)
