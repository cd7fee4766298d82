"""The tiny autoencoder (TAESD, diffusers' AutoencoderTiny) as an extra VAE of a converted
model: vae_decoder_tiny/ and vae_encoder_tiny/ beside the full VAE's folders.

The decoder has the full decoder's tensor names (`latent_sample` -> `sample`, pixels in
[-1, 1]).  The encoder takes `sample` (pixels in [-1, 1]) and outputs `latents`: the
latents themselves, not a distribution's mean and log-variance, so nothing is sampled
from them (diffusers' retrieve_latents returns `.latents` as they are).  TAESD maps pixel
ranges inside its graph and its config's scaling_factor is 1.0, which is what the engine
reads (see ModelFolder.vae).

Needs the ``convert`` extra, as export.py does.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from sdcli.convert.ir import WEIGHT_FORMATS, model_config, require_convert_extra, save_ir, to_openvino, \
    vae_weight_format, write_json
from sdcli.model.folder import ModelFolder
from sdcli.model.hub import looks_like_repo_id
from sdcli.model.layout import TINY_DECODER, TINY_ENCODER
from sdcli.util.errors import UsageError
from sdcli.util.fsutil import atomic_directory, atomic_write_bytes

DECODER, ENCODER = TINY_DECODER, TINY_ENCODER
TAESD_FILES = ["config.json", "diffusion_pytorch_model*.safetensors"]


def _source_folder(source: str) -> Path:
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if looks_like_repo_id(source):
        return _download(source)
    raise UsageError(f"--tiny-vae: not a folder or Hub repo id: {source}")


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=TAESD_FILES))
    except LocalEntryNotFoundError:
        raise UsageError(f"--tiny-vae: cannot download {repo_id} (offline, or no network)") from None
    except (HfHubHTTPError, ValueError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"--tiny-vae: cannot download {repo_id}: {first}") from None


def load_tiny_vae(source: str):
    """The AutoencoderTiny in folder or Hub repo `source`, in float32."""
    path = _source_folder(source)
    config_file = path / "config.json"
    try:
        class_name = json.loads(config_file.read_text()).get("_class_name")
    except FileNotFoundError:
        raise UsageError(f"--tiny-vae: {source} is not a diffusers AutoencoderTiny folder (no config.json)") from None
    except (ValueError, AttributeError) as exc:
        raise UsageError(f"--tiny-vae: {config_file} is not a JSON object: {exc}") from None
    if class_name != "AutoencoderTiny":
        raise UsageError(f"--tiny-vae: {source} holds {class_name or 'a model of no named class'}, "
                         "not an AutoencoderTiny (TAESD, e.g. madebyollin/taesd)")
    import torch
    from diffusers import AutoencoderTiny

    try:
        return AutoencoderTiny.from_pretrained(path, torch_dtype=torch.float32)
    except Exception as exc:  # diffusers raises many kinds; the first line says which
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"--tiny-vae: cannot load {source}: {first}") from None


def check_matches(taesd_config, latent_channels: int, scale_factor: int) -> None:
    """Raise unless the tiny VAE reads and writes the model's latents: as many channels,
    and the same image-to-latent size ratio (diffusers takes it from block_out_channels)."""
    cfg = dict(taesd_config)
    if cfg["latent_channels"] != latent_channels:
        raise UsageError(f"--tiny-vae: its latents have {cfg['latent_channels']} channels, this model's {latent_channels}")
    decoder_factor = cfg.get("upsampling_scaling_factor", 2) ** (len(cfg["decoder_block_out_channels"]) - 1)
    encoder_factor = 2 ** (len(cfg["encoder_block_out_channels"]) - 1)
    if decoder_factor != scale_factor or encoder_factor != scale_factor:
        raise UsageError(f"--tiny-vae: its latents are 1/{decoder_factor} of the image size, this model's 1/{scale_factor}")


def export_tiny_vae(taesd, out_root: Path, weight_format: str) -> None:
    """Write vae_encoder_tiny/ and vae_decoder_tiny/ into `out_root`, a folder being written."""
    for name, model in _to_openvino(taesd).items():
        _save_component(model, taesd, out_root / name, weight_format)


def _save_component(model, taesd, folder: Path, weight_format: str) -> None:
    save_ir(model, folder, vae_weight_format(weight_format))  # int4 folders: int8, as their VAE
    write_json(folder / "config.json", model_config(taesd))


def _to_openvino(taesd) -> dict:
    import torch
    from openvino import PartialShape, Type

    class Encoder(torch.nn.Module):
        def __init__(self, vae):
            super().__init__()
            self.vae = vae

        def forward(self, sample):
            return self.vae.encode(sample, return_dict=False)[0]

    class Decoder(torch.nn.Module):
        def __init__(self, vae):
            super().__init__()
            self.vae = vae

        def forward(self, latent_sample):
            return self.vae.decode(latent_sample, return_dict=False)[0]

    cfg = taesd.config
    factor = 2 ** (len(cfg.encoder_block_out_channels) - 1)
    lat = 8
    encoder = to_openvino(
        Encoder(taesd),
        {"sample": torch.randn(1, cfg.in_channels, lat * factor, lat * factor)},
        [(PartialShape([-1, cfg.in_channels, -1, -1]), Type.f32)],
        ["latents"],
    )
    decoder = to_openvino(
        Decoder(taesd),
        {"latent_sample": torch.randn(1, cfg.latent_channels, lat, lat)},
        [(PartialShape([-1, cfg.latent_channels, -1, -1]), Type.f32)],
        ["sample"],
    )
    return {ENCODER: encoder, DECODER: decoder}


def add_tiny_vae(model_dir: Path, source: str, weight_format: str, force: bool = False,
                 log: Callable[[str], None] = print) -> Path:
    """Add a tiny VAE to the converted model in `model_dir` (sdcli's or optimum-cli's).

    Each folder is written under a temporary name and renamed into place when complete;
    both are converted before either is written, so the two renames follow each other."""
    if weight_format not in WEIGHT_FORMATS:
        raise UsageError(f"--weight-format must be one of {', '.join(WEIGHT_FORMATS)}")
    folder = ModelFolder.open(model_dir)
    if (folder.root / DECODER).exists() and not force:
        raise UsageError(f"{folder.root} already has a tiny VAE ({DECODER}/); pass --force to replace it")
    require_convert_extra()
    log(f"loading {source}")
    taesd = load_tiny_vae(source)
    check_matches(taesd.config, folder.latent_channels, folder.vae_scale_factor)
    log(f"converting it into {folder.root}")
    models = _to_openvino(taesd)
    # the decoder last: its folder is what marks a model as having a tiny VAE
    for name in (ENCODER, DECODER):
        with atomic_directory(folder.root / name, replace=True) as tmp:
            _save_component(models[name], taesd, tmp, weight_format)
    meta = folder.root / "sdcli.json"
    if meta.is_file():
        data = json.loads(meta.read_text())
        data["tiny_vae"] = source
        atomic_write_bytes(meta, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
    log(f"added {ENCODER}/ and {DECODER}/ to {folder.root}")
    return folder.root
