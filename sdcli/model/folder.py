"""A converted model folder (sdcli's or optimum-cli's layout) and its OpenVINO components.

One class per component: each reads its IR, fixes its shapes for the requested size,
compiles it, and runs it on numpy arrays.
"""
from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from sdcli.util.errors import UsageError
from sdcli.runtime.core import Runtime
from sdcli.convert.tiny_vae import DECODER as TINY_DECODER, ENCODER as TINY_ENCODER

REQUIRED = ("text_encoder", "unet", "vae_decoder", "tokenizer", "scheduler")


def _read_json(path: Path) -> dict:
    from sdcli.model.config_checks import read_json

    return read_json(path)  # size-capped; any parse failure (depth, digits) is a UsageError


@dataclass(frozen=True)
class Vae:
    """The autoencoder that decodes (and encodes, for img2img): its component folders,
    and the factor between its latents and the UNet's (the UNet works on factor * latents)."""

    decoder: str
    encoder: str
    scaling_factor: float


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
        """Types and ranges of every config value sdcli reads, the IR versions, and the
        components against each other (see config_checks.py)."""
        from sdcli.model.config_checks import check_folder

        check_folder(self.root, self.unet_config, self.vae_config, self.scheduler_config)

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
    def has_tiny_vae(self) -> bool:
        return self.ir(TINY_DECODER).is_file()

    def vae(self, kind: str = "full") -> Vae:
        """"full": the model's own VAE; "tiny": the TAESD that `sdcli convert --tiny-vae` adds
        (trained on unscaled latents: its config's scaling_factor is 1.0)."""
        if kind == "full":
            return Vae("vae_decoder", "vae_encoder", self.scaling_factor)
        if kind != "tiny":
            raise UsageError(f"--vae must be full or tiny, got {kind!r}")
        if not self.has_tiny_vae:
            raise UsageError(f"model folder {self.root} has no tiny VAE ({TINY_DECODER}/); add one with "
                             f"`sdcli convert --tiny-vae madebyollin/taesd --into {self.root}`")
        config = _read_json(self.root / TINY_DECODER / "config.json")
        blocks = config.get("block_out_channels", [0] * 4)
        if (config.get("latent_channels", 4) != self.latent_channels or not isinstance(blocks, list)
                or 2 ** (len(blocks) - 1) != self.vae_scale_factor):
            raise UsageError(f"{TINY_DECODER}/config.json: latent channels or size ratio differ from the model's VAE")
        scale = config.get("scaling_factor", 1.0)
        if not isinstance(scale, (int, float)) or not 0 < scale < 100:
            raise UsageError(f"{TINY_DECODER}/config.json: scaling_factor must be a positive number, got {scale!r}")
        return Vae(TINY_DECODER, TINY_ENCODER, float(scale))

    @property
    def unet_sequence_length(self) -> int | None:
        """The UNet's fixed text length (optimum-cli exports 77), or None when dynamic."""
        dims = _ir_input_shape(self.ir("unet"), "encoder_hidden_states")
        if dims is None:
            return None
        return int(dims[1]) if len(dims) == 3 and dims[1].strip().isdigit() else None

    @cached_property
    def time_cond_proj_dim(self) -> int | None:
        """A Latent Consistency Model's guidance-embedding size (its UNet takes `timestep_cond`,
        as optimum-cli names it), or None for an ordinary UNet."""
        dims = _ir_input_shape(self.ir("unet"), "timestep_cond")
        configured = self.unet_config.get("time_cond_proj_dim")
        if configured is not None and (not isinstance(configured, int) or isinstance(configured, bool)
                                       or not 0 < configured < 100_000):
            raise UsageError(f"unet/config.json: time_cond_proj_dim must be a positive integer, got {configured!r}")
        if dims is None:
            if configured:
                raise UsageError("unet/config.json gives time_cond_proj_dim, but the UNet IR has no timestep_cond "
                                 "input; convert the model again")
            return None
        if len(dims) == 2 and dims[1].strip().isdigit():
            return int(dims[1])
        if not configured:
            raise UsageError("the UNet takes timestep_cond, but its size is neither in the IR nor in "
                             "unet/config.json (time_cond_proj_dim)")
        return configured

    @property
    def is_lcm(self) -> bool:
        """A Latent Consistency Model's UNet (whatever model_index.json calls the pipeline)."""
        return self.time_cond_proj_dim is not None

    @property
    def name(self) -> str:
        return self.root.resolve().name

    def ir(self, component: str) -> Path:
        return self.root / component / "openvino_model.xml"


def _ir_input_shape(xml: Path, name: str) -> list[str] | None:
    """The declared shape of input `name` of an IR, as text per dimension ("?" when dynamic), or
    None when it has no such input.  Parameters come first in the XML, so its head is enough."""
    with open(xml, "rb") as f:
        head = f.read(1 << 20).decode("utf-8", "replace")
    found = re.search(rf'name="{re.escape(name)}" type="Parameter"[^>]*>\s*<data shape="([^"]*)"', head)
    return found.group(1).split(",") if found else None


def default_cache_dir() -> Path:
    if os.environ.get("SDCLI_CACHE_DIR"):
        return Path(os.environ["SDCLI_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sdcli" / "openvino"


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


class _Compiled:
    """A compiled component; each thread gets its own infer request, so that several rows
    can run at once on a model compiled for throughput."""

    compiled = None

    @cached_property
    def _local(self) -> threading.local:
        return threading.local()

    @property
    def request(self):
        if not hasattr(self._local, "request"):
            self._local.request = self.compiled.create_infer_request()
        return self._local.request


class TextEncoder(_Compiled):
    def __init__(self, runtime: Runtime, folder: ModelFolder, seq_len: int, clip_skip: int = 1):
        """`clip_skip`: A1111's Clip skip (1: the last layer's output; 2: the one before, ...)."""
        from sdcli.runtime.clip_skip import skip_layers

        component = "text_encoder" if clip_skip <= 1 else f"text_encoder-clipskip{clip_skip}"
        self.compiled, self._mapping = runtime.load(component, folder.ir("text_encoder"), {"input_ids": [1, seq_len]},
                                                    prepare=lambda model: skip_layers(model, clip_skip))

    def __call__(self, input_ids: np.ndarray) -> np.ndarray:
        self.request.infer({0: input_ids})
        return self.request.get_output_tensor(0).data.copy()


class UNet(_Compiled):
    recorder = None  # called with each call's inputs (calibration for --quantize hybrid)

    def __init__(self, runtime: Runtime, folder: ModelFolder, batch: int, latent_hw: tuple[int, int], seq_len: int,
                 variant: str | None = None):
        """`variant`: None for the UNet as it is, or one of deepcache.VARIANTS."""
        cfg = folder.unet_config
        shapes = {
            "sample": [batch, cfg.get("in_channels", 4), *latent_hw],
            "timestep": [batch],
            "encoder_hidden_states": [batch, seq_len, cfg.get("cross_attention_dim", 768)],
        }
        if folder.is_lcm:
            shapes["timestep_cond"] = [batch, folder.time_cond_proj_dim]
        component, edit = "unet", None
        if variant is not None:
            from sdcli.runtime.deepcache import VARIANTS

            component, edit = VARIANTS[variant]

        def prepare(model):
            _float_timestep(model)
            if edit is not None:
                edit(model, shapes)

        self.compiled, self._mapping = runtime.load(component, folder.ir("unet"), shapes, prepare=prepare)
        import openvino as ov

        self.float_timestep = self.compiled.input("timestep").get_element_type() == ov.Type.f32
        self._timestep_dtype = np.float32 if self.float_timestep else np.int64
        self._timestep_shape = shapes["timestep"]

    def __call__(self, sample: np.ndarray, timestep, context: np.ndarray, **extra) -> np.ndarray:
        t = np.full(self._timestep_shape, timestep, dtype=np.float64).astype(self._timestep_dtype)
        inputs = {"sample": sample, "timestep": t, "encoder_hidden_states": context, **extra}
        if self.recorder is not None:
            self.recorder(inputs)
        self.request.infer(inputs)
        return self.request.get_output_tensor(0).data.copy()

    def output(self, index: int) -> np.ndarray:
        """Output `index` of the last call."""
        return self.request.get_output_tensor(index).data.copy()


class VaeDecoder(_Compiled):
    def __init__(self, runtime: Runtime, folder: ModelFolder, latent_hw: tuple[int, int],
                 component: str = "vae_decoder"):
        shapes = {"latent_sample": [1, folder.latent_channels, *latent_hw]}
        self.compiled, self._mapping = runtime.load(component, folder.ir(component), shapes)

    def __call__(self, latents: np.ndarray) -> np.ndarray:
        self.request.infer({0: latents})
        return self.request.get_output_tensor(0).data.copy()


class VaeEncoder(_Compiled):
    def __init__(self, runtime: Runtime, folder: ModelFolder, image_hw: tuple[int, int],
                 component: str = "vae_encoder"):
        if not folder.ir(component).is_file():
            raise UsageError(f"model folder {folder.root} has no {component}/, which --init-image needs")
        self.compiled, self._mapping = runtime.load(component, folder.ir(component), {"sample": [1, 3, *image_hw]})
        self.latent_channels = folder.latent_channels

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Return (mean, log-variance); the variance is None for an encoder that outputs a sample."""
        self.request.infer({0: image})
        out = self.request.get_output_tensor(0).data.copy()
        if out.shape[1] == 2 * self.latent_channels:
            return out[:, : self.latent_channels], out[:, self.latent_channels :]
        return out, None
