"""The openpose preprocessors (sdcli/imaging/openpose.py) and the conversion of their networks
(sdcli/convert/openpose.py): random networks of the published layouts (narrow hidden layers,
the real output maps) saved with the checkpoints' own tensor names, converted by `sdcli
convert`, their IRs against the torch modules; the body post-processing on synthetic heatmaps
and part-affinity fields of two people with known keypoints; and the whole preprocessor through
`sdcli detect` with a stand-in body network that reads a drawn skeleton from the image's colours
(so that the people it finds are known), another image giving another map."""
from __future__ import annotations

import math
import zipfile

import numpy as np
import pytest
from typer.testing import CliRunner

from sdcli.cli import app
from sdcli.imaging import openpose as op

torch = pytest.importorskip("torch")

WIDTH_DIVISOR = 16  # hidden channels 1/16 of the published networks' (their output maps as published)
# the published networks' output channels per layer (their inputs follow from the layout)
PUBLISHED = {"conv1_": 64, "conv2_": 128, "conv3_": 256, "conv4_1": 512, "conv4_2": 512, "conv4_3": 512,
             "conv4_4": 512, "conv5_1": 512, "conv5_2": 512, "conv4_3_CPM": 256, "conv4_4_CPM": 128,
             "conv5_3_CPM": 128, "conv6_1_CPM": 512, "conv5_4_CPM": 512, "conv5_1_CPM": 128, "conv5_2_CPM": 128,
             "Mconv": 128}
MAPS = {"openpose_hand": 22, "openpose_face": 71}


def out_channels(kind: str, name: str) -> tuple[int, bool]:
    """(the published output channels of layer `name`, whether it is an output map layer)."""
    if name.startswith(("conv5_5_CPM", "Mconv7")) or name == "conv6_2_CPM":
        return MAPS.get(kind) or (38 if name.endswith("L1") else 19), True
    if name.startswith("Mconv"):
        return 128, False
    for key in ("conv5_1_CPM", "conv5_2_CPM", "conv5_3_CPM", "conv5_4_CPM", "conv4_3_CPM", "conv4_4_CPM",
                "conv6_1_CPM"):
        if name.startswith(key):
            return PUBLISHED[key], False
    return PUBLISHED[name] if name in PUBLISHED else PUBLISHED[name[:6]], False


def walk(kind: str, conv) -> None:
    """Visit `kind`'s convolutions in the network's order: conv((name, k, ...), in channels) -> out channels."""
    from sdcli.convert.openpose import STAGES, layers_of

    def run(seq, c):
        for layer in seq:
            if layer != "pool":
                c = conv(layer, c)
        return c

    layout = dict(layers_of(kind))
    features = run(layout["trunk"], 3)
    if kind == "openpose_body":
        maps = run(layout["1_L1"], features) + run(layout["1_L2"], features)
        for stage in STAGES:
            run(layout[f"{stage}_L1"], maps + features)
            run(layout[f"{stage}_L2"], maps + features)
    else:
        maps = run(layout["1"], features)
        for stage in STAGES:
            maps = run(layout[str(stage)], maps + features)


def random_state(kind: str, divisor: int = WIDTH_DIVISOR, seed: int = 0) -> dict:
    """{checkpoint name: float32 array} of a random network of `kind`'s layout."""
    rng = np.random.default_rng(seed)
    state = {}

    def conv(layer, c_in):
        name, k, _ = layer
        c_out, is_map = out_channels(kind, name)
        c_out = c_out if is_map else max(4, c_out // divisor)
        state[f"{name}.weight"] = (rng.standard_normal((c_out, c_in, k, k)) * math.sqrt(2.0 / (c_in * k * k))).astype(np.float32)
        state[f"{name}.bias"] = (rng.standard_normal(c_out) * 0.05).astype(np.float32)
        return c_out

    walk(kind, conv)
    return state


def save_pth(state: dict, path, legacy: bool = False) -> None:
    """torch.save's zip, or (legacy) its format before torch 1.6, which the published files predate."""
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, str(path), _use_new_zipfile_serialization=not legacy)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The three random networks saved as the published files (the hand's in torch's legacy
    format) and converted into one annotator folder by `sdcli convert FILE --allow-pickle` (fp32);
    {kind: state}, folder."""
    root = tmp_path_factory.mktemp("openpose")
    folder = root / "annotators"
    states = {}
    for kind, name, seed in (("openpose_body", "body_pose_model.pth", 1), ("openpose_hand", "hand_pose_model.pth", 2),
                             ("openpose_face", "facenet.pth", 3)):
        states[kind] = random_state(kind, seed=seed)
        save_pth(states[kind], root / name, legacy=kind == "openpose_hand")
        assert zipfile.is_zipfile(root / name) == (kind != "openpose_hand")
        result = CliRunner().invoke(app, ["convert", str(root / name), "--allow-pickle", "--weight-format", "fp32",
                                          "--annotator-dir", str(folder), "-q"])
        assert result.exit_code == 0, result.output
        assert (folder / kind / "openvino_model.xml").is_file() and (folder / kind / "annotator.json").is_file()
    return states, folder, root


def test_irs_match_torch(converted):
    """Each IR against the torch module built from the same checkpoint: relative error <= 1e-4 (f32)."""
    from sdcli.convert.openpose import OUTPUTS, build
    from sdcli.imaging.annotators import infer

    states, folder, _ = converted
    x = np.random.default_rng(7).random((1, 3, 96, 136), dtype=np.float32) - 0.5
    for kind, state in states.items():
        with torch.no_grad():
            ref = build(kind, state)(torch.from_numpy(x))
        ref = ref if isinstance(ref, tuple) else (ref,)
        got = infer(folder / kind / "openvino_model.xml", x)
        for name, expected in zip(OUTPUTS[kind], ref):
            expected = expected.numpy()
            assert got[name].shape == expected.shape == (1, expected.shape[1], 12, 17)
            error = np.abs(got[name] - expected).max() / np.abs(expected).max()
            assert error <= 1e-4, (kind, name, error)
    assert states["openpose_body"]["Mconv7_stage6_L2.weight"].shape[0] == 19


def test_layouts_are_the_published_sizes():
    """At full width the layouts hold the published files' parameter counts (body 52.3M: 209 MB)."""
    from sdcli.convert.openpose import identify

    counts = {}
    for kind in ("openpose_body", "openpose_hand", "openpose_face"):
        shapes = {}
        for name, (k, c_in, c_out) in full_shapes(kind).items():
            shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (c_out, c_in, k, k), (c_out,)
        counts[kind] = sum(math.prod(s) for s in shapes.values())
        assert identify(shapes) == kind
    assert counts == {"openpose_body": 52311446, "openpose_hand": 36832324, "openpose_face": 38425706}


def full_shapes(kind: str) -> dict:
    out = {}

    def conv(layer, c_in):
        out[layer[0]] = (layer[1], c_in, out_channels(kind, layer[0])[0])
        return out[layer[0]][2]

    walk(kind, conv)
    return out


def test_pickle_refused_without_allow_pickle(tmp_path):
    path = tmp_path / "body_pose_model.pth"
    path.write_bytes(b"PK\x03\x04 not read")
    target = tmp_path / "annotators"
    result = CliRunner().invoke(app, ["convert", str(path), "--annotator-dir", str(target)])
    assert result.exit_code == 2
    assert "--allow-pickle" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not target.exists()


def test_missing_network_is_one_line(tmp_path):
    import cv2

    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.full((64, 64, 3), 128, np.uint8))
    empty = tmp_path / "none"
    result = CliRunner().invoke(app, ["detect", "openpose_full", str(image), "--annotator-dir", str(empty)])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert len(line.splitlines()) == 1 and "openpose_body" in line and str(empty) in line
    assert "body_pose_model.pth" in line and "Traceback" not in line
    assert not (tmp_path / "a-openpose_full.png").exists()


# --- the body post-processing on synthetic maps --------------------------------------------------

# (x, y) of the 18 parts (nose, neck, right shoulder/elbow/wrist, left shoulder/elbow/wrist, right
# hip/knee/ankle, left hip/knee/ankle, right/left eye, right/left ear) of a person at the origin
TEMPLATE = ((45, 20), (45, 45), (30, 45), (25, 70), (22, 95), (60, 45), (65, 70), (68, 95), (37, 100), (35, 140),
            (34, 180), (53, 100), (55, 140), (56, 180), (41, 14), (49, 14), (35, 18), (55, 18))


def synthetic_maps(people, h=256, w=256):
    """Heatmaps (Gaussian blobs, sigma 4) and PAFs (unit vectors within 3 pixels of each limb)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    heat = np.zeros((h, w, 19))
    paf = np.zeros((h, w, 38))
    for person in people:
        for part, (x, y) in enumerate(person):
            heat[:, :, part] = np.maximum(heat[:, :, part], np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 32))
        for (a, b), (cx, cy) in zip(op.LIMBS, op.PAF_CHANNELS):
            (x1, y1), (x2, y2) = person[a - 1], person[b - 1]
            length = math.hypot(x2 - x1, y2 - y1)
            ux, uy = (x2 - x1) / length, (y2 - y1) / length
            t = ((xx - x1) * ux + (yy - y1) * uy)
            dist = np.abs((xx - x1) * uy - (yy - y1) * ux)
            band = (t >= -2) & (t <= length + 2) & (dist <= 3)
            paf[band, cx], paf[band, cy] = ux, uy
    return heat, paf


def test_two_people_assembled_and_drawn():
    first = [(x + 10, y + 10) for x, y in TEMPLATE]
    second = [(x + 140, y + 50) for x, y in TEMPLATE]
    heat, paf = synthetic_maps([first, second])
    people = op.people_of(heat, paf, 256)
    assert len(people) == 2
    found = sorted((p.body for p in people), key=lambda body: body[1][0])
    assert found[0] == [(float(x), float(y)) for x, y in first]
    assert found[1] == [(float(x), float(y)) for x, y in second]
    canvas = op.draw(people, 256, 256)
    for person in (first, second):
        for part, (x, y) in enumerate(person):
            assert tuple(canvas[y, x]) == op.COLOURS[part]  # each joint's disc
        (x1, y1), (x2, y2) = person[12], person[13]  # left knee -> left ankle: limb 12 of the list, 60 % of its colour
        assert tuple(canvas[(y1 + y2) // 2, (x1 + x2) // 2]) == tuple(int(c * 0.6) for c in op.COLOURS[11])
    assert canvas[5, 200].tolist() == [0, 0, 0] and canvas[230, 5].tolist() == [0, 0, 0]
    # one limb's field gone: that person splits, and the small part (< 4 parts) is dropped
    cut = paf.copy()
    cut[:, :, list(op.PAF_CHANNELS[6])] = 0  # neck -> right hip, for both
    people = op.people_of(heat, cut, 256)
    assert len(people) == 2 and all(p.body[8] is None and p.body[9] is None and p.body[10] is None for p in people)
    assert all(p.body[11] is not None for p in people)  # the left leg hangs on its own limb


def test_hand_and_face_boxes():
    body = [None] * 18
    body[2], body[3], body[4] = (100.0, 100.0), (100.0, 160.0), (100.0, 200.0)  # right arm, straight down
    (x, y, side, left), = op.hand_boxes(body, 512, 512)
    width = 1.5 * max(40.0, 0.9 * 60.0)  # 1.5 x max(forearm, 0.9 x upper arm)
    assert (x, y, side, left) == (int(100 - width / 2), int(200 + 0.33 * 40 - width / 2), int(width), False)
    body[5], body[6], body[7] = (300.0, 100.0), (300.0, 110.0), (300.0, 115.0)  # a left arm too short for a box
    assert [b[3] for b in op.hand_boxes(body, 512, 512)] == [False]
    assert op.face_box(body, 512, 512) is None  # no nose
    body[0], body[14], body[16] = (200.0, 50.0), (190.0, 45.0), (180.0, 50.0)
    assert op.face_box(body, 512, 512) == (170, 20, 60)  # 3 x eye 10, 1.5 x ear 20: half-side 30
    assert op.face_box(body, 45, 512) == (170, 20, 25)  # cut at the bottom (where y + half-side passes it)


# --- the whole preprocessor with a stand-in body network -------------------------------------------

PART_CODES = [40 + 10 * p for p in range(18)]  # red channel at each joint's disc
LIMB_CODES = [30 + 11 * k for k in range(19)]  # blue channel along each limb; green: its angle
LINE = 14


def oracle_ir(folder):
    """A body 'network' reading drawn skeletons: heatmap p where red is PART_CODES[p], PAF k where
    blue is LIMB_CODES[k], its direction from green (the angle), each averaged over 8 x 8 cells
    (the fields doubled)."""
    import openvino as ov

    class Oracle(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("parts", torch.tensor(PART_CODES, dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer("limbs", torch.tensor(LIMB_CODES, dtype=torch.float32).view(1, -1, 1, 1))

        def forward(self, image):
            value = (image + 0.5) * 256  # BGR 0..255
            blue, green, red = value[:, 0:1], value[:, 1:2], value[:, 2:3]
            parts = torch.relu(1 - (red - self.parts).abs() / 3)
            limbs = torch.relu(1 - (blue - self.limbs).abs() / 3)
            angle = green / 255 * 2 * math.pi
            channels = [None] * 38
            for k, (cx, cy) in enumerate(op.PAF_CHANNELS):
                channels[cx] = limbs[:, k:k + 1] * torch.cos(angle)
                channels[cy] = limbs[:, k:k + 1] * torch.sin(angle)
            pool = torch.nn.functional.avg_pool2d
            heat = torch.cat([parts, torch.zeros_like(red)], 1)
            return 2 * pool(torch.cat(channels, 1), 8), pool(heat, 8)

    with torch.no_grad():
        ir = ov.convert_model(Oracle(), example_input=torch.zeros(1, 3, 64, 64),
                              input=[ov.PartialShape([1, 3, -1, -1])])
    ir.inputs[0].get_tensor().set_names({"image"})
    ir.outputs[0].get_tensor().set_names({"paf"})
    ir.outputs[1].get_tensor().set_names({"heatmap"})
    (folder / "openpose_body").mkdir(parents=True)
    ov.save_model(ir, folder / "openpose_body" / "openvino_model.xml")


def skeleton_image(people, h=512, w=512) -> np.ndarray:
    """RGB: each limb a line (blue its code, green its angle), deepest first so that each limb
    keeps its own end at the joint it leads to; then each joint a disc in red."""
    import cv2

    image = np.zeros((h, w, 3), np.uint8)
    depth = {1: 0, 2: 1, 5: 1, 0: 1, 8: 1, 11: 1, 3: 2, 6: 2, 9: 2, 12: 2, 14: 2, 15: 2, 4: 3, 7: 3, 10: 3, 13: 3,
             16: 3, 17: 3}
    order = sorted(range(17), key=lambda k: -depth[op.LIMBS[k][1] - 1])
    for person in people:
        blue, green = image[:, :, 2].copy(), image[:, :, 1].copy()
        for k in order:
            (x1, y1), (x2, y2) = person[op.LIMBS[k][0] - 1], person[op.LIMBS[k][1] - 1]
            angle = math.atan2(y2 - y1, x2 - x1) % (2 * math.pi)
            cv2.line(blue, (x1, y1), (x2, y2), LIMB_CODES[k], LINE)
            cv2.line(green, (x1, y1), (x2, y2), int(round(angle / (2 * math.pi) * 255)), LINE)
        image[:, :, 2], image[:, :, 1] = blue, green
        red = image[:, :, 0].copy()
        for part, (x, y) in enumerate(person):
            cv2.circle(red, (x, y), 12, PART_CODES[part], -1)
        image[:, :, 0] = red
    return image


# a person of about 250 x 450 pixels, its head large enough for its lines to stay apart
LARGE = ((100, 85), (100, 145), (60, 145), (48, 215), (42, 285), (140, 145), (152, 215), (158, 285), (78, 290),
         (74, 365), (72, 440), (122, 290), (126, 365), (128, 440), (72, 40), (128, 40), (40, 70), (160, 70))


def big(person, dx, dy):
    return [(x + dx, y + dy) for x, y in LARGE]


@pytest.fixture(scope="module")
def stand_in(converted, tmp_path_factory):
    """An annotator folder with the stand-in body network and the random hand and face ones."""
    _, networks, _ = converted
    folder = tmp_path_factory.mktemp("stand_in") / "annotators"
    oracle_ir(folder)
    for kind in ("openpose_hand", "openpose_face"):
        (folder / kind).symlink_to(networks / kind)
    return folder


def test_detect_finds_the_drawn_people(stand_in, tmp_path, monkeypatch):
    import cv2

    from sdcli.imaging.control import preprocess
    from sdcli.imaging.preprocessors import detect

    folder = stand_in
    people = [big(TEMPLATE, 10, 20), big(TEMPLATE, 250, 30)]
    image = skeleton_image(people)
    path = tmp_path / "pose.png"
    cv2.imwrite(str(path), image[:, :, ::-1])
    result = CliRunner().invoke(app, ["detect", "openpose", str(path), "--annotator-dir", str(folder), "-q"])
    assert result.exit_code == 0, result.output
    drawn = cv2.imread(str(tmp_path / "pose-openpose.png"))[:, :, ::-1]
    assert drawn.shape == image.shape
    found = op.detect_people(np.ascontiguousarray(image[:, :, ::-1]), {"body": folder / "openpose_body" / "openvino_model.xml"})
    assert len(found) == 2
    for person in people:
        match = min(found, key=lambda p: abs(p.body[1][0] - person[1][0]))
        for part, (x, y) in enumerate(person):
            assert match.body[part] is not None, part
            assert math.hypot(match.body[part][0] - x, match.body[part][1] - y) <= 12, (part, match.body[part], (x, y))
            px, py = int(match.body[part][0]), int(match.body[part][1])
            assert tuple(drawn[py, px]) == op.COLOURS[part]
    assert np.count_nonzero(drawn.any(axis=2)) > 5000
    # another image (the people moved) moves the map; the hands and face add to it
    other = detect(skeleton_image([big(TEMPLATE, 60, 10)]), "openpose", annotator_dir=folder)
    assert np.abs(other.astype(int) - drawn.astype(int)).max() == 255
    full = detect(image, "openpose_full", annotator_dir=folder)
    body_only = detect(image, "openpose", annotator_dir=folder)
    assert np.array_equal(body_only, drawn)
    assert full.shape == drawn.shape and np.count_nonzero(np.any(full != drawn, axis=2)) > 0
    # the hand and face modules take processor_res too, as every legacy module in the current extension
    for module in ("openpose_hand", "openpose_faceonly"):  # (the image: 512 x 512)
        assert detect(image, module, 256, annotator_dir=folder).shape == (256, 256, 3)
    # generate's map (the fitted image at its own size, the folder from $SDCLI_ANNOTATOR_DIR) is detect's
    monkeypatch.setenv("SDCLI_ANNOTATOR_DIR", str(folder))
    assert np.array_equal(preprocess(image, "openpose"), drawn)


def test_server_detect_and_missing_network(stand_in, monkeypatch):
    pytest.importorskip("fastapi")
    import base64

    import cv2
    from fastapi.testclient import TestClient

    from sdcli.imaging.image_io import encode_png
    from sdcli.imaging.preprocessors import detect
    from sdcli.serve.app import create_app

    image = skeleton_image([big(TEMPLATE, 60, 10)])[:384, :448]
    client = TestClient(create_app(None))
    body = {"controlnet_module": "openpose", "controlnet_input_images": [base64.b64encode(encode_png(image)).decode()],
            "controlnet_processor_res": 256}
    monkeypatch.setenv("SDCLI_ANNOTATOR_DIR", str(stand_in))
    r = client.post("/controlnet/detect", json=body)
    assert r.status_code == 200, r.text
    got = cv2.imdecode(np.frombuffer(base64.b64decode(r.json()["images"][0]), np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    assert got.shape == (256, 299, 3) and got.any()
    assert np.array_equal(got, detect(image, "openpose", 256, annotator_dir=stand_in))
    monkeypatch.setenv("SDCLI_ANNOTATOR_DIR", str(stand_in / "missing"))
    r = client.post("/controlnet/detect", json=dict(body, controlnet_module="openpose_full"))
    assert r.status_code == 422 and "openpose_body" in r.json()["detail"] and "missing" in r.json()["detail"], r.text
    modules = client.get("/controlnet/module_list").json()["module_list"]
    # the extension's sorting priority 100 puts the default of each control type first (by label, descending)
    assert modules[:6] == ["none", "softedge_pidinet", "scribble_pidinet", "recolor_luminance", "openpose_full",
                           "inpaint_only"]
    assert client.get("/controlnet/control_types").json()["control_types"]["OpenPose"]["module_list"][1:] == \
        ["openpose_full", "openpose_hand", "openpose_faceonly", "openpose_face", "openpose"]


# --- hands and face on known maps --------------------------------------------------------------------

def blob(h, w, x, y, sigma, amplitude):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    return amplitude * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma * sigma))


def test_blur_matches_scipy():
    from scipy.ndimage import gaussian_filter

    x = np.random.default_rng(3).random((40, 57))
    assert np.abs(op.gaussian(x, 3.0) - gaussian_filter(x, sigma=3)).max() < 1e-12


def test_hand_keypoints_take_the_heaviest_region():
    heat = np.zeros((128, 128, 22))
    heat[:, :, 0] = blob(128, 128, 40, 30, 3, 0.5) + blob(128, 128, 100, 100, 1, 0.9)  # wide and low beats narrow and tall
    heat[:, :, 2] = blob(128, 128, 64, 90, 2, 0.6)
    points = op.hand_keypoints(heat, 150, 200)
    assert points.shape == (21, 2)
    assert points[0].tolist() == [int(40 * 200 / 128), int(30 * 150 / 128)]
    assert points[1].tolist() == [0, 0]  # nothing passes
    assert points[2].tolist() == [100, int(90 * 150 / 128)]
    assert op.normalised(points, 10, 20, 300, 400)[1] == (np.float32(-1 / 400), np.float32(-1 / 300))


def test_face_keypoints_and_corner_aligned_scaling():
    maps = np.zeros((3, 20, 30), np.float32)
    maps[0, 7, 5] = 0.5
    maps[1] += 0.04  # under the threshold: skipped
    maps[2, 3, 9] = maps[2, 12, 2] = 0.7  # the first maximum in row order
    assert op.face_keypoints(maps).tolist() == [[5, 7], [9, 3]]
    small = np.random.default_rng(4).random((71, 48, 48), dtype=np.float32)
    expected = torch.nn.functional.interpolate(torch.from_numpy(small)[None], (101, 77), mode="bilinear",
                                               align_corners=True)[0].numpy()
    assert np.abs(op.bilinear_corners(small, 101, 77) - expected).max() < 1e-5


def test_hand_and_face_drawing():
    import colorsys

    for i in range(20):
        assert op.hue_colour(i / 20) == [c * 255 for c in colorsys.hsv_to_rgb(i / 20, 1.0, 1.0)]
    canvas = np.zeros((200, 200, 3), np.uint8)
    hand = [(np.float32(-1 / 200), np.float32(-1 / 200))] * 21  # not found: nothing drawn
    hand[0], hand[1], hand[5] = (np.float32(0.5), np.float32(0.9)), (np.float32(0.1), np.float32(0.9)), \
        (np.float32(0.5), np.float32(0.3))
    op.draw_hand(canvas, hand)
    assert tuple(canvas[180, 60]) == (255, 0, 0)  # bone 0 (0 -> 1): hue 0
    assert tuple(canvas[120, 100]) == (204, 255, 0)  # bone 4 (0 -> 5): hue 0.2
    assert tuple(canvas[180, 100]) == tuple(canvas[60, 100]) == (0, 0, 255)  # joints
    assert not canvas[:5, :5].any()
    face = np.zeros((50, 50, 3), np.uint8)
    op.draw_face(face, [(np.float32(0.5), np.float32(0.5)), (np.float32(-0.02), np.float32(0.4))])
    assert tuple(face[25, 25]) == (255, 255, 255) and face[22:29, 22:29].all(axis=2).sum() > 20
    assert np.count_nonzero(face.any(axis=2)) == np.count_nonzero(face[20:31, 20:31].any(axis=2))


def test_generate_refuses_a_missing_network_before_loading(tmp_path, monkeypatch):
    """engine.controlnet.check_request (generate's, batch's and the server's check before anything
    loads) names the openpose network that is not converted."""
    from types import SimpleNamespace

    from sdcli.engine.controlnet import ControlUnit, check_request
    from sdcli.imaging.annotators import MissingAnnotator

    monkeypatch.setenv("SDCLI_ANNOTATOR_DIR", str(tmp_path / "none"))
    folder = SimpleNamespace(denoiser="unet", unet_config={"in_channels": 4}, latent_channels=4, is_sdxl=False)
    engine = SimpleNamespace(folder=folder, controlnet_dir=tmp_path)
    request = SimpleNamespace(controlnets=[ControlUnit("control_v11p_sd15_openpose", None, preprocessor="openpose_hand")])
    with pytest.raises(MissingAnnotator, match="openpose_hand needs the network openpose_body.*body_pose_model.pth"):
        check_request(request, engine)
