"""Random-weight Stable Diffusion pipelines, built locally (no hub).

Tests use the tiny configuration; the benchmark uses the SD 1.5 architecture, whose
cost per step does not depend on the values of its weights.  Needs torch, diffusers
and transformers (the ``convert`` extra).
"""
from __future__ import annotations

import json
from pathlib import Path

from sdcli.convert.random_weights import bytes_to_unicode, make_large, spread_weights

_spread_weights = spread_weights  # (tests/single_file.py calls it by this name)

TINY = {
    "unet": dict(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    ),
    "vae": dict(
        block_out_channels=(16, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=16,
    ),
    "text": dict(
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=1000,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
    ),
}

# The no-network model a newcomer tries first (`python -m sdcli.convert.random_model DIR --tiny`):
# TINY's UNet and text encoder with SD's VAE factor of 8 and default size of 512, so that an
# image of any size costs seconds (the tests keep TINY, whose factor of 2 makes 64x64
# images with more latent pixels to compare).
QUICK = {
    "unet": dict(TINY["unet"], sample_size=64, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")),  # no attention at full latent size
    "vae": dict(TINY["vae"], block_out_channels=(16, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512),
    "text": TINY["text"],
}

# SD 2.x differs where it matters to an engine: linear projections in the transformer
# blocks, per-block head counts, gelu in the text model, and "!" as the padding token
# (not the end token), with v-prediction.
TINY_SD2 = {
    "unet": dict(TINY["unet"], attention_head_dim=(2, 4), use_linear_projection=True),
    "vae": TINY["vae"],
    "text": dict(TINY["text"], hidden_act="gelu"),
    "pad_token": "!",
}

# A dedicated inpainting UNet (as stable-diffusion-inpainting): 9 input channels, the
# latents plus the latent-size mask (1) plus the masked image's latents (4).
TINY_INPAINT = {
    "unet": dict(TINY["unet"], in_channels=9),
    "vae": TINY["vae"],
    "text": TINY["text"],
}

SD15 = {
    "unet": dict(
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        sample_size=64,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768,
        attention_head_dim=8,
    ),
    "vae": dict(
        block_out_channels=(128, 256, 512, 512),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=2,
        sample_size=512,
    ),
    "text": dict(
        hidden_size=768,
        intermediate_size=3072,
        num_attention_heads=12,
        num_hidden_layers=12,
        vocab_size=49408,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=768,
    ),
}

# The SD 1.x scheduler configuration (PNDM with PLMS steps only).
SD15_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
)

# stabilityai/sd-turbo: the SD 2.1-base architecture (its unet/config.json: attention_head_dim
# (5, 10, 20, 20), use_linear_projection, cross_attention_dim 1024; its text_encoder/config.json:
# the OpenCLIP ViT-H text tower as diffusers ships it for SD 2.x, 23 layers of 1024, gelu, "!" as
# the padding token), SD's VAE, and its scheduler_config.json: Euler with trailing timesteps.
SD_TURBO_SCHEDULER = dict(SD15_SCHEDULER, clip_sample=False, interpolation_type="linear", sample_max_value=1.0,
                          timestep_spacing="trailing", timestep_type="discrete", use_karras_sigmas=False)
SD_TURBO = {
    "unet": dict(SD15["unet"], attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
                 cross_attention_dim=1024, sample_size=64),
    "vae": SD15["vae"],
    "text": dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23,
                 vocab_size=49408, max_position_embeddings=77, hidden_act="gelu", projection_dim=512),
    "pad_token": "!",
    "scheduler": ("EulerDiscreteScheduler", SD_TURBO_SCHEDULER),
}
# ... and its shape in small, for a quick check of the benchmark: QUICK's sizes (latents an eighth
# of the image), SD 2.x's linear projections, gelu and padding token, the same scheduler.
TINY_SD_TURBO = {
    "unet": dict(QUICK["unet"], attention_head_dim=(2, 4), use_linear_projection=True),
    "vae": QUICK["vae"],
    "text": dict(QUICK["text"], hidden_act="gelu"),
    "pad_token": "!",
    "scheduler": ("EulerDiscreteScheduler", SD_TURBO_SCHEDULER),
}

# A Latent Consistency Model as SimianLuo/LCM_Dreamshaper_v7: the UNet takes a guidance-scale
# embedding of this size (`timestep_cond`), and the scheduler config is that repo's.
LCM_TIME_COND_PROJ_DIM = 256
LCM_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    original_inference_steps=50,
    set_alpha_to_one=True,
    steps_offset=1,
    clip_sample=False,
    timestep_scaling=10.0,
    timestep_spacing="leading",
)


# SDXL's shape in small: two text encoders (a CLIPTextModel and a CLIPTextModelWithProjection)
# whose penultimate hidden states are concatenated (cross_attention_dim = 32 + 32), and a UNet
# with SDXL's added conditioning ("text_time": the second encoder's projection, 32, and six
# time ids of 8 Fourier features each: 32 + 6 * 8 = 80).  The VAE has SDXL's scaling factor.
TINY_SDXL = {
    "unet": dict(TINY["unet"], down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                 transformer_layers_per_block=(1, 2), use_linear_projection=True, cross_attention_dim=64,
                 addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=80),
    "vae": dict(TINY["vae"], scaling_factor=0.13025, force_upcast=True),
    "text": dict(TINY["text"], projection_dim=32),
    "text_2": dict(TINY["text"], hidden_act="gelu", num_hidden_layers=3, projection_dim=32),
    "pad_token_2": "!",
}
# The refiner's: the second text encoder only, and five time ids (sizes, crop, aesthetic score)
TINY_SDXL_REFINER = dict(TINY_SDXL, unet=dict(TINY_SDXL["unet"], cross_attention_dim=32,
                                              projection_class_embeddings_input_dim=72), text=None)

SDXL = {
    "unet": dict(
        block_out_channels=(320, 640, 1280),
        layers_per_block=2,
        sample_size=128,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        use_linear_projection=True,
        cross_attention_dim=2048,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    ),
    "vae": dict(SD15["vae"], sample_size=1024, scaling_factor=0.13025, force_upcast=True),
    "text": dict(SD15["text"]),
    "text_2": dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
                   vocab_size=49408, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280),
    "pad_token_2": "!",
}

# SDXL 1.0 base's scheduler configuration (Euler, leading spacing).
SDXL_SCHEDULER = dict(SD15_SCHEDULER, timestep_spacing="leading", interpolation_type="linear",
                      use_karras_sigmas=False, sample_max_value=1.0, clip_sample=False)


def write_clip_tokenizer(folder: Path, vocab_size: int) -> None:
    """A real CLIP BPE tokenizer with a small vocabulary: every byte, byte + "</w>",
    a few merges of common letter pairs, and the two special tokens."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    vocab: list[str] = chars + [c + "</w>" for c in chars]
    merges = []
    for a, b in ["th", "he", "in", "er", "an", "re", "on", "at", "or", "es"]:
        merges.append(f"{a} {b}")
        vocab.append(a + b)
        merges.append(f"{a} {b}</w>")
        vocab.append(a + b + "</w>")
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    if len(vocab) > vocab_size:
        raise ValueError(f"vocab_size {vocab_size} is smaller than the tokenizer's {len(vocab)} tokens")
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def build_random_pipeline(
    out_dir: str | Path,
    sizes: dict = TINY,
    prediction_type: str = "epsilon",
    seed: int = 0,
    scheduler_config: dict | None = None,
    torch_dtype=None,
    in_channels: int | None = None,
    lcm: bool = False,
):
    """Build a random-weight StableDiffusionPipeline, save it as a diffusers folder and return it.

    `in_channels` overrides the UNet's (9: an inpainting UNet, saved as a
    StableDiffusionInpaintPipeline as stable-diffusion-inpainting is).  `lcm`: a Latent
    Consistency Model (UNet with a guidance-scale embedding input, LCMScheduler), saved as a
    LatentConsistencyModelPipeline."""
    import torch
    from diffusers import (AutoencoderKL, LatentConsistencyModelPipeline, LCMScheduler, PNDMScheduler,
                           StableDiffusionInpaintPipeline, StableDiffusionPipeline, UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    out_dir = Path(out_dir)
    tiny = any(sizes is s for s in (TINY, TINY_SD2, TINY_INPAINT))
    unet_cfg = dict(sizes["unet"]) if in_channels is None else dict(sizes["unet"], in_channels=in_channels)
    if lcm:
        unet_cfg["time_cond_proj_dim"] = LCM_TIME_COND_PROJ_DIM
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_cfg)
    vae = AutoencoderKL(**sizes["vae"])
    text_cfg = dict(sizes["text"], bos_token_id=0, eos_token_id=2, pad_token_id=1)
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_cfg))
    if tiny:
        spread_weights(unet, vae, text_encoder, seed=seed)
    tok_dir = out_dir / "_tokenizer_src"
    write_clip_tokenizer(tok_dir, text_cfg["vocab_size"])
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77,
                              pad_token=sizes.get("pad_token", "<|endoftext|>"))
    default_scheduler = LCM_SCHEDULER if lcm else SD15_SCHEDULER
    scheduler_class = LCMScheduler if lcm else PNDMScheduler
    if "scheduler" in sizes and not lcm:  # the model's own (sd-turbo's Euler)
        import diffusers

        class_name, default_scheduler = sizes["scheduler"]
        scheduler_class = getattr(diffusers, class_name)
    sched_cfg = dict(scheduler_config or default_scheduler, prediction_type=prediction_type)
    scheduler = scheduler_class.from_config(sched_cfg)
    pipeline_class = StableDiffusionInpaintPipeline if unet_cfg.get("in_channels") == 9 else StableDiffusionPipeline
    if lcm:
        pipeline_class = LatentConsistencyModelPipeline
    pipe = pipeline_class(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return _save(pipe, out_dir, tok_dir)


def build_random_sdxl(
    out_dir: str | Path,
    sizes: dict = TINY_SDXL,
    prediction_type: str = "epsilon",
    seed: int = 0,
    scheduler_config: dict | None = None,
    torch_dtype=None,
    in_channels: int | None = None,
):
    """Build a random-weight Stable Diffusion XL pipeline (base, refiner when `sizes` has no
    first text encoder, inpainting with `in_channels` 9), save it as a diffusers folder and
    return it.  `torch_dtype` (e.g. torch.float16) halves the memory of a full-size one."""
    import torch
    from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline,
                           StableDiffusionXLInpaintPipeline, StableDiffusionXLPipeline, UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    out_dir = Path(out_dir)
    tiny = any(sizes is s for s in (TINY_SDXL, TINY_SDXL_REFINER))
    refiner = sizes.get("text") is None
    unet_cfg = dict(sizes["unet"]) if in_channels is None else dict(sizes["unet"], in_channels=in_channels)
    torch.manual_seed(seed)
    if torch_dtype is not None:
        torch.set_default_dtype(torch_dtype)  # built in half precision, not built in full and cast
    def make(build):  # a full size in torch_dtype: large modules filled fast (random_weights.make_large)
        return build() if tiny or torch_dtype is None else make_large(build, torch_dtype, seed)

    try:
        unet = make(lambda: UNet2DConditionModel(**unet_cfg))
        vae = AutoencoderKL(**sizes["vae"])
        special = dict(bos_token_id=0, eos_token_id=2, pad_token_id=1)
        text_encoder = None if refiner else CLIPTextModel(CLIPTextConfig(**sizes["text"], **special))
        text_encoder_2 = make(lambda: CLIPTextModelWithProjection(CLIPTextConfig(**sizes["text_2"], **special)))
    finally:
        torch.set_default_dtype(torch.float32)
    if tiny:
        spread_weights(*[m for m in (unet, vae, text_encoder, text_encoder_2) if m is not None], seed=seed)
    tok_dir = out_dir / "_tokenizer_src"
    write_clip_tokenizer(tok_dir, sizes["text_2"]["vocab_size"])

    def tokenizer(pad: str):
        return CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77, pad_token=pad)

    scheduler = EulerDiscreteScheduler.from_config(dict(scheduler_config or SDXL_SCHEDULER, prediction_type=prediction_type))
    parts = dict(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                 tokenizer=None if refiner else tokenizer("<|endoftext|>"),
                 tokenizer_2=tokenizer(sizes.get("pad_token_2", "!")), unet=unet, scheduler=scheduler)
    if refiner:
        pipe = StableDiffusionXLImg2ImgPipeline(**parts, requires_aesthetics_score=True, force_zeros_for_empty_prompt=False)
    elif unet_cfg.get("in_channels") == 9:
        pipe = StableDiffusionXLInpaintPipeline(**parts)
    else:
        pipe = StableDiffusionXLPipeline(**parts)
    return _save(pipe, out_dir, tok_dir)


def _save(pipe, out_dir: Path, tok_dir: Path):
    """Save `pipe` as a diffusers folder (the tokenizer's source files removed), as the Hub has them."""
    pipe.save_pretrained(out_dir)
    for f in tok_dir.iterdir():
        f.unlink()
    tok_dir.rmdir()
    _hub_key_names(out_dir / "text_encoder")
    return pipe


def _hub_key_names(folder: Path) -> None:
    """Write a CLIPTextModel's weights under the names the Hub's checkpoints use
    ("text_model.embeddings..."): transformers 5.23 saves them without the prefix, which
    older versions (optimum-intel's pins) load as missing, silently re-initialised."""
    from safetensors.torch import load_file, save_file

    for path in folder.glob("*.safetensors") if folder.is_dir() else ():
        tensors = load_file(str(path))
        if tensors and not any(k.startswith("text_model.") for k in tensors):
            save_file({"text_model." + k: v for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


# The tiny autoencoder (TAESD) for the tiny models: 4 latent channels and one 2x step,
# as TINY's VAE.  TAESD's channel counts must be equal within the encoder and the decoder.
TINY_TAESD = dict(
    encoder_block_out_channels=(16, 16),
    decoder_block_out_channels=(16, 16),
    num_encoder_blocks=(1, 2),
    num_decoder_blocks=(2, 1),
    latent_channels=4,
)
# ... and one that fits QUICK (latents an eighth of the image size, as TAESD's)
QUICK_TAESD = dict(TINY_TAESD, encoder_block_out_channels=(16, 16, 16, 16), decoder_block_out_channels=(16, 16, 16, 16),
                   num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1))
# madebyollin/taesd (SD 1.x/2.x) is AutoencoderTiny's default architecture.
TAESD: dict = {}
# madebyollin/taesdxl is the same architecture trained on SDXL's latents (4 channels, an eighth of
# the image size), so the tiny ones serve SDXL too: TINY_TAESD fits TINY_SDXL (whose VAE has TINY's).
TAESDXL, TINY_TAESDXL = TAESD, TINY_TAESD


def build_random_taesd(out_dir: str | Path, sizes: dict = TINY_TAESD, seed: int = 0):
    """Build a random-weight diffusers AutoencoderTiny, save it to `out_dir` and return it."""
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    taesd = AutoencoderTiny(**sizes)
    if sizes is not TAESD:  # the small ones: spread their outputs as trained weights do
        spread_weights(taesd, seed=seed)
        _normalise_taesd_outputs(taesd, seed)
    taesd.save_pretrained(out_dir)
    return taesd


def _normalise_taesd_outputs(taesd, seed: int) -> None:
    """Rescale the last convolutions of random weights so that decoded pixels spread over
    [-1, 1] without clipping much and encoded latents have unit spread, as trained ones do
    (otherwise most pixels clip and parity tests compare little)."""
    import torch

    g = torch.Generator().manual_seed(seed + 2)
    factor = 2 ** (len(taesd.config.encoder_block_out_channels) - 1)
    with torch.no_grad():
        latents = torch.randn(2, taesd.config.latent_channels, 16, 16, generator=g)
        pixels = taesd.decode(latents).sample
        last = taesd.decoder.layers[-1]
        last.bias -= pixels.mean(dim=(0, 2, 3)) / 2  # the decoder outputs 2 * layers(x) - 1
        spread = pixels.std(dim=(0, 2, 3)) / 0.6
        last.weight /= spread[:, None, None, None]
        last.bias /= spread
        images = torch.rand(2, 3, 16 * factor, 16 * factor, generator=g) * 2 - 1
        encoded = taesd.encode(images).latents
        last = taesd.encoder.layers[-1]
        last.bias -= encoded.mean(dim=(0, 2, 3))
        spread = encoded.std(dim=(0, 2, 3))
        last.weight /= spread[:, None, None, None]
        last.bias /= spread


def argument_parser():
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m sdcli.convert.random_model",
        description="Build a random-weight Stable Diffusion (or Z-Image) pipeline as a diffusers folder (no download).",
    )
    parser.add_argument("output", help="folder to write")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--tiny", action="store_true",
                      help="a tiny model (default): noise at any size in seconds, to try the tool without a download")
    size.add_argument("--sd15", action="store_true", help="the SD 1.5 architecture (about 4 GB in fp32)")
    size.add_argument("--sdxl", action="store_true",
                      help="the SDXL 1.0 base architecture (UNet 2.6 B parameters), saved in fp16 (about 7 GB)")
    size.add_argument("--tiny-sdxl", action="store_true", help="a tiny model of SDXL's shape (two text encoders)")
    size.add_argument("--sd-turbo", action="store_true",
                      help="stabilityai/sd-turbo's architecture (SD 2.1-base, Euler with trailing timesteps; about 5 GB "
                           "in fp32)")
    size.add_argument("--tiny-sd-turbo", action="store_true", help="a tiny model of sd-turbo's shape")
    size.add_argument("--taesd", action="store_true",
                      help="not a pipeline: a tiny autoencoder (AutoencoderTiny) of madebyollin/taesd's architecture, "
                           "for `sdcli convert --tiny-vae`")
    size.add_argument("--tiny-taesd", action="store_true", help="not a pipeline: a tiny AutoencoderTiny that fits --tiny")
    size.add_argument("--tiny-z-image", action="store_true",
                      help="a tiny ZImagePipeline of Tongyi-MAI/Z-Image-Turbo's shape (Qwen3 text encoder, flow matching)")
    size.add_argument("--z-image", action="store_true",
                      help="Tongyi-MAI/Z-Image-Turbo's architecture (transformer 6.2 B parameters, Qwen3-4B), saved in "
                           "bf16 (about 20 GB)")
    size.add_argument("--tiny-flux2-klein", action="store_true",
                      help="a tiny Flux2KleinPipeline of black-forest-labs/FLUX.2-klein-4B's shape (Qwen3 text encoder)")
    size.add_argument("--flux2-klein", action="store_true",
                      help="black-forest-labs/FLUX.2-klein-4B's architecture (transformer 3.9 B parameters, Qwen3-4B), "
                           "saved in bf16 (about 16 GB)")
    parser.add_argument("--prediction-type", default="epsilon", choices=["epsilon", "v_prediction"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--in-channels", type=int, default=None,
                        help="the UNet's input channels (9: an inpainting UNet) [default: 4]")
    parser.add_argument("--lcm", action="store_true",
                        help="a Latent Consistency Model (as SimianLuo/LCM_Dreamshaper_v7: time_cond_proj_dim 256, "
                             "LCMScheduler)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = argument_parser().parse_args(argv)
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    if args.z_image or args.tiny_z_image:
        import torch

        from sdcli.convert.random_z_image import TINY_Z_IMAGE, Z_IMAGE, build_random_z_image

        build_random_z_image(args.output, Z_IMAGE if args.z_image else TINY_Z_IMAGE, args.seed,
                             torch_dtype=torch.bfloat16 if args.z_image else None)
    elif args.flux2_klein or args.tiny_flux2_klein:
        import torch

        from sdcli.convert.random_flux2_klein import FLUX2_KLEIN, TINY_FLUX2_KLEIN, build_random_flux2_klein

        build_random_flux2_klein(args.output, FLUX2_KLEIN if args.flux2_klein else TINY_FLUX2_KLEIN, args.seed,
                                 torch_dtype=torch.bfloat16 if args.flux2_klein else None)
    elif args.taesd or args.tiny_taesd:
        build_random_taesd(args.output, TAESD if args.taesd else QUICK_TAESD, args.seed)
    elif args.sdxl or args.tiny_sdxl:
        import torch

        build_random_sdxl(args.output, SDXL if args.sdxl else TINY_SDXL, args.prediction_type, args.seed,
                          torch_dtype=torch.float16 if args.sdxl else None, in_channels=args.in_channels)
    else:
        sizes = SD15 if args.sd15 else SD_TURBO if args.sd_turbo else TINY_SD_TURBO if args.tiny_sd_turbo else QUICK
        build_random_pipeline(args.output, sizes, args.prediction_type, args.seed,
                              in_channels=args.in_channels, lcm=args.lcm)
    print(args.output)


if __name__ == "__main__":
    main()
