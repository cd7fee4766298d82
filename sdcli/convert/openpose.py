"""`sdcli convert` of the OpenPose networks A1111's ControlNet extension runs for its openpose
preprocessors: `body_pose_model.pth` (body: 19 keypoint heatmaps and 38 part-affinity-field
channels), `hand_pose_model.pth` (22 hand heatmaps) and `facenet.pth` (71 face heatmaps), as
published in lllyasviel/Annotators.

The three are convolutional pose machines.  Their checkpoints name each convolution flatly
(`conv1_1.weight`, `Mconv7_stage6_L2.bias`, ...), so the torch modules here register their
convolutions under exactly those names and load a file strictly.  Channel counts are read from
the weights (the real files: a VGG trunk of 64/128/256/512 channels), so small random networks
of the same layout convert the same way (the tests).

* body: trunk conv1_1..conv4_4_CPM (3x3, ReLU; 2x2 max pools after conv1_2, conv2_2, conv3_4);
  stage 1, two branches L1 (PAFs) and L2 (heatmaps): conv5_1..3_CPM (3x3), conv5_4_CPM (1x1),
  conv5_5_CPM (1x1, no ReLU); stages 2..6, each branch fed [L1, L2, trunk] concatenated:
  Mconv1..5 (7x7), Mconv6 (1x1), Mconv7 (1x1, no ReLU).  The published model's list of layers
  without ReLU names Mconv7_stage6_L1 twice and Mconv7_stage6_L2 never, so the last heatmap
  layer does have a ReLU; kept, as the weights were used so.
* hand and face: trunk conv1_1..conv4_4, conv5_1, conv5_2, conv5_3_CPM (3x3, ReLU, the same
  pools); stage 1 conv6_1_CPM (1x1, ReLU), conv6_2_CPM (1x1); stages 2..6 fed [previous stage,
  trunk]: Mconv1..5 (7x7), Mconv6 (1x1), Mconv7 (1x1, no ReLU).  Only the last stage's maps
  are output.

The IR takes `image` float32 [1, 3, H, W] (BGR / 256 - 0.5, H and W multiples of 8, any size)
and gives `paf` and `heatmap` (body) or `heatmap` at 1/8 of the size.  Each network becomes a
folder <annotator dir>/openpose_body|openpose_hand|openpose_face (imaging/annotators.py).
Pickles are read only with --allow-pickle: a torch.save zip by sdcli's tensor-only unpickler,
the older non-zip format by torch.load(weights_only=True).
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Callable

from sdcli.convert.ir import traced_to_openvino
from sdcli.imaging.annotators import INFO_FILE, INPUT_NAME, IR_FILE, annotator_dir
from sdcli.model.tensor_files import PICKLE_SUFFIXES, read_safetensors, read_torch_pickle
from sdcli.util.errors import UsageError
from sdcli.util.fsutil import atomic_directory, atomic_write_bytes

# the published files' names: a pickle of one of these without --allow-pickle gets a clear refusal
KNOWN_FILES = {"body_pose_model": "openpose_body", "hand_pose_model": "openpose_hand", "facenet": "openpose_face"}
STAGES = range(2, 7)
OUTPUTS = {"openpose_body": ("paf", "heatmap"), "openpose_hand": ("heatmap",), "openpose_face": ("heatmap",)}
EXAMPLE_SIZE = 64
MAX_PICKLE = 400 << 20  # the published files are 147 to 210 MB; a larger pickle is something else


def body_layers() -> list[tuple]:
    """The body network as (sequence name, [(layer, kernel, relu) or "pool"]) in call order."""
    trunk = [("conv1_1", 3, True), ("conv1_2", 3, True), "pool", ("conv2_1", 3, True), ("conv2_2", 3, True), "pool",
             ("conv3_1", 3, True), ("conv3_2", 3, True), ("conv3_3", 3, True), ("conv3_4", 3, True), "pool",
             ("conv4_1", 3, True), ("conv4_2", 3, True), ("conv4_3_CPM", 3, True), ("conv4_4_CPM", 3, True)]
    out = [("trunk", trunk)]
    for branch in ("L1", "L2"):
        out.append((f"1_{branch}", [(f"conv5_{i}_CPM_{branch}", 3, True) for i in (1, 2, 3)]
                    + [(f"conv5_4_CPM_{branch}", 1, True), (f"conv5_5_CPM_{branch}", 1, False)]))
    for stage in STAGES:
        for branch in ("L1", "L2"):
            last_relu = stage == 6 and branch == "L2"  # the published model's quirk (see the docstring)
            out.append((f"{stage}_{branch}", [(f"Mconv{i}_stage{stage}_{branch}", 7, True) for i in range(1, 6)]
                        + [(f"Mconv6_stage{stage}_{branch}", 1, True), (f"Mconv7_stage{stage}_{branch}", 1, last_relu)]))
    return out


def cascade_layers() -> list[tuple]:
    """The hand (and face) network, as body_layers."""
    trunk = [("conv1_1", 3, True), ("conv1_2", 3, True), "pool", ("conv2_1", 3, True), ("conv2_2", 3, True), "pool",
             ("conv3_1", 3, True), ("conv3_2", 3, True), ("conv3_3", 3, True), ("conv3_4", 3, True), "pool",
             ("conv4_1", 3, True), ("conv4_2", 3, True), ("conv4_3", 3, True), ("conv4_4", 3, True),
             ("conv5_1", 3, True), ("conv5_2", 3, True), ("conv5_3_CPM", 3, True)]
    out = [("trunk", trunk), ("1", [("conv6_1_CPM", 1, True), ("conv6_2_CPM", 1, False)])]
    for stage in STAGES:
        out.append((str(stage), [(f"Mconv{i}_stage{stage}", 7, True) for i in range(1, 6)]
                    + [(f"Mconv6_stage{stage}", 1, True), (f"Mconv7_stage{stage}", 1, False)]))
    return out


def layers_of(kind: str) -> list[tuple]:
    return body_layers() if kind == "openpose_body" else cascade_layers()


def conv_names(kind: str) -> list[str]:
    return [layer[0] for _, seq in layers_of(kind) for layer in seq if layer != "pool"]


def identify(shapes: dict) -> str | None:
    """Which OpenPose network a checkpoint is by its {tensor name: shape} (openpose_body, _hand,
    _face: the hand's and the face's layers share their names, told apart by their 22 and 71
    output maps), else None."""
    for kind in ("openpose_body", "openpose_hand"):
        wanted = {f"{n}.{p}" for n in conv_names(kind) for p in ("weight", "bias")}
        if wanted <= set(shapes):
            if kind == "openpose_body":
                return kind
            maps = tuple(shapes["conv6_2_CPM.weight"])[:1]
            return {(22,): "openpose_hand", (71,): "openpose_face"}.get(maps)
    return None


def build(kind: str, state: dict):
    """The torch module of network `kind` with the weights `state` ({name: array or tensor}),
    its convolutions registered under the checkpoint's own names; eval mode, float32."""
    import numpy as np
    import torch

    tensors = {k: torch.from_numpy(np.array(v, dtype=np.float32)) if not isinstance(v, torch.Tensor) else v.float()
               for k, v in state.items()}
    layout = layers_of(kind)

    class PoseNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.sequences = []
            for name, seq in layout:
                steps = []
                for layer in seq:
                    if layer == "pool":
                        steps.append(None)
                        continue
                    conv_name, kernel, relu = layer
                    weight = tensors.get(f"{conv_name}.weight")
                    if weight is None or weight.ndim != 4 or tuple(weight.shape[2:]) != (kernel, kernel):
                        raise UsageError(f"{kind}: {conv_name}.weight is missing or not a {kernel}x{kernel} convolution")
                    conv = torch.nn.Conv2d(int(weight.shape[1]), int(weight.shape[0]), kernel, 1, kernel // 2)
                    self.add_module(conv_name, conv)
                    steps.append((conv_name, relu))
                self.sequences.append((name, steps))

        def run(self, steps, x):
            for step in steps:
                if step is None:
                    x = torch.nn.functional.max_pool2d(x, 2, 2)
                else:
                    x = getattr(self, step[0])(x)
                    if step[1]:
                        x = torch.relu(x)
            return x

        def forward(self, image):
            seqs = dict(self.sequences)
            features = self.run(seqs["trunk"], image)
            if kind == "openpose_body":
                paf, heat = self.run(seqs["1_L1"], features), self.run(seqs["1_L2"], features)
                for stage in STAGES:
                    joined = torch.cat([paf, heat, features], 1)
                    paf, heat = self.run(seqs[f"{stage}_L1"], joined), self.run(seqs[f"{stage}_L2"], joined)
                return paf, heat
            heat = self.run(seqs["1"], features)
            for stage in STAGES:
                heat = self.run(seqs[str(stage)], torch.cat([heat, features], 1))
            return heat

    model = PoseNet()
    wanted = set(model.state_dict())
    extra = sorted(set(tensors) - wanted)
    if extra:
        raise UsageError(f"{kind}: the checkpoint has tensors this network has not got: {', '.join(extra[:5])}")
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = (str(exc).strip().splitlines() or ["?"])[-1].strip()[:300]
        raise UsageError(f"{kind}: the weights do not fit the network: {first}") from None
    return model.eval()


def read_weights(path: Path, allow_pickle: bool) -> dict:
    """{name: array} of a .safetensors or (with allow_pickle) a torch.save file, zip or legacy."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return dict(read_safetensors(path)[0])
    if not allow_pickle:
        raise UsageError(f"{path.name} is a pickle ({suffix}), which can run code when loaded: pass --allow-pickle "
                         "if you trust it, or use a .safetensors version")
    if zipfile.is_zipfile(path):
        content = read_torch_pickle(path)
    else:  # torch.save's format before torch 1.6 (the published body and hand files)
        import pickle

        import torch

        try:
            content = torch.load(str(path), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise UsageError(f"{path.name}: cannot be read safely: {first}") from None
        content = {k: v.numpy() if hasattr(v, "numpy") else v for k, v in content.items()} \
            if isinstance(content, dict) else content
    if isinstance(content, dict) and isinstance(content.get("state_dict"), dict):
        content = content["state_dict"]
    if not isinstance(content, dict):
        raise UsageError(f"{path.name}: not a state dict of tensors")
    return {str(k).removeprefix("module."): v for k, v in content.items()}


def tensor_shapes(path: Path, allow_pickle: bool) -> dict | None:
    """{tensor name: shape} of a checkpoint file (None when it cannot be read)."""
    try:
        if path.suffix.lower() == ".safetensors":
            from sdcli.model.tensor_files import safetensors_header

            header, _ = safetensors_header(path)
            return {k: tuple(v.get("shape", ())) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}
        return {k: tuple(getattr(v, "shape", ())) for k, v in read_weights(path, allow_pickle).items()}
    except Exception:  # noqa: BLE001 - not readable here: convert's other paths say why
        return None


def openpose_source(source: str | None, allow_pickle: bool) -> tuple[Path, str] | None:
    """(file, network) when `source` is one of the OpenPose checkpoints, else None.  A pickle
    named as a published one (body_pose_model.pth, ...) without --allow-pickle: UsageError."""
    if not source:
        return None
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if not path.is_file() or suffix not in (".safetensors", *PICKLE_SUFFIXES):
        return None
    if suffix != ".safetensors" and not allow_pickle:
        if path.stem in KNOWN_FILES:
            raise UsageError(f"{path.name} is a pickle ({suffix}), which can run code when loaded: pass --allow-pickle "
                             "if you trust it (the OpenPose networks are published only as pickles)")
        return None
    if suffix != ".safetensors" and path.stat().st_size > MAX_PICKLE:  # not read whole just to look
        return None
    shapes = tensor_shapes(path, allow_pickle)
    kind = identify(shapes) if shapes else None
    return (path, kind) if kind else None


def default_target(kind: str, folder: Path | None) -> Path:
    return annotator_dir(folder)[0] / kind


def to_ir(model, kind: str):
    """The OpenVINO model of `model`: input `image` [1, 3, ?, ?], outputs named as OUTPUTS[kind]."""
    import openvino as ov
    import torch

    example = torch.rand(1, 3, EXAMPLE_SIZE, EXAMPLE_SIZE) - 0.5
    ir = traced_to_openvino(model, example, [ov.PartialShape([1, 3, -1, -1])])
    ir.inputs[0].get_tensor().set_names({INPUT_NAME})
    for output, name in zip(ir.outputs, OUTPUTS[kind]):
        output.get_tensor().set_names({name})
    return ir


def convert_openpose(path: Path, kind: str, target: Path, weight_format: str, allow_pickle: bool, force: bool,
                     log: Callable[[str], None]) -> dict:
    """Write the annotator folder `target` (atomically) for OpenPose network `kind`; its info."""
    import openvino as ov

    if weight_format not in ("fp32", "fp16"):
        raise UsageError(f"--weight-format {weight_format}: an OpenPose network is written in fp16 or fp32")
    if target.exists() and not force:
        raise UsageError(f"{target} already exists (pass --force to replace it)")
    model = build(kind, read_weights(path, allow_pickle))
    info = {"network": kind, "input": {"name": INPUT_NAME, "layout": "NCHW", "colour": "BGR",
                                       "scale": "x / 256 - 0.5", "multiple_of": 8},
            "outputs": list(OUTPUTS[kind]), "stride": 8, "weight_format": weight_format, "source": path.name}
    log(f"{path.name}: OpenPose {kind.split('_')[1]} network, exporting to OpenVINO IR")
    ir = to_ir(model, kind)
    with atomic_directory(target, replace=force) as tmp:
        ov.save_model(ir, tmp / IR_FILE, compress_to_fp16=(weight_format == "fp16"))
        atomic_write_bytes(tmp / INFO_FILE, (json.dumps(info, indent=2) + "\n").encode())
    return info
