"""A1111 ControlNet's neural preprocessors depth_anything_v2, lineart (lineart_realistic),
lineart_coarse and lineart_anime: checkpoints with the published files' tensor names
(depth_anything_v2_vits.pth, sk_model.pth, sk_model2.pth, netG.pth), the real architectures at
tiny widths with random weights, converted by `sdcli convert`, then

- each IR against the torch module it was exported from (f32, relative error <= 1e-4), and the
  Depth Anything module against transformers' DepthAnythingForDepthEstimation given the same
  weights (an implementation written by others);
- each `sdcli detect` map against a reference computed here from the torch module with the
  extension's pre- and post-processing written again (OpenCV resizes, PyTorch's interpolation
  for the position grid and the depth map), and shown to change with the image;
- a preprocessor whose network is not converted: one line, exit 2 (422 from the server)."""
from __future__ import annotations

import math
import re

import numpy as np

import pytest
from typer.testing import CliRunner

from sdcli.cli import app

torch = pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")

GRID, DIM, BLOCKS, CHANNELS, FEATURES, HEAD = 37, 32, 12, (4, 8, 16, 32), 8, 8
LINE_WIDTH, ANIME_WIDTH, ANIME_DOWNS = 4, 2, 8
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
TOLERANCE = 1e-4


# --- the checkpoints: the published files' names, tiny sizes ------------------------------------------

def depth_shapes() -> dict:
    """depth_anything_v2_vits.pth's tensors (DINOv2 ViT-S/14 and the DPT head), narrower."""
    d, f = DIM, FEATURES
    out = {"pretrained.cls_token": (1, 1, d), "pretrained.pos_embed": (1, GRID * GRID + 1, d),
           "pretrained.mask_token": (1, d), "pretrained.patch_embed.proj.weight": (d, 3, 14, 14),
           "pretrained.patch_embed.proj.bias": (d,), "pretrained.norm.weight": (d,), "pretrained.norm.bias": (d,)}
    for i in range(BLOCKS):
        for name, shape in (("norm1.weight", (d,)), ("norm1.bias", (d,)), ("attn.qkv.weight", (3 * d, d)),
                            ("attn.qkv.bias", (3 * d,)), ("attn.proj.weight", (d, d)), ("attn.proj.bias", (d,)),
                            ("ls1.gamma", (d,)), ("norm2.weight", (d,)), ("norm2.bias", (d,)),
                            ("mlp.fc1.weight", (4 * d, d)), ("mlp.fc1.bias", (4 * d,)), ("mlp.fc2.weight", (d, 4 * d)),
                            ("mlp.fc2.bias", (d,)), ("ls2.gamma", (d,))):
            out[f"pretrained.blocks.{i}.{name}"] = shape
    h = "depth_head."
    for i, c in enumerate(CHANNELS):
        out[f"{h}projects.{i}.weight"], out[f"{h}projects.{i}.bias"] = (c, d, 1, 1), (c,)
        out[f"{h}scratch.layer{i + 1}_rn.weight"] = (f, c, 3, 3)
    for i, k in ((0, 4), (1, 2), (3, 3)):
        c = CHANNELS[i]
        out[f"{h}resize_layers.{i}.weight"], out[f"{h}resize_layers.{i}.bias"] = (c, c, k, k), (c,)
    for r in range(1, 5):
        block = f"{h}scratch.refinenet{r}."
        out[block + "out_conv.weight"], out[block + "out_conv.bias"] = (f, f, 1, 1), (f,)
        for unit in ("resConfUnit1", "resConfUnit2"):
            for conv in ("conv1", "conv2"):
                out[f"{block}{unit}.{conv}.weight"], out[f"{block}{unit}.{conv}.bias"] = (f, f, 3, 3), (f,)
    out.update({f"{h}scratch.output_conv1.weight": (f // 2, f, 3, 3), f"{h}scratch.output_conv1.bias": (f // 2,),
                f"{h}scratch.output_conv2.0.weight": (HEAD, f // 2, 3, 3), f"{h}scratch.output_conv2.0.bias": (HEAD,),
                f"{h}scratch.output_conv2.2.weight": (1, HEAD, 1, 1), f"{h}scratch.output_conv2.2.bias": (1,)})
    return out


def lineart_shapes() -> dict:
    """sk_model.pth / sk_model2.pth's tensors (a generator of 3 residual blocks), narrower."""
    w = LINE_WIDTH
    out = {"model0.1.weight": (w, 3, 7, 7), "model0.1.bias": (w,), "model1.0.weight": (2 * w, w, 3, 3),
           "model1.0.bias": (2 * w,), "model1.3.weight": (4 * w, 2 * w, 3, 3), "model1.3.bias": (4 * w,),
           "model3.0.weight": (4 * w, 2 * w, 3, 3), "model3.0.bias": (2 * w,), "model3.3.weight": (2 * w, w, 3, 3),
           "model3.3.bias": (w,), "model4.1.weight": (1, w, 7, 7), "model4.1.bias": (1,)}
    for i in range(3):
        for conv in (1, 5):
            out[f"model2.{i}.conv_block.{conv}.weight"] = (4 * w, 4 * w, 3, 3)
            out[f"model2.{i}.conv_block.{conv}.bias"] = (4 * w,)
    return out


def anime_shapes() -> dict:
    """netG.pth's tensors (a U-Net of 8 levels, saved from DataParallel: "module." first), narrower."""
    n = ANIME_WIDTH
    levels = [(1, n), (n, 2 * n), (2 * n, 4 * n), (4 * n, 8 * n)] + [(8 * n, 8 * n)] * (ANIME_DOWNS - 4)
    out = {"module.model.model.0.weight": (n, 3, 4, 4), "module.model.model.0.bias": (n,),
           "module.model.model.3.weight": (2 * n, 1, 4, 4), "module.model.model.3.bias": (1,)}
    for k, (outer, inner) in enumerate(levels[1:], 2):
        prefix = "module.model.model.1." + "model.3." * (k - 2) + "model."
        up = 3 if k == ANIME_DOWNS else 5  # the innermost level has no down norm nor inner level
        out.update({f"{prefix}1.weight": (inner, outer, 4, 4), f"{prefix}1.bias": (inner,),
                    f"{prefix}{up}.weight": (inner if up == 3 else 2 * inner, outer, 4, 4), f"{prefix}{up}.bias": (outer,)})
    return out


def random_state(shapes: dict, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        x = torch.randn(shape, generator=g)
        if name.endswith(("norm1.weight", "norm2.weight", "norm.weight", "gamma")):
            x = 1 + 0.1 * x
        elif len(shape) >= 2:
            x = x / math.sqrt(np.prod(shape[1:]))
        else:
            x = 0.1 * x
        out[name] = x
    if "depth_head.scratch.output_conv2.2.bias" in out:  # the last ReLU: keep the depth above zero
        out["depth_head.scratch.output_conv2.2.bias"] = torch.tensor([0.5])
    return out


def picture(h: int, w: int, seed: int) -> np.ndarray:
    """A gradient with a few dark strokes and a bright disc, placed by `seed`."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([200 - 80 * x / w, 180 + 40 * y / h, 150 + 60 * (x + y) / (h + w)], -1)
    for _ in range(4):
        x0, y0, x1, y1 = rng.integers(0, [w, h, w, h])
        cv2.line(img, (int(x0), int(y0)), (int(x1), int(y1)), (20, 30, 40), int(rng.integers(1, 4)))
    cv2.circle(img, (int(rng.integers(w)), int(rng.integers(h))), int(min(h, w) // 5), (250, 240, 90), -1)
    return img.clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The four checkpoints written and converted (fp32) into one annotator folder."""
    root = tmp_path_factory.mktemp("annotators")
    folder = root / "annotators"
    states = {"depth_anything_v2": ("depth_anything_v2_vits.pth", random_state(depth_shapes(), 1)),
              "lineart": ("sk_model.pth", random_state(lineart_shapes(), 2)),
              "lineart_coarse": ("sk_model2.pth", random_state(lineart_shapes(), 3)),
              "lineart_anime": ("netG.pth", random_state(anime_shapes(), 4))}
    for module, (name, state) in states.items():  # netG.pth in torch.save's format before 1.6 (a plain pickle)
        torch.save(state, root / name, _use_new_zipfile_serialization=(module != "lineart_anime"))
        result = CliRunner().invoke(app, ["convert", str(root / name), "--allow-pickle", "--weight-format", "fp32",
                                          "--annotator-dir", str(folder), "-q"])
        assert result.exit_code == 0, result.output
        assert (folder / module / "openvino_model.xml").is_file()
    return folder, {module: state for module, (_, state) in states.items()}


def torch_module(kind: str, state: dict):
    from sdcli.convert.annotators import build

    clean = {k.removeprefix("module."): v.numpy() for k, v in state.items()}
    return build(kind, clean)[0]


def ir_output(folder, module: str, inputs: dict) -> np.ndarray:
    from sdcli.imaging.annotators import infer

    return next(iter(infer(folder / module / "openvino_model.xml", inputs).values()))


def relative(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


# --- the IRs against their torch modules ---------------------------------------------------------------

def test_depth_ir_matches_torch(converted):
    from sdcli.imaging.depth_lineart import position_matrices

    folder, states = converted
    model = torch_module("depth_anything_v2", states["depth_anything_v2"])
    g = torch.Generator().manual_seed(5)
    for h, w in ((518, 518), (518, 742), (630, 518)):  # square at the grid: no interpolation; wide; tall
        x = torch.randn(1, 3, h, w, generator=g)
        with torch.no_grad():
            expected = model(x).numpy()
        rows, cols = position_matrices(h // 14, w // 14, GRID)
        got = ir_output(folder, "depth_anything_v2", {"image": x.numpy(), "pos_rows": rows, "pos_cols": cols})
        assert got.shape == expected.shape == (1, h, w)
        assert relative(got, expected) <= TOLERANCE, (h, w, relative(got, expected))
        assert expected.std() > 1e-3 * np.abs(expected).max()


def test_depth_module_is_transformers_depth_anything(converted):
    """The same weights in transformers' implementation (its own names: the qkv split, the fusion
    stages in reverse order, ...), at 518 x 518 where both use the position grid as it is."""
    transformers = pytest.importorskip("transformers")
    _, states = converted
    s = states["depth_anything_v2"]
    backbone = transformers.Dinov2Config(hidden_size=DIM, num_hidden_layers=BLOCKS, num_attention_heads=1, mlp_ratio=4,
                                         image_size=518, patch_size=14, out_indices=[3, 6, 9, 12],
                                         reshape_hidden_states=False, layerscale_value=1.0)
    config = transformers.DepthAnythingConfig(backbone_config=backbone, fusion_hidden_size=FEATURES,
                                              neck_hidden_sizes=list(CHANNELS), head_hidden_size=HEAD,
                                              reassemble_hidden_size=DIM, depth_estimation_type="relative")
    theirs = transformers.DepthAnythingForDepthEstimation(config).eval()
    mapped = {"backbone.embeddings.cls_token": s["pretrained.cls_token"],
              "backbone.embeddings.mask_token": s["pretrained.mask_token"],
              "backbone.embeddings.position_embeddings": s["pretrained.pos_embed"],
              "backbone.embeddings.patch_embeddings.projection.weight": s["pretrained.patch_embed.proj.weight"],
              "backbone.embeddings.patch_embeddings.projection.bias": s["pretrained.patch_embed.proj.bias"],
              "backbone.layernorm.weight": s["pretrained.norm.weight"], "backbone.layernorm.bias": s["pretrained.norm.bias"]}
    for i in range(BLOCKS):
        a, b = f"pretrained.blocks.{i}.", f"backbone.encoder.layer.{i}."
        for kind in ("weight", "bias"):
            for j, part in enumerate(("q_proj", "k_proj", "v_proj")):
                mapped[f"{b}attention.{part}.{kind}"] = s[f"{a}attn.qkv.{kind}"][j * DIM:(j + 1) * DIM]
            mapped[f"{b}attention.o_proj.{kind}"] = s[f"{a}attn.proj.{kind}"]
            for name in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                mapped[f"{b}{name}.{kind}"] = s[f"{a}{name}.{kind}"]
        mapped[f"{b}layer_scale1.lambda1"], mapped[f"{b}layer_scale2.lambda1"] = s[f"{a}ls1.gamma"], s[f"{a}ls2.gamma"]
    for i in range(4):
        for kind in ("weight", "bias"):
            mapped[f"neck.reassemble_stage.layers.{i}.projection.{kind}"] = s[f"depth_head.projects.{i}.{kind}"]
            if i != 2:
                mapped[f"neck.reassemble_stage.layers.{i}.resize.{kind}"] = s[f"depth_head.resize_layers.{i}.{kind}"]
            fusion, refine = f"neck.fusion_stage.layers.{i}.", f"depth_head.scratch.refinenet{4 - i}."
            mapped[f"{fusion}projection.{kind}"] = s[f"{refine}out_conv.{kind}"]
            for unit in (1, 2):
                for conv in (1, 2):
                    mapped[f"{fusion}residual_layer{unit}.convolution{conv}.{kind}"] = \
                        s[f"{refine}resConfUnit{unit}.conv{conv}.{kind}"]
        mapped[f"neck.convs.{i}.weight"] = s[f"depth_head.scratch.layer{i + 1}_rn.weight"]
    for kind in ("weight", "bias"):
        for ours, hf in (("output_conv1", "conv1"), ("output_conv2.0", "conv2"), ("output_conv2.2", "conv3")):
            mapped[f"head.{hf}.{kind}"] = s[f"depth_head.scratch.{ours}.{kind}"]
    theirs.load_state_dict(mapped, strict=True)
    x = torch.randn(1, 3, 518, 518, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected = theirs(pixel_values=x).predicted_depth.numpy()
        ours = torch_module("depth_anything_v2", s)(x).numpy()
    assert relative(ours, expected) <= TOLERANCE, relative(ours, expected)


@pytest.mark.parametrize("module, kind, h, w", [("lineart", "lineart", 512, 704), ("lineart_coarse", "lineart", 128, 64),
                                               ("lineart_anime", "lineart_anime", 512, 768)])
def test_lineart_irs_match_torch(converted, module, kind, h, w):
    folder, states = converted
    model = torch_module(kind, states[module])
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(7)) * (2 if kind == "lineart_anime" else 1)
    with torch.no_grad():
        expected = model(x).numpy()
    got = ir_output(folder, module, {"image": x.numpy()})
    assert got.shape == expected.shape == (1, 1, h, w)
    assert relative(got, expected) <= TOLERANCE, relative(got, expected)


# --- sdcli detect's maps against the extension's steps written again -----------------------------------

def extension_resize(rgb: np.ndarray, res: int) -> tuple[np.ndarray, int, int]:
    """resize_image_with_pad: short side to res (cubic up, area down), edge-padded to 64s."""
    h, w = rgb.shape[:2]
    k = res / min(h, w)
    th, tw = int(np.round(h * k)), int(np.round(w * k))
    img = cv2.resize(rgb, (tw, th), interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)
    rows = np.minimum(np.arange(math.ceil(th / 64) * 64), th - 1)
    cols = np.minimum(np.arange(math.ceil(tw / 64) * 64), tw - 1)
    return img[rows][:, cols], th, tw


def depth_reference(model, rgb: np.ndarray, res: int = 512) -> np.ndarray:
    padded, th, tw = extension_resize(rgb, res)
    ph, pw = padded.shape[:2]
    image = padded[:, :, [2, 1, 0]] / 255.0  # the extension's BGR2RGB of an RGB image
    scale = max(518 / ph, 518 / pw)
    sides = []
    for side in (ph * scale, pw * scale):
        snapped = 14 * int(np.round(side / 14))
        sides.append(snapped if snapped >= 518 else 14 * math.ceil(side / 14))
    image = (cv2.resize(image, (sides[1], sides[0]), interpolation=cv2.INTER_CUBIC) - MEAN) / STD
    with torch.no_grad():
        depth = model(torch.from_numpy(image.transpose(2, 0, 1)[None].astype(np.float32)))
        depth = torch.nn.functional.interpolate(depth[None], (ph, pw), mode="bilinear", align_corners=False)[0, 0]
    depth = ((depth - depth.min()) / (depth.max() - depth.min()) * 255.0).numpy().astype(np.uint8)
    return depth[:th, :tw]


def line_reference(model, rgb: np.ndarray, res: int = 512) -> np.ndarray:
    padded, th, tw = extension_resize(rgb, res)
    with torch.no_grad():
        line = model(torch.from_numpy(padded.astype(np.float32).transpose(2, 0, 1)[None] / 255.0))[0, 0].numpy()
    return (255 - (line * 255.0).clip(0, 255).astype(np.uint8))[:th, :tw]


def anime_reference(model, rgb: np.ndarray, res: int = 512) -> np.ndarray:
    padded, th, tw = extension_resize(rgb, res)
    ph, pw = padded.shape[:2]
    big = cv2.resize(padded, (math.ceil(pw / 256) * 256, math.ceil(ph / 256) * 256), interpolation=cv2.INTER_CUBIC)
    with torch.no_grad():
        line = model(torch.from_numpy(big.astype(np.float32).transpose(2, 0, 1)[None] / 127.5 - 1.0))[0, 0].numpy()
    line = cv2.resize(line * 127.5 + 127.5, (pw, ph), interpolation=cv2.INTER_CUBIC)
    return (255 - line.clip(0, 255).astype(np.uint8))[:th, :tw]


def detect_file(tmp_path, folder, module: str, rgb: np.ndarray, name: str, *extra: str) -> np.ndarray:
    from sdcli.imaging.image_io import read_rgb, save_png

    source, out = tmp_path / f"{name}.png", tmp_path / f"{name}-{module}-map.png"
    save_png(source, rgb)
    result = CliRunner().invoke(app, ["detect", module, str(source), "--output", str(out),
                                      "--annotator-dir", str(folder), "-q", *extra])
    assert result.exit_code == 0, result.output
    got = read_rgb(out)
    assert np.array_equal(got[:, :, 0], got[:, :, 2])
    return got[:, :, 0]


@pytest.mark.parametrize("module, kind, reference, res", [
    ("depth_anything_v2", "depth_anything_v2", depth_reference, 512),
    ("lineart_realistic", "lineart", line_reference, 512),  # the extension's label for module lineart
    ("lineart_coarse", "lineart", line_reference, 320),
    ("lineart_anime", "lineart_anime", anime_reference, 512),
])
def test_detect_map_is_the_extensions(converted, tmp_path, module, kind, reference, res):
    folder, states = converted
    model = torch_module(kind, states["lineart" if module == "lineart_realistic" else module])
    first, second = picture(90, 120, 11), picture(90, 120, 12)
    got = detect_file(tmp_path, folder, module, first, "a", "--processor-res", str(res))
    expected = reference(model, first, res)
    assert got.shape == expected.shape and min(got.shape) == res
    off = np.abs(got.astype(int) - expected.astype(int))
    assert off.max() <= 1 and (off > 0).mean() <= 0.002, (off.max(), (off > 0).mean())
    other = detect_file(tmp_path, folder, module, second, "b", "--processor-res", str(res))
    assert np.abs(other.astype(int) - got.astype(int)).max() > 8  # another image, another map
    assert int(got.max()) - int(got.min()) > 8


# --- not converted -------------------------------------------------------------------------------------

@pytest.mark.parametrize("module, said", [
    ("depth_anything_v2", ["depth_anything_v2"]),
    ("softedge_hedsafe", ["softedge_hedsafe needs the network softedge_hed", "ControlNetHED.pth"]),  # another's network
])
def test_missing_network_is_one_line_and_exit_2(tmp_path, module, said):
    from sdcli.imaging.image_io import save_png

    source = tmp_path / "in.png"
    save_png(source, picture(40, 50, 1))
    empty = tmp_path / "nothing"
    result = CliRunner().invoke(app, ["detect", module, str(source), "--annotator-dir", str(empty),
                                      "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and all(part in lines[0] for part in said) and str(empty) in lines[0], result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists() and not empty.exists()


def test_server_detect_and_missing_network(converted, monkeypatch):
    pytest.importorskip("fastapi")
    import base64

    from fastapi.testclient import TestClient

    from sdcli.imaging.image_io import encode_png
    from sdcli.serve.app import create_app

    folder, states = converted
    client = TestClient(create_app(None))
    body = {"controlnet_module": "lineart", "controlnet_input_images": [base64.b64encode(encode_png(picture(64, 64, 3)))
                                                                         .decode()], "controlnet_processor_res": 64}
    monkeypatch.setenv("SDCLI_ANNOTATOR_DIR", str(folder))
    r = client.post("/controlnet/detect", json=body)
    assert r.status_code == 200, r.text
    data = np.frombuffer(base64.b64decode(r.json()["images"][0]), np.uint8)
    detected = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)
    assert np.array_equal(detected, line_reference(torch_module("lineart", states["lineart"]), picture(64, 64, 3), 64))
    monkeypatch.setenv("SDCLI_ANNOTATOR_DIR", str(folder / "missing"))
    r = client.post("/controlnet/detect", json=body)
    assert r.status_code == 422 and "lineart" in r.json()["detail"] and "missing" in r.json()["detail"], r.text
    assert client.get("/controlnet/module_list").json()["module_list"].count("depth_anything_v2") == 1


def test_depth_anything_v1_file_is_refused(converted, tmp_path):
    """Depth Anything V1's files have V2's tensor names but read other layers: refused by name."""
    _, states = converted
    path = tmp_path / "depth_anything_vits14.pth"
    torch.save(states["depth_anything_v2"], path)
    result = CliRunner().invoke(app, ["convert", str(path), "--allow-pickle", "--annotator-dir", str(tmp_path / "a")])
    assert result.exit_code == 2 and "V1" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "a").exists()


def test_pickle_needs_allow_pickle_safetensors_do_not(converted, tmp_path):
    """A .pth without --allow-pickle: one line, nothing written; the same tensors as a .safetensors
    named as the coarse file convert without it, into lineart_coarse, to the same IR numbers."""
    safetensors_torch = pytest.importorskip("safetensors.torch")
    folder, states = converted
    path = tmp_path / "sk_model.pth"
    torch.save(states["lineart"], path)
    result = CliRunner().invoke(app, ["convert", str(path), "--annotator-dir", str(tmp_path / "a")])
    assert result.exit_code == 2 and "--allow-pickle" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "a").exists()
    safe = tmp_path / "sk_model2.safetensors"
    safetensors_torch.save_file(states["lineart"], str(safe))
    result = CliRunner().invoke(app, ["convert", str(safe), "--weight-format", "fp32", "--annotator-dir",
                                      str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    x = np.random.default_rng(8).random((1, 3, 64, 128), np.float32)
    assert np.array_equal(ir_output(tmp_path / "a", "lineart_coarse", {"image": x}),
                          ir_output(folder, "lineart", {"image": x}))


def test_png_parameters_name_the_modules():
    """An A1111 PNG's `ControlNet 0: "Module: lineart_realistic, ..."` (the label) reads back as module lineart."""
    from sdcli.engine.controlnet import read_infotext

    notes = []
    fields = {"ControlNet 0": "Module: lineart_realistic, Model: control_v11p_sd15_lineart, Weight: 1.0",
              "ControlNet 1": "Module: depth_anything_v2, Model: control_v11f1p_sd15_depth, Weight: 0.5"}
    units = read_infotext(fields, notes)
    assert [u["preprocessor"] for u in units] == ["lineart", "depth_anything_v2"] and notes == []


def test_generate_map_is_the_module_at_the_pictures_size(converted, monkeypatch):
    """generate and the server's units make the map with preprocess(fitted image, module) (engine/
    controlnet.py's prepare_units), finding the networks through $SDCLI_ANNOTATOR_DIR: the
    module at the image's own size, no resize."""
    from sdcli.engine.controlnet import ControlUnit
    from sdcli.imaging.control import preprocess

    folder, states = converted
    monkeypatch.setenv("SDCLI_ANNOTATOR_DIR", str(folder))
    image = picture(96, 128, 21)
    ControlUnit("cn", image, preprocessor="depth_anything_v2").check()
    got = preprocess(image, "depth_anything_v2")
    expected = depth_reference(torch_module("depth_anything_v2", states["depth_anything_v2"]), image, 96)
    assert got.shape == (96, 128, 3) and np.abs(got[:, :, 0].astype(int) - expected).max() <= 1


@pytest.mark.parametrize("module, source", [("depth_anything_v2", "depth_anything_v2_vits.pth"),
                                            ("lineart_coarse", "sk_model2.pth"),
                                            ("softedge_hed", "ControlNetHED.pth"),
                                            ("softedge_hedsafe", "ControlNetHED.pth")])
def test_generate_refuses_a_missing_network_before_loading(tmp_path, monkeypatch, module, source):
    """engine.controlnet.check_request (generate's, batch's and the server's check before anything
    loads) names the depth, lineart or soft-edge network that is not converted, and the file to
    convert."""
    from types import SimpleNamespace

    from sdcli.engine.controlnet import ControlUnit, check_request
    from sdcli.imaging.annotators import MissingAnnotator

    monkeypatch.setenv("SDCLI_ANNOTATOR_DIR", str(tmp_path / "none"))
    folder = SimpleNamespace(denoiser="unet", unet_config={"in_channels": 4}, latent_channels=4, is_sdxl=False)
    engine = SimpleNamespace(folder=folder, controlnet_dir=tmp_path)
    request = SimpleNamespace(controlnets=[ControlUnit("control_v11f1p_sd15_depth", None, preprocessor=module)])
    with pytest.raises(MissingAnnotator, match=f"{module} needs .*{re.escape(source)}"):
        check_request(request, engine)
