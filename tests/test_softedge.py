"""A1111 ControlNet's softedge_hed, softedge_hedsafe and scribble_hed: lllyasviel's ControlNetHED_Apache2
(ControlNetHED.pth) written again here in torch with the published file's tensor names, at small
widths with random weights, saved as a torch.save .pth and converted by `sdcli convert`, then

- the IR's five edge maps against this torch module's (f32), and the edge map made from them
  against the one made from torch's (at most 1 of 255);
- each `sdcli detect` map against a reference computed here from the torch module with the
  extension's steps written again (resize_image_with_pad, the maps resized with OpenCV, the
  sigmoid of their mean, safe_step), and shown to change with the image; the safe map is not the
  plain one; scribble_hed's map against the extension's nms, blur and threshold written again here
  (neighbours by shifting, not OpenCV's dilation) on the reference soft-edge map;
- a network not converted: one line, exit 2, nothing written (422 from the server); generate's
  check refuses it before anything loads."""
from __future__ import annotations

import math

import numpy as np
import pytest
from typer.testing import CliRunner

from sdcli.cli import app
from tests.test_neural_preprocessors import detect_file, extension_resize, picture

torch = pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")

WIDTHS, LAYERS = (4, 8, 8, 16, 16), (2, 2, 3, 3, 3)  # the real network: 64, 128, 256, 512, 512


class Block(torch.nn.Module):
    """The extension's DoubleConvBlock: 3 x 3 convolutions with ReLUs, a 1 x 1 projection to one map."""

    def __init__(self, inputs: int, width: int, count: int):
        super().__init__()
        self.convs = torch.nn.Sequential()
        for i in range(count):
            self.convs.append(torch.nn.Conv2d(inputs if i == 0 else width, width, (3, 3), (1, 1), 1))
        self.projection = torch.nn.Conv2d(width, 1, (1, 1), (1, 1), 0)

    def forward(self, x, down_sampling=False):
        h = torch.nn.functional.max_pool2d(x, (2, 2), (2, 2)) if down_sampling else x
        for conv in self.convs:
            h = torch.nn.functional.relu(conv(h))
        return h, self.projection(h)


class HED(torch.nn.Module):
    """ControlNetHED_Apache2 at WIDTHS: forward(RGB 0..255 [1, 3, H, W]) -> five edge logits."""

    def __init__(self):
        super().__init__()
        self.norm = torch.nn.Parameter(torch.zeros(1, 3, 1, 1))
        for i, (inputs, width, count) in enumerate(zip((3, *WIDTHS), WIDTHS, LAYERS), 1):
            setattr(self, f"block{i}", Block(inputs, width, count))

    def forward(self, x):
        h, out = x - self.norm, []
        for i in range(1, 6):
            h, projection = getattr(self, f"block{i}")(h, down_sampling=i > 1)
            out.append(projection)
        return out


def random_hed(seed: int) -> HED:
    """Random weights scaled so the maps spread over 0..255: the input's mean taken off, the first
    convolution / 100 (the image is 0..255), the others He-like, the projections wide."""
    g = torch.Generator().manual_seed(seed)
    model = HED()
    state = {}
    for name, value in model.state_dict().items():
        x = torch.randn(value.shape, generator=g)
        if name == "norm":
            x = 128 + 10 * x
        elif name.endswith("bias"):
            x = 0.1 * x
        elif "projection" in name:
            x = 5 * x / math.sqrt(value.shape[1])
        else:
            x = x * math.sqrt(2 / np.prod(value.shape[1:])) / (100 if name == "block1.convs.0.weight" else 1)
        state[name] = x
    model.load_state_dict(state, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The network saved as ControlNetHED.pth (torch.save of its state_dict(): an OrderedDict with
    its `_metadata`, which sdcli's tensor-only unpickler drops) and converted (fp32) into an
    annotator folder."""
    root = tmp_path_factory.mktemp("softedge")
    model = random_hed(1)
    torch.save(model.state_dict(), root / "ControlNetHED.pth")
    folder = root / "annotators"
    result = CliRunner().invoke(app, ["convert", str(root / "ControlNetHED.pth"), "--allow-pickle", "--weight-format",
                                      "fp32", "--annotator-dir", str(folder), "-q"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in folder.iterdir()) == ["softedge_hed"]
    return folder, model


def edge_map(maps, h: int, w: int, safe: bool) -> np.ndarray:
    """The extension's apply_hed after the network: each map resized (OpenCV, bilinear) to the
    image, the sigmoid of their mean, safe_step (step 2) when safe, * 255 clipped to uint8."""
    maps = [cv2.resize(np.asarray(m, np.float32)[0, 0], (w, h), interpolation=cv2.INTER_LINEAR) for m in maps]
    edge = 1 / (1 + np.exp(-np.mean(np.stack(maps, axis=2), axis=2).astype(np.float64)))
    if safe:
        edge = (edge.astype(np.float32) * float(3)).astype(np.int32).astype(np.float32) / float(2)
    return (edge * 255.0).clip(0, 255).astype(np.uint8)


def torch_maps(model, rgb: np.ndarray):
    with torch.no_grad():
        return [m.numpy() for m in model(torch.from_numpy(rgb.astype(np.float32).transpose(2, 0, 1)[None].copy()))]


def reference(model, rgb: np.ndarray, res: int, safe: bool) -> np.ndarray:
    """The extension's softedge_hed / softedge_hedsafe on `rgb` at `res`."""
    padded, th, tw = extension_resize(rgb, res)
    return edge_map(torch_maps(model, padded), *padded.shape[:2], safe)[:th, :tw]


def off(a, b) -> np.ndarray:
    return np.abs(a.astype(int) - b.astype(int))


def test_ir_matches_torch(converted):
    from sdcli.imaging.annotators import infer

    folder, model = converted
    rgb = cv2.resize(picture(90, 120, 5), (704, 512), interpolation=cv2.INTER_CUBIC)
    expected = torch_maps(model, rgb)
    got = infer(folder / "softedge_hed" / "openvino_model.xml", np.ascontiguousarray(
        rgb.astype(np.float32).transpose(2, 0, 1)[None]))
    assert sorted(got) == [f"edge{i}" for i in range(1, 6)]
    for i, want in enumerate(expected, 1):
        assert got[f"edge{i}"].shape == want.shape == (1, 1, 512 >> (i - 1), 704 >> (i - 1))
        error = np.abs(got[f"edge{i}"] - want).max() / np.abs(want).max()
        assert error <= 1e-4, (i, error)
    ours = [got[f"edge{i}"] for i in range(1, 6)]
    for safe in (False, True):
        differ = off(edge_map(ours, 512, 704, safe), edge_map(expected, 512, 704, safe))
        assert differ.max() <= (127 if safe else 1) and (differ > 0).mean() <= 0.001, (safe, differ.max())


def check_soft_edge_maps(tmp_path, folder, plain: str, safe: str, reference) -> None:
    """`sdcli detect`'s maps of a soft-edge module and its safe variant against `reference(rgb, res,
    safe)` (the extension's steps): within 1 of 255 (the safe one: 0, 127 or 255, a step's edge either
    side), spread, moved by another image, the safe map not the plain one; at 512 and 320."""
    first, second = picture(90, 120, 11), picture(90, 120, 12)
    maps = {}
    for module, is_safe in ((plain, False), (safe, True)):
        got = detect_file(tmp_path, folder, module, first, "a")
        expected = reference(first, 512, is_safe)
        assert got.shape == expected.shape == (512, 683)
        differ = off(got, expected)
        if is_safe:  # 0, 127 or 255: a pixel at a step's edge may fall either side
            assert set(np.unique(got)) <= {0, 127, 255} and (differ > 0).mean() <= 0.001, (differ > 0).mean()
        else:
            assert differ.max() <= 1 and (differ > 0).mean() <= 0.002, (differ.max(), (differ > 0).mean())
        assert int(got.max()) - int(got.min()) > 100
        other = detect_file(tmp_path, folder, module, second, "b")
        assert off(other, got).max() > 32 and (off(other, got) > 1).mean() > 0.01  # another image, another map
        maps[module] = got
    assert off(maps[plain], maps[safe]).mean() > 10  # the safe step changes the map
    low = detect_file(tmp_path, folder, plain, first, "c", "--processor-res", "320")
    assert low.shape == (320, 427) and off(low, reference(first, 320, False)).max() <= 1


def test_detect_maps_are_the_extensions(converted, tmp_path):
    folder, model = converted
    check_soft_edge_maps(tmp_path, folder, "softedge_hed", "softedge_hedsafe",
                         lambda rgb, res, safe: reference(model, rgb, res, safe))


def scribble_reference(edge: np.ndarray) -> np.ndarray:
    """The extension's scribble_hed after hed(): nms(edge, 127, 3.0) (Gaussian blur, sigma 3; a pixel
    kept where no neighbour on one of four lines through it is larger, and over 127), the kept
    pixels (255) blurred (sigma 3) and made 255 over 4, else 0."""
    x = cv2.GaussianBlur(edge.astype(np.float32), (0, 0), 3.0)
    h, w = x.shape
    padded = np.pad(x, 1, constant_values=-np.inf)
    near = lambda dy, dx: padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]  # noqa: E731
    ridge = np.zeros(x.shape, bool)
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        ridge |= (x >= near(dy, dx)) & (x >= near(-dy, -dx))
    thin = np.where(ridge & (x > 127), 255, 0).astype(np.uint8)
    return np.where(cv2.GaussianBlur(thin, (0, 0), 3.0) > 4, 255, 0).astype(np.uint8)


def check_scribbles(tmp_path, folder, scribble: str, plain: str, soft_reference) -> None:
    """`sdcli detect`'s map of scribble module `scribble` against the extension's nms, blur and threshold
    (scribble_reference) of `soft_reference(rgb, res)`, the reference map of its soft-edge module `plain`:
    0/255 only, not blank, the same pixels (2 % of the scribbles allowed), not the soft map, moved by
    another image."""
    first, second = picture(90, 120, 11), picture(90, 120, 12)
    got = detect_file(tmp_path, folder, scribble, first, "s")
    expected = scribble_reference(soft_reference(first, 512))
    assert got.shape == expected.shape == (512, 683) and set(np.unique(got)) == {0, 255}
    white = int((got == 255).sum())
    assert 0.002 < white / got.size < 0.98, white / got.size  # scribbles (sparse on random weights), not a blank page
    assert (off(got, expected) > 0).sum() <= 0.02 * white, (off(got, expected) > 0).sum()  # identical here
    assert (off(got, detect_file(tmp_path, folder, plain, first, "t")) > 32).mean() > 0.05  # not soft edges
    other = detect_file(tmp_path, folder, scribble, second, "u")
    assert (off(other, got) > 0).sum() > 0.2 * white, (off(other, got) > 0).sum()  # another image, other scribbles


def test_scribble_hed_is_the_extensions(converted, tmp_path):
    folder, model = converted
    check_scribbles(tmp_path, folder, "scribble_hed", "softedge_hed", lambda rgb, res: reference(model, rgb, res, False))


def test_generate_map_is_the_module_at_the_pictures_size(converted, monkeypatch):
    """generate's and the server's units: preprocess(fitted image, module), no resize."""
    from sdcli.imaging.control import preprocess

    folder, model = converted
    monkeypatch.setenv("SDCLI_ANNOTATOR_DIR", str(folder))
    image = picture(96, 128, 21)
    got = preprocess(image, "softedge_hed")
    assert got.shape == (96, 128, 3) and off(got[:, :, 0], reference(model, image, 96, False)).max() <= 1


def server_client():
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from sdcli.serve.app import create_app

    return TestClient(create_app(None))


def detect_body(module: str, image: np.ndarray) -> dict:
    """A /controlnet/detect request for `image` by `module` at processor_res 64."""
    import base64

    from sdcli.imaging.image_io import encode_png

    return {"controlnet_module": module, "controlnet_input_images": [base64.b64encode(encode_png(image)).decode()],
            "controlnet_processor_res": 64}


def grey_map(response) -> np.ndarray:
    """The first detected map of a /controlnet/detect response, grey."""
    import base64

    data = np.frombuffer(base64.b64decode(response.json()["images"][0]), np.uint8)
    return cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)


def test_server_module_list_detect_and_missing_network(converted, monkeypatch):
    folder, model = converted
    client = server_client()
    modules = client.get("/controlnet/module_list").json()["module_list"]
    assert {"softedge_hed", "softedge_hedsafe", "scribble_hed"} <= set(modules)
    image = picture(64, 64, 3)
    body = detect_body("softedge_hedsafe", image)
    monkeypatch.setenv("SDCLI_ANNOTATOR_DIR", str(folder))
    r = client.post("/controlnet/detect", json=body)
    assert r.status_code == 200, r.text
    assert (off(grey_map(r), reference(model, image, 64, True)) > 0).mean() <= 0.001
    monkeypatch.setenv("SDCLI_ANNOTATOR_DIR", str(folder / "missing"))
    r = client.post("/controlnet/detect", json=body)
    assert r.status_code == 422 and "softedge_hed" in r.json()["detail"] and "missing" in r.json()["detail"], r.text


def test_pickle_needs_allow_pickle_safetensors_do_not(converted, tmp_path):
    """ControlNetHED.pth without --allow-pickle: one line, nothing written; the same tensors as a
    .safetensors convert without it, into softedge_hed, to the same IR numbers."""
    safetensors_torch = pytest.importorskip("safetensors.torch")
    from sdcli.imaging.annotators import infer

    folder, model = converted
    path = tmp_path / "ControlNetHED.pth"
    torch.save(model.state_dict(), path)
    result = CliRunner().invoke(app, ["convert", str(path), "--annotator-dir", str(tmp_path / "a")])
    assert result.exit_code == 2 and "--allow-pickle" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "a").exists()
    safe = tmp_path / "ControlNetHED.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(safe))
    result = CliRunner().invoke(app, ["convert", str(safe), "--weight-format", "fp32", "--annotator-dir",
                                      str(tmp_path / "a"), "-q"])
    assert result.exit_code == 0, result.output
    x = np.random.default_rng(8).random((1, 3, 64, 128), np.float32) * 255
    ours, theirs = (infer(f / "softedge_hed" / "openvino_model.xml", x) for f in (tmp_path / "a", folder))
    assert all(np.array_equal(ours[name], theirs[name]) for name in theirs)
