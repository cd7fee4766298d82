"""The rest of sdcli's options on SDXL folders: `--vae tiny` with a TAESDXL, `--deepcache N`,
run-time LoRAs (kohya's lora_unet_/lora_te1_/lora_te2_ and diffusers/PEFT keys) and
embeddings (clip_l/clip_g), `--low-memory`, `--from-image`, `sdcli batch`, `--clip-skip`,
an int8 folder, `sdcli info` and the memory estimate.

The references are diffusers' StableDiffusionXL(Img2Img)Pipeline on the same tiny random
weights (`sdcli generate --rng torch --precision f32`, max pixel difference <= 2 of 255):
given `vae=AutoencoderTiny(...)`; with the DeepCache written by hand on its UNet in
tests/test_deepcache.py; with `load_lora_weights` + `fuse_lora`; with
`load_textual_inversion` on both text encoders.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sdcli.cli.app import app
from sdcli.imaging.image_io import read_rgb
from tests import reference
from tests.reference import compare

SQUARE = dict(width=64, height=64)
pytestmark = [  # diffusers/peft on kohya alphas (set by hand in diffusers_fused), on several adapters in one model
    pytest.mark.filterwarnings("ignore:The following alpha_pattern keys did not match:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute:UserWarning"),
]


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def sdxl_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sdxl-option-models")


def diffusers_pixels(model, scheduler="euler", components=None, **arguments) -> np.ndarray:
    return reference.diffusers_pixels(components or model.components(), scheduler, xl=True, **arguments)


def sdcli_pixels(model_dir, out, *extra, scheduler="euler", **arguments) -> np.ndarray:
    return reference.sdcli_pixels(model_dir, out, *extra, scheduler=scheduler, **arguments)


# --- --vae tiny with a TAESDXL -----------------------------------------------------------------

@pytest.fixture(scope="module")
def taesdxl_dir(sdxl_root) -> Path:
    """A random TAESDXL that fits the tiny SDXL (madebyollin/taesdxl has TAESD's architecture)."""
    from sdcli.convert.random_model import TINY_TAESDXL, build_random_taesd

    folder = sdxl_root / "tiny-taesdxl"
    build_random_taesd(folder, TINY_TAESDXL, seed=12)
    return folder


@pytest.fixture(scope="module")
def sdxl_with_tiny(tiny_sdxl, taesdxl_dir, sdxl_root) -> Path:
    """tiny_sdxl's converted folder with the tiny VAE added by `convert --tiny-vae --into` (which
    writes what a whole conversion with --tiny-vae writes: test_tiny_vae.py's
    test_into_adds_it_to_a_converted_folder), without exporting the rest again."""
    import shutil

    out = sdxl_root / "tiny-sdxl-taesdxl"
    shutil.copytree(tiny_sdxl.ov_dir, out)
    r = run("convert", "--tiny-vae", taesdxl_dir, "--into", out, "--weight-format", "fp32", "--quiet")
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def taesdxl(taesdxl_dir):
    import torch
    from diffusers import AutoencoderTiny

    return AutoencoderTiny.from_pretrained(taesdxl_dir, torch_dtype=torch.float32)


@pytest.mark.parametrize("scheduler,size", [("euler", (64, 64)), ("dpmpp_2m", (96, 64))])
def test_tiny_vae_txt2img_matches_diffusers(tiny_sdxl, sdxl_with_tiny, taesdxl, scheduler, size, tmp_path,
                                            parity_log):
    width, height = size
    theirs = diffusers_pixels(tiny_sdxl, scheduler, {**tiny_sdxl.components(), "vae": taesdxl}, width=width,
                              height=height)
    ours = sdcli_pixels(sdxl_with_tiny, tmp_path / "out.png", "--vae", "tiny", scheduler=scheduler, width=width,
                        height=height)
    full = sdcli_pixels(sdxl_with_tiny, tmp_path / "full.png", scheduler=scheduler, width=width, height=height)
    assert np.abs(full - ours).max() > 20  # the tiny VAE decodes, not the full one
    compare(ours, theirs, parity_log, model="sdxl taesdxl", scheduler=scheduler, mode="txt2img", size=f"{width}x{height}")


def test_tiny_vae_img2img_matches_diffusers(tiny_sdxl, sdxl_with_tiny, taesdxl, init_image_file, tmp_path,
                                            parity_log):
    theirs = diffusers_pixels(tiny_sdxl, "euler_a", {**tiny_sdxl.components(), "vae": taesdxl},
                              init_image=init_image_file, strength=0.6)
    ours = sdcli_pixels(sdxl_with_tiny, tmp_path / "out.png", "--vae", "tiny", scheduler="euler_a",
                        init_image=init_image_file, strength=0.6)
    compare(ours, theirs, parity_log, model="sdxl taesdxl", scheduler="euler_a", mode="img2img 0.6", size="96x64")


def test_tiny_vae_added_into_a_converted_sdxl_folder(tiny_sdxl, taesdxl_dir, sdxl_with_tiny, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_sdxl.ov_dir, model)
    message = run("generate", "--model", model, "--prompt", "x", "--vae", "tiny", "--output", tmp_path / "x.png")
    assert message.exit_code == 2 and "madebyollin/taesdxl" in message.output
    r = run("convert", "--tiny-vae", taesdxl_dir, "--into", model, "--weight-format", "fp32", "--quiet")
    assert r.exit_code == 0, r.output
    for name in ("vae_encoder_tiny", "vae_decoder_tiny"):
        assert (model / name / "openvino_model.bin").read_bytes() == \
            (sdxl_with_tiny / name / "openvino_model.bin").read_bytes()


# --- --deepcache -------------------------------------------------------------------------------

def deepcache_pixels(model, scheduler, interval, steps=9, **picture) -> np.ndarray:
    from tests.test_deepcache import reference_deepcache

    pipe = reference.reference_pipeline(model.components(), scheduler, xl=True, img2img="init_image" in picture)
    with reference_deepcache(pipe.unet, interval) as state:
        images = pipe(**reference.reference_arguments(steps=steps, **picture)).images
    assert state["calls"] > interval  # the cache was really used
    return reference.to_pixels(images)


@pytest.mark.parametrize("scheduler,interval", [("euler", 3), ("dpmpp_2m", 2)])
def test_deepcache_matches_reference_deepcache(tiny_sdxl, scheduler, interval, tmp_path, parity_log):
    theirs = deepcache_pixels(tiny_sdxl, scheduler, interval, **SQUARE)
    ours = sdcli_pixels(tiny_sdxl.ov_dir, tmp_path / "dc.png", "--deepcache", interval, scheduler=scheduler, steps=9,
                        **SQUARE)
    plain = sdcli_pixels(tiny_sdxl.ov_dir, tmp_path / "plain.png", scheduler=scheduler, steps=9, **SQUARE)
    assert np.abs(ours - plain).max() > 2  # the cache changes the image, so the match below means something
    compare(ours, theirs, parity_log, model="sdxl eps", scheduler=scheduler, mode=f"deepcache {interval}", size="64x64")


def test_deepcache_img2img_matches_reference_deepcache(tiny_sdxl, init_image_file, tmp_path, parity_log):
    theirs = deepcache_pixels(tiny_sdxl, "euler_a", 2, init_image=init_image_file, strength=0.7)
    ours = sdcli_pixels(tiny_sdxl.ov_dir, tmp_path / "dc.png", "--deepcache", 2, scheduler="euler_a", steps=9,
                        init_image=init_image_file, strength=0.7)
    compare(ours, theirs, parity_log, model="sdxl eps", scheduler="euler_a", mode="dc 2 img2img .7", size="96x64")


# --- run-time LoRAs: kohya's SDXL keys and diffusers/PEFT's --------------------------------------

KOHYA_PREFIX = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}


def fresh_sdxl(model):
    """diffusers' StableDiffusionXLPipeline of its own (the LoRA tests change its weights)."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(model.diffusers_dir, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def kohya_sdxl_lora(pipe, kinds: set[str], seed: int, rank: int = 4) -> tuple[dict, dict]:
    """A kohya SDXL LoRA as kohya's sd-scripts write one: the UNet's layers under the LDM code's
    names (`lora_unet_input_blocks_4_1_...`), the text encoders' under lora_te1_/lora_te2_, an
    alpha per module; and {(component, module path): alpha}."""
    from tests.lora_files import kohya_lora
    from tests.test_lora import ldm_name

    def name(component: str, path: str) -> str:
        return KOHYA_PREFIX[component] + (ldm_name(path, dict(pipe.unet.config)) if component == "unet"
                                          else path).replace(".", "_")

    alphas: dict = {}
    return kohya_lora(pipe, kinds, seed, rank, name=name, alphas=alphas), alphas


def diffusers_fused(model, loras: list[tuple[Path, object, dict | None]], pipe=None) -> object:
    """diffusers' SDXL pipeline with the LoRA files loaded (load_lora_weights), each layer given
    its file's alpha (`alphas`; None: diffusers' own reading, as for PEFT files), weighted
    (set_adapters: one weight, or {"unet": u, "text_encoder": t, "text_encoder_2": t}) and fused
    into the weights (fuse_lora)."""
    pipe = pipe or fresh_sdxl(model)
    names = []
    for i, (path, _, alphas) in enumerate(loras):
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=f"a{i}")
        for (component, module_path), alpha in (alphas or {}).items():
            module = getattr(pipe, component).get_submodule(module_path)
            assert f"a{i}" in module.lora_alpha, module_path  # diffusers read every layer of the file
            module.lora_alpha[f"a{i}"] = alpha
        names.append(f"a{i}")
    pipe.set_adapters(names, adapter_weights=[weight for _, weight, _ in loras])
    pipe.fuse_lora(components=["unet", "text_encoder", "text_encoder_2"], adapter_names=names)
    pipe.unload_lora_weights()  # the fused weights stay
    return pipe


def pipe_pixels(pipe, **arguments) -> np.ndarray:
    pipe.scheduler = reference.diffusers_scheduler("euler", pipe.scheduler.config)
    return reference.to_pixels(pipe(**reference.reference_arguments(**{**SQUARE, **arguments})).images)


def lora_pixels(model_dir, tmp_path, prompt: str, *extra, **options) -> np.ndarray:
    return sdcli_pixels(model_dir, tmp_path / "lora.png", "--lora-dir", tmp_path / "loras", *extra, prompt=prompt,
                        **{**SQUARE, **options})


@pytest.mark.parametrize("kinds,weight,label", [
    ({"linear"}, 0.8, "kohya linear"),
    ({"linear", "conv1x1", "conv3x3", "time"}, 1.0, "kohya LoCon 3x3"),
])
def test_kohya_sdxl_lora_matches_diffusers(tiny_sdxl, kinds, weight, label, tmp_path, parity_log):
    from tests.lora_files import save

    sd, alphas = kohya_sdxl_lora(fresh_sdxl(tiny_sdxl), kinds, seed=1)
    assert {k.split("_")[1] for k in sd} == {"unet", "te1", "te2"} and any("_input_blocks_" in k for k in sd)
    path = save(sd, tmp_path / "loras" / "xl_style.safetensors")
    theirs = pipe_pixels(diffusers_fused(tiny_sdxl, [(path, weight, alphas)]))
    ours = lora_pixels(tiny_sdxl.ov_dir, tmp_path, f"{reference.PROMPT} <lora:xl_style:{weight:g}>")
    plain = sdcli_pixels(tiny_sdxl.ov_dir, tmp_path / "plain.png", **SQUARE)
    assert np.abs(ours - plain).max() > 20  # the LoRA changes the picture
    compare(ours, theirs, parity_log, model="sdxl lora", scheduler="euler", mode=label, size="64x64")


def test_each_text_encoder_takes_its_own_part_of_the_lora(tiny_sdxl, tmp_path):
    """lora_te1_ changes text encoder 1 only, lora_te2_ text encoder 2 only: each part alone
    changes the picture, and the two parts together give the whole file's picture."""
    from tests.lora_files import save

    sd, _ = kohya_sdxl_lora(fresh_sdxl(tiny_sdxl), {"linear"}, seed=2)
    for prefix in ("lora_te1_", "lora_te2_"):
        save({k: v for k, v in sd.items() if k.startswith(prefix)}, tmp_path / "loras" / f"{prefix}only.safetensors")
    save({k: v for k, v in sd.items() if k.startswith("lora_te")}, tmp_path / "loras" / "both.safetensors")
    plain = sdcli_pixels(tiny_sdxl.ov_dir, tmp_path / "plain.png", **SQUARE)
    one = lora_pixels(tiny_sdxl.ov_dir, tmp_path, f"{reference.PROMPT} <lora:lora_te1_only>")
    two = lora_pixels(tiny_sdxl.ov_dir, tmp_path, f"{reference.PROMPT} <lora:lora_te2_only>")
    both = lora_pixels(tiny_sdxl.ov_dir, tmp_path, f"{reference.PROMPT} <lora:lora_te1_only> <lora:lora_te2_only>")
    assert np.abs(one - plain).max() > 5 and np.abs(two - plain).max() > 5 and np.abs(one - two).max() > 5
    assert np.array_equal(both, lora_pixels(tiny_sdxl.ov_dir, tmp_path, f"{reference.PROMPT} <lora:both>"))


def peft_sdxl_lora(pipe, seed: int, rank: int = 4) -> dict:
    """diffusers' own SDXL LoRA layers (PEFT's lora_A/lora_B), random, for save_lora_weights."""
    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    g = torch.Generator().manual_seed(seed)
    pipe.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank / 2, target_modules=[
        "to_q", "to_k", "to_v", "to_out.0", "proj_in", "conv1", "conv2"]))
    for encoder in (pipe.text_encoder, pipe.text_encoder_2):
        encoder.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=["q_proj", "v_proj", "fc1"]))
    for model in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2):
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.data = torch.randn(param.shape, generator=g) * 0.3
    return {"unet_lora_layers": get_peft_model_state_dict(pipe.unet),
            "text_encoder_lora_layers": get_peft_model_state_dict(pipe.text_encoder),
            "text_encoder_2_lora_layers": get_peft_model_state_dict(pipe.text_encoder_2)}


def test_peft_sdxl_lora_matches_diffusers(tiny_sdxl, tmp_path, parity_log):
    from diffusers import StableDiffusionXLPipeline
    from safetensors import safe_open

    StableDiffusionXLPipeline.save_lora_weights(tmp_path / "loras", weight_name="xl_peft.safetensors",
                                                **peft_sdxl_lora(fresh_sdxl(tiny_sdxl), seed=3))
    path = tmp_path / "loras" / "xl_peft.safetensors"
    with safe_open(str(path), "np") as f:
        assert {k.split(".")[0] for k in f.keys()} == {"unet", "text_encoder", "text_encoder_2"}
    theirs = pipe_pixels(diffusers_fused(tiny_sdxl, [(path, 0.6, None)]))
    ours = lora_pixels(tiny_sdxl.ov_dir, tmp_path, f"{reference.PROMPT} <lora:xl_peft:0.6>")
    compare(ours, theirs, parity_log, model="sdxl lora", scheduler="euler", mode="PEFT", size="64x64")


def test_two_loras_and_separate_text_encoder_weights(tiny_sdxl, tmp_path, parity_log):
    """Two files at once, the second in A1111's <lora:NAME:TE:UNET> form (diffusers' {"unet": u,
    "text_encoder": t, "text_encoder_2": t})."""
    from tests.lora_files import save

    pipe = fresh_sdxl(tiny_sdxl)
    one, alphas_one = kohya_sdxl_lora(pipe, {"linear"}, seed=4)
    two, alphas_two = kohya_sdxl_lora(pipe, {"conv3x3", "linear"}, seed=5)
    a = save(one, tmp_path / "loras" / "one.safetensors")
    b = save(two, tmp_path / "loras" / "sub" / "two.safetensors")
    apart = {"unet": 1.2, "text_encoder": 0.4, "text_encoder_2": 0.4}
    theirs = pipe_pixels(diffusers_fused(tiny_sdxl, [(a, 0.7, alphas_one), (b, apart, alphas_two)]))
    ours = lora_pixels(tiny_sdxl.ov_dir, tmp_path, f"<lora:one:0.7>{reference.PROMPT} <lora:two:0.4:1.2>")
    compare(ours, theirs, parity_log, model="sdxl lora", scheduler="euler", mode="two, te 0.4 unet 1.2", size="64x64")


# --- embeddings with clip_l and clip_g ---------------------------------------------------------

EMBEDDING_PROMPT = "a photo of an astronaut, xlstyle, riding a horse"


def sdxl_embeddings(tmp_path, seed: int = 9) -> dict[str, Path]:
    """Two SDXL embeddings: 3 vectors for each text encoder (clip_l, clip_g), and 1."""
    import torch

    from tests.lora_files import save

    g = torch.Generator().manual_seed(seed)
    folder = tmp_path / "embeddings"
    return {name: save({"clip_l": torch.randn(n, 32, generator=g), "clip_g": torch.randn(n, 32, generator=g)},
                       folder / f"{name}.safetensors") for name, n in (("xlstyle", 3), ("badxl", 1))}


def with_embeddings(pipe, files: dict[str, Path]):
    """load_textual_inversion on both text encoders: clip_l into the first, clip_g into the second.

    The pooled projection is taken at the end token, found by its id: SDXL's text encoder
    configs have transformers' legacy eos_token_id 2, with which CLIP takes the largest token
    id for the end token (transformers: "can't work correctly with extra new tokens added"),
    and load_textual_inversion's added tokens have ids above it.  sdcli (as A1111) puts the
    vectors in without new ids, so the pooled output stays at the end token."""
    from safetensors.torch import load_file

    for token, path in files.items():
        tensors = load_file(str(path))
        pipe.load_textual_inversion(tensors["clip_l"], token=token, text_encoder=pipe.text_encoder,
                                    tokenizer=pipe.tokenizer)
        pipe.load_textual_inversion(tensors["clip_g"], token=token, text_encoder=pipe.text_encoder_2,
                                    tokenizer=pipe.tokenizer_2)
    for model, tokenizer in ((pipe.text_encoder, pipe.tokenizer), (pipe.text_encoder_2.text_model, pipe.tokenizer_2)):
        assert model.eos_token_id == 2  # the legacy rule
        model.eos_token_id = tokenizer.eos_token_id
    return pipe


def test_sdxl_embeddings_match_diffusers(tiny_sdxl, tmp_path, parity_log):
    from sdcli.imaging.image_io import read_png_text

    files = sdxl_embeddings(tmp_path)
    theirs = pipe_pixels(with_embeddings(fresh_sdxl(tiny_sdxl), files), prompt=EMBEDDING_PROMPT,
                         negative="blurry badxl")
    out = tmp_path / "ti.png"
    ours = sdcli_pixels(tiny_sdxl.ov_dir, out, "--embeddings-dir", tmp_path / "embeddings", prompt=EMBEDDING_PROMPT,
                        negative="blurry badxl", **SQUARE)
    plain = sdcli_pixels(tiny_sdxl.ov_dir, tmp_path / "plain.png", prompt=EMBEDDING_PROMPT, negative="blurry badxl",
                         **SQUARE)
    assert np.abs(ours - plain).max() > 10  # the vectors are used
    compare(ours, theirs, parity_log, model="sdxl embedding", scheduler="euler", mode="clip_l+g 3+1", size="64x64")
    assert 'TI hashes: "xlstyle: ' in read_png_text(out)["parameters"]


def test_sdxl_embedding_with_a_lora(tiny_sdxl, tmp_path, parity_log):
    from tests.lora_files import save

    files = sdxl_embeddings(tmp_path, seed=10)
    sd, alphas = kohya_sdxl_lora(fresh_sdxl(tiny_sdxl), {"linear", "conv3x3"}, seed=11)
    path = save(sd, tmp_path / "loras" / "mix.safetensors")
    pipe = with_embeddings(diffusers_fused(tiny_sdxl, [(path, 0.7, alphas)]), {"xlstyle": files["xlstyle"]})
    theirs = pipe_pixels(pipe, prompt=EMBEDDING_PROMPT)
    ours = lora_pixels(tiny_sdxl.ov_dir, tmp_path, f"{EMBEDDING_PROMPT} <lora:mix:0.7>", "--embeddings-dir",
                       tmp_path / "embeddings")
    compare(ours, theirs, parity_log, model="sdxl embedding", scheduler="euler", mode="+ LoRA", size="64x64")


# --- --clip-skip -------------------------------------------------------------------------------

def test_clip_skip_2_matches_diffusers_clip_skip_1(tiny_sdxl, tmp_path, parity_log):
    """sdcli's --clip-skip 2 goes one layer further back than SDXL's penultimate, on both
    encoders, for the prompt and the negative prompt (A1111's way); diffusers' clip_skip=1 does
    it for the prompt only, so its embeddings of both are made with encode_prompt and passed in."""
    import torch

    pipe = reference.reference_pipeline(tiny_sdxl.components(), "euler", xl=True)
    with torch.no_grad():
        embeds, _, pooled, _ = pipe.encode_prompt(reference.PROMPT, do_classifier_free_guidance=False, clip_skip=1)
        negative, _, negative_pooled, _ = pipe.encode_prompt(reference.NEGATIVE, do_classifier_free_guidance=False,
                                                             clip_skip=1)
    theirs = reference.to_pixels(pipe(**reference.reference_arguments(
        prompt=None, negative=None, prompt_embeds=embeds, negative_prompt_embeds=negative,
        pooled_prompt_embeds=pooled, negative_pooled_prompt_embeds=negative_pooled, **SQUARE)).images)
    ours = sdcli_pixels(tiny_sdxl.ov_dir, tmp_path / "cs.png", "--clip-skip", 2, **SQUARE)
    plain = sdcli_pixels(tiny_sdxl.ov_dir, tmp_path / "plain.png", **SQUARE)
    assert np.abs(ours - plain).max() > 2  # the option changes the image
    compare(ours, theirs, parity_log, model="sdxl eps", scheduler="euler", mode="clip skip 2", size="64x64")


# --- --low-memory, --from-image, batch -----------------------------------------------------------

def test_low_memory_gives_the_same_pixels(tiny_sdxl, init_image_file, tmp_path):
    """One component at a time (both text encoders freed before the UNet, the VAE encoder before
    denoising): the same image, txt2img and img2img."""
    for picture in (SQUARE, dict(init_image=init_image_file, strength=0.6)):
        plain = sdcli_pixels(tiny_sdxl.ov_dir, tmp_path / "plain.png", **picture)
        low = sdcli_pixels(tiny_sdxl.ov_dir, tmp_path / "low.png", "--low-memory", **picture)
        assert np.array_equal(plain, low)


def test_from_image_redoes_an_sdxl_png_byte_for_byte(tiny_sdxl, tmp_path):
    """Micro-conditioning, clip skip, DeepCache, a LoRA and an embedding are all stored and redone."""
    from sdcli.imaging.image_io import read_png_text
    from tests.lora_files import save

    sd, _ = kohya_sdxl_lora(fresh_sdxl(tiny_sdxl), {"linear"}, seed=12)
    save(sd, tmp_path / "loras" / "redo.safetensors")
    sdxl_embeddings(tmp_path, seed=13)
    first = tmp_path / "first.png"
    reference.sdcli_generate(tiny_sdxl.ov_dir, first, "--original-size", "128x96", "--crop-coords", "8,16",
                             "--target-size", "64x48", "--clip-skip", 2, "--deepcache", 2, "--lora-dir",
                             tmp_path / "loras", "--embeddings-dir", tmp_path / "embeddings", scheduler="dpmpp_2m",
                             prompt=f"{EMBEDDING_PROMPT} <lora:redo:0.6>", steps=6, **SQUARE)
    text = read_png_text(first)["parameters"]
    for field in ("Original size: 128x96", 'Crop coords: "8,16"', "Target size: 64x48", "Clip skip: 2",
                  "DeepCache: 2", "Lora hashes: ", "TI hashes: "):
        assert field in text, field
    again = tmp_path / "again.png"
    r = run("generate", "--model", tiny_sdxl.ov_dir, "--from-image", first, "--lora-dir", tmp_path / "loras",
            "--embeddings-dir", tmp_path / "embeddings", "--output", again, "--quiet")
    assert r.exit_code == 0, r.output
    assert again.read_bytes() == first.read_bytes()
    changed = tmp_path / "changed.png"
    r = run("generate", "--model", tiny_sdxl.ov_dir, "--from-image", first, "--lora-dir", tmp_path / "loras",
            "--embeddings-dir", tmp_path / "embeddings", "--crop-coords", "0,0", "--output", changed, "--quiet")
    assert r.exit_code == 0, r.output
    assert np.abs(read_rgb(changed).astype(np.int16) - read_rgb(first).astype(np.int16)).max() > 2


def test_refiner_scores_are_stored_and_read_back():
    """The refiner's aesthetic scores, where not diffusers' defaults, go into the PNG's
    parameters and come back."""
    from sdcli.engine.parameters import parameters_text, settings_from_fields
    from sdcli.engine.request import GenerationRequest
    from sdcli.imaging.params import parse_parameters

    class Result:
        scheduler, seed, width, height = "euler", 1, 64, 64

    text = parameters_text(GenerationRequest(prompt="a fox", aesthetic_score=7.5, negative_aesthetic_score=1.0,
                                             original_size=(1024, 768)), Result(), "m")
    assert "Aesthetic score: 7.5, Negative aesthetic score: 1, " in text and "Original size: 1024x768" in text
    settings = settings_from_fields(*parse_parameters(text))
    assert (settings["aesthetic_score"], settings["negative_aesthetic_score"]) == (7.5, 1.0)
    assert settings["original_size"] == (1024, 768) and "crop_coords" not in settings
    assert "aesthetic" not in parameters_text(GenerationRequest(prompt="a fox"), Result(), "m").lower()


@pytest.mark.parametrize("field,message", [("Original size: 0x-3", "--original-size must be two whole numbers"),
                                           ("Crop coords: 8", "unreadable settings"),
                                           ("Aesthetic score: 11", "--aesthetic-score must be between 0 and 10")])
def test_stored_micro_conditioning_is_checked_as_its_flag(tiny_sdxl, field, message, tmp_path):
    from sdcli.imaging.image_io import save_png

    png = tmp_path / "bad.png"
    text = f"a fox\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, {field}, Version: sdcli 0.1.0"
    save_png(png, np.zeros((64, 64, 3), np.uint8), text)
    r = run("generate", "--model", tiny_sdxl.ov_dir, "--from-image", png, "--output", tmp_path / "o.png")
    assert r.exit_code == 2 and message in r.output, r.output
    assert not (tmp_path / "o.png").exists()


def test_batch_rows_on_an_sdxl_folder_give_generate_s_pictures(tiny_sdxl, tmp_path):
    """`sdcli batch` with an SDXL folder: rows with their own negative prompt (or none: SDXL's
    zeros), scheduler and size give the pictures `generate` makes of the same settings."""
    import json

    from sdcli.imaging.image_io import read_png_text

    rows = [{"prompt": reference.PROMPT, "seed": 7},
            {"prompt": "a red fox", "negative_prompt": "", "seed": 8, "scheduler": "euler_a", "width": 96}]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "out"
    r = run("batch", tmp_path / "rows.jsonl", "--output-dir", out, "--model", tiny_sdxl.ov_dir, "--steps", 6,
            "--width", 64, "--height", 64, "--rng", "torch", "--precision", "f32", "--negative-prompt",
            reference.NEGATIVE, "--scheduler", "euler", "--quiet")
    assert r.exit_code == 0, r.output
    first, second = sorted(out.glob("*.png"))
    assert read_png_text(second)["parameters"].startswith("a red fox\nSteps: 6, Sampler: Euler a")
    single = sdcli_pixels(tiny_sdxl.ov_dir, tmp_path / "one.png", seed=7, steps=6, **SQUARE)
    assert np.array_equal(read_rgb(first).astype(np.int16), single)
    single = sdcli_pixels(tiny_sdxl.ov_dir, tmp_path / "two.png", scheduler="euler_a", prompt="a red fox",
                          negative=None, seed=8, steps=6, width=96, height=64)
    assert np.array_equal(read_rgb(second).astype(np.int16), single)


# --- an int8 folder, info, the memory estimate ---------------------------------------------------

@pytest.fixture(scope="module")
def sdxl_int8(tiny_sdxl, sdxl_root) -> Path:
    out = sdxl_root / "tiny-sdxl-int8"
    r = run("convert", tiny_sdxl.diffusers_dir, "--output", out, "--weight-format", "int8", "--quiet")
    assert r.exit_code == 0, r.output
    return out


def test_int8_folder_runs_close_to_the_fp32_one(tiny_sdxl, sdxl_int8, tmp_path):
    """NNCF's 8-bit weights in the UNet and both text encoders; the picture stays near the fp32
    folder's (tiny random weights: measured max 18, mean 2.2 of 255)."""
    import json

    r = run("info", sdxl_int8, "--json")
    assert r.exit_code == 0, r.output
    weights = {c["name"]: c["weights"] for c in json.loads(r.stdout)["model"]["components"]}
    for name in ("unet", "text_encoder", "text_encoder_2"):
        assert weights[name].startswith("u8"), weights
    int8 = sdcli_pixels(sdxl_int8, tmp_path / "int8.png", **SQUARE)
    fp32 = sdcli_pixels(tiny_sdxl.ov_dir, tmp_path / "fp32.png", **SQUARE)
    diff = np.abs(int8 - fp32)
    print(f"int8 against fp32 folder: max {diff.max()}, mean {diff.mean():.2f}")
    assert 0 < diff.max() < 40 and diff.mean() < 5


def test_info_shows_both_text_encoders(tiny_sdxl):
    import json

    text = run("info", tiny_sdxl.ov_dir)
    assert text.exit_code == 0, text.output
    listed = [line.split()[0] for line in text.stdout.splitlines() if line.startswith("  ") and " MB " in line]
    assert listed[:3] == ["text_encoder", "text_encoder_2", "unet"]
    data = json.loads(run("info", tiny_sdxl.ov_dir, "--json").stdout)["model"]
    assert {"text_encoder", "text_encoder_2"} <= {c["name"] for c in data["components"]}


def test_memory_estimate_counts_both_text_encoders(tiny_sdxl):
    from sdcli.engine import memory
    from sdcli.model.folder import ModelFolder

    folder = ModelFolder.open(tiny_sdxl.ov_dir)
    est = memory.estimate(folder, 1024, 1024, element_bytes=4)
    each = [int(memory.WEIGHT_FACTOR * memory.ir_parameters(folder.ir(name)) * 4) + memory.COMPONENT
            for name in ("text_encoder", "text_encoder_2")]
    assert all(n > memory.COMPONENT for n in each)
    assert est.stages["encoding the prompt"] == sum(each)


def test_lora_fused_at_convert_time_matches_diffusers(tiny_sdxl, sdxl_root, tmp_path, parity_log):
    """`sdcli convert SDXL --lora FILE --lora-scale 0.6` (as for Lightning, Hyper-SD, DMD2 LoRAs):
    diffusers' SDXL pipeline with the same file loaded and fused at 0.6."""
    from diffusers import StableDiffusionXLPipeline

    from sdcli.convert.export import ConvertOptions, convert

    StableDiffusionXLPipeline.save_lora_weights(tmp_path / "loras", weight_name="xl_fused.safetensors",
                                                **peft_sdxl_lora(fresh_sdxl(tiny_sdxl), seed=5))
    path = tmp_path / "loras" / "xl_fused.safetensors"
    folder = tmp_path / "fused-ov"
    convert(str(tiny_sdxl.diffusers_dir), folder, ConvertOptions(weight_format="fp32", lora=str(path), lora_scale=0.6),
            log=lambda s: None)
    theirs = pipe_pixels(diffusers_fused(tiny_sdxl, [(path, 0.6, None)]))
    ours = sdcli_pixels(folder, tmp_path / "out.png", **SQUARE)
    compare(ours, theirs, parity_log, model="sdxl lora", scheduler="euler", mode="fused at convert", size="64x64")


@pytest.mark.parametrize("kind", ["loha", "lokr"])
def test_lycoris_on_sdxl_matches_its_definition(tiny_sdxl, kind, tmp_path, parity_log):
    """LyCORIS LoHa and LoKr on the UNet and both text encoders (lora_te1_/lora_te2_): diffusers
    reads neither, so the reference adds the ΔW of the LyCORIS definitions (tests/test_lora.py)."""
    import torch

    from tests.lora_files import save
    from tests.test_lora import lycoris

    sd, deltas = lycoris(fresh_sdxl(tiny_sdxl), kind, seed=8,
                         name=lambda component, path: KOHYA_PREFIX[component] + path.replace(".", "_"))
    assert {component for component, _ in deltas} == {"unet", "text_encoder", "text_encoder_2"}
    save(sd, tmp_path / "loras" / f"{kind}.safetensors")
    pipe, weight = fresh_sdxl(tiny_sdxl), 0.6
    with torch.no_grad():
        for (component, path), delta in deltas.items():
            getattr(pipe, component).get_submodule(path).weight += weight * delta
    theirs = pipe_pixels(pipe)
    ours = lora_pixels(tiny_sdxl.ov_dir, tmp_path, f"{reference.PROMPT} <lora:{kind}:{weight}>")
    assert np.abs(ours - sdcli_pixels(tiny_sdxl.ov_dir, tmp_path / "plain.png", **SQUARE)).max() > 20
    compare(ours, theirs, parity_log, model="sdxl lora", scheduler="euler", mode=f"{kind} (LyCORIS def.)",
            size="64x64")


def test_hybrid_quantized_sdxl_runs_close_to_the_fp32_folder(tiny_sdxl, sdxl_root, sdxl_int8, tmp_path,
                                                             monkeypatch):
    """`convert --quantize hybrid` on SDXL: calibrated on the freshly converted SDXL folder (both
    text encoders, text_embeds and time_ids in the calibration runs), the UNet's convolutions and
    attention MatMuls quantized; the picture stays near the fp32 folder's.

    The text encoders and the VAE are copied from sdxl_int8, which `convert --weight-format
    int8` wrote from the same folder: the same IR as this conversion's own export (byte for
    byte; --quantize hybrid changes the UNet alone), whose time they save."""
    import shutil

    import sdcli.convert.export as export

    def text_encoder(_model, _tokenizer, out, weight_format, name, *_):
        assert weight_format == "int8"
        shutil.copytree(sdxl_int8 / name, out / name)

    def vae(_model, out, weight_format, *_):
        assert weight_format == "int8"
        for name in ("vae_encoder", "vae_decoder"):
            shutil.copytree(sdxl_int8 / name, out / name)

    monkeypatch.setattr(export, "export_text_encoder", text_encoder)
    monkeypatch.setattr(export, "export_vae", vae)
    out = sdxl_root / "tiny-sdxl-hybrid"
    r = run("convert", tiny_sdxl.diffusers_dir, "--output", out, "--weight-format", "int8", "--quantize", "hybrid",
            "--calibration-samples", "8", "--quiet")
    assert r.exit_code == 0, r.output
    import openvino as ov

    unet = ov.Core().read_model(out / "unet" / "openvino_model.xml")
    assert any(op.get_type_name() == "FakeQuantize" for op in unet.get_ops())  # activations quantized too
    hybrid = sdcli_pixels(out, tmp_path / "hybrid.png", **SQUARE)
    fp32 = sdcli_pixels(tiny_sdxl.ov_dir, tmp_path / "fp32.png", **SQUARE)
    diff = np.abs(hybrid - fp32)
    print(f"hybrid against fp32 folder: max {diff.max()}, mean {diff.mean():.2f}")
    assert 0 < diff.max() < 120 and diff.mean() < 15
