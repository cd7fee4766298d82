"""`sdcli convert` of a model upscaler: an ESRGAN-family or other single-image super-resolution
checkpoint (RRDBNet ESRGAN and Real-ESRGAN, Real-ESRGAN Compact, SPAN, SwinIR, HAT, ...) loaded
by spandrel's MIT-licensed core, which recognises the architecture and its hyper-parameters from
the weights, and exported to an OpenVINO IR whose height and width are dynamic.

A checkpoint is taken for an upscaler when it is not a diffusion checkpoint (none of Stability's
single-file prefixes) and spandrel recognises it.  Pickles (.pth, .pt, .ckpt, .bin) are read
only with --allow-pickle, by sdcli's tensor-only unpickler (model/tensor_files.py).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from sdcli.convert.ir import traced_to_openvino
from sdcli.model.tensor_files import PICKLE_SUFFIXES, read_safetensors, read_torch_pickle
from sdcli.model.upscalers import INFO_FILE, INPUT_NAME, IR_FILE, OUTPUT_NAME, upscaler_dir
from sdcli.util.errors import UsageError
from sdcli.util.fsutil import atomic_directory, atomic_write_bytes

CHECKPOINT_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
# tensor-name prefixes of Stability's single-file diffusion checkpoints (UNet, VAE, text encoders)
DIFFUSION_PREFIXES = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.embedders.")
EXAMPLE_SIZE = 61  # the traced example's height and width: not a multiple of any window size, nor a model's img_size, so that size-dependent branches (window padding, attention masks) are traced on their general path


def _tensor_names(state) -> list[str]:
    names = []
    if isinstance(state, dict):
        for key, value in state.items():
            if isinstance(value, dict):
                names.extend(f"{key}.{name}" for name in _tensor_names(value))
            else:
                names.append(str(key))
    return names


def read_checkpoint(path: Path, allow_pickle: bool) -> dict:
    """The checkpoint's contents with numpy arrays (nested dicts kept: spandrel unwraps
    `params_ema` and the like)."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return read_safetensors(path)[0]
    if not allow_pickle:
        raise UsageError(f"{path.name} is a pickle ({suffix}), which can run code when loaded: pass --allow-pickle "
                         "if you trust it, or use a .safetensors version")
    return read_torch_pickle(path)


def is_diffusion_checkpoint(state) -> bool:
    return any(name.startswith(DIFFUSION_PREFIXES) for name in _tensor_names(state))


def upscaler_source(source: str | None, allow_pickle: bool) -> Path | None:
    """`source` as a checkpoint file to convert as an upscaler, else None (a diffusion model, a
    folder, a Hub repo: convert's other paths).  A pickle without --allow-pickle is left to the
    other paths, which refuse it."""
    if not source:
        return None
    path = Path(source).expanduser()
    if path.suffix.lower() not in CHECKPOINT_SUFFIXES or not path.is_file():
        return None
    if path.suffix.lower() != ".safetensors" and not allow_pickle:
        return None
    from sdcli.convert.controlnet_file import controlnet_file

    if controlnet_file(path, allow_pickle):  # A1111's single-file ControlNet: convert/controlnet.py
        return None
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="numpy") as f:
                names = list(f.keys())
        except Exception:  # noqa: BLE001 - not readable as safetensors: the diffusion path says why
            return None
        if any(n.startswith(DIFFUSION_PREFIXES) for n in names):
            return None
        from sdcli.convert.export import transformer_pipelines
        from sdcli.convert.transformer_pipeline import holds_transformer

        return None if holds_transformer(names, transformer_pipelines()) else path
    return None if is_diffusion_checkpoint(read_checkpoint(path, allow_pickle)) else path


def default_target(path: Path, folder: Path | None) -> Path:
    return upscaler_dir(folder)[0] / path.stem


def _to_torch(value):
    import numpy as np
    import torch

    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.array(value))
    if isinstance(value, dict):
        return {k: _to_torch(v) for k, v in value.items()}
    return value


def load_descriptor(path: Path, allow_pickle: bool):
    """spandrel's ImageModelDescriptor of the checkpoint, in float32 (UsageError when spandrel
    does not recognise it or it is not a single-image upscaler)."""
    from sdcli.convert.spandrel_import import import_spandrel

    spandrel = import_spandrel()
    state = _to_torch(read_checkpoint(path, allow_pickle))
    try:
        descriptor = spandrel.ModelLoader().load_from_state_dict(spandrel.canonicalize_state_dict(state))
    except spandrel.UnsupportedModelError:
        raise UsageError(f"{path.name} is neither a Stable Diffusion checkpoint nor an upscaler architecture that "
                         "spandrel knows") from None
    except Exception as exc:  # noqa: BLE001 - spandrel's architectures raise many kinds on odd weights
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise UsageError(f"{path.name}: spandrel cannot load it: {first}") from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise UsageError(f"{path.name} is a {descriptor.architecture.name} model ({descriptor.purpose}), "
                         "not a single-image upscaler")
    if descriptor.purpose not in ("SR", "Restoration"):
        raise UsageError(f"{path.name} is a {descriptor.architecture.name} {descriptor.purpose} model, "
                         "not a single-image upscaler")
    return descriptor.to(dtype=__import__("torch").float32).eval()


def info_of(descriptor, source: Path, weight_format: str) -> dict:
    """upscaler.json: what the engine needs to run the IR, and what a user may want to know."""
    req = descriptor.size_requirements
    return {
        "scale": int(descriptor.scale),
        "architecture": descriptor.architecture.name,
        "architecture_id": str(descriptor.architecture.id),
        "purpose": descriptor.purpose,
        "tags": list(descriptor.tags),
        "input_channels": int(descriptor.input_channels),
        "output_channels": int(descriptor.output_channels),
        # spandrel pads the input to these (reflect, then replicate) and crops the output back
        "size_requirements": {"minimum": int(req.minimum), "multiple_of": int(req.multiple_of),
                              "square": bool(req.square)},
        # spandrel's ModelTiling: supported, discouraged (the model sees the whole image best),
        # internal (it tiles itself)
        "tiling": descriptor.tiling.name.lower(),
        "input": {"name": INPUT_NAME, "layout": "NCHW", "range": [0, 1], "dtype": "f32"},
        "weight_format": weight_format,
        "source": source.name,
        "spandrel": _spandrel_version(),
    }


def _spandrel_version() -> str:
    from sdcli.convert.spandrel_import import import_spandrel

    return str(getattr(import_spandrel(), "__version__", "?"))


def to_ir(descriptor):
    """The OpenVINO model of `descriptor` (its call and spandrel's clamp to 0..1), input [1, C, ?, ?]."""
    import openvino as ov
    import torch

    class Upscale(torch.nn.Module):
        def __init__(self, d):
            super().__init__()
            self.model = d.model
            self.call = d._call_fn  # spandrel's per-architecture call (most: model(image))

        def forward(self, image):
            return self.call(self.model, image).clamp(0, 1)

    module = Upscale(descriptor).eval()
    channels = int(descriptor.input_channels)
    req = descriptor.size_requirements
    size = max(EXAMPLE_SIZE, req.get_padding(EXAMPLE_SIZE, EXAMPLE_SIZE)[0] + EXAMPLE_SIZE)
    example = torch.rand(1, channels, size, size)
    model = traced_to_openvino(module, example, [ov.PartialShape([1, channels, -1, -1])])
    model.inputs[0].get_tensor().set_names({INPUT_NAME})
    model.outputs[0].get_tensor().set_names({OUTPUT_NAME})
    return model


def convert_upscaler(path: Path, target: Path, weight_format: str, allow_pickle: bool, force: bool,
                     log: Callable[[str], None]) -> dict:
    """Write the upscaler folder `target` (atomically) and return its upscaler.json."""
    import openvino as ov

    if weight_format not in ("fp32", "fp16"):
        raise UsageError(f"--weight-format {weight_format}: an upscaler is written in fp16 or fp32")
    if target.exists() and not force:
        raise UsageError(f"{target} already exists (pass --force to replace it)")
    descriptor = load_descriptor(path, allow_pickle)
    info = info_of(descriptor, path, weight_format)
    log(f"{path.name}: {info['architecture']} x{info['scale']} ({info['purpose']}), exporting to OpenVINO IR")
    model = to_ir(descriptor)
    with atomic_directory(target, replace=force) as tmp:
        ov.save_model(model, tmp / IR_FILE, compress_to_fp16=(weight_format == "fp16"))
        atomic_write_bytes(tmp / INFO_FILE, (json.dumps(info, indent=2) + "\n").encode())
    return info
