"""A1111 ControlNet's softedge_pidinet, softedge_pidisafe and scribble_pidinet: PiDiNet as the extension
builds it (annotator/pidinet/model.py: the 'carv4' recipe, CDCM and CSAM) written again here in torch,
its pixel-difference convolutions computed as the extension computes them (a convolution minus the
centre's, taps minus their clockwise neighbours, the 5 x 5 ring kernel), at a small width with random
weights, saved as the published table5_pidinet.pth is laid out (DataParallel's "module." names under
"state_dict") and converted by `sdcli convert`, which exports them as plain kernels; then

- each pixel-difference kernel against the extension's operation on random input (border included);
- the IR's edge map against this network's (f32);
- each `sdcli detect` map against the extension's steps written again here (resize_image_with_pad,
  RGB to BGR, / 255, the network, safe_step, * 255 to uint8) on this network, shown to change with the
  image; the safe map is not the plain one; scribble_pidinet against the extension's nms, blur and
  threshold (test_softedge's reference) on the reference soft-edge map;
- the server lists the modules, makes them its SoftEdge and Scribble defaults as the extension does,
  and detects with them; a missing network: one line, exit 2."""
from __future__ import annotations

import math

import numpy as np
import pytest
from typer.testing import CliRunner

from sdcli.cli import app
from tests.test_neural_preprocessors import extension_resize, picture
from tests.test_softedge import check_scribbles, check_soft_edge_maps, detect_body, grey_map, off, server_client

torch = pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")
F = torch.nn.functional

WIDTH, DIL = 4, 4  # the published network: 60 and 24
RECIPE = ("cd", "ad", "rd", "cv") * 4  # the extension's 'carv4'


def pixel_difference(op: str, x, weight, dilation: int = 1, groups: int = 1):
    """The extension's createConvFunc(op)(x, weight, None, 1, padding, dilation, groups), padding as its blocks
    give it (the dilation; rd: twice it)."""
    if op == "cv":
        return F.conv2d(x, weight, padding=dilation, dilation=dilation, groups=groups)
    if op == "cd":
        centre = F.conv2d(x, weight.sum(dim=[2, 3], keepdim=True), groups=groups)
        return F.conv2d(x, weight, padding=dilation, dilation=dilation, groups=groups) - centre
    shape = weight.shape
    flat = weight.view(shape[0], shape[1], -1)
    if op == "ad":
        rolled = (flat - flat[:, :, [3, 0, 1, 6, 4, 2, 7, 8, 5]]).view(shape)
        return F.conv2d(x, rolled, padding=dilation, dilation=dilation, groups=groups)
    ring = torch.zeros(shape[0], shape[1], 25)
    ring[:, :, [0, 2, 4, 10, 14, 20, 22, 24]] = flat[:, :, 1:]
    ring[:, :, [6, 7, 8, 11, 13, 16, 17, 18]] = -flat[:, :, 1:]
    return F.conv2d(x, ring.view(shape[0], shape[1], 5, 5), padding=2 * dilation, dilation=dilation, groups=groups)


class PDC(torch.nn.Module):
    def __init__(self, op, inputs, outputs, groups):
        super().__init__()
        self.op, self.groups = op, groups
        self.weight = torch.nn.Parameter(torch.zeros(outputs, inputs // groups, 3, 3))

    def forward(self, x):
        return pixel_difference(self.op, x, self.weight, groups=self.groups)


class Block(torch.nn.Module):
    """PDCBlock: (a max-pool,) a depthwise pixel-difference convolution, ReLU, 1 x 1, plus the (1 x 1) shortcut."""

    def __init__(self, op, inputs, outputs, stride=1):
        super().__init__()
        self.stride = stride
        if stride > 1:
            self.shortcut = torch.nn.Conv2d(inputs, outputs, 1)
        self.conv1 = PDC(op, inputs, inputs, groups=inputs)
        self.conv2 = torch.nn.Conv2d(inputs, outputs, 1, bias=False)

    def forward(self, x):
        if self.stride > 1:
            x = F.max_pool2d(x, 2, 2)
        y = self.conv2(F.relu(self.conv1(x)))
        return y + (self.shortcut(x) if self.stride > 1 else x)


class CDCM(torch.nn.Module):
    def __init__(self, inputs, outputs):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(inputs, outputs, 1)
        self.conv2_1, self.conv2_2, self.conv2_3, self.conv2_4 = (
            torch.nn.Conv2d(outputs, outputs, 3, dilation=d, padding=d, bias=False) for d in (5, 7, 9, 11))

    def forward(self, x):
        x = self.conv1(F.relu(x))
        return self.conv2_1(x) + self.conv2_2(x) + self.conv2_3(x) + self.conv2_4(x)


class CSAM(torch.nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(channels, 4, 1)
        self.conv2 = torch.nn.Conv2d(4, 1, 3, padding=1, bias=False)

    def forward(self, x):
        return x * torch.sigmoid(self.conv2(self.conv1(F.relu(x))))


class MapReduce(torch.nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, 1, 1)

    def forward(self, x):
        return self.conv(x)


class PiDiNet(torch.nn.Module):
    """The extension's pidinet(): PiDiNet(WIDTH, carv4, dil=DIL, sa=True); forward(BGR 0..1) -> the fused map."""

    def __init__(self):
        super().__init__()
        c = WIDTH
        self.init_block = PDC(RECIPE[0], 3, c, groups=1)
        widths = [(c, c, 1)] * 3 + [(c, 2 * c, 2)] + [(2 * c, 2 * c, 1)] * 3 + [(2 * c, 4 * c, 2)] + \
            [(4 * c, 4 * c, 1)] * 3 + [(4 * c, 4 * c, 2)] + [(4 * c, 4 * c, 1)] * 3
        names = ["1_1", "1_2", "1_3", "2_1", "2_2", "2_3", "2_4", "3_1", "3_2", "3_3", "3_4", "4_1", "4_2", "4_3", "4_4"]
        for name, op, (inputs, outputs, stride) in zip(names, RECIPE[1:], widths):
            setattr(self, f"block{name}", Block(op, inputs, outputs, stride))
        fuse = (c, 2 * c, 4 * c, 4 * c)
        self.dilations = torch.nn.ModuleList(CDCM(f, DIL) for f in fuse)
        self.attentions = torch.nn.ModuleList(CSAM(DIL) for _ in fuse)
        self.conv_reduces = torch.nn.ModuleList(MapReduce(DIL) for _ in fuse)
        self.classifier = torch.nn.Conv2d(4, 1, 1)

    def forward(self, x):
        h, w = x.shape[2:]
        x = self.init_block(x)
        x1 = self.block1_3(self.block1_2(self.block1_1(x)))
        x2 = self.block2_4(self.block2_3(self.block2_2(self.block2_1(x1))))
        x3 = self.block3_4(self.block3_3(self.block3_2(self.block3_1(x2))))
        x4 = self.block4_4(self.block4_3(self.block4_2(self.block4_1(x3))))
        maps = [F.interpolate(self.conv_reduces[i](self.attentions[i](self.dilations[i](xi))), (h, w),
                              mode="bilinear", align_corners=False) for i, xi in enumerate((x1, x2, x3, x4))]
        return torch.sigmoid(self.classifier(torch.cat(maps, dim=1)))


def random_pidinet(seed: int) -> PiDiNet:
    """Random weights at a scale that keeps the activations near 1 through the residual blocks
    (1 / sqrt(fan-in), the blocks' 1 x 1 convolutions half that, small biases), the classifier then
    scaled so the fused logits on a picture spread over about +-3: edge maps across 0..1, not
    saturated at 0 and 1 (where a rounding could flip a pixel from black to white)."""
    g = torch.Generator().manual_seed(seed)
    model = PiDiNet()
    state = {}
    for name, value in model.state_dict().items():
        x = torch.randn(value.shape, generator=g)
        if name.endswith("bias"):
            x = 0.1 * x
        else:
            x = x / math.sqrt(int(np.prod(value.shape[1:]))) * (0.5 if name.endswith(".conv2.weight") else 1)
        state[name] = x
    model.load_state_dict(state, strict=True)
    model.eval()
    logits = {}
    hook = model.classifier.register_forward_hook(lambda module, inputs, output: logits.setdefault("x", output))
    sample = cv2.resize(picture(90, 120, 5), (192, 128))[:, :, ::-1].astype(np.float32) / 255.0
    torch_edge(model, sample)
    hook.remove()
    scale = 3.0 / float(logits["x"].std())
    with torch.no_grad():  # logits * scale, their mean on the sample at 0
        model.classifier.bias.copy_(-scale * (float(logits["x"].mean()) - model.classifier.bias))
        model.classifier.weight *= scale
    return model


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The network saved as table5_pidinet.pth ({"state_dict": "module."-named tensors}, as PiDiNet's
    training saved it) and converted (fp32) into an annotator folder."""
    root = tmp_path_factory.mktemp("pidinet")
    model = random_pidinet(1)
    torch.save({"epoch": 14, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}},
               root / "table5_pidinet.pth")
    folder = root / "annotators"
    result = CliRunner().invoke(app, ["convert", str(root / "table5_pidinet.pth"), "--allow-pickle",
                                      "--weight-format", "fp32", "--annotator-dir", str(folder), "-q"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in folder.iterdir()) == ["softedge_pidinet"]
    return folder, model


@pytest.mark.parametrize("op", ["cv", "cd", "ad", "rd"])
@pytest.mark.parametrize("groups", [1, 3])
def test_plain_kernel_is_the_pixel_difference(op, groups):
    from sdcli.convert.annotators import pidinet_kernel

    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 3, 11, 13, generator=g)
    weight = torch.randn(6, 3 // groups, 3, 3, generator=g)
    want = pixel_difference(op, x, weight, groups=groups)
    kernel = torch.from_numpy(pidinet_kernel(op, weight.numpy()))
    got = F.conv2d(x, kernel, padding=kernel.shape[-1] // 2, groups=groups)
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    if op != "cv":  # the difference matters: not the plain convolution of the same weights
        assert (want - F.conv2d(x, weight, padding=1, groups=groups)).abs().max() > 0.5


def torch_edge(model, bgr01: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(bgr01.transpose(2, 0, 1)[None], np.float32))).numpy()


def reference(model, rgb: np.ndarray, res: int, safe: bool) -> np.ndarray:
    """The extension's pidinet / pidinet_safe on `rgb` at `res`."""
    padded, th, tw = extension_resize(rgb, res)
    edge = torch_edge(model, padded[:, :, ::-1].astype(np.float32) / 255.0)[0, 0]
    if safe:
        edge = (edge.astype(np.float32) * float(3)).astype(np.int32).astype(np.float32) / float(2)
    return (edge * 255.0).clip(0, 255).astype(np.uint8)[:th, :tw]


def test_ir_matches_the_extensions_network(converted):
    from sdcli.imaging.annotators import infer

    folder, model = converted
    bgr = np.random.default_rng(5).random((128, 192, 3), np.float32)
    bgr[:64] = cv2.resize(picture(90, 120, 5), (192, 64))[:, :, ::-1] / 255.0  # flat areas and edges too
    want = torch_edge(model, bgr)
    got = infer(folder / "softedge_pidinet" / "openvino_model.xml", np.ascontiguousarray(bgr.transpose(2, 0, 1)[None]))
    assert list(got) == ["edge"] and got["edge"].shape == want.shape == (1, 1, 128, 192)
    assert np.abs(got["edge"] - want).max() <= 2e-5, np.abs(got["edge"] - want).max()
    assert want.max() - want.min() > 0.5  # the map spreads: the comparison sees edges and flat areas


def test_detect_maps_are_the_extensions(converted, tmp_path):
    folder, model = converted
    check_soft_edge_maps(tmp_path, folder, "softedge_pidinet", "softedge_pidisafe",
                         lambda rgb, res, safe: reference(model, rgb, res, safe))


def test_scribble_pidinet_is_the_extensions(converted, tmp_path):
    folder, model = converted
    check_scribbles(tmp_path, folder, "scribble_pidinet", "softedge_pidinet",
                    lambda rgb, res: reference(model, rgb, res, False))


def test_server_lists_detects_and_defaults(converted, monkeypatch):
    folder, model = converted
    client = server_client()
    modules = client.get("/controlnet/module_list").json()["module_list"]
    assert {"softedge_pidinet", "softedge_pidisafe", "scribble_pidinet"} <= set(modules)
    types = client.get("/controlnet/control_types").json()["control_types"]
    assert types["SoftEdge"]["default_option"] == "softedge_pidinet"  # the extension's defaults (priority 100)
    assert types["Scribble"]["default_option"] == "scribble_pidinet"
    assert {"softedge_hed", "softedge_pidisafe"} <= set(types["SoftEdge"]["module_list"])
    image = picture(64, 64, 3)
    monkeypatch.setenv("SDCLI_ANNOTATOR_DIR", str(folder))
    r = client.post("/controlnet/detect", json=detect_body("softedge_pidisafe", image))
    assert r.status_code == 200, r.text
    assert (off(grey_map(r), reference(model, image, 64, True)) > 0).mean() <= 0.001


def test_missing_network_names_the_file(tmp_path):
    from sdcli.imaging.image_io import save_png

    source = tmp_path / "in.png"
    save_png(source, picture(40, 50, 1))
    empty = tmp_path / "nothing"
    result = CliRunner().invoke(app, ["detect", "scribble_pidinet", str(source), "--annotator-dir", str(empty),
                                      "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    line, = result.output.strip().splitlines()
    assert "scribble_pidinet needs the network softedge_pidinet" in line and "table5_pidinet.pth" in line
    assert not (tmp_path / "out").exists()
