"""LoRAs on the flow-matching transformers (Z-Image, FLUX.2-klein): `sdcli generate --rng torch
--precision f32` with `<lora:NAME:W>` against diffusers' pipeline with the same file loaded by
`load_lora_weights` at the same weight (max difference <= 2 of 255), on the tiny random models.

The files are made here with random tensors under the real key names of the tiny models' linear
layers: diffusers/PEFT's (`transformer.<path>.lora_A.weight`), the one compared with diffusers;
then the same ΔW written in kohya's layout (`lora_unet_<path with _>`, with an alpha: up x2 and
alpha = rank/2) and ai-toolkit's (`diffusion_model.<path>`); for Z-Image also kohya's under the
original model's names, q, k and v fused as `attention.qkv`.  For FLUX.2 those two use Black
Forest Labs' names, whose double blocks fuse q, k and v (`img_attn.qkv`): the three PEFT
modules become one of rank 3r, down the three downs stacked, up block-diagonal, which diffusers
and sdcli split back into the same three ΔW; the modules are those diffusers' kohya conversion
reads (it drops the modulation layers).  Both layouts must give the PEFT file's picture.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from tests.reference import compare, sdcli_pixels

PROMPT = "a photo of an astronaut riding a horse"
SEED = 1234
WIDTH, HEIGHT = 64, 48
STEPS = 2
RANK = 4
TOLERANCE = 2
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


# --- the files ------------------------------------------------------------------------------------

def linear_layers(transformer, keep) -> dict[str, tuple[int, int, float]]:
    """{module path: (out, in, weight std)} of the transformer's linear layers that `keep` accepts."""
    import torch

    return {path: (*module.weight.shape, float(module.weight.detach().std())) for path, module in
            transformer.named_modules() if isinstance(module, torch.nn.Linear) and keep(path)}


def random_lora(layers: dict, seed: int, strength: float = 0.6) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{module path: (down [r, in], up [out, r])}, ΔW = up @ down of `strength` times the weight's std."""
    rng = np.random.default_rng(seed)
    lora = {}
    for path, (rows, cols, std) in layers.items():
        down = rng.standard_normal((RANK, cols)).astype(np.float32)
        up = rng.standard_normal((rows, RANK)).astype(np.float32)
        up *= np.float32(strength * std / (up @ down).std())
        lora[path] = (down, up)
    return lora


def peft(lora) -> dict[str, np.ndarray]:
    return {f"transformer.{path}.lora_{ab}.weight": t for path, (down, up) in lora.items()
            for ab, t in (("A", down), ("B", up))}


def kohya(named: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """kohya's keys, up doubled and alpha = rank / 2 (the same ΔW)."""
    out = {}
    for name, (down, up) in named.items():
        key = "lora_unet_" + name.replace(".", "_")
        out.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up * np.float32(2),
                    f"{key}.alpha": np.asarray(down.shape[0] / 2, np.float32)})
    return out


def ai_toolkit(named) -> dict[str, np.ndarray]:
    return {f"diffusion_model.{name}.lora_{ab}.weight": t for name, (down, up) in named.items()
            for ab, t in (("A", down), ("B", up))}


FLUX_BFL = [  # diffusers' module path -> Black Forest Labs' name ({0}: the block)
    (r"transformer_blocks\.(\d+)\.attn\.to_out\.0", "double_blocks.{0}.img_attn.proj"),
    (r"transformer_blocks\.(\d+)\.attn\.to_add_out", "double_blocks.{0}.txt_attn.proj"),
    (r"transformer_blocks\.(\d+)\.ff\.linear_in", "double_blocks.{0}.img_mlp.0"),
    (r"transformer_blocks\.(\d+)\.ff\.linear_out", "double_blocks.{0}.img_mlp.2"),
    (r"transformer_blocks\.(\d+)\.ff_context\.linear_in", "double_blocks.{0}.txt_mlp.0"),
    (r"transformer_blocks\.(\d+)\.ff_context\.linear_out", "double_blocks.{0}.txt_mlp.2"),
    (r"single_transformer_blocks\.(\d+)\.attn\.to_qkv_mlp_proj", "single_blocks.{0}.linear1"),
    (r"single_transformer_blocks\.(\d+)\.attn\.to_out", "single_blocks.{0}.linear2"),
    (r"x_embedder", "img_in"), (r"context_embedder", "txt_in"),
    (r"time_guidance_embed\.timestep_embedder\.linear_1", "time_in.in_layer"),
    (r"time_guidance_embed\.timestep_embedder\.linear_2", "time_in.out_layer"),
    (r"proj_out", "final_layer.linear"),
]
FLUX_QKV = [(r"transformer_blocks\.(\d+)\.attn\.(to_q|to_k|to_v)", "double_blocks.{0}.img_attn.qkv"),
            (r"transformer_blocks\.(\d+)\.attn\.(add_q_proj|add_k_proj|add_v_proj)", "double_blocks.{0}.txt_attn.qkv")]


def bfl_name(path: str) -> str | None:
    import re

    for pattern, name in FLUX_BFL + FLUX_QKV:
        match = re.fullmatch(pattern, path)
        if match:
            return name.format(*match.groups())
    return None


def flux_bfl(lora) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The PEFT modules under BFL names; q, k, v as one module of rank 3r (downs stacked, up
    block-diagonal)."""
    named, fused = {}, {}
    for path, pair in lora.items():
        name = bfl_name(path)
        if name.endswith(".qkv"):
            fused.setdefault(name, []).append(pair)
        else:
            named[name] = pair
    for name, pairs in fused.items():
        assert len(pairs) == 3
        named[name] = fuse_qkv(pairs)
    return named


def save(tensors: dict, path):
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))
    return path


# --- the pictures ---------------------------------------------------------------------------------

def diffusers_with_lora(pipe, path, weight: float, **call) -> np.ndarray:
    """The pipeline's picture with the file loaded at `weight`; unloaded after."""
    import torch

    pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="test")
    try:
        pipe.set_adapters(["test"], adapter_weights=[weight])
        image = pipe(prompt=PROMPT, height=HEIGHT, width=WIDTH, num_inference_steps=STEPS,
                     generator=torch.Generator("cpu").manual_seed(SEED), output_type="np", **call).images
    finally:
        pipe.unload_lora_weights()
    return (image[0] * 255).round().astype(np.int16)


def ours(folder, out, loras, prompt: str = PROMPT) -> np.ndarray:
    return sdcli_pixels(folder, out, "--lora-dir", loras, prompt=prompt, steps=STEPS, negative=None, width=WIDTH,
                        height=HEIGHT, seed=SEED)


def moved(a, b) -> int:
    return int(np.abs(a - b).max())


def log(parity_log, model: str, mode: str, value: int, mean: float = 0.0):
    parity_log.append({"model": model, "scheduler": "flow_euler", "mode": mode, "size": f"{WIDTH}x{HEIGHT}",
                       "max": value, "mean": mean})


def check_family(model: str, tiny, tmp_path, parity_log, layers, layouts, call: dict):
    """PEFT at 0.5 within the tolerance of diffusers; at 1 and without the LoRA it moves; each
    other layout gives the PEFT file's picture."""
    _, folder, pipe = tiny
    loras = tmp_path / "loras"
    lora = random_lora(layers, seed=5)
    peft_file = save(peft(lora), loras / "peft.safetensors")
    half = ours(folder, tmp_path / "half.png", loras, f"{PROMPT} <lora:peft:0.5>")
    compare(half, diffusers_with_lora(pipe, peft_file, 0.5, **call), parity_log, model=model,
            scheduler="flow_euler", mode="PEFT LoRA 0.5", size=f"{WIDTH}x{HEIGHT}")
    plain = ours(folder, tmp_path / "plain.png", loras)
    full = ours(folder, tmp_path / "full.png", loras, f"{PROMPT} <lora:peft:1>")
    log(parity_log, model, "LoRA 0.5 vs none", moved(half, plain), float(np.abs(half - plain).mean()))
    log(parity_log, model, "LoRA 0.5 vs 1", moved(half, full), float(np.abs(half - full).mean()))
    assert moved(half, plain) > TOLERANCE and moved(half, full) > TOLERANCE
    for name, tensors in layouts(lora).items():
        save(tensors, loras / f"{name}.safetensors")
        other = ours(folder, tmp_path / f"{name}.png", loras, f"{PROMPT} <lora:{name}:0.5>")
        log(parity_log, model, f"{name} vs PEFT", moved(other, half))
        assert moved(other, half) <= 1, name
    return folder, loras, half


def fuse_qkv(pairs) -> tuple[np.ndarray, np.ndarray]:
    """Modules (down, up) of q, k, v as one of rank 3r: downs stacked, up block-diagonal (the same ΔW)."""
    down = np.concatenate([d for d, _ in pairs])
    up = np.zeros((sum(u.shape[0] for _, u in pairs), down.shape[0]), np.float32)
    row = 0
    for i, (_, u) in enumerate(pairs):
        up[row:row + u.shape[0], i * RANK:(i + 1) * RANK] = u
        row += u.shape[0]
    return down, up


def z_image_original(lora) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The PEFT modules under the original Z-Image's names (x_embedder, final_layer, attention.out,
    and attention.qkv fused), as its single-file checkpoint has them."""
    import re

    named, fused = {}, {}
    for path, pair in lora.items():
        path = path.replace("all_x_embedder.2-1", "x_embedder").replace("all_final_layer.2-1", "final_layer")
        path = path.replace(".attention.to_out.0", ".attention.out")
        match = re.fullmatch(r"(.*\.attention)\.to_([qkv])", path)
        if match:
            fused.setdefault(match.group(1), {})[match.group(2)] = pair
        else:
            named[path] = pair
    for block, parts in fused.items():
        named[f"{block}.qkv"] = fuse_qkv([parts[p] for p in "qkv"])
    return named


def z_image_layouts(lora):
    return {"kohya": kohya(lora), "ai_toolkit": ai_toolkit(lora), "original_names": kohya(z_image_original(lora))}


def test_z_image_loras_match_diffusers_in_every_layout(tiny_z_image, tmp_path, parity_log):
    from sdcli.imaging.image_io import read_png_text, read_rgb

    layers = linear_layers(tiny_z_image[2].transformer, lambda path: True)
    folder, loras, half = check_family("z-image", tiny_z_image, tmp_path, parity_log, layers, z_image_layouts,
                                       {"guidance_scale": 0.0})
    # several at once: two files at 0.25 are one at 0.5; the PNG names both, --from-image redoes it
    prompt = f"{PROMPT} <lora:peft:0.25> <lora:kohya:0.25>"
    two = sdcli_pixels(folder, tmp_path / "two.png", "--lora-dir", loras, prompt=prompt, steps=STEPS, negative=None,
                       width=WIDTH, height=HEIGHT, seed=SEED)
    assert moved(two, half) <= 1
    text = read_png_text(tmp_path / "two.png")["parameters"]
    hashes = {name: addnet_hash(loras / f"{name}.safetensors") for name in ("peft", "kohya")}
    assert text.startswith(prompt + "\n")
    assert f'Lora hashes: "peft: {hashes["peft"]}, kohya: {hashes["kohya"]}"' in text
    from typer.testing import CliRunner

    from sdcli.cli.app import app

    again = CliRunner().invoke(app, ["generate", "--from-image", str(tmp_path / "two.png"), "--model", str(folder),
                                     "--lora-dir", str(loras), "--output", str(tmp_path / "again.png"), "--quiet"])
    assert again.exit_code == 0, again.output
    assert moved(read_rgb(tmp_path / "again.png").astype(np.int16), two) == 0


def addnet_hash(path) -> str:
    data = path.read_bytes()
    return hashlib.sha256(data[8 + int.from_bytes(data[:8], "little"):]).hexdigest()[:12]


def flux_layouts(lora):
    named = flux_bfl(lora)
    return {"kohya": kohya(named), "ai_toolkit": ai_toolkit(named)}


def test_flux2_klein_loras_match_diffusers_in_every_layout(tiny_klein, tmp_path, parity_log):
    layers = linear_layers(tiny_klein[2].transformer, lambda path: bfl_name(path) is not None)
    assert any(path.endswith("attn.add_k_proj") for path in layers)  # the fused qkv's are in the set
    check_family("flux2-klein", tiny_klein, tmp_path, parity_log, layers, flux_layouts, {"guidance_scale": 1.0})


def test_tags_leave_no_whitespace_for_qwen3_but_do_as_a1111_for_clip():
    from sdcli.engine.networks import parse_tags

    for prompt, tidy in [("a cat <lora:x:1>", "a cat"), ("<lora:x:1> a cat", "a cat"),
                         ("a cat <lora:x:1> on a mat", "a cat on a mat"), ("a cat ", "a cat ")]:
        assert parse_tags(prompt, tidy=True)[0] == tidy
    assert parse_tags("a cat <lora:x:1> on a mat")[0] == "a cat  on a mat"


def test_a_qwen3_text_encoder_lora_is_one_line_exit_2(tiny_klein, tmp_path):
    from typer.testing import CliRunner

    from sdcli.cli.app import app

    down, up = np.ones((RANK, 32), np.float32), np.ones((32, RANK), np.float32)
    save({"text_encoder.model.layers.0.self_attn.q_proj.lora_A.weight": down,
          "text_encoder.model.layers.0.self_attn.q_proj.lora_B.weight": up}, tmp_path / "loras" / "te.safetensors")
    out = tmp_path / "x.png"
    result = CliRunner().invoke(app, ["generate", "--model", str(tiny_klein[1]), "--prompt", f"{PROMPT} <lora:te>",
                                      "--width", "64", "--height", "48", "--lora-dir", str(tmp_path / "loras"),
                                      "--output", str(out)])
    assert result.exit_code == 2, result.output
    assert "text encoder" in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_an_int8_folder_takes_a_lora(tiny_z_image, tmp_path, parity_log):
    """An int8 folder: the LoRA is fused into the dequantized weights.  Its transformer is made as
    `sdcli convert --weight-format int8` makes it (convert/z_image.py: save_ir at fp16, then
    compress_saved_ir), from the fp32 folder's IR rather than traced again (the rest of the folder
    is the fp32 one's)."""
    import shutil

    import openvino as ov

    from sdcli.convert.ir import compress_saved_ir, save_ir

    _, fp32, pipe = tiny_z_image
    folder = tmp_path / "int8"
    shutil.copytree(fp32, folder)
    save_ir(ov.Core().read_model(fp32 / "transformer" / "openvino_model.xml"), folder / "transformer", "fp16")
    compress_saved_ir(folder / "transformer")
    xml = (folder / "transformer" / "openvino_model.xml").read_text()
    assert 'element_type="i8"' in xml or 'element_type="u8"' in xml  # int8 weights, dequantized in the graph
    loras = tmp_path / "loras"
    save(peft(random_lora(linear_layers(pipe.transformer, lambda path: True), seed=5)), loras / "peft.safetensors")
    plain = ours(folder, tmp_path / "plain.png", loras)
    with_lora = ours(folder, tmp_path / "lora.png", loras, f"{PROMPT} <lora:peft:0.5>")
    log(parity_log, "z-image int8", "LoRA 0.5 vs none", moved(with_lora, plain), float(np.abs(with_lora - plain).mean()))
    assert moved(with_lora, plain) > TOLERANCE
