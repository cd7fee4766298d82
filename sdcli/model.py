"""A converted model folder (sdcli's or optimum-cli's layout) and its OpenVINO components.

One class per component: each reads its IR, fixes its shapes for the requested size,
compiles it, and runs it on numpy arrays.
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UsageError

REQUIRED = ("text_encoder", "unet", "vae_decoder", "tokenizer", "scheduler")
PRECISIONS = ("auto", "f32", "bf16", "f16")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"model folder is incomplete: {path.parent.name}/{path.name} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path} is not a JSON object")
    return data


@dataclass
class ModelFolder:
    """The files of a converted model, validated before anything is compiled."""

    root: Path
    unet_config: dict
    vae_config: dict
    scheduler_config: dict

    @classmethod
    def open(cls, root: str | Path) -> "ModelFolder":
        root = Path(root).expanduser()
        if not root.is_dir():
            raise UsageError(f"model folder not found: {root}")
        for name in REQUIRED:
            if not (root / name).is_dir():
                raise UsageError(f"model folder {root} is incomplete: {name}/ is missing")
        for name in ("text_encoder", "unet", "vae_decoder"):
            for suffix in (".xml", ".bin"):
                if not (root / name / f"openvino_model{suffix}").is_file():
                    raise UsageError(f"model folder {root} is incomplete: {name}/openvino_model{suffix} is missing")
        unet = _read_json(root / "unet" / "config.json")
        vae = _read_json(root / "vae_decoder" / "config.json")
        sched = _read_json(root / "scheduler" / "scheduler_config.json")
        folder = cls(root, unet, vae, sched)
        folder._validate()
        return folder

    def _validate(self) -> None:
        def positive_int(cfg: dict, key: str, where: str, default=None) -> None:
            value = cfg.get(key, default)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 100_000:
                raise UsageError(f"{where}/config.json: {key} must be a positive integer, got {value!r}")

        positive_int(self.unet_config, "in_channels", "unet", 4)
        positive_int(self.unet_config, "sample_size", "unet", 64)
        blocks = self.vae_config.get("block_out_channels", [128, 256, 512, 512])
        if not isinstance(blocks, list) or not 1 <= len(blocks) <= 8:
            raise UsageError("vae_decoder/config.json: block_out_channels must be a list of 1 to 8 numbers")
        scale = self.vae_config.get("scaling_factor", 0.18215)
        if not isinstance(scale, (int, float)) or not 0 < scale < 100:
            raise UsageError(f"vae_decoder/config.json: scaling_factor must be a positive number, got {scale!r}")

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae_config.get("block_out_channels", [0, 0, 0, 0])) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.vae_config.get("latent_channels", 4))

    @property
    def scaling_factor(self) -> float:
        return float(self.vae_config.get("scaling_factor", 0.18215))

    @property
    def default_size(self) -> int:
        return int(self.unet_config.get("sample_size", 64)) * self.vae_scale_factor

    @property
    def has_vae_encoder(self) -> bool:
        return (self.root / "vae_encoder" / "openvino_model.xml").is_file()

    @property
    def name(self) -> str:
        return self.root.resolve().name

    def ir(self, component: str) -> Path:
        return self.root / component / "openvino_model.xml"


@contextlib.contextmanager
def silenced_stderr():
    """Send file descriptor 2 (C/C++ libraries' stderr) to /dev/null for a while."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def default_cache_dir() -> Path:
    if os.environ.get("SDCLI_CACHE_DIR"):
        return Path(os.environ["SDCLI_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sdcli" / "openvino"


class Runtime:
    """The OpenVINO core, device and precision shared by all components."""

    def __init__(self, device: str = "CPU", precision: str = "auto", cache_dir: Path | None = None):
        import openvino as ov

        if precision not in PRECISIONS:
            raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}")
        self.core = ov.Core()
        self.device = device
        self.precision = precision
        self.cache_dir = cache_dir
        if device.split(":")[0].split(".")[0] not in {d.split(".")[0] for d in self.core.available_devices} and not any(
            device.startswith(p) for p in ("AUTO", "HETERO", "MULTI")
        ):
            raise UsageError(f"OpenVINO device {device!r} is not available here (have: {', '.join(self.core.available_devices)})")

    def read(self, path: Path, component: str):
        try:
            # On a broken IR, OpenVINO tries its other frontends, whose C++ logging would
            # spill parse errors onto stderr; our own one-line error says it better.
            with silenced_stderr():
                return self.core.read_model(str(path))
        except RuntimeError:
            raise UsageError(f"{component}: {path} is not a readable OpenVINO IR (truncated or corrupt?)") from None

    def compile(self, model, component: str):
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if self.precision != "auto":
            config["INFERENCE_PRECISION_HINT"] = self.precision
        if self.cache_dir is not None:
            try:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                config["CACHE_DIR"] = str(self.cache_dir)
            except OSError:
                pass  # no cache is slower, not wrong
        try:
            return self.core.compile_model(model, self.device, config)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0][:300]
            raise UsageError(f"{component}: OpenVINO cannot compile it for {self.device}: {first}") from None


# Ops that only move or broadcast their first input, whatever its element type.
_SHAPE_ONLY = {"Broadcast", "Unsqueeze", "Squeeze", "Reshape", "Tile"}


def _float_timestep(model) -> bool:
    """Make the UNet's int64 `timestep` input float32 when the graph only reshapes it
    before converting it to float (sdcli's export converts first; optimum-cli's expands
    and unsqueezes first).  Euler-type schedulers step on fractional timesteps, which an
    int64 input would truncate.  Returns whether the input is float now."""
    import openvino as ov
    from openvino import opset13 as ops

    param = model.input("timestep").get_node()
    if param.get_element_type() == ov.Type.f32:
        return True
    node = param
    while True:
        users = list(node.output(0).get_target_inputs())
        if len(users) != 1:
            return False
        user = users[0]
        node = user.get_node()
        kind = node.get_type_name()
        if kind == "Convert":
            if node.get_output_element_type(0) != ov.Type.f32:
                return False
            break
        if kind not in _SHAPE_ONLY or user.get_index() != 0:
            return False
    first_user = next(iter(param.output(0).get_target_inputs()))
    new = ops.parameter(param.get_partial_shape(), ov.Type.f32, name="timestep")
    param.output(0).get_tensor().set_names(set())
    new.output(0).get_tensor().set_names({"timestep"})
    first_user.replace_source_output(new.output(0))
    model.replace_parameter(model.get_parameters().index(param), new)
    model.validate_nodes_and_infer_types()
    return True


class TextEncoder:
    def __init__(self, runtime: Runtime, folder: ModelFolder, seq_len: int):
        model = runtime.read(folder.ir("text_encoder"), "text_encoder")
        model.reshape({model.inputs[0].get_any_name(): [1, seq_len]})
        self.compiled = runtime.compile(model, "text_encoder")
        self.request = self.compiled.create_infer_request()

    def __call__(self, input_ids: np.ndarray) -> np.ndarray:
        self.request.infer({0: input_ids})
        return self.request.get_output_tensor(0).data.copy()


class UNet:
    def __init__(self, runtime: Runtime, folder: ModelFolder, batch: int, latent_hw: tuple[int, int], seq_len: int):
        model = runtime.read(folder.ir("unet"), "unet")
        self.float_timestep = _float_timestep(model)
        dim = model.input("encoder_hidden_states").get_partial_shape()[2]
        h, w = latent_hw
        shapes = {
            "sample": [batch, folder.unet_config.get("in_channels", 4), h, w],
            "timestep": [batch] if model.input("timestep").get_partial_shape().rank.get_length() == 1 else [],
            "encoder_hidden_states": [batch, seq_len, dim.get_length() if dim.is_static else -1],
        }
        model.reshape(shapes)
        self.batch = batch
        self.compiled = runtime.compile(model, "unet")
        self.request = self.compiled.create_infer_request()
        self._timestep_dtype = np.float32 if self.float_timestep else np.int64
        self._timestep_shape = shapes["timestep"]

    def __call__(self, sample: np.ndarray, timestep, context: np.ndarray) -> np.ndarray:
        t = np.full(self._timestep_shape, timestep, dtype=np.float64).astype(self._timestep_dtype)
        self.request.infer({"sample": sample, "timestep": t, "encoder_hidden_states": context})
        return self.request.get_output_tensor(0).data.copy()


class VaeDecoder:
    def __init__(self, runtime: Runtime, folder: ModelFolder, latent_hw: tuple[int, int]):
        model = runtime.read(folder.ir("vae_decoder"), "vae_decoder")
        model.reshape({model.inputs[0].get_any_name(): [1, folder.latent_channels, *latent_hw]})
        self.compiled = runtime.compile(model, "vae_decoder")
        self.request = self.compiled.create_infer_request()

    def __call__(self, latents: np.ndarray) -> np.ndarray:
        self.request.infer({0: latents})
        return self.request.get_output_tensor(0).data.copy()


class VaeEncoder:
    def __init__(self, runtime: Runtime, folder: ModelFolder, image_hw: tuple[int, int]):
        if not folder.has_vae_encoder:
            raise UsageError(f"model folder {folder.root} has no vae_encoder/, which --init-image needs")
        model = runtime.read(folder.ir("vae_encoder"), "vae_encoder")
        model.reshape({model.inputs[0].get_any_name(): [1, 3, *image_hw]})
        self.compiled = runtime.compile(model, "vae_encoder")
        self.request = self.compiled.create_infer_request()
        self.latent_channels = folder.latent_channels

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Return (mean, log-variance); the variance is None for an encoder that outputs a sample."""
        self.request.infer({0: image})
        out = self.request.get_output_tensor(0).data.copy()
        if out.shape[1] == 2 * self.latent_channels:
            return out[:, : self.latent_channels], out[:, self.latent_channels :]
        return out, None
