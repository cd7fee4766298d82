"""A1111 ControlNet's depth, lineart and soft-edge preprocessors, run by OpenVINO from the IRs
`sdcli convert` writes (convert/annotators.py) into the annotator folder (imaging/annotators.py),
one folder per network, named as its module: depth_anything_v2, lineart (label
lineart_realistic), lineart_coarse, lineart_anime, softedge_hed (which softedge_hedsafe and
scribble_hed use too), softedge_pidinet (which softedge_pidisafe and scribble_pidinet use too).

Each follows the extension's steps on the image it is given (detect has resized it so its short
side is the Resolution slider, 512 by default), edge-padded at the bottom and right to multiples
of 64 as its resize_image_with_pad does, the padding cut off the map at the end:

- depth_anything_v2: the channels swapped (the extension converts its RGB image with OpenCV's
  BGR2RGB, so the network sees BGR; kept, so the maps are the extension's), divided by 255,
  resized bicubically (OpenCV) so both sides are at least 518 and multiples of 14 (Depth
  Anything's lower-bound resize: the scale that brings the shorter side to 518, each side
  rounded to a multiple of 14, rounded up where that falls under 518), normalised by ImageNet's
  mean and deviation; the network's depth resized bilinearly (half-pixel centres) to the padded
  image, scaled so its least value is 0 and its largest 255, truncated to uint8 (grey: the
  extension's colored=False);
- lineart, lineart_coarse: RGB / 255 into the generator, its output * 255 clipped and truncated
  to uint8, inverted (255 - x: white lines on black);
- lineart_anime: resized bicubically to multiples of 256, scaled to -1..1, the U-Net's output
  * 127.5 + 127.5 resized back bicubically, clipped, truncated to uint8, inverted;
- softedge_hed: the RGB image as float (0..255) into the HED network, its five edge maps (one per
  block, each half the size of the one before) resized bilinearly (OpenCV) to the image, averaged,
  a sigmoid of the mean * 255, clipped, truncated to uint8 (white edges on black);
  softedge_hedsafe: the same with the extension's safe step before the scaling (the sigmoid
  * 3 truncated, / 2: 0, 0.5, 1 or 1.5, so the map is 0, 127 or 255);
- scribble_hed: softedge_hed's map (its padding cut off) thinned as the extension's nms(map, 127,
  3.0) does: blurred (Gaussian, sigma 3, float32), a pixel kept where it is the largest of its line
  of three in at least one of four directions (horizontal, vertical, the two diagonals: OpenCV's
  dilation with that line as the kernel leaves it unchanged) and over 127; the kept pixels (255)
  blurred again (sigma 3, uint8) and every value over 4 made 255, the rest 0: white scribbles;
- softedge_pidinet: the channels swapped (the extension reverses RGB to BGR), divided by 255, into
  PiDiNet, whose fused edge map (a sigmoid, 0..1) * 255 is clipped and truncated to uint8;
  softedge_pidisafe: the safe step before the scaling; scribble_pidinet: softedge_pidinet's map
  thinned and thickened as scribble_hed's is.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from sdcli.imaging.annotators import compiled, find_annotator, infer

DEPTH_SIDE, PATCH = 518, 14
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
CUBIC_A = -0.75  # PyTorch's bicubic kernel
# the module -> the published file it is converted from (for the message when it is missing)
SOURCES = {"depth_anything_v2": "depth_anything_v2_vits.pth (or _vitb, _vitl, or their .safetensors)",
           "lineart": "sk_model.pth", "lineart_coarse": "sk_model2.pth", "lineart_anime": "netG.pth",
           "softedge_hed": "ControlNetHED.pth", "softedge_hedsafe": "ControlNetHED.pth",
           "scribble_hed": "ControlNetHED.pth", **{name: "table5_pidinet.pth" for name in
                                                   ("softedge_pidinet", "softedge_pidisafe", "scribble_pidinet")}}
# the modules that run another module's network (else each runs the network named as it)
NETWORKS = {"softedge_hedsafe": "softedge_hed", "scribble_hed": "softedge_hed",
            "softedge_pidisafe": "softedge_pidinet", "scribble_pidinet": "softedge_pidinet"}
SAFE_STEP = 2  # the extension's safe_step(x, step=2)
SCRIBBLE_SIGMA, SCRIBBLE_KEEP, SCRIBBLE_ON = 3.0, 127, 4  # scribble_hed's blur, ridge threshold, final threshold


def network(module: str, folder: Path | None = None) -> Path:
    """The IR of `module`'s converted network (its folder is named as the module, or as the one
    NETWORKS names); MissingAnnotator when it is not converted."""
    return find_annotator(NETWORKS.get(module, module), folder, SOURCES[module], module)


def run_network(module: str, inputs, folder: Path | None) -> np.ndarray:
    """The first output of `module`'s converted network."""
    outputs = infer(network(module, folder), inputs)
    return next(iter(outputs.values()))


def padded64(image: np.ndarray, detector: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """`detector` on the image edge-padded at the bottom and right to multiples of 64, cropped back."""
    h, w = image.shape[:2]
    out = detector(np.ascontiguousarray(np.pad(image, [(0, -h % 64), (0, -w % 64), (0, 0)], mode="edge")))
    return np.ascontiguousarray(out[:h, :w])


# --- resampling as matrices (PyTorch's formulas) --------------------------------------------------------

def cubic_matrix(out_size: int, in_size: int, ratio: float) -> np.ndarray:
    """[out, in]: PyTorch's bicubic upsampling (align_corners False, A -0.75, indices clamped) of one
    axis with source step `ratio` (1 / its scale_factor)."""
    src = ratio * (np.arange(out_size) + 0.5) - 0.5
    base = np.floor(src)
    t = src - base
    a = CUBIC_A
    near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1  # noqa: E731 - |x| <= 1
    far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # noqa: E731 - 1 < |x| < 2
    weights = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)
    out = np.zeros((out_size, in_size))
    for k in range(4):
        np.add.at(out, (np.arange(out_size), np.clip(base.astype(int) - 1 + k, 0, in_size - 1)), weights[:, k])
    return out


def linear_matrix(out_size: int, in_size: int) -> np.ndarray:
    """[out, in]: PyTorch's bilinear resize of one axis to a size (align_corners False)."""
    src = np.maximum((in_size / out_size) * (np.arange(out_size) + 0.5) - 0.5, 0.0)
    low = np.minimum(src.astype(int), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    t = src - low
    out = np.zeros((out_size, in_size))
    np.add.at(out, (np.arange(out_size), low), 1 - t)
    np.add.at(out, (np.arange(out_size), high), t)
    return out


def position_matrices(rows: int, cols: int, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """DINOv2's position-grid interpolation to rows x cols patches (scale (n + 0.1) / grid; none
    when the image is grid x grid patches) as the two matrices the IR takes."""
    if rows == cols == grid:
        return np.eye(grid, dtype=np.float32), np.eye(grid, dtype=np.float32)
    return (cubic_matrix(rows, grid, grid / (rows + 0.1)).astype(np.float32),
            cubic_matrix(cols, grid, grid / (cols + 0.1)).astype(np.float32))


# --- the modules --------------------------------------------------------------------------------------

def depth_size(h: int, w: int, side: int = DEPTH_SIDE, multiple: int = PATCH) -> tuple[int, int]:
    """Depth Anything's lower-bound resize: (height, width), each at least `side` and a multiple."""
    scale = max(side / h, side / w)

    def constrain(x: float) -> int:
        y = int(np.round(x / multiple) * multiple)
        return y if y >= side else int(np.ceil(x / multiple) * multiple)

    return constrain(scale * h), constrain(scale * w)


def depth_input(image: np.ndarray) -> np.ndarray:
    """The network's input for RGB uint8 `image`: float32 [1, 3, 14h, 14w] (see the module doc)."""
    import cv2

    x = image[:, :, ::-1].astype(np.float64) / 255.0
    nh, nw = depth_size(*image.shape[:2])
    x = cv2.resize(x, (nw, nh), interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(((x - MEAN) / STD).transpose(2, 0, 1)[None], dtype=np.float32)


def depth_map(depth: np.ndarray, h: int, w: int) -> np.ndarray:
    """The network's depth [dh, dw] resized to h x w (bilinear) and scaled to 0..255, uint8."""
    d = depth.astype(np.float64)
    d = linear_matrix(h, d.shape[0]) @ d @ linear_matrix(w, d.shape[1]).T
    low, high = d.min(), d.max()
    if not high > low:
        return np.zeros((h, w), np.uint8)
    return ((d - low) / (high - low) * 255.0).astype(np.uint8)


def depth_detector(image: np.ndarray, folder: Path | None = None) -> np.ndarray:
    xml = find_annotator("depth_anything_v2", folder, SOURCES["depth_anything_v2"], "depth_anything_v2")
    grid = compiled(xml).input("pos_rows").get_partial_shape()[1].get_length()  # the position grid's side
    x = depth_input(image)
    rows, cols = position_matrices(x.shape[2] // PATCH, x.shape[3] // PATCH, grid)
    depth = next(iter(infer(xml, {"image": x, "pos_rows": rows, "pos_cols": cols}).values()))
    return depth_map(depth[0], *image.shape[:2])


def run_depth_anything_v2(image: np.ndarray, annotator_dir: Path | None = None, **_) -> np.ndarray:
    return padded64(image, lambda x: depth_detector(x, annotator_dir))


def lineart_detector(image: np.ndarray, module: str, folder: Path | None = None) -> np.ndarray:
    x = np.ascontiguousarray((image.astype(np.float32) / 255.0).transpose(2, 0, 1)[None])
    line = run_network(module, x, folder)[0, 0]
    return 255 - (line * 255.0).clip(0, 255).astype(np.uint8)


def run_lineart(image: np.ndarray, annotator_dir: Path | None = None, **_) -> np.ndarray:
    return padded64(image, lambda x: lineart_detector(x, "lineart", annotator_dir))


def run_lineart_coarse(image: np.ndarray, annotator_dir: Path | None = None, **_) -> np.ndarray:
    return padded64(image, lambda x: lineart_detector(x, "lineart_coarse", annotator_dir))


def anime_detector(image: np.ndarray, folder: Path | None = None) -> np.ndarray:
    import cv2

    h, w = image.shape[:2]
    hn, wn = 256 * -(-h // 256), 256 * -(-w // 256)
    x = cv2.resize(image, (wn, hn), interpolation=cv2.INTER_CUBIC).astype(np.float32) / 127.5 - 1.0
    line = run_network("lineart_anime", np.ascontiguousarray(x.transpose(2, 0, 1)[None]), folder)[0, 0]
    line = cv2.resize(line * 127.5 + 127.5, (w, h), interpolation=cv2.INTER_CUBIC)
    return 255 - line.clip(0, 255).astype(np.uint8)


def run_lineart_anime(image: np.ndarray, annotator_dir: Path | None = None, **_) -> np.ndarray:
    return padded64(image, lambda x: anime_detector(x, annotator_dir))


def safe_step(edge: np.ndarray, step: int = SAFE_STEP) -> np.ndarray:
    """The extension's safe_step: edge * (step + 1) in float32 truncated to an integer, / step."""
    y = (edge.astype(np.float32) * np.float32(step + 1)).astype(np.int32)
    return y.astype(np.float32) / np.float32(step)


def hed_detector(image: np.ndarray, module: str, folder: Path | None = None) -> np.ndarray:
    import cv2

    h, w = image.shape[:2]
    x = np.ascontiguousarray(image.astype(np.float32).transpose(2, 0, 1)[None])
    outputs = infer(network(module, folder), x)
    maps = [cv2.resize(np.ascontiguousarray(outputs[name][0, 0], dtype=np.float32), (w, h),
                       interpolation=cv2.INTER_LINEAR) for name in sorted(outputs)]  # edge1 ... edge5
    edge = 1.0 / (1.0 + np.exp(-np.mean(np.stack(maps, axis=2), axis=2).astype(np.float64)))
    if module == "softedge_hedsafe":
        edge = safe_step(edge)
    return (edge * 255.0).clip(0, 255).astype(np.uint8)


def run_softedge_hed(image: np.ndarray, annotator_dir: Path | None = None, **_) -> np.ndarray:
    return padded64(image, lambda x: hed_detector(x, "softedge_hed", annotator_dir))


def run_softedge_hedsafe(image: np.ndarray, annotator_dir: Path | None = None, **_) -> np.ndarray:
    return padded64(image, lambda x: hed_detector(x, "softedge_hedsafe", annotator_dir))


def scribble_lines(edge: np.ndarray) -> np.ndarray:
    """scribble_hed's step after the HED map (see the module's docstring): thin ridges of the
    blurred map over SCRIBBLE_KEEP, thickened by a second blur, 0 or 255."""
    import cv2

    smooth = cv2.GaussianBlur(edge.astype(np.float32), (0, 0), SCRIBBLE_SIGMA)
    centre = np.zeros((3, 3), np.uint8)
    centre[1] = 1
    lines = (centre, centre.T.copy(), np.eye(3, dtype=np.uint8), np.fliplr(np.eye(3, dtype=np.uint8)).copy())
    ridge = np.zeros(smooth.shape, bool)
    for line in lines:  # the largest of its three along this line
        ridge |= cv2.dilate(smooth, line) == smooth
    thin = np.where(ridge & (smooth > SCRIBBLE_KEEP), 255, 0).astype(np.uint8)
    return np.where(cv2.GaussianBlur(thin, (0, 0), SCRIBBLE_SIGMA) > SCRIBBLE_ON, 255, 0).astype(np.uint8)


def run_scribble_hed(image: np.ndarray, annotator_dir: Path | None = None, **_) -> np.ndarray:
    return scribble_lines(padded64(image, lambda x: hed_detector(x, "scribble_hed", annotator_dir)))


def pidinet_detector(image: np.ndarray, module: str, folder: Path | None = None) -> np.ndarray:
    x = np.ascontiguousarray(image[:, :, ::-1].astype(np.float32).transpose(2, 0, 1)[None] / np.float32(255))
    edge = run_network(module, x, folder)[0, 0]
    if module == "softedge_pidisafe":
        edge = safe_step(edge)
    return (edge * np.float32(255)).clip(0, 255).astype(np.uint8)


def run_softedge_pidinet(image: np.ndarray, annotator_dir: Path | None = None, **_) -> np.ndarray:
    return padded64(image, lambda x: pidinet_detector(x, "softedge_pidinet", annotator_dir))


def run_softedge_pidisafe(image: np.ndarray, annotator_dir: Path | None = None, **_) -> np.ndarray:
    return padded64(image, lambda x: pidinet_detector(x, "softedge_pidisafe", annotator_dir))


def run_scribble_pidinet(image: np.ndarray, annotator_dir: Path | None = None, **_) -> np.ndarray:
    return scribble_lines(padded64(image, lambda x: pidinet_detector(x, "scribble_pidinet", annotator_dir)))


# (module, the extension's label, run, what it does) for imaging/preprocessors.py's table
MODULES = (
    ("depth_anything_v2", "depth_anything_v2", run_depth_anything_v2,
     "relative depth by Depth Anything V2 (OpenVINO; near: white)"),
    ("lineart", "lineart_realistic", run_lineart, "white lines by lllyasviel's lineart generator, sk_model.pth (OpenVINO)"),
    ("lineart_coarse", "lineart_coarse", run_lineart_coarse,
     "white lines, coarser, by the lineart generator's sk_model2.pth (OpenVINO)"),
    ("lineart_anime", "lineart_anime", run_lineart_anime, "white lines by the anime lineart U-Net, netG.pth (OpenVINO)"),
    ("softedge_hed", "softedge_hed", run_softedge_hed,
     "soft white edges by lllyasviel's HED network, ControlNetHED.pth (OpenVINO)"),
    ("softedge_hedsafe", "softedge_hedsafe", run_softedge_hedsafe,
     "HED's soft edges in three steps (0, 127, 255: the extension's safe step), ControlNetHED.pth (OpenVINO)"),
    ("scribble_hed", "scribble_hed", run_scribble_hed,
     "white scribbles: HED's edges thinned, thickened and made 0/255, ControlNetHED.pth (OpenVINO)"),
    ("softedge_pidinet", "softedge_pidinet", run_softedge_pidinet,
     "soft white edges by PiDiNet, table5_pidinet.pth (OpenVINO)"),
    ("softedge_pidisafe", "softedge_pidisafe", run_softedge_pidisafe,
     "PiDiNet's soft edges in three steps (0, 127, 255: the extension's safe step), table5_pidinet.pth (OpenVINO)"),
    ("scribble_pidinet", "scribble_pidinet", run_scribble_pidinet,
     "white scribbles: PiDiNet's edges thinned, thickened and made 0/255, table5_pidinet.pth (OpenVINO)"),
)
