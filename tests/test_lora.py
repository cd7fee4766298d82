"""LoRAs and textual-inversion embeddings named in the prompt: `sdcli generate --rng torch
--precision f32` against diffusers on the tiny model (max difference <= 2 of 255).

The LoRA files are made here with random tensors and the real key names (kohya's, with an
alpha per module; diffusers/PEFT's; LyCORIS LoHa and LoKr).  diffusers is the reference
through `load_lora_weights` + `set_adapters` (one weight per adapter, or {"unet": u,
"text_encoder": t} for A1111's separate form) and `load_textual_inversion`.  Two caveats:

* diffusers 0.42 stores a kohya file's per-module alphas of attention layers under names
  PEFT does not match (`...attn1.processor.to_q_lora.down.weight`), so those layers fall
  back to the file's most common alpha; `set_file_alphas` gives each LoRA layer the alpha
  the file has for it (the conversion of the keys and tensors stays diffusers').
* diffusers reads no LoHa or LoKr: for those the reference adds ΔW computed here from the
  LyCORIS definitions (in torch) to the diffusers weights.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from tests.lora_files import fresh_pipe, kohya_lora, layers, save, set_file_alphas
from tests.reference import NEGATIVE, PROMPT, compare, reference_arguments, sdcli_pixels, to_pixels

SIZE = dict(width=64, height=64)
pytestmark = [  # diffusers/peft telling about the first caveat above, and about several adapters in one model
    pytest.mark.filterwarnings("ignore:The following alpha_pattern keys did not match:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute:UserWarning"),
]


def diffusers_with_loras(model, loras: list[tuple[Path, object]], kohya: bool = True, **arguments) -> np.ndarray:
    """diffusers' picture with the LoRA files loaded as adapters at their weights."""
    from safetensors.torch import load_file

    pipe = fresh_pipe(model)
    names = []
    for i, (path, _) in enumerate(loras):
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=f"a{i}")
        if kohya:
            set_file_alphas(pipe, load_file(str(path)), f"a{i}")
        names.append(f"a{i}")
    pipe.set_adapters(names, adapter_weights=[weight for _, weight in loras])
    return to_pixels(pipe(**reference_arguments(**{**SIZE, **arguments})).images)


def ours(model_dir, tmp_path, prompt: str, *extra, **options) -> np.ndarray:
    return sdcli_pixels(model_dir, tmp_path / "ours.png", "--lora-dir", tmp_path / "loras", *extra,
                        prompt=prompt, **{**SIZE, **options})


# --- kohya, LoCon, LDM names, PEFT -------------------------------------------------------------

@pytest.mark.parametrize("kinds,weight,label", [
    ({"linear"}, 0.8, "kohya linear"),
    ({"linear", "conv1x1", "conv3x3", "time"}, 1.0, "LoCon 3x3"),
])
def test_kohya_lora_matches_diffusers(tiny_eps, tmp_path, parity_log, kinds, weight, label):
    path = save(kohya_lora(tiny_eps.pipe(), kinds, seed=1), tmp_path / "loras" / "style.safetensors")
    theirs = diffusers_with_loras(tiny_eps, [(path, weight)])
    mine = ours(tiny_eps.ov_dir, tmp_path, f"{PROMPT} <lora:style:{weight:g}>")
    assert np.abs(mine - to_pixels_of(tiny_eps)).max() > 20  # the LoRA changes the picture
    compare(mine, theirs, parity_log, model="lora", scheduler="pndm", mode=label, size="64x64")


def to_pixels_of(model) -> np.ndarray:
    pipe = fresh_pipe(model)
    return to_pixels(pipe(**reference_arguments(**SIZE)).images)


def ldm_name(path: str, unet_config: dict) -> str:
    """A diffusers UNet path in the original LDM code's names (A1111's mapping, written the
    other way round from sdcli's and for any number of layers per block)."""
    import re

    per = unet_config["layers_per_block"] + 1
    resnet = {"conv1": "in_layers_2", "conv2": "out_layers_3", "time_emb_proj": "emb_layers_1",
              "conv_shortcut": "skip_connection"}
    up_attention = ["CrossAttn" in t for t in unet_config["up_block_types"]]
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", path):
        d, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        part = 0 if kind == "resnets" else 1
        rest = resnet.get(rest, rest) if kind == "resnets" else rest
        return f"input_blocks.{1 + d * per + j}.{part}.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv", path):
        return f"input_blocks.{(int(m[1]) + 1) * per}.0.op"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", path):
        u, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        part = 0 if kind == "resnets" else 1
        rest = resnet.get(rest, rest) if kind == "resnets" else rest
        return f"output_blocks.{u * per + j}.{part}.{rest}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv", path):
        u = int(m[1])
        return f"output_blocks.{u * per + per - 1}.{2 if up_attention[u] else 1}.conv"
    if m := re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", path):
        kind, j, rest = m[1], int(m[2]), m[3]
        return f"middle_block.1.{rest}" if kind == "attentions" else f"middle_block.{2 * j}.{resnet.get(rest, rest)}"
    raise AssertionError(path)


def test_ldm_block_names_give_the_same_picture(tiny_eps, tmp_path):
    """kohya's SDXL LoRAs (and some SD 1.x ones) name the UNet's layers after the LDM code:
    the same tensors under those names give the same image, byte for byte."""
    pipe = tiny_eps.pipe()
    sd = kohya_lora(pipe, {"linear", "conv1x1", "conv3x3", "time"}, seed=2)
    renamed = {}
    for key, value in sd.items():
        module, suffix = key.split(".", 1)
        if module.startswith("lora_unet_"):
            path = next(p for _, p, _ in layers(pipe, {"linear", "conv1x1", "conv3x3", "time"})
                        if "lora_unet_" + p.replace(".", "_") == module)
            module = "lora_unet_" + ldm_name(path, dict(pipe.unet.config)).replace(".", "_")
        renamed[f"{module}.{suffix}"] = value
    assert any("input_blocks" in k for k in renamed) and any("output_blocks" in k for k in renamed)
    save(sd, tmp_path / "loras" / "diffusers_names.safetensors")
    save(renamed, tmp_path / "loras" / "ldm_names.safetensors")
    a = ours(tiny_eps.ov_dir, tmp_path, f"{PROMPT} <lora:diffusers_names:0.7>")
    b = ours(tiny_eps.ov_dir, tmp_path, f"{PROMPT} <lora:ldm_names:0.7>")
    assert np.array_equal(a, b)


def peft_lora(pipe, seed: int, rank: int = 4) -> dict:
    """diffusers' own LoRA file (PEFT's lora_A/lora_B under unet./text_encoder.), written by
    save_lora_weights from adapters with random weights."""
    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    g = torch.Generator().manual_seed(seed)
    pipe.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0",
                                                                               "proj_in", "conv1", "conv2"]))
    pipe.text_encoder.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=["q_proj", "v_proj", "fc1"]))
    for model in (pipe.unet, pipe.text_encoder):
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.data = torch.randn(param.shape, generator=g) * 0.3
    return {"unet_lora_layers": get_peft_model_state_dict(pipe.unet),
            "text_encoder_lora_layers": get_peft_model_state_dict(pipe.text_encoder)}


def test_peft_format_matches_diffusers(tiny_eps, tmp_path, parity_log):
    from diffusers import StableDiffusionPipeline

    layers_ = peft_lora(fresh_pipe(tiny_eps), seed=3)
    StableDiffusionPipeline.save_lora_weights(tmp_path / "loras", weight_name="peft_style.safetensors", **layers_)
    path = tmp_path / "loras" / "peft_style.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        assert any(k.startswith("unet.") and k.endswith("lora_A.weight") for k in f.keys())
    theirs = diffusers_with_loras(tiny_eps, [(path, 0.6)], kohya=False)
    mine = ours(tiny_eps.ov_dir, tmp_path, f"{PROMPT} <lora:peft_style:0.6>")
    compare(mine, theirs, parity_log, model="lora", scheduler="pndm", mode="PEFT", size="64x64")


def test_two_loras_at_different_weights(tiny_eps, tmp_path, parity_log):
    pipe = tiny_eps.pipe()
    one = save(kohya_lora(pipe, {"linear"}, seed=4), tmp_path / "loras" / "one.safetensors")
    two = save(kohya_lora(pipe, {"conv3x3", "conv1x1"}, seed=5), tmp_path / "loras" / "sub" / "two.safetensors")
    theirs = diffusers_with_loras(tiny_eps, [(one, 0.7), (two, -0.5)])
    mine = ours(tiny_eps.ov_dir, tmp_path, f"<lora:one:0.7>{PROMPT} <lora:two:-0.5>")
    compare(mine, theirs, parity_log, model="lora", scheduler="pndm", mode="two LoRAs", size="64x64")


def test_text_encoder_and_unet_weights_apart(tiny_eps, tmp_path, parity_log):
    """A1111's <lora:NAME:TE:UNET> is diffusers' {"unet": u, "text_encoder": t}."""
    path = save(kohya_lora(tiny_eps.pipe(), {"linear", "conv3x3"}, seed=6), tmp_path / "loras" / "apart.safetensors")
    theirs = diffusers_with_loras(tiny_eps, [(path, {"unet": 1.3, "text_encoder": 0.4})])
    mine = ours(tiny_eps.ov_dir, tmp_path, f"{PROMPT} <lora:apart:0.4:1.3>")
    compare(mine, theirs, parity_log, model="lora", scheduler="pndm", mode="te 0.4 unet 1.3", size="64x64")
    named = ours(tiny_eps.ov_dir, tmp_path, f"{PROMPT} <lora:apart:unet=1.3:te=0.4>")
    assert np.array_equal(mine, named)


def test_optimum_cli_folder_takes_loras(tiny_eps, tmp_path, parity_log):
    """tests/data/optimum-tiny (optimum-cli's export of tiny_eps's weights) names its weights
    without sdcli's wrapper (`self.down_blocks...`)."""
    folder = Path(__file__).parent / "data" / "optimum-tiny"
    path = save(kohya_lora(tiny_eps.pipe(), {"linear", "conv3x3"}, seed=7), tmp_path / "loras" / "opt.safetensors")
    theirs = diffusers_with_loras(tiny_eps, [(path, 0.9)])
    mine = ours(folder, tmp_path, f"{PROMPT} <lora:opt:0.9>")
    compare(mine, theirs, parity_log, model="lora optimum", scheduler="pndm", mode="LoCon", size="64x64")


# --- LyCORIS LoHa and LoKr ---------------------------------------------------------------------

def factors(n: int) -> tuple[int, int]:
    """(a, n // a) with the smallest a > 1 dividing n (1 when n is prime)."""
    a = next((d for d in range(2, n) if n % d == 0), 1)
    return a, n // a


def lycoris(pipe, kind: str, seed: int, rank: int = 4, name=None) -> tuple[dict, dict]:
    """A LoHa or LoKr file's tensors, and ΔW (alpha/rank applied) per (component, module path),
    computed in torch from the LyCORIS definitions: LoHa (w1a @ w1b) * (w2a @ w2b); LoKr
    kron(w1, w2) with a factor given as a product of two matrices where it is decomposed.
    `name(component, path)`: a module's key (default: kohya's SD 1.x names)."""
    import torch

    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g) * 0.3

    sd, deltas = {}, {}
    for i, (component, path, module) in enumerate(layers(pipe, {"linear", "conv3x3"})):
        key = name(component, path) if name else ("lora_unet_" if component == "unet" else "lora_te_") + \
            path.replace(".", "_")
        w = module.weight
        out, cols = w.shape[0], w[0].numel()
        alpha = float(1 + i % (2 * rank))
        if kind == "loha":
            t = {"hada_w1_a": rand(out, rank), "hada_w1_b": rand(rank, cols),
                 "hada_w2_a": rand(out, rank), "hada_w2_b": rand(rank, cols)}
            delta = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"]) * (alpha / rank)
        else:
            (a, out2), (b, in2) = factors(out), factors(w.shape[1])
            if w.dim() == 4:  # w1 full, w2 a full kernel
                t = {"lokr_w1": rand(a, b), "lokr_w2": rand(out2, in2, *w.shape[2:])}
                delta, alpha = torch.kron(t["lokr_w1"][:, :, None, None], t["lokr_w2"]), None  # no rank: scale 1
            elif i % 2:  # w1 full, w2 decomposed
                t = {"lokr_w1": rand(a, b), "lokr_w2_a": rand(out2, rank), "lokr_w2_b": rand(rank, in2)}
                delta = torch.kron(t["lokr_w1"], t["lokr_w2_a"] @ t["lokr_w2_b"]) * (alpha / rank)
            else:  # w1 decomposed, w2 full
                t = {"lokr_w1_a": rand(a, rank), "lokr_w1_b": rand(rank, b), "lokr_w2": rand(out2, in2)}
                delta = torch.kron(t["lokr_w1_a"] @ t["lokr_w1_b"], t["lokr_w2"]) * (alpha / rank)
        for suffix, value in t.items():
            sd[f"{key}.{suffix}"] = value
        if alpha is not None:
            sd[f"{key}.alpha"] = torch.tensor(alpha)
        deltas[(component, path)] = delta.reshape(w.shape)
    return sd, deltas


@pytest.mark.parametrize("kind", ["loha", "lokr"])
def test_lycoris_matches_its_definition(tiny_eps, tmp_path, parity_log, kind):
    import torch

    sd, deltas = lycoris(tiny_eps.pipe(), kind, seed=8)
    save(sd, tmp_path / "loras" / f"{kind}.safetensors")
    weight = 0.6
    pipe = fresh_pipe(tiny_eps)
    with torch.no_grad():
        for (component, path), delta in deltas.items():
            module = getattr(pipe, component).get_submodule(path)
            module.weight += weight * delta
    theirs = to_pixels(pipe(**reference_arguments(**SIZE)).images)
    mine = ours(tiny_eps.ov_dir, tmp_path, f"{PROMPT} <lora:{kind}:{weight}>")
    assert np.abs(mine - to_pixels_of(tiny_eps)).max() > 20
    compare(mine, theirs, parity_log, model="lora", scheduler="pndm", mode=f"{kind} (LyCORIS def.)", size="64x64")


# --- embeddings --------------------------------------------------------------------------------

def embeddings(tmp_path, seed: int = 9) -> dict[str, Path]:
    """Two embeddings: a 3-vector one under civitai's key (emb_params) and a 1-vector one
    under diffusers' (<token>)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    folder = tmp_path / "embeddings"
    return {
        "mystyle": save({"emb_params": torch.randn(3, 32, generator=g)}, folder / "mystyle.safetensors"),
        "badhands": save({"<badhands>": torch.randn(1, 32, generator=g)}, folder / "neg" / "badhands.safetensors"),
    }


def diffusers_with_embeddings(pipe, files: dict[str, Path], prompt: str, negative: str) -> np.ndarray:
    from safetensors.torch import load_file

    for token, path in files.items():
        vectors = next(iter(load_file(str(path)).values()))
        pipe.load_textual_inversion({token: vectors}, token=token, tokenizer=pipe.tokenizer,
                                    text_encoder=pipe.text_encoder)
    return to_pixels(pipe(**reference_arguments(prompt=prompt, negative=negative, **SIZE)).images)


EMBEDDING_PROMPT = "a photo of an astronaut, mystyle, riding a horse"


def test_embeddings_match_diffusers(tiny_eps, tmp_path, parity_log):
    files = embeddings(tmp_path)
    theirs = diffusers_with_embeddings(fresh_pipe(tiny_eps), files, EMBEDDING_PROMPT, "blurry badhands")
    out = tmp_path / "ti.png"
    from tests.reference import sdcli_generate

    sdcli_generate(tiny_eps.ov_dir, out, "--embeddings-dir", tmp_path / "embeddings", prompt=EMBEDDING_PROMPT,
                   negative="blurry badhands", **SIZE)
    from sdcli.imaging.image_io import read_png_text, read_rgb

    compare(read_rgb(out).astype(np.int16), theirs, parity_log, model="embedding", scheduler="pndm",
            mode="3+1 vectors", size="64x64")
    text = read_png_text(out)["parameters"]
    sha = {name: hashlib.sha256(path.read_bytes()).hexdigest()[:12] for name, path in files.items()}
    assert f'TI hashes: "mystyle: {sha["mystyle"]}, badhands: {sha["badhands"]}"' in text


def test_embedding_with_a_lora(tiny_eps, tmp_path, parity_log):
    files = embeddings(tmp_path, seed=10)
    path = save(kohya_lora(tiny_eps.pipe(), {"linear", "conv3x3"}, seed=11), tmp_path / "loras" / "mix.safetensors")
    from safetensors.torch import load_file

    pipe = fresh_pipe(tiny_eps)
    pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="a")
    set_file_alphas(pipe, load_file(str(path)), "a")
    pipe.set_adapters(["a"], adapter_weights=[0.7])
    theirs = diffusers_with_embeddings(pipe, {"mystyle": files["mystyle"]}, EMBEDDING_PROMPT, NEGATIVE)
    mine = sdcli_pixels(tiny_eps.ov_dir, tmp_path / "o.png", "--lora-dir", tmp_path / "loras", "--embeddings-dir",
                        tmp_path / "embeddings", prompt=f"{EMBEDDING_PROMPT} <lora:mix:0.7>", **SIZE)
    compare(mine, theirs, parity_log, model="embedding", scheduler="pndm", mode="+ LoRA", size="64x64")


def test_a1111_pt_embedding_needs_allow_pickle(tiny_eps, tmp_path):
    """A1111's .pt (string_to_param, a torch pickle) is refused without --allow-pickle, and with
    it gives the picture of the same vectors in a .safetensors file."""
    import torch

    from tests.reference import generate_args

    vectors = torch.randn(2, 32, generator=torch.Generator().manual_seed(12))
    folder = tmp_path / "embeddings"
    folder.mkdir()
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": torch.nn.Parameter(vectors)},
                "name": "oldstyle", "step": 100}, folder / "oldstyle.pt")
    prompt = "a photo of oldstyle astronaut"
    from typer.testing import CliRunner

    from sdcli.cli.app import app

    args = generate_args(tiny_eps.ov_dir, tmp_path / "p.png", "--embeddings-dir", folder, prompt=prompt, **SIZE)
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 2 and "--allow-pickle" in result.output and not (tmp_path / "p.png").exists()
    pickled = sdcli_pixels(tiny_eps.ov_dir, tmp_path / "p.png", "--embeddings-dir", folder, "--allow-pickle",
                           prompt=prompt, **SIZE)
    other = tmp_path / "safe"
    save({"emb_params": vectors}, other / "oldstyle.safetensors")
    safe = sdcli_pixels(tiny_eps.ov_dir, tmp_path / "s.png", "--embeddings-dir", other, prompt=prompt, **SIZE)
    assert np.array_equal(pickled, safe)


# --- openvino-genai's adapters: an independent implementation ----------------------------------

def test_openvino_genai_adapters_give_our_pixels(tiny_eps, tmp_path):
    """openvino-genai applies a (linear-only) LoRA on our folder as separate branches, not
    fused: the same pixels as ours for the same noise.  Its alphas equal the rank here:
    openvino-genai 2026.4 leaves a kohya file's `alpha` tensors out (its AdapterConfig alpha is
    the whole scale since its PR #2525), where A1111, diffusers and sdcli scale by alpha/rank."""
    import torch

    ov_genai = pytest.importorskip("openvino_genai")
    from tests.reference import same_noise

    sd = {k: torch.tensor(4.0) if k.endswith(".alpha") else v
          for k, v in kohya_lora(tiny_eps.pipe(), {"linear"}, seed=13).items()}
    path = save(sd, tmp_path / "loras" / "lin.safetensors")
    adapter = ov_genai.Adapter(str(path))
    pipe = ov_genai.Text2ImagePipeline(str(tiny_eps.ov_dir), "CPU", adapters=ov_genai.AdapterConfig(adapter, 0.8),
                                       INFERENCE_PRECISION_HINT="f32")
    theirs = pipe.generate(PROMPT, negative_prompt=NEGATIVE, width=64, height=64, num_inference_steps=5,
                           guidance_scale=7.5, generator=same_noise(5),
                           adapters=ov_genai.AdapterConfig(adapter, 0.8)).data[0].astype(np.int16)
    mine = ours(tiny_eps.ov_dir, tmp_path, f"{PROMPT} <lora:lin:0.8>", steps=5, seed=5, scheduler="pndm")
    compare(mine, theirs, None)


# --- the command line --------------------------------------------------------------------------

def run_cli(*args):
    from typer.testing import CliRunner

    from sdcli.cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args])


def generate_cli(model, tmp_path, prompt, *extra, out="o.png"):
    from tests.reference import generate_args

    return run_cli(*generate_args(model.ov_dir, tmp_path / out, *extra, prompt=prompt, steps=3, **SIZE))


def test_a_missing_lora_is_one_line_exit_2_and_nothing_written(tiny_eps, tmp_path):
    (tmp_path / "loras").mkdir()
    result = generate_cli(tiny_eps, tmp_path, "a cat <lora:watercolor_v2:0.8>", "--lora-dir", tmp_path / "loras")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"sdcli: error: LoRA 'watercolor_v2' not found in {tmp_path / 'loras'} (searched by file name, subfolders "
        "included)"]
    assert not (tmp_path / "o.png").exists()
    result = generate_cli(tiny_eps, tmp_path, "a cat", "--lora-dir", tmp_path / "nowhere")
    assert result.exit_code == 2 and "--lora-dir: folder not found" in result.output
    result = generate_cli(tiny_eps, tmp_path, "a cat", "--embeddings-dir", tmp_path / "nowhere")
    assert result.exit_code == 2 and "--embeddings-dir: folder not found" in result.output


def test_a_file_matching_nothing_is_an_error_and_a_partial_one_a_warning(tiny_eps, tmp_path):
    import torch

    sd = kohya_lora(tiny_eps.pipe(), {"linear"}, seed=14)
    save({k.replace("lora_unet_", "lora_unet_nothing_"): v for k, v in sd.items() if k.startswith("lora_unet_")},
         tmp_path / "loras" / "other_model.safetensors")
    result = generate_cli(tiny_eps, tmp_path, "a cat <lora:other_model>", "--lora-dir", tmp_path / "loras")
    assert result.exit_code == 2 and "other_model.safetensors matches nothing" in result.output
    assert "lora_unet_nothing_down_blocks_0_attentions_0" in result.output
    partial = dict(sd)
    partial["lora_unet_no_such_layer.lora_down.weight"] = torch.zeros(4, 32)
    partial["lora_unet_no_such_layer.lora_up.weight"] = torch.zeros(32, 4)
    dora = "lora_unet_down_blocks_0_attentions_0_proj_out"  # DoRA's magnitude vector: a kind sdcli does not read
    partial[f"{dora}.dora_scale"] = torch.ones(1, 32)
    partial["lora_unet_down_blocks_0_attentions_0_proj_in.oft_blocks"] = torch.zeros(4, 8, 8)  # OFT
    save(partial, tmp_path / "loras" / "partial.safetensors")
    result = generate_cli(tiny_eps, tmp_path, "a cat <lora:partial>", "--lora-dir", tmp_path / "loras")
    assert result.exit_code == 0, result.output
    assert f"2 of {len(sd) // 3 + 2} layers match nothing in this model or are of a kind" in result.output
    assert "1 tensors are not a LoRA's" in result.output and "oft_blocks" in result.output
    wrong = {k: torch.zeros(v.shape[0], 7) if k.endswith("down.weight") else v for k, v in sd.items()}
    save(wrong, tmp_path / "loras" / "wrong_size.safetensors")
    result = generate_cli(tiny_eps, tmp_path, "a cat <lora:wrong_size>", "--lora-dir", tmp_path / "loras")
    assert result.exit_code == 2 and "does not fit this model" in result.output


def test_pickled_lora_needs_allow_pickle(tiny_eps, tmp_path):
    import torch

    sd = kohya_lora(tiny_eps.pipe(), {"linear"}, seed=15)
    (tmp_path / "loras").mkdir()
    torch.save(sd, tmp_path / "loras" / "old.pt")
    result = generate_cli(tiny_eps, tmp_path, f"{PROMPT} <lora:old>", "--lora-dir", tmp_path / "loras")
    assert result.exit_code == 2 and "old.pt is a pickle" in result.output and "--allow-pickle" in result.output
    pickled = ours(tiny_eps.ov_dir, tmp_path, f"{PROMPT} <lora:old>", "--allow-pickle")
    save(sd, tmp_path / "loras" / "new.safetensors")
    assert np.array_equal(pickled, ours(tiny_eps.ov_dir, tmp_path, f"{PROMPT} <lora:new>"))


def addnet_hash(path: Path) -> str:
    """kohya's hash of a .safetensors file: sha256 of what follows the header."""
    data = path.read_bytes()
    return hashlib.sha256(data[8 + int.from_bytes(data[:8], "little"):]).hexdigest()


def test_png_records_lora_hashes_and_from_image_redoes_it(tiny_eps, tmp_path):
    from sdcli.imaging.image_io import read_png_text

    pipe = tiny_eps.pipe()
    a = save(kohya_lora(pipe, {"linear"}, seed=16), tmp_path / "loras" / "a.safetensors")
    b = save(kohya_lora(pipe, {"conv3x3"}, seed=17), tmp_path / "loras" / "styles" / "b.safetensors")
    prompt = "a castle <lora:a:0.8>, at dusk <lora:b:0.5:1.1>"
    result = generate_cli(tiny_eps, tmp_path, prompt, "--lora-dir", tmp_path / "loras", out="first.png")
    assert result.exit_code == 0, result.output
    text = read_png_text(tmp_path / "first.png")["parameters"]
    assert text.startswith(prompt + "\n")  # the prompt as written, tags and all
    assert f'Lora hashes: "a: {addnet_hash(a)[:12]}, b: {addnet_hash(b)[:12]}"' in text
    again = run_cli("generate", "--from-image", tmp_path / "first.png", "--model", tiny_eps.ov_dir, "--lora-dir",
                    tmp_path / "loras", "--output", tmp_path / "again.png", "--quiet")
    assert again.exit_code == 0, again.output
    assert (tmp_path / "again.png").read_bytes() == (tmp_path / "first.png").read_bytes()
    b.unlink()
    gone = run_cli("generate", "--from-image", tmp_path / "first.png", "--model", tiny_eps.ov_dir, "--lora-dir",
                   tmp_path / "loras", "--output", tmp_path / "gone.png", "--quiet")
    assert gone.exit_code == 2 and "LoRA 'b' not found" in gone.output and not (tmp_path / "gone.png").exists()
    save(kohya_lora(pipe, {"conv3x3"}, seed=18), b)
    changed = run_cli("generate", "--from-image", tmp_path / "first.png", "--model", tiny_eps.ov_dir, "--lora-dir",
                      tmp_path / "loras", "--output", tmp_path / "changed.png")
    assert changed.exit_code == 0 and "LoRA b is not the file the image was made with" in changed.output


def test_batch_rows_take_loras_from_their_prompts(tiny_eps, tmp_path):
    a = save(kohya_lora(tiny_eps.pipe(), {"linear"}, seed=19), tmp_path / "loras" / "a.safetensors")
    rows = tmp_path / "rows.txt"
    rows.write_text(f"{PROMPT} <lora:a:0.8>\n{PROMPT}\n")
    result = run_cli("batch", rows, "--output-dir", tmp_path / "out", "--model", tiny_eps.ov_dir, "--steps", 10,
                     "--seed", 1234, "--width", 64, "--height", 64, "--rng", "torch", "--precision", "f32",
                     "--negative-prompt", NEGATIVE, "--lora-dir", tmp_path / "loras", "--quiet")
    assert result.exit_code == 0, result.output
    from sdcli.imaging.image_io import read_png_text, read_rgb

    first, second = sorted((tmp_path / "out").glob("*.png"))
    assert f"Lora hashes: \"a: {addnet_hash(a)[:12]}\"" in read_png_text(first)["parameters"]
    assert "Lora hashes" not in read_png_text(second)["parameters"]
    single = ours(tiny_eps.ov_dir, tmp_path, f"{PROMPT} <lora:a:0.8>")
    assert np.array_equal(read_rgb(first).astype(np.int16), single)


def test_loras_and_embeddings_never_import_torch_or_diffusers(tiny_eps, tmp_path):
    """Reading a LoRA (a pickled one too) and an embedding needs numpy only."""
    import subprocess
    import sys

    import torch

    from tests.reference import generate_args

    sd = kohya_lora(tiny_eps.pipe(), {"linear", "conv3x3"}, seed=20)
    save(sd, tmp_path / "loras" / "a.safetensors")
    torch.save(sd, tmp_path / "loras" / "b.pt")
    embeddings(tmp_path)
    args = generate_args(tiny_eps.ov_dir, tmp_path / "x.png", "--lora-dir", tmp_path / "loras", "--embeddings-dir",
                         tmp_path / "embeddings", "--allow-pickle", prompt="mystyle <lora:a:0.5> <lora:b:0.3>",
                         steps=2, **SIZE)
    code = (
        "import sys\n"
        "from sdcli.cli.app import app\n"
        f"args = {[str(a) for a in args]!r}\n"
        "try:\n    app(args)\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "bad = [m for m in ('torch', 'diffusers', 'safetensors') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "x.png").is_file()


def test_a_ray_worker_takes_the_folders_from_the_command_line(tiny_eps, tmp_path):
    """What `batch --ray` hands each worker (generation_options) carries the LoRA folder: the
    worker's row gives generate's picture."""
    pytest.importorskip("ray")
    from sdcli.batch.ray_runner import RowWorker
    from sdcli.batch.row_runner import generation_options
    from sdcli.batch.rows import BatchOptions, Job
    from sdcli.imaging.image_io import read_rgb

    save(kohya_lora(tiny_eps.pipe(), {"linear"}, seed=22), tmp_path / "loras" / "a.safetensors")
    opts = BatchOptions(file="rows.txt", output_dir=tmp_path / "out", lora_dir=tmp_path / "loras")
    worker = RowWorker(str(tiny_eps.ov_dir), "CPU", "f32", "torch", None, None, generation_options(opts))
    assert worker.ready()["error"] is None
    job = Job(1, 0, f"{PROMPT} <lora:a:0.8>", NEGATIVE, 1234, 10, 7.5, 64, 64, None, None, 0.8, "x.png")
    status, out, _ = worker.run(job)
    assert status == "ok", out
    single = ours(tiny_eps.ov_dir, tmp_path, f"{PROMPT} <lora:a:0.8>")
    (tmp_path / "row.png").write_bytes(out.png)
    assert np.array_equal(read_rgb(tmp_path / "row.png").astype(np.int16), single)


def test_memory_estimate_counts_the_float32_layers_a_lora_is_fused_into(tiny_eps, tmp_path):
    from sdcli.engine import memory
    from sdcli.engine.engine import Engine
    from sdcli.engine.networks import NetworkFolders
    from sdcli.engine.request import GenerationRequest
    from sdcli.model.lora_names import ir_weights

    save(kohya_lora(fresh_pipe(tiny_eps), {"linear"}, seed=2), tmp_path / "loras" / "m.safetensors")
    engine = Engine(tiny_eps.ov_dir, precision="f32", networks=NetworkFolders(tmp_path / "loras"))
    active = engine.networks.activate(GenerationRequest(prompt="a cat <lora:m:0.5>")).networks
    fused = memory.fused_bytes(engine.folder, active)
    counts = {name: n for name, n in ir_weights(engine.folder.ir("unet")).values()}
    assert fused["unet"] == 4 * sum(counts[name] for name in active.patch("unet").deltas) > 0
    assert fused["text_encoder"] > 0
    plain = memory.estimate(engine.folder, 64, 64)
    with_lora = memory.estimate(engine.folder, 64, 64, held=fused)
    assert with_lora.stages["denoising"] - plain.stages["denoising"] == fused["unet"]
    assert with_lora.stages["encoding the prompt"] - plain.stages["encoding the prompt"] == fused["text_encoder"]
    assert memory.fused_bytes(engine.folder, engine.networks.activate(GenerationRequest(prompt="a cat")).networks) == {}
