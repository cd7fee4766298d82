"""Where `sdcli convert` reads a model from: a local diffusers folder, a Hub repo (downloaded
with huggingface_hub) or a single-file checkpoint; the components loaded in float32."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from sdcli.convert.options import ConvertOptions
from sdcli.util.errors import UsageError

DIFFUSERS_FILES = [
    "model_index.json",
    "scheduler/*",
    "tokenizer/*",
    "text_encoder/config.json",
    "text_encoder/*.safetensors",
    "unet/config.json",
    "unet/*.safetensors",
    "vae/config.json",
    "vae/*.safetensors",
]


def default_output_name(source: str) -> str:
    path = Path(source)
    if path.suffix in (".safetensors", ".ckpt"):
        return path.stem
    return path.name.rstrip("/") or "model"


def resolve_source(source: str, opts: ConvertOptions) -> tuple[str, Path]:
    """Return ("folder" | "single_file", local path); a Hub repo id is downloaded first."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise UsageError(f"{source} is not a diffusers folder (no model_index.json)")
        return "folder", path
    if path.suffix in (".safetensors", ".ckpt", ".pt", ".pth", ".bin"):
        if not path.is_file():
            raise UsageError(f"checkpoint not found: {source}")
        if path.suffix != ".safetensors" and not opts.allow_pickle:
            raise UsageError(
                f"{path.name} is a pickle checkpoint, which can run arbitrary code when loaded; "
                "convert a .safetensors file, or pass --allow-pickle if you trust it"
            )
        return "single_file", path
    if source.count("/") == 1 and not path.exists():
        return "folder", download_repo(source)
    raise UsageError(f"not a model folder, checkpoint file or Hub repo id: {source}")


def download_repo(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=DIFFUSERS_FILES))
    except LocalEntryNotFoundError:
        raise UsageError(f"cannot download {repo_id}: no network (or HF_HUB_OFFLINE is set) and it is not in the "
                         "Hugging Face cache; to try sdcli without a download, build a random-weight model: "
                         "python -m sdcli.convert.random_model DIR --tiny (README, Set-up)") from None
    except HfHubHTTPError as exc:
        raise UsageError(f"cannot download {repo_id}: {str(exc).splitlines()[0]}") from exc


def load_components(kind: str, path: Path, opts: ConvertOptions):
    """Return (unet, vae, text_encoder, tokenizer, scheduler_config, model_index)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    if kind == "single_file":
        from diffusers import StableDiffusionPipeline

        # diffusers loads pickled checkpoints with torch.load(weights_only=True)
        kwargs = {"config": opts.config} if opts.config else {}
        try:
            pipe = StableDiffusionPipeline.from_single_file(
                str(path), torch_dtype=torch.float32, safety_checker=None, **kwargs
            )
        except Exception as exc:  # diffusers raises many kinds here; the first line says which
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UsageError(
                f"cannot load {path.name} as a Stable Diffusion checkpoint: {first} "
                "(offline? pass --config with a diffusers folder of the same architecture)"
            ) from exc
        index = {
            "_class_name": "StableDiffusionPipeline",
            "_diffusers_version": __import__("diffusers").__version__,
            "scheduler": ["diffusers", type(pipe.scheduler).__name__],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }
        return pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, dict(pipe.scheduler.config), index

    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        if not (path / sub).is_dir():
            raise UsageError(f"{path} has no {sub}/ folder")
    from sdcli.model.config_checks import check_diffusers_folder

    # configs, tokenizer and weight files checked before torch builds anything from them
    index, scheduler_config = check_diffusers_folder(path, opts.allow_pickle)
    unet = load_or_fail("unet", lambda: UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=torch.float32))
    vae = load_or_fail("vae", lambda: AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=torch.float32))
    text_encoder = load_or_fail("text_encoder", lambda: CLIPTextModel.from_pretrained(path, subfolder="text_encoder",
                                                                               torch_dtype=torch.float32))
    tokenizer = load_or_fail("tokenizer", lambda: CLIPTokenizer.from_pretrained(path, subfolder="tokenizer"))
    return unet, vae, text_encoder, tokenizer, scheduler_config, index


def load_or_fail(component: str, load: Callable):
    """`load()`, with any failure of diffusers, transformers or safetensors (a cut-off or
    corrupt file) as one line naming the component."""
    try:
        return load()
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise UsageError(f"{component}: cannot load it: {type(exc).__name__}: {first}") from None
