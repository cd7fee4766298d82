"""LoRAs on fp16, int8 and hybrid-quantized folders; the pieces on their own: A1111's tag
syntax, LDM block names, the weight fusion on compressed weights, the pickle reader."""
from __future__ import annotations

import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.reference import PROMPT, compare, reference_arguments, sdcli_pixels, to_pixels
from tests.lora_files import fresh_pipe, kohya_lora, save, set_file_alphas

SIZE = dict(width=64, height=64)
pytestmark = pytest.mark.filterwarnings("ignore:The following alpha_pattern keys did not match:RuntimeWarning")


# --- A1111's syntax and names -------------------------------------------------------------------

@pytest.mark.parametrize("prompt,clean,tags", [
    ("a castle <lora:watercolor_v2:0.8>", "a castle ", [("watercolor_v2", 0.8, 0.8, None)]),
    ("<lora:a>x<lora:b:-0.5>", "x", [("a", 1.0, 1.0, None), ("b", -0.5, -0.5, None)]),
    ("x <lora:a:0.3:1.2>", "x ", [("a", 0.3, 1.2, None)]),
    ("x <lora:a:unet=0.7>", "x ", [("a", 1.0, 0.7, None)]),
    ("x <lora:a:te=0.2:unet=0.7:dyn=8>", "x ", [("a", 0.2, 0.7, 8)]),
    ("x <lora:a:0.5:dyn=8>", "x ", [("a", 0.5, 0.5, 8)]),
    ("x <lora:sub/a b:1>", "x ", [("sub/a b", 1.0, 1.0, None)]),
    ("(x:1.2) <lyco:a:0.4>", "(x:1.2) ", [("a", 0.4, 0.4, None)]),
])
def test_tags_are_read_as_a1111_reads_them(prompt, clean, tags):
    from sdcli.engine.networks import parse_tags

    text, found, notes = parse_tags(prompt)
    assert text == clean and not notes
    assert [(t.name, t.te, t.unet, t.dyn) for t in found] == tags


def test_other_tags_are_removed_with_a_note_and_bad_weights_are_usage_errors():
    from sdcli.engine.networks import parse_tags
    from sdcli.util.errors import UsageError

    text, found, notes = parse_tags("x <hypernet:h:1>")
    assert text == "x " and not found and "<hypernet:h:1>" in notes[0]
    with pytest.raises(UsageError, match="must be a number"):
        parse_tags("x <lora:a:strong>")


SD15 = dict(down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, layers_per_block=2)
SDXL = dict(down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], layers_per_block=2)


@pytest.mark.parametrize("config,ldm,diffusers", [
    # A1111's convert_diffusers_name_to_compvis, read the other way (SD 1.5)
    (SD15, "input_blocks_1_1_transformer_blocks_0_attn1_to_q", "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"),
    (SD15, "input_blocks_2_0_in_layers_2", "down_blocks_0_resnets_1_conv1"),
    (SD15, "input_blocks_3_0_op", "down_blocks_0_downsamplers_0_conv"),
    (SD15, "input_blocks_4_0_skip_connection", "down_blocks_1_resnets_0_conv_shortcut"),
    (SD15, "input_blocks_11_0_emb_layers_1", "down_blocks_3_resnets_1_time_emb_proj"),
    (SD15, "middle_block_1_proj_out", "mid_block_attentions_0_proj_out"),
    (SD15, "middle_block_2_out_layers_3", "mid_block_resnets_1_conv2"),
    (SD15, "output_blocks_2_1_conv", "up_blocks_0_upsamplers_0_conv"),
    (SD15, "output_blocks_5_2_conv", "up_blocks_1_upsamplers_0_conv"),
    (SD15, "output_blocks_11_1_transformer_blocks_0_ff_net_2", "up_blocks_3_attentions_2_transformer_blocks_0_ff_net_2"),
    (SD15, "time_embed_2", "time_embedding_linear_2"),
    (SD15, "out_2", "conv_out"),
    # kohya's SDXL LoRAs: no attention in the first down block and the last up block
    (SDXL, "input_blocks_4_1_transformer_blocks_1_attn2_to_k", "down_blocks_1_attentions_0_transformer_blocks_1_attn2_to_k"),
    (SDXL, "input_blocks_7_1_proj_in", "down_blocks_2_attentions_0_proj_in"),
    (SDXL, "output_blocks_0_1_transformer_blocks_9_ff_net_0_proj", "up_blocks_0_attentions_0_transformer_blocks_9_ff_net_0_proj"),
    (SDXL, "output_blocks_5_2_conv", "up_blocks_1_upsamplers_0_conv"),
    (SDXL, "output_blocks_8_0_skip_connection", "up_blocks_2_resnets_2_conv_shortcut"),
    (SDXL, "label_emb_0_0", "add_embedding_linear_1"),
])
def test_ldm_block_names(config, ldm, diffusers):
    from sdcli.model.lora_names import ldm_to_diffusers

    assert ldm_to_diffusers(ldm, config) == diffusers


# --- the fusion on compressed weights, exactly ----------------------------------------------------

def _linear_model(weight: np.ndarray, compress: str, tmp_path: Path):
    """x [n, in] @ W^T as an IR, its weight fp16 or int8 (nncf) compressed, read back."""
    import openvino as ov
    from openvino import opset13 as ops

    x = ops.parameter([weight.shape[1], weight.shape[1]], np.float32, name="x")
    w = ops.constant(weight)
    w.set_friendly_name("self.model.layer.weight")
    model = ov.Model([ops.matmul(x, w, False, True)], [x])
    if compress == "int8":
        import nncf

        model = nncf.compress_weights(model)
    ov.save_model(model, tmp_path / f"{compress}.xml", compress_to_fp16=compress == "fp16")
    return ov.Core().read_model(tmp_path / f"{compress}.xml")


@pytest.mark.parametrize("compress", ["none", "fp16", "int8"])
def test_fused_weight_is_the_decompressed_weight_plus_delta(compress, tmp_path):
    """Fed the identity, the layer gives its weight: after the fusion, exactly the weight as
    the IR decompressed it plus ΔW."""
    import openvino as ov

    from sdcli.model.lora_names import ir_weights
    from sdcli.runtime.lora import fuse_weight_deltas

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((24, 16)).astype(np.float32)
    delta = rng.standard_normal((24, 16)).astype(np.float32) * 0.1
    core = ov.Core()
    eye = np.eye(16, dtype=np.float32)
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    before = core.compile_model(_linear_model(weight, compress, tmp_path), "CPU", config)({"x": eye})[0]
    model = _linear_model(weight, compress, tmp_path)
    name, size = ir_weights(tmp_path / f"{compress}.xml")["layer"]  # the constant as the IR names it
    assert size == weight.size
    assert fuse_weight_deltas(model, {name: lambda shape: delta.copy()}, "test") == 1
    after = core.compile_model(model, "CPU", config)({"x": eye})[0]
    assert np.abs(after - (before + delta.T)).max() < 1e-5
    if compress != "none":
        assert np.abs(before.T - weight).max() > 0  # the weight was compressed


# --- whole folders ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compressed_folders(tiny_eps, tmp_path_factory):
    """tiny_eps's folder with its UNet and text encoder saved fp16, and int8 (nncf, weights only)."""
    import nncf
    import openvino as ov

    root = tmp_path_factory.mktemp("compressed")
    folders = {}
    for kind in ("fp16", "int8"):
        folder = root / kind
        shutil.copytree(tiny_eps.ov_dir, folder)
        for component in ("unet", "text_encoder"):
            xml = folder / component / "openvino_model.xml"
            model = ov.Core().read_model(tiny_eps.ov_dir / component / "openvino_model.xml")
            if kind == "int8":
                model = nncf.compress_weights(model)
            ov.save_model(model, xml, compress_to_fp16=kind == "fp16")
        folders[kind] = folder
    return folders


def _lora_file(tiny_eps, tmp_path) -> Path:
    return save(kohya_lora(tiny_eps.pipe(), {"linear", "conv1x1", "conv3x3", "time"}, seed=21),
                tmp_path / "loras" / "style.safetensors")


def test_fp16_folder_takes_the_lora_as_the_fp32_one(tiny_eps, compressed_folders, tmp_path):
    """fp16 weights (a Convert widens each): the LoRA moves the picture as on the fp32 folder, up
    to what fp16 weights change without a LoRA (diffusers on fp16-rounded parameters is no exact
    reference: the IR rounds other constants too)."""
    reference, with_lora, without = _quantized_case(compressed_folders["fp16"], tiny_eps, tmp_path)
    plain = sdcli_pixels(tiny_eps.ov_dir, tmp_path / "p.png", prompt=PROMPT, **SIZE)
    assert np.abs(with_lora - reference).max() <= np.abs(without - plain).max() + 2
    assert np.abs(with_lora - reference).mean() < 1


def _quantized_case(folder, tiny_eps, tmp_path, weight: float = 0.8):
    """(float + LoRA, quantized + LoRA, quantized) pictures."""
    _lora_file(tiny_eps, tmp_path)
    lora = f"{PROMPT} <lora:style:{weight}>"
    reference = sdcli_pixels(tiny_eps.ov_dir, tmp_path / "f.png", "--lora-dir", tmp_path / "loras", prompt=lora, **SIZE)
    with_lora = sdcli_pixels(folder, tmp_path / "q.png", "--lora-dir", tmp_path / "loras", prompt=lora, **SIZE)
    without = sdcli_pixels(folder, tmp_path / "n.png", prompt=PROMPT, **SIZE)
    return reference, with_lora, without


def test_int8_folder_takes_the_lora_on_its_dequantized_weights(tiny_eps, compressed_folders, tmp_path):
    """int8 weights: the layers the LoRA changes get dequantized weights + ΔW (float32); the
    picture is the float model's with the LoRA, up to the int8 rounding of the other weights."""
    reference, with_lora, without = _quantized_case(compressed_folders["int8"], tiny_eps, tmp_path)
    assert np.abs(with_lora - reference).mean() < 0.25 * np.abs(without - reference).mean()


def test_hybrid_folder_takes_the_lora(tiny_eps, tiny_eps_hybrid, tmp_path):
    """--quantize hybrid: the weights are int8 (dequantized + ΔW where the LoRA changes them; the
    convolutions' weights have lost their names and are found by their layer's); the activation
    quantizers stay as calibrated without the LoRA, so they clip what a strong LoRA changes: at
    0.1 this random LoCon moves the float picture by 25 of 255 on average and the hybrid one
    lands within hybrid's own error (6 of 255 on conftest.tiny_eps_hybrid, 6 calibration
    samples; 8 with 4); at 0.8 it would not (46 of 255)."""
    folder = tiny_eps_hybrid  # calibrated on two prompts, 6 samples (conftest)
    reference, with_lora, without = _quantized_case(folder, tiny_eps, tmp_path, weight=0.1)
    assert np.abs(with_lora - reference).mean() < 0.5 * np.abs(without - reference).mean()


# --- the pickle reader ----------------------------------------------------------------------------

class _Evil:
    # os.system, not print: once Ray is imported (test_batch_ray), builtins.print is Ray's
    # safe_print, and the pickle would name that instead
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_a_pickle_holding_code_is_refused_even_with_allow_pickle(tmp_path):
    from sdcli.model.tensor_files import read_tensors
    from sdcli.util.errors import UsageError

    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps({"x": _Evil()}))
    with pytest.raises(UsageError, match=r"(posix|os)\.system, which is not a tensor or a plain value"):
        read_tensors(path, True, "LoRA")
    with pytest.raises(UsageError, match="--allow-pickle"):
        read_tensors(path, False, "LoRA")


# --- scripts/bench_lora.py and SDXL embeddings ----------------------------------------------------

def test_bench_script_runs_on_the_tiny_model(tiny_eps, tmp_path):
    import json
    import subprocess
    import sys

    pytest.importorskip("openvino_genai")
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_lora.py"
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(script), "--model", str(tiny_eps.ov_dir), "--make-lora", "2", "--size", "64",
                        "--steps", "3", "--out", str(out)], capture_output=True, text=True, timeout=600,
                       env={**__import__("os").environ, "SDCLI_CACHE_DIR": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr
    results = json.loads(out.read_text())
    assert results["sdcli"]["lora"]["compile"] == 0.0 and results["sdcli"]["lora_first"]["compile"] > 0
    assert results["genai"]["lora"]["step"] > 0
    assert "sdcli (fused)" in r.stdout and "genai (branches)" in r.stdout


def test_sdxl_embeddings_give_each_text_encoder_its_vectors(tmp_path):
    """An SDXL embedding holds clip_l (text encoder 1) and clip_g (text encoder 2); a single
    tensor serves any text encoder of its width."""
    from sdcli.model.embedding_file import read_embedding
    from sdcli.util.errors import UsageError
    from tests.lora_files import save as save_tensors
    import torch

    save_tensors({"clip_l": torch.ones(2, 768), "clip_g": torch.zeros(2, 1280)}, tmp_path / "xl.safetensors")
    xl = read_embedding(tmp_path / "xl.safetensors", False)
    assert xl.for_encoder(0, 768).shape == (2, 768) and xl.for_encoder(1, 1280).shape == (2, 1280)
    save_tensors({"emb_params": torch.ones(3, 768)}, tmp_path / "sd1.safetensors")
    sd1 = read_embedding(tmp_path / "sd1.safetensors", False)
    assert sd1.for_encoder(0, 768).shape == (3, 768)
    with pytest.raises(UsageError, match="width 768"):
        sd1.for_encoder(1, 1280)


def test_an_embedding_is_not_split_across_prompt_chunks():
    """A1111 starts a new 75-token chunk before an embedding that does not fit in the current one."""
    from sdcli.engine.prompt_syntax import chunk_prompt

    vectors = np.ones((3, 8), np.float32)
    tokens = [5] * 74 + [0] * 3 + [6] * 2
    chunks = chunk_prompt(tokens, [1.0] * len(tokens), 1, 2, 3, None, [(74, 3, vectors, "e")])
    assert len(chunks) == 2
    assert chunks[0].ids[1:76] == [5] * 74 + [2] and not chunks[0].fixes
    assert chunks[1].ids[:7] == [1, 0, 0, 0, 6, 6, 2]
    assert [(position, name) for position, _, name in chunks[1].fixes] == [(1, "e")]


def test_lora_blobs_are_kept_to_the_most_recently_used(tmp_path):
    import os

    from sdcli.runtime.core import LORA_BLOBS_KEPT, Runtime

    blobs = []
    for i in range(LORA_BLOBS_KEPT + 2):
        blob = tmp_path / f"unet-lora{i:012d}-key{i}.blob"
        blob.write_bytes(b"x")
        os.utime(blob, (1000 + i, 1000 + i))
        blobs.append(blob)
    plain = tmp_path / "unet-abcdef.blob"
    plain.write_bytes(b"x")
    os.utime(plain, (1, 1))
    Runtime._prune_lora_blobs(blobs[-1])
    assert [b.exists() for b in blobs] == [False, False] + [True] * LORA_BLOBS_KEPT
    assert plain.exists()  # a UNet without LoRAs is never pruned


# --- Tucker forms, checked as the convolutions they factor ----------------------------------------

def test_tucker_forms_are_the_convolutions_they_factor():
    """LyCORIS' Tucker (CP) forms: a 1x1 down, a kxk core, a 1x1 up applied one after the other
    is one convolution by their ΔW (LoCon's lora_mid; LoHa's hada_t1/t2 each, and their product
    taken elementwise; LoKr's lokr_t2)."""
    import torch
    import torch.nn.functional as F

    from sdcli.model.lora_file import LoraModule

    g = torch.Generator().manual_seed(0)
    out, inp, r, k = 6, 5, 3, 3
    x = torch.randn(1, inp, 7, 7, generator=g)

    def chain(down, core, up):  # down [r', in], core [r, r', k, k], up [out, r]
        h = F.conv2d(x, down[:, :, None, None])
        return F.conv2d(F.conv2d(h, core, padding=1), up[:, :, None, None])

    def as_conv(delta):
        return F.conv2d(x, torch.from_numpy(delta), padding=1)

    up, mid, down = torch.randn(out, r, generator=g), torch.randn(r, r, k, k, generator=g), torch.randn(r, inp, generator=g)
    module = LoraModule("unet", "m", "m", {"lora_up.weight": up[:, :, None, None].numpy(), "lora_mid.weight": mid.numpy(),
                                          "lora_down.weight": down[:, :, None, None].numpy(), "alpha": np.array(1.5)})
    delta = module.delta((out, inp, k, k), factor=0.7)
    assert torch.allclose(as_conv(delta), chain(down, mid, up) * 0.7 * 1.5 / r, atol=1e-4)

    t = {name: torch.randn(*shape, generator=g) for name, shape in (
        ("hada_t1", (r, r, k, k)), ("hada_w1_a", (r, out)), ("hada_w1_b", (r, inp)),
        ("hada_t2", (r, r, k, k)), ("hada_w2_a", (r, out)), ("hada_w2_b", (r, inp)))}
    loha = LoraModule("unet", "m", "m", {n: v.numpy() for n, v in t.items()})

    def kernel(down, core, up):  # the kernel of chain(down, core, up.T), read by probing it with unit inputs
        probe = torch.zeros(inp, inp, 2 * k - 1, 2 * k - 1)
        for c in range(inp):
            probe[c, c, k - 1, k - 1] = 1
        h = F.conv2d(probe, down[:, :, None, None])
        response = F.conv2d(F.conv2d(h, core, padding=1), up.T[:, :, None, None])  # [in, out, 2k-1, 2k-1]
        return response[:, :, 1:1 + k, 1:1 + k].flip(2, 3).transpose(0, 1)

    one = kernel(t["hada_w1_b"], t["hada_t1"], t["hada_w1_a"])
    assert torch.allclose(F.conv2d(x, one, padding=1), chain(t["hada_w1_b"], t["hada_t1"], t["hada_w1_a"].T), atol=1e-4)
    expected = one * kernel(t["hada_w2_b"], t["hada_t2"], t["hada_w2_a"])  # LoHa: the kernels' elementwise product
    assert np.allclose(loha.delta((out, inp, k, k)), expected.numpy(), atol=1e-4)
