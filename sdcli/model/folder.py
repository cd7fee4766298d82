"""A converted model folder (sdcli's or optimum-cli's layout): its files and configs,
validated before anything is compiled."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING


from sdcli.util.errors import UsageError
from sdcli.model.layout import REQUIRED, REQUIRED_SDXL, REQUIRED_TRANSFORMER, TINY_DECODER, TINY_ENCODER

if TYPE_CHECKING:
    from sdcli.model.defaults import GenerationDefaults

def _read_json(path: Path) -> dict:
    from sdcli.model.config_checks import read_json

    return read_json(path)  # size-capped; any parse failure (depth, digits) is a UsageError


@dataclass(frozen=True)
class Vae:
    """The autoencoder that decodes (and encodes, for img2img): its component folders,
    and the factor between its latents and the UNet's (the UNet works on factor * latents;
    a FLUX-style VAE's latents are also shifted: factor * (latents - shift))."""

    decoder: str
    encoder: str
    scaling_factor: float
    shift_factor: float = 0.0


@dataclass
class ModelFolder:
    """The files of a converted model, validated before anything is compiled.

    `denoiser` is the component that denoises: "unet" (Stable Diffusion, SDXL) or
    "transformer" (flow-matching diffusion transformers: Z-Image); `unet_config` is its
    config.json, whichever it is (also `denoiser_config`)."""

    root: Path
    unet_config: dict
    vae_config: dict
    scheduler_config: dict
    denoiser: str = "unet"

    @classmethod
    def open(cls, root: str | Path) -> "ModelFolder":
        root = Path(root).expanduser()
        if not root.is_dir():
            raise UsageError(f"model folder not found: {root}")
        if (root / "transformer").is_dir() and not (root / "unet").is_dir():
            return cls._open_transformer(root)
        if not (root / "unet").is_dir():
            raise UsageError(f"model folder {root} is incomplete: unet/ is missing")
        unet = _read_json(root / "unet" / "config.json")
        sdxl = unet.get("addition_embed_type") == "text_time"
        required = list(REQUIRED_SDXL if sdxl else REQUIRED)
        if sdxl and (root / "text_encoder").is_dir():  # SDXL base (the refiner has text_encoder_2 only)
            required += ["text_encoder", "tokenizer"]
        for name in required:
            if not (root / name).is_dir():
                raise UsageError(f"model folder {root} is incomplete: {name}/ is missing")
        for name in [r for r in required if r.startswith(("text_encoder", "unet", "vae_decoder"))]:
            for suffix in (".xml", ".bin"):
                if not (root / name / f"openvino_model{suffix}").is_file():
                    raise UsageError(f"model folder {root} is incomplete: {name}/openvino_model{suffix} is missing")
        vae = _read_json(root / "vae_decoder" / "config.json")
        sched = _read_json(root / "scheduler" / "scheduler_config.json")
        folder = cls(root, unet, vae, sched)
        folder._validate()
        return folder

    @classmethod
    def _open_transformer(cls, root: Path) -> "ModelFolder":
        """A flow-matching transformer model's folder (its family checks the rest)."""
        from sdcli.model.config_checks import check_transformer_folder

        for name in REQUIRED_TRANSFORMER:
            if not (root / name).is_dir():
                raise UsageError(f"model folder {root} is incomplete: {name}/ is missing")
        for name in ("transformer", "text_encoder", "vae_decoder"):
            for suffix in (".xml", ".bin"):
                if not (root / name / f"openvino_model{suffix}").is_file():
                    raise UsageError(f"model folder {root} is incomplete: {name}/openvino_model{suffix} is missing")
        config = _read_json(root / "transformer" / "config.json")
        vae = _read_json(root / "vae_decoder" / "config.json")
        sched = _read_json(root / "scheduler" / "scheduler_config.json")
        check_transformer_folder(root, config, vae, sched)
        return cls(root, config, vae, sched, "transformer")

    @property
    def denoiser_config(self) -> dict:
        return self.unet_config

    def _validate(self) -> None:
        """Types and ranges of every config value sdcli reads, the IR versions, and the
        components against each other (see config_checks.py)."""
        from sdcli.model.config_checks import check_folder

        check_folder(self.root, self.unet_config, self.vae_config, self.scheduler_config)

    @property
    def is_sdxl(self) -> bool:
        """A Stable Diffusion XL UNet (SDXL's added conditioning: text_embeds and time_ids)."""
        return self.unet_config.get("addition_embed_type") == "text_time"

    @property
    def text_encoders(self) -> list[str]:
        """The text encoders' folder names: SD's text_encoder; SDXL's text_encoder and
        text_encoder_2 (its refiner's text_encoder_2 only)."""
        names = ["text_encoder", "text_encoder_2"] if self.is_sdxl else ["text_encoder"]
        return [name for name in names if self.ir(name).is_file()]

    @cached_property
    def denoiser_4bit(self) -> bool:
        """Whether the denoiser's IR holds 4-bit weights (an int4 folder: u4/i4 constants)."""
        try:
            data = self.ir(self.denoiser).read_bytes()
        except OSError:
            return False
        return b'element_type="u4"' in data or b'element_type="i4"' in data

    @cached_property
    def model_index(self) -> dict:
        """model_index.json ({} when the folder has none)."""
        from sdcli.model.config_checks import read_json

        return read_json(self.root / "model_index.json", required=False) or {}

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
    def shift_factor(self) -> float:
        return float(self.vae_config.get("shift_factor") or 0.0)

    @property
    def default_size(self) -> int:
        if self.denoiser == "transformer":  # Z-Image's and FLUX's pipelines: 1024 unless told
            return 1024
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
            return Vae("vae_decoder", "vae_encoder", self.scaling_factor, self.shift_factor)
        if kind != "tiny":
            raise UsageError(f"--vae must be full or tiny, got {kind!r}")
        if not self.has_tiny_vae:
            raise UsageError(f"model folder {self.root} has no tiny VAE ({TINY_DECODER}/); add one with "
                             f"`sdcli convert --tiny-vae madebyollin/{'taesdxl' if self.is_sdxl else 'taesd'} "
                             f"--into {self.root}`")
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
        dims = ir_input_shape(self.ir(self.denoiser), "encoder_hidden_states")
        if dims is None:
            return None
        return int(dims[1]) if len(dims) == 3 and dims[1].strip().isdigit() else None

    @cached_property
    def time_cond_proj_dim(self) -> int | None:
        """A Latent Consistency Model's guidance-embedding size (its UNet takes `timestep_cond`,
        as optimum-cli names it), or None for an ordinary UNet."""
        dims = ir_input_shape(self.ir(self.denoiser), "timestep_cond")
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

    @cached_property
    def generation_defaults(self) -> "GenerationDefaults":
        """The steps, guidance scale and VAE the folder's sdcli.json gives (model/defaults.py);
        UsageError for a value of the wrong type or out of range."""
        from sdcli.model.defaults import read_defaults

        return read_defaults(self.root)

    @property
    def default_vae(self) -> str:
        """The VAE a run that names none decodes with: sdcli.json's defaults "vae" (`convert
        --default-vae`), else "full"; UsageError where it says tiny and the folder has none."""
        vae = self.generation_defaults.vae or "full"
        if vae == "tiny" and not self.has_tiny_vae:
            raise UsageError(f"{self.root}/sdcli.json defaults: vae is tiny, but the folder has no tiny VAE "
                             f"({TINY_DECODER}/): pass --vae full, or add one with `sdcli convert --tiny-vae "
                             f"madebyollin/{'taesdxl' if self.is_sdxl else 'taesd'} --into {self.root}`")
        return vae

    @property
    def is_lcm(self) -> bool:
        """A Latent Consistency Model's UNet (whatever model_index.json calls the pipeline)."""
        return self.time_cond_proj_dim is not None

    @property
    def name(self) -> str:
        return self.root.resolve().name

    def ir(self, component: str) -> Path:
        return self.root / component / "openvino_model.xml"


def ir_input_shape(xml: Path, name: str) -> list[str] | None:
    """The declared shape of input `name` of an IR, as text per dimension ("?" when dynamic), or
    None when it has no such input.  Parameters come first in the XML, so its head is enough."""
    from sdcli.model.config_checks import ir_header

    return ir_header(xml)[1].get(name)
