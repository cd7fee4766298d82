"""`sdcli convert` of the neural ControlNet preprocessors ("annotators") A1111's ControlNet
extension runs, from their published weights into OpenVINO IRs that imaging/annotators.py runs:

- Depth Anything V2 (`depth_anything_v2_vits.pth`, `_vitb`, `_vitl`, or the `.safetensors`
  copies of them the extension downloads): a DINOv2 ViT (patch 14) and a DPT head, the
  module `depth_anything_v2`;
- the lineart generator (lllyasviel's `sk_model.pth`: module `lineart`, label
  lineart_realistic; `sk_model2.pth`: `lineart_coarse`), a small ResNet-style generator with
  instance norms and a sigmoid;
- the anime lineart U-Net (`netG.pth`: module `lineart_anime`);
- lllyasviel's HED edge network, ControlNetHED_Apache2 (`ControlNetHED.pth`: modules
  `softedge_hed` and `softedge_hedsafe`, one network), VGG-style blocks that each project their
  features to one edge map;
- PiDiNet (`table5_pidinet.pth`: modules `softedge_pidinet`, `softedge_pidisafe` and
  `scribble_pidinet`), whose pixel-difference convolutions are exported as the plain kernels that
  compute them (the recipe the extension builds it with, 'carv4').

The torch modules here are written for sdcli from the architectures' descriptions, with the
checkpoints' own tensor names (so that `load_state_dict(strict=True)` checks every tensor), and
their sizes read from the weights.  torch is needed at convert time only.

Depth Anything's ViT interpolates its 37 x 37 position grid bicubically to the image's patch
grid with a scale of (patches + 0.1) / 37, except at exactly 37 x 37.  The IR does not trace
that: it takes the two interpolation matrices (rows, columns) as inputs, computed by
imaging/annotators.py, and applies them to the grid, so one IR serves every image size.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

from sdcli.convert.ir import traced_to_openvino
from sdcli.imaging.annotators import INFO_FILE, INPUT_NAME, IR_FILE, annotator_dir
from sdcli.model.tensor_files import PICKLE_SUFFIXES
from sdcli.util.errors import UsageError
from sdcli.util.fsutil import atomic_directory, atomic_write_bytes

SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
PATCH = 14
# encoder depth -> the blocks whose outputs the DPT head reads (Depth Anything V2's choice)
TAPS = {12: (2, 5, 8, 11), 24: (4, 11, 17, 23), 40: (9, 19, 29, 39)}
ENCODERS = {384: "vits", 768: "vitb", 1024: "vitl", 1536: "vitg"}


def _torch():
    import torch

    return torch


# --- Depth Anything V2 --------------------------------------------------------------------------------

def _vit():
    """DINOv2's encoder (no registers) as Depth Anything V2 uses it, under its tensor names."""
    torch = _torch()
    nn = torch.nn
    F = torch.nn.functional

    class Attention(nn.Module):
        def __init__(self, dim: int, heads: int):
            super().__init__()
            self.heads = heads
            self.qkv = nn.Linear(dim, dim * 3)
            self.proj = nn.Linear(dim, dim)

        def forward(self, x):
            d = x.shape[-1] // self.heads
            qkv = self.qkv(x).reshape(x.shape[0], -1, 3, self.heads, d).permute(2, 0, 3, 1, 4)
            weights = torch.softmax((qkv[0] * d ** -0.5) @ qkv[1].transpose(-2, -1), dim=-1)
            out = (weights @ qkv[2]).transpose(1, 2).reshape(x.shape[0], -1, x.shape[-1])
            return self.proj(out)

    class Mlp(nn.Module):
        def __init__(self, dim: int, hidden: int):
            super().__init__()
            self.fc1 = nn.Linear(dim, hidden)
            self.fc2 = nn.Linear(hidden, dim)

        def forward(self, x):
            return self.fc2(F.gelu(self.fc1(x)))

    class Scale(nn.Module):
        def __init__(self, dim: int):
            super().__init__()
            self.gamma = nn.Parameter(torch.ones(dim))

        def forward(self, x):
            return x * self.gamma

    class Block(nn.Module):
        def __init__(self, dim: int, heads: int, hidden: int):
            super().__init__()
            self.norm1 = nn.LayerNorm(dim, eps=1e-6)
            self.attn = Attention(dim, heads)
            self.ls1 = Scale(dim)
            self.norm2 = nn.LayerNorm(dim, eps=1e-6)
            self.mlp = Mlp(dim, hidden)
            self.ls2 = Scale(dim)

        def forward(self, x):
            x = x + self.ls1(self.attn(self.norm1(x)))
            return x + self.ls2(self.mlp(self.norm2(x)))

    class PatchEmbed(nn.Module):
        def __init__(self, dim: int):
            super().__init__()
            self.proj = nn.Conv2d(3, dim, PATCH, PATCH)

    class Encoder(nn.Module):
        """DINOv2 without registers: patch embedding, class token, position grid, blocks, norm."""

        def __init__(self, dim: int, depth: int, heads: int, hidden: int, grid: int):
            super().__init__()
            self.grid = grid
            self.patch_embed = PatchEmbed(dim)
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
            self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
            self.mask_token = nn.Parameter(torch.zeros(1, dim))  # (training only; in the checkpoints)
            self.blocks = nn.ModuleList(Block(dim, heads, hidden) for _ in range(depth))
            self.norm = nn.LayerNorm(dim, eps=1e-6)

        def grid_positions(self, rows: int, cols: int):
            """The original's interpolation: bicubic, scale (patches + 0.1) / grid, none at grid x grid."""
            if rows == cols == self.grid:
                return self.pos_embed
            dim = self.pos_embed.shape[-1]
            grid = self.pos_embed[:, 1:].reshape(1, self.grid, self.grid, dim).permute(0, 3, 1, 2)
            scaled = F.interpolate(grid, scale_factor=((rows + 0.1) / self.grid, (cols + 0.1) / self.grid),
                                   mode="bicubic", align_corners=False)
            assert scaled.shape[-2:] == (rows, cols)
            return torch.cat([self.pos_embed[:, :1], scaled.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)

        def matrix_positions(self, rows_matrix, cols_matrix):
            """The same from interpolation matrices [rows, grid] and [cols, grid] (the IR's inputs)."""
            dim = self.pos_embed.shape[-1]
            grid = self.pos_embed[0, 1:].reshape(self.grid, self.grid * dim)
            by_rows = (rows_matrix @ grid).reshape(-1, self.grid, dim)  # [rows, grid, dim]
            both = cols_matrix @ by_rows  # [rows, cols, dim]
            return torch.cat([self.pos_embed[:, :1], both.reshape(1, -1, dim)], dim=1)

        def forward(self, image, positions, taps):
            patches = self.patch_embed.proj(image)
            x = patches.flatten(2).transpose(1, 2)
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + positions
            out = []
            for i, block in enumerate(self.blocks):
                x = block(x)
                if i in taps:
                    out.append(self.norm(x)[:, 1:])
            return out, patches

    return Encoder


def _dpt():
    """Depth Anything V2's DPT head, under its tensor names."""
    torch = _torch()
    nn = torch.nn
    F = torch.nn.functional

    class Unit(nn.Module):
        def __init__(self, features: int):
            super().__init__()
            self.conv1 = nn.Conv2d(features, features, 3, padding=1)
            self.conv2 = nn.Conv2d(features, features, 3, padding=1)

        def forward(self, x):
            return self.conv2(F.relu(self.conv1(F.relu(x)))) + x

    class Fusion(nn.Module):
        def __init__(self, features: int):
            super().__init__()
            self.out_conv = nn.Conv2d(features, features, 1)
            self.resConfUnit1 = Unit(features)
            self.resConfUnit2 = Unit(features)

        def forward(self, x, skip=None, like=None):
            if skip is not None:
                x = x + self.resConfUnit1(skip)
            x = self.resConfUnit2(x)
            if like is None:
                x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
            else:
                x = F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=True)
            return self.out_conv(x)

    class Scratch(nn.Module):
        def __init__(self, channels, features: int, head: int):
            super().__init__()
            for i, c in enumerate(channels, 1):
                setattr(self, f"layer{i}_rn", nn.Conv2d(c, features, 3, padding=1, bias=False))
            for i in range(1, 5):
                setattr(self, f"refinenet{i}", Fusion(features))
            self.output_conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
            self.output_conv2 = nn.Sequential(nn.Conv2d(features // 2, head, 3, padding=1), nn.ReLU(),
                                              nn.Conv2d(head, 1, 1), nn.ReLU(), nn.Identity())

    class Head(nn.Module):
        def __init__(self, dim: int, channels, features: int, head: int):
            super().__init__()
            self.projects = nn.ModuleList(nn.Conv2d(dim, c, 1) for c in channels)
            self.resize_layers = nn.ModuleList([nn.ConvTranspose2d(channels[0], channels[0], 4, 4),
                                                nn.ConvTranspose2d(channels[1], channels[1], 2, 2), nn.Identity(),
                                                nn.Conv2d(channels[3], channels[3], 3, 2, 1)])
            self.scratch = Scratch(channels, features, head)

        def forward(self, tokens, patches, image):
            maps = []
            for i, x in enumerate(tokens):
                x = x.transpose(1, 2).reshape(x.shape[0], x.shape[-1], patches.shape[-2], patches.shape[-1])
                maps.append(self.resize_layers[i](self.projects[i](x)))
            s = self.scratch
            l1, l2, l3, l4 = (getattr(s, f"layer{i}_rn")(m) for i, m in enumerate(maps, 1))
            x = s.refinenet4(l4, like=l3)
            x = s.refinenet3(x, l3, like=l2)
            x = s.refinenet2(x, l2, like=l1)
            x = s.refinenet1(x, l1)
            x = F.interpolate(s.output_conv1(x), size=image.shape[-2:], mode="bilinear", align_corners=True)
            return s.output_conv2(x)

    return Head


def _depth_modules():
    """(DepthAnythingV2, ForIR): the model, and its wrapper with the position matrices as inputs."""
    torch = _torch()
    nn = torch.nn
    F = torch.nn.functional
    Encoder, Head = _vit(), _dpt()

    class DepthAnythingV2(nn.Module):
        """forward(image [1, 3, 14h, 14w] normalised) -> relative depth [1, 14h, 14w] (larger: nearer)."""

        def __init__(self, dim, depth, heads, hidden, grid, channels, features, head):
            super().__init__()
            self.taps = TAPS[depth]
            self.pretrained = Encoder(dim, depth, heads, hidden, grid)
            self.depth_head = Head(dim, channels, features, head)

        def run(self, image, positions):
            tokens, patches = self.pretrained(image, positions, self.taps)
            return F.relu(self.depth_head(tokens, patches, image)).squeeze(1)

        def forward(self, image):
            rows, cols = image.shape[-2] // PATCH, image.shape[-1] // PATCH
            return self.run(image, self.pretrained.grid_positions(int(rows), int(cols)))

    class ForIR(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, image, pos_rows, pos_cols):
            return self.model.run(image, self.model.pretrained.matrix_positions(pos_rows, pos_cols))

    return DepthAnythingV2, ForIR


def depth_config(shapes: dict) -> dict:
    """DepthAnythingV2's sizes from the checkpoint's tensor shapes."""
    dim = shapes["pretrained.pos_embed"][-1]
    tokens = shapes["pretrained.pos_embed"][1] - 1
    grid = math.isqrt(tokens)
    depth = sum(1 for name in shapes if name.startswith("pretrained.blocks.") and name.endswith(".attn.qkv.weight"))
    if grid * grid != tokens or depth not in TAPS:
        raise UsageError(f"not a Depth Anything V2 checkpoint this converts ({depth} blocks, {tokens} positions)")
    if "pretrained.blocks.0.mlp.fc1.weight" not in shapes:
        raise UsageError("Depth Anything V2 with a SwiGLU encoder (vitg) is not supported: use vits, vitb or vitl")
    return {"dim": dim, "depth": depth, "heads": max(1, dim // 64), "grid": grid,
            "hidden": shapes["pretrained.blocks.0.mlp.fc1.weight"][0],
            "channels": [shapes[f"depth_head.projects.{i}.weight"][0] for i in range(4)],
            "features": shapes["depth_head.scratch.layer1_rn.weight"][0],
            "head": shapes["depth_head.scratch.output_conv2.0.weight"][0]}


# --- lineart (realistic, coarse) and lineart_anime -----------------------------------------------------

BLOCK = 16  # the side of the blocks PooledNorm averages first


def pooled_norm(channels: int, block: int):
    """nn.InstanceNorm2d (no affine, eps 1e-5, biased variance) for export: its mean and variance
    taken as averages of block x block averages (avg_pool2d), the same numbers when `block`
    divides both sides.  OpenVINO's CPU instance norm (MVN on a channels-last layout) and its
    ReduceMean sum a whole channel in one float32 accumulator, which loses about 1e-4 of the
    result on a 512 x 704 map; averaging blocks first keeps the IR within 1e-5 of PyTorch."""
    torch = _torch()
    F = torch.nn.functional

    class PooledNorm(torch.nn.Module):
        def forward(self, x):
            if block == 1:
                return F.instance_norm(x)
            centred = x - F.avg_pool2d(x, block).mean((2, 3), keepdim=True)
            variance = F.avg_pool2d(centred * centred, block).mean((2, 3), keepdim=True)
            return centred / torch.sqrt(variance + 1e-5)

    return PooledNorm()


def instance_norm(channels: int, block: int):
    return _torch().nn.InstanceNorm2d(channels)


def _lineart_module(blocks: int, width: int, norm=instance_norm):
    """The lineart generator; `norm(channels, block)`: its instance norms (pooled_norm for export:
    the IR then needs sides that are multiples of 64, which the preprocessor's padding gives)."""
    torch = _torch()
    nn = torch.nn

    def conv_norm_relu(conv):
        return [conv, norm(conv.out_channels, BLOCK), nn.ReLU()]

    class Residual(nn.Module):
        def __init__(self, c: int):
            super().__init__()
            self.conv_block = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), norm(c, BLOCK), nn.ReLU(),
                                            nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), norm(c, BLOCK))

        def forward(self, x):
            return x + self.conv_block(x)

    class Lineart(nn.Module):
        """forward(RGB [1, 3, H, W] in 0..1, H and W multiples of 4) -> lines [1, 1, H, W] in 0..1
        (1: background)."""

        def __init__(self):
            super().__init__()
            w = width
            self.model0 = nn.Sequential(nn.ReflectionPad2d(3), *conv_norm_relu(nn.Conv2d(3, w, 7)))
            self.model1 = nn.Sequential(*conv_norm_relu(nn.Conv2d(w, 2 * w, 3, 2, 1)),
                                        *conv_norm_relu(nn.Conv2d(2 * w, 4 * w, 3, 2, 1)))
            self.model2 = nn.Sequential(*(Residual(4 * w) for _ in range(blocks)))
            self.model3 = nn.Sequential(*conv_norm_relu(nn.ConvTranspose2d(4 * w, 2 * w, 3, 2, 1, 1)),
                                        *conv_norm_relu(nn.ConvTranspose2d(2 * w, w, 3, 2, 1, 1)))
            self.model4 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(w, 1, 7), nn.Sigmoid())

        def forward(self, image):
            return self.model4(self.model3(self.model2(self.model1(self.model0(image)))))

    return Lineart()


def _anime_module(downs: int, width: int, norm=instance_norm):
    """The anime lineart U-Net (pix2pix's UnetGenerator with instance norms): `downs` halvings, so
    its input's sides are multiples of 2 ** downs; a norm on a map of side H / 2 ** j gets blocks
    of min(16, 2 ** (downs - j)), which divide it."""
    torch = _torch()
    nn = torch.nn

    def level_norm(c: int, j: int):
        return norm(c, min(BLOCK, 2 ** (downs - j)))

    class Level(nn.Module):
        def __init__(self, index: int, outer: int, inner: int, inside=None, first: int | None = None):
            super().__init__()
            self.outermost = first is not None
            down = nn.Conv2d(first or outer, inner, 4, 2, 1, bias=True)
            if self.outermost:
                layers = [down, inside, nn.ReLU(), nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1), nn.Tanh()]
            elif inside is None:
                layers = [nn.LeakyReLU(0.2), down, nn.ReLU(), nn.ConvTranspose2d(inner, outer, 4, 2, 1),
                          level_norm(outer, index - 1)]
            else:
                layers = [nn.LeakyReLU(0.2), down, level_norm(inner, index), inside, nn.ReLU(),
                          nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1), level_norm(outer, index - 1)]
            self.model = nn.Sequential(*layers)

        def forward(self, x):
            return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)

    class AnimeUnet(nn.Module):
        """forward(RGB [1, 3, H, W] in -1..1, H and W multiples of 2 ** downs) -> [1, 1, H, W] in -1..1."""

        def __init__(self):
            super().__init__()
            w = width
            index = downs
            level = Level(index, w * 8, w * 8)
            for _ in range(downs - 5):
                index -= 1
                level = Level(index, w * 8, w * 8, level)
            for outer, inner in ((w * 4, w * 8), (w * 2, w * 4), (w, w * 2)):
                index -= 1
                level = Level(index, outer, inner, level)
            self.model = Level(1, 1, w, level, first=3)

        def forward(self, image):
            return self.model(image)

    return AnimeUnet()


def anime_downs(shapes: dict) -> int:
    """How many halvings the anime U-Net of these tensors has: its levels, each nested in the one
    outside it at index 3 of its layers (the outermost's at index 1)."""
    downs, prefix = 1, "model.model.1."
    while any(name.startswith(prefix + "model.") for name in shapes):
        downs += 1
        prefix += "model.3."
    return downs


# --- softedge_hed: lllyasviel's ControlNetHED_Apache2 ----------------------------------------------------

def _hed_module(widths, layers):
    """ControlNetHED_Apache2: `norm` [1, 3, 1, 1] taken from the RGB image, then blocks of
    `layers[i]` 3 x 3 convolutions (each with a ReLU) `widths[i]` wide, a 2 x 2 max-pool (stride
    2) before every block but the first, each block's features projected (1 x 1) to one edge map."""
    torch = _torch()
    nn = torch.nn
    F = torch.nn.functional

    class Block(nn.Module):
        def __init__(self, inputs: int, width: int, count: int):
            super().__init__()
            self.convs = nn.Sequential(*(nn.Conv2d(inputs if i == 0 else width, width, 3, padding=1)
                                         for i in range(count)))
            self.projection = nn.Conv2d(width, 1, 1)

        def forward(self, x):
            for conv in self.convs:
                x = F.relu(conv(x))
            return x, self.projection(x)

    class ControlNetHED(nn.Module):
        """forward(RGB [1, 3, H, W] in 0..255, H and W multiples of 2 ** (blocks - 1)) -> the
        blocks' edge maps (logits), [1, 1, H / 2 ** i, W / 2 ** i] for block i (from 0)."""

        def __init__(self):
            super().__init__()
            self.norm = nn.Parameter(torch.zeros(1, 3, 1, 1))
            for i, (inputs, width, count) in enumerate(zip((3, *widths), widths, layers), 1):
                setattr(self, f"block{i}", Block(inputs, width, count))

        def forward(self, image):
            x, maps = image - self.norm, []
            for i in range(1, len(widths) + 1):
                x, edge = getattr(self, f"block{i}")(F.max_pool2d(x, 2, 2) if i > 1 else x)
                maps.append(edge)
            return tuple(maps)

    return ControlNetHED()


def hed_config(shapes: dict) -> dict:
    """The HED network's blocks (their widths and convolution counts) from its tensor shapes."""
    blocks = 0
    while f"block{blocks + 1}.projection.weight" in shapes:
        blocks += 1
    layers = [sum(1 for name in shapes if name.startswith(f"block{i}.convs.") and name.endswith(".weight"))
              for i in range(1, blocks + 1)]
    if not blocks or shapes.get("norm") != (1, 3, 1, 1) or 0 in layers:
        raise UsageError(f"not a ControlNetHED checkpoint this converts ({blocks} blocks)")
    return {"widths": [shapes[f"block{i}.projection.weight"][1] for i in range(1, blocks + 1)], "layers": layers}


# --- softedge_pidinet: PiDiNet (table5_pidinet.pth) ------------------------------------------------------

# The pixel-difference operation of each of PiDiNet's 16 convolutions (the init block, then the 15 blocks):
# the extension builds the network with the 'carv4' recipe (cd, ad, rd, cv, four times) for table5_pidinet.pth
PIDINET_RECIPE = "carv4"
PIDINET_OPS = ("cd", "ad", "rd", "cv") * 4
PIDINET_BLOCKS = ("1_1", "1_2", "1_3", "2_1", "2_2", "2_3", "2_4", "3_1", "3_2", "3_3", "3_4",
                  "4_1", "4_2", "4_3", "4_4")
_AD_ROLL = [3, 0, 1, 6, 4, 2, 7, 8, 5]  # each tap's clockwise neighbour in a 3 x 3 kernel
_RD_OUTER = [0, 2, 4, 10, 14, 20, 22, 24]  # the 5 x 5 ring two pixels out, then the ring one pixel out
_RD_INNER = [6, 7, 8, 11, 13, 16, 17, 18]


def pidinet_kernel(op: str, weight):
    """The plain convolution kernel that computes pixel-difference operation `op` with the trained
    3 x 3 `weight` [out, in, 3, 3] (numpy): cv as it is; cd (central difference: the conv minus the
    kernel's sum times the centre pixel) with the sum taken off the centre tap; ad (angular: each tap
    minus its clockwise neighbour's); rd (radial: the taps but the centre on the ring two pixels out,
    minus them on the ring one pixel out) a 5 x 5 kernel."""
    import numpy as np

    w = np.asarray(weight, np.float32)
    out, inp = w.shape[:2]
    flat = w.reshape(out, inp, 9)
    if op == "cv":
        return w
    if op == "cd":
        k = w.copy()
        k[:, :, 1, 1] -= w.sum(axis=(2, 3))
        return k
    if op == "ad":
        return (flat - flat[:, :, _AD_ROLL]).reshape(w.shape)
    if op == "rd":
        k = np.zeros((out, inp, 25), np.float32)
        k[:, :, _RD_OUTER] = flat[:, :, 1:]
        k[:, :, _RD_INNER] = -flat[:, :, 1:]
        return k.reshape(out, inp, 5, 5)
    raise ValueError(f"unknown pixel-difference operation {op!r}")


def pidinet_config(shapes: dict) -> dict:
    """PiDiNet's width, its CDCM width (dil, None without them) and whether it has CSAM attention,
    from its tensor shapes."""
    missing = [f"block{b}.conv1.weight" for b in PIDINET_BLOCKS if f"block{b}.conv1.weight" not in shapes]
    init = shapes.get("init_block.weight", ())
    if missing or len(init) != 4 or tuple(init[1:]) != (3, 3, 3):
        raise UsageError(f"not a PiDiNet checkpoint this converts (missing {', '.join(missing[:3]) or 'init_block'})")
    dil = shapes.get("dilations.0.conv1.weight")
    return {"width": init[0], "dil": dil[0] if dil else None, "sa": "attentions.0.conv1.weight" in shapes}


def pidinet_state(state: dict, ops=PIDINET_OPS) -> dict:
    """The checkpoint's tensors with its 16 pixel-difference kernels made plain (pidinet_kernel)."""
    convs = ["init_block.weight", *(f"block{b}.conv1.weight" for b in PIDINET_BLOCKS)]
    out = dict(state)
    for name, op in zip(convs, ops):
        out[name] = pidinet_kernel(op, state[name])
    return out


def _stage_start(block: str) -> bool:
    """Whether PiDiNet block `block` ("2_1") opens a stage after the first: a max-pool and a shortcut."""
    return block.endswith("_1") and block != "1_1"


def _pidinet_module(width: int, dil: int | None, sa: bool, ops=PIDINET_OPS):
    """PiDiNet with its pixel-difference convolutions as plain ones (their kernels: pidinet_state):
    an init convolution, four stages of residual blocks (a depthwise convolution, ReLU, 1 x 1; a
    2 x 2 max-pool and a 1 x 1 shortcut where a stage starts, doubling the width but the last), each
    stage's features through a CDCM (ReLU, 1 x 1, four dilated 3 x 3 summed) and a CSAM (x times the
    sigmoid of ReLU, 1 x 1, 3 x 3) where it has them, reduced to one map, resized bilinearly to the
    image; the four maps fused by a 1 x 1 convolution, and the sigmoid."""
    torch = _torch()
    nn = torch.nn
    F = torch.nn.functional

    def kernel(op):
        return 5 if op == "rd" else 3

    class Block(nn.Module):
        def __init__(self, op, inputs, width, stride):
            super().__init__()
            self.stride = stride
            if stride > 1:
                self.shortcut = nn.Conv2d(inputs, width, 1)
            self.conv1 = nn.Conv2d(inputs, inputs, kernel(op), padding=kernel(op) // 2, groups=inputs, bias=False)
            self.conv2 = nn.Conv2d(inputs, width, 1, bias=False)

        def forward(self, x):
            if self.stride > 1:
                x = F.max_pool2d(x, 2, 2)
            y = self.conv2(F.relu(self.conv1(x)))
            return y + (self.shortcut(x) if self.stride > 1 else x)

    class CDCM(nn.Module):
        def __init__(self, inputs, width):
            super().__init__()
            self.conv1 = nn.Conv2d(inputs, width, 1)
            for i, d in enumerate((5, 7, 9, 11), 1):
                setattr(self, f"conv2_{i}", nn.Conv2d(width, width, 3, dilation=d, padding=d, bias=False))

        def forward(self, x):
            x = self.conv1(F.relu(x))
            return self.conv2_1(x) + self.conv2_2(x) + self.conv2_3(x) + self.conv2_4(x)

    class CSAM(nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.conv1 = nn.Conv2d(channels, 4, 1)
            self.conv2 = nn.Conv2d(4, 1, 3, padding=1, bias=False)

        def forward(self, x):
            return x * torch.sigmoid(self.conv2(self.conv1(F.relu(x))))

    class MapReduce(nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.conv = nn.Conv2d(channels, 1, 1)

        def forward(self, x):
            return self.conv(x)

    class PiDiNet(nn.Module):
        """forward(BGR [1, 3, H, W] in 0..1, H and W multiples of 8) -> the edge map [1, 1, H, W] in 0..1."""

        def __init__(self):
            super().__init__()
            self.init_block = nn.Conv2d(3, width, kernel(ops[0]), padding=kernel(ops[0]) // 2, bias=False)
            planes, fuse = width, []
            for name, op in zip(PIDINET_BLOCKS, ops[1:]):
                wider = planes * 2 if _stage_start(name) and name != "4_1" else planes
                setattr(self, f"block{name}", Block(op, planes, wider, 2 if _stage_start(name) else 1))
                planes = wider
                if name in ("1_3", "2_4", "3_4", "4_4"):
                    fuse.append(planes)
            reduced = [dil or c for c in fuse]
            if dil:
                self.dilations = nn.ModuleList(CDCM(c, dil) for c in fuse)
            if sa:
                self.attentions = nn.ModuleList(CSAM(c) for c in reduced)
            self.conv_reduces = nn.ModuleList(MapReduce(c) for c in reduced)
            self.classifier = nn.Conv2d(4, 1, 1)

        def forward(self, image):
            h, w = image.shape[2:]
            x, stages = self.init_block(image), []
            for name in PIDINET_BLOCKS:
                if _stage_start(name):
                    stages.append(x)
                x = getattr(self, f"block{name}")(x)
            stages.append(x)
            maps = []
            for i, x in enumerate(stages):
                if dil:
                    x = self.dilations[i](x)
                if sa:
                    x = self.attentions[i](x)
                maps.append(F.interpolate(self.conv_reduces[i](x), (h, w), mode="bilinear", align_corners=False))
            return torch.sigmoid(self.classifier(torch.cat(maps, dim=1)))

    return PiDiNet()


# --- recognising a checkpoint -------------------------------------------------------------------------

def kind_of(names) -> str | None:
    """"depth_anything_v2", "lineart", "lineart_anime", "softedge_hed", "softedge_pidinet" or None,
    from a checkpoint's tensor names."""
    names = set(names)
    if {"pretrained.pos_embed", "pretrained.patch_embed.proj.weight", "depth_head.scratch.output_conv1.weight"} <= names:
        return "depth_anything_v2"
    if {"model0.1.weight", "model1.0.weight", "model4.1.weight"} <= names:
        return "lineart"
    if {"model.model.0.weight", "model.model.3.weight", "model.model.1.model.1.weight"} <= names:
        return "lineart_anime"
    if {"norm", "block1.convs.0.weight", "block1.projection.weight"} <= names:
        return "softedge_hed"
    if {"init_block.weight", "block1_1.conv1.weight", "conv_reduces.0.conv.weight", "classifier.weight"} <= names:
        return "softedge_pidinet"
    return None


def module_name(kind: str, path: Path) -> str:
    """The A1111 module a converted checkpoint serves: lineart's two files share an architecture,
    so the name tells (sk_model2 or "coarse": lineart_coarse)."""
    if kind == "lineart" and ("sk_model2" in path.name.lower() or "coarse" in path.name.lower()):
        return "lineart_coarse"
    return kind


def _names(path: Path, allow_pickle: bool) -> tuple[list[str], dict | None]:
    """The checkpoint's tensor names, and its tensors when they had to be read for that."""
    if path.suffix.lower() == ".safetensors":
        from sdcli.model.tensor_files import safetensors_header

        try:
            header, _ = safetensors_header(path)
        except UsageError:
            return [], None
        return [name for name in header if name != "__metadata__"], None
    if not allow_pickle:
        return [], None
    try:
        state = read_state(path, allow_pickle)
    except UsageError:
        return [], None
    return list(state), state


def _unwrap(state):
    if isinstance(state, dict) and len(state) == 1 and isinstance(next(iter(state.values())), dict):
        state = next(iter(state.values()))  # {"state_dict": {...}} and the like
    if isinstance(state, dict) and state and all(str(k).startswith("module.") for k in state):
        state = {str(k)[len("module."):]: v for k, v in state.items()}
    return state


def annotator_source(source: str | None, allow_pickle: bool):
    """(path, kind, tensors or None) when `source` is an annotator checkpoint this converts, else
    None (a pickle without --allow-pickle is left to convert's other paths, which refuse it)."""
    if not source:
        return None
    path = Path(source).expanduser()
    if path.suffix.lower() not in SUFFIXES or not path.is_file():
        return None
    names, state = _names(path, allow_pickle)
    names = [n[len("module."):] if n.startswith("module.") else n for n in names]
    kind = kind_of(names)
    return (path, kind, state) if kind else None


def default_target(path: Path, kind: str, folder: Path | None) -> Path:
    return annotator_dir(folder)[0] / module_name(kind, path)


# --- building and exporting ---------------------------------------------------------------------------

def _load(module, state: dict, source: str):
    torch = _torch()
    import numpy as np

    tensors = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in state.items()}
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise UsageError(f"{source}: its tensors do not fit the architecture: {' '.join(first[:2])[:300]}") from None
    return module.eval()


def build(kind: str, state: dict, source: str = "the checkpoint", export: bool = False):
    """(torch module in float32, its config) of checkpoint tensors `state` of `kind`; `export`:
    the lineart networks' instance norms as pooled_norm (the same results; see there)."""
    norm = pooled_norm if export else instance_norm
    shapes = {k: tuple(getattr(v, "shape", ())) for k, v in state.items()}
    if kind == "depth_anything_v2":
        config = depth_config(shapes)
        model_class, _ = _depth_modules()
        module = model_class(**config)
        config["encoder"] = ENCODERS.get(config["dim"], f"vit{config['dim']}")
    elif kind == "lineart":
        blocks = len({n.split(".")[1] for n in shapes if n.startswith("model2.")})
        config = {"blocks": blocks, "width": shapes["model0.1.weight"][0]}
        module = _lineart_module(**config, norm=norm)
    elif kind == "lineart_anime":
        config = {"downs": anime_downs(shapes), "width": shapes["model.model.0.weight"][0]}
        module = _anime_module(**config, norm=norm)
    elif kind == "softedge_hed":
        config = hed_config(shapes)
        module = _hed_module(**config)
    elif kind == "softedge_pidinet":
        config = pidinet_config(shapes)
        module = _pidinet_module(**config)
        state = pidinet_state(state)
        config["recipe"] = PIDINET_RECIPE
    else:
        raise UsageError(f"{source}: not an annotator checkpoint")
    return _load(module, state, source), config


def to_ir(kind: str, module):
    """The OpenVINO model of the module: input `image` [1, 3, ?, ?] (Depth Anything also
    `pos_rows` [?, grid] and `pos_cols` [?, grid]), output `depth`, `line` or `edge` (PiDiNet) (HED: one edge map
    per block, `edge1` at the image's size, `edge2` at half of it, ...)."""
    import openvino as ov
    torch = _torch()

    if kind == "depth_anything_v2":
        _, wrapper = _depth_modules()
        grid = module.pretrained.grid
        wrapped = wrapper(module).eval()
        example = (torch.rand(1, 3, 5 * PATCH, 7 * PATCH), torch.rand(5, grid), torch.rand(7, grid))
        shapes = [ov.PartialShape([1, 3, -1, -1]), ov.PartialShape([-1, grid]), ov.PartialShape([-1, grid])]
        names = (INPUT_NAME, "pos_rows", "pos_cols")
        output = "depth"
    else:
        wrapped = module
        side = 256 if kind == "lineart_anime" else 64  # the sides' multiple the network needs
        example = (torch.rand(1, 3, side, 2 * side) * (255 if kind == "softedge_hed" else 1),)
        shapes = [ov.PartialShape([1, 3, -1, -1])]
        names = (INPUT_NAME,)
        output = "edge" if kind.startswith("softedge") else "line"
    model = traced_to_openvino(wrapped, example, shapes)
    for port, name in zip(model.inputs, names):
        port.get_tensor().set_names({name})
    for i, port in enumerate(model.outputs, 1):  # (HED's five maps: edge1 ... edge5)
        port.get_tensor().set_names({output if len(model.outputs) == 1 else f"{output}{i}"})
    return model


def read_state(path: Path, allow_pickle: bool) -> dict:
    """{name: array} of the checkpoint: .safetensors, or with allow_pickle a torch.save file (zip:
    sdcli's tensor-only unpickler; the format before torch 1.6: torch.load(weights_only=True)),
    DataParallel's "module." taken off the names."""
    from sdcli.convert.openpose import read_weights

    return _unwrap(read_weights(path, allow_pickle))


def convert_annotator(path: Path, kind: str, target: Path, weight_format: str, allow_pickle: bool, force: bool,
                      log: Callable[[str], None], state: dict | None = None) -> dict:
    """Write the annotator folder `target` (atomically: IR and annotator.json) and return its info."""
    import openvino as ov

    if weight_format not in ("fp32", "fp16"):
        raise UsageError(f"--weight-format {weight_format}: a preprocessor model is written in fp16 or fp32")
    if kind == "depth_anything_v2" and path.name.lower().startswith("depth_anything_vit"):
        raise UsageError(f"{path.name} looks like Depth Anything V1 (the extension's depth_anything: the same tensor "
                         "names, other layers read), which is not supported: convert depth_anything_v2_vits.pth, "
                         "_vitb or _vitl")
    if target.exists() and not force:
        raise UsageError(f"{target} already exists (pass --force to replace it)")
    state = state if state is not None else read_state(path, allow_pickle)
    module, config = build(kind, state, path.name, export=True)
    name = module_name(kind, path)
    info = {"module": name, "architecture": kind, "config": config, "source": path.name,
            "weight_format": weight_format}
    log(f"{path.name}: {kind} ({', '.join(f'{k} {v}' for k, v in config.items())}), exporting to OpenVINO IR "
        f"for the preprocessor {name}")
    model = to_ir(kind, module)
    with atomic_directory(target, replace=force) as tmp:
        ov.save_model(model, tmp / IR_FILE, compress_to_fp16=(weight_format == "fp16"))
        atomic_write_bytes(tmp / INFO_FILE, (json.dumps(info, indent=2) + "\n").encode())
    return info
