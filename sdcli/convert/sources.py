"""Where `sdcli convert` reads a model from: a local diffusers folder, a Hub repo (downloaded
with huggingface_hub) or a single-file checkpoint; the components loaded in float32."""
from __future__ import annotations

from dataclasses import dataclass, field
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
    "tokenizer_2/*",
    "text_encoder_2/config.json",
    "text_encoder_2/*.safetensors",
    # flow-matching transformer models (Z-Image): sharded weights come with their index
    "transformer/*.json",
    "transformer/*.safetensors",
    "text_encoder/*.safetensors.index.json",
    # a ControlNet repo (diffusers' ControlNetModel): its config and weights at the top
    "config.json",
    "diffusion_pytorch_model.safetensors",
]
# Keys only an SDXL checkpoint (base or refiner, in Stability's single-file layout) has
SDXL_KEY_PREFIX = "conditioner.embedders."


@dataclass
class Parts:
    """The torch components of a pipeline that `sdcli convert` writes, loaded in float32.

    SD 1.x/2.x has one text encoder; SDXL a second, with a projection (`text_encoder_2`), and
    its refiner only that second one (`text_encoder` and `tokenizer` are None)."""

    unet: object
    vae: object
    text_encoder: object | None
    tokenizer: object | None
    scheduler_config: dict
    index: dict
    text_encoder_2: object | None = None
    tokenizer_2: object | None = None
    # a folder's components are loaded when first asked for (load()), each written and freed
    # before the next loads: the peak is the largest component's, not all of them at once
    loaders: dict[str, Callable[[], object]] = field(default_factory=dict)
    configs: dict[str, dict] = field(default_factory=dict)  # each lazy component's config.json

    def load(self, name: str):
        """Component `name` (unet, vae, text_encoder, text_encoder_2), loaded now if it was left for later."""
        if getattr(self, name) is None and name in self.loaders:
            setattr(self, name, self.loaders.pop(name)())
        return getattr(self, name)

    @property
    def unet_config(self):
        return self.config_of("unet")

    @property
    def vae_config(self):
        return self.config_of("vae")

    @property
    def is_sdxl(self) -> bool:
        return self.unet_config.get("addition_embed_type") == "text_time"

    def text_encoders(self) -> list[tuple[str, object]]:
        """(folder name, tokenizer) of each text encoder present (Parts.load gives the encoder)."""
        named = [("text_encoder", self.tokenizer), ("text_encoder_2", self.tokenizer_2)]
        return [(name, tokenizer) for name, tokenizer in named
                if getattr(self, name) is not None or name in self.loaders]

    def config_of(self, name: str):
        module = getattr(self, name)
        return module.config if module is not None else self.configs[name]


def default_output_name(source: str) -> str:
    path = Path(source)
    if path.suffix in (".safetensors", ".ckpt", ".pt", ".pth", ".bin"):
        return path.stem
    return path.name.rstrip("/") or "model"


def resolve_source(source: str, opts: ConvertOptions) -> tuple[str, Path]:
    """Return ("folder" | "single_file" | "controlnet", local path); a Hub repo id is downloaded first.
    "controlnet" is a ControlNetModel folder or a single-file ControlNet (convert/controlnet_file.py)."""
    from sdcli.convert.controlnet import is_controlnet_folder

    path = Path(source).expanduser()
    if path.is_dir():
        if is_controlnet_folder(path):
            return "controlnet", path
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
        from sdcli.convert.controlnet_file import controlnet_file

        return ("controlnet" if controlnet_file(path, opts.allow_pickle) else "single_file"), path
    if source.count("/") == 1 and not path.exists():
        downloaded = download_repo(source)
        return ("controlnet" if is_controlnet_folder(downloaded) else "folder"), downloaded
    raise UsageError(f"not a model folder, checkpoint file or Hub repo id: {source}")


def download_repo(repo_id: str, patterns: list[str] = DIFFUSERS_FILES) -> Path:
    """The repo's files matching `patterns` (a diffusers pipeline's), downloaded or from the cache."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except LocalEntryNotFoundError:
        raise UsageError(f"cannot download {repo_id}: no network (or HF_HUB_OFFLINE is set) and it is not in the "
                         "Hugging Face cache; to try sdcli without a download, build a random-weight model: "
                         "python -m sdcli.convert.random_model DIR --tiny (README, Set-up)") from None
    except HfHubHTTPError as exc:
        raise UsageError(f"cannot download {repo_id}: {str(exc).splitlines()[0]}") from exc


def load_components(kind: str, path: Path, opts: ConvertOptions, lazy: bool = False) -> Parts:
    """The pipeline's components; `lazy` (a folder only): each model when Parts.load asks for it."""
    if kind == "single_file":
        return load_single_file(path, opts)
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from sdcli.model.config_checks import check_diffusers_folder, read_json

    quiet_loading()
    # configs, tokenizers and weight files checked before torch builds anything from them
    index, scheduler_config, encoders = check_diffusers_folder(path, opts.allow_pickle)
    classes = {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel,
               "text_encoder_2": CLIPTextModelWithProjection}
    names = ["unet", "vae", *encoders]
    loaders = {name: lambda name=name: load_or_fail(name, lambda: classes[name].from_pretrained(
        path, subfolder=name, torch_dtype=torch.float32)) for name in names}
    tokenizers = {}
    for name in (encoder.replace("text_encoder", "tokenizer") for encoder in encoders):
        tokenizers[name] = load_or_fail(name, lambda: CLIPTokenizer.from_pretrained(path, subfolder=name))
    configs = {name: read_json(path / name / "config.json") for name in names}
    parts = Parts(None, None, None, tokenizers.get("tokenizer"), scheduler_config, index, None,
                  tokenizers.get("tokenizer_2"), loaders, configs)
    for name in names if not lazy else ():
        parts.load(name)
    return parts


def quiet_loading() -> None:
    """No progress bars from transformers and diffusers while components load (convert says
    what it does itself, and --quiet means quiet); downloads keep huggingface_hub's."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()


def single_file_kind(path: Path) -> str:
    """"sdxl", "sdxl-refiner" or "sd" from a checkpoint's tensor names (a .safetensors header
    is read without loading the weights; pickles are taken for SD 1.x/2.x)."""
    if path.suffix != ".safetensors":
        return "sd"
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except Exception:  # not a safetensors file: diffusers' loader says what is wrong
        return "sd"
    if not any(k.startswith(SDXL_KEY_PREFIX) for k in keys):
        return "sd"
    return "sdxl" if any(k.startswith(SDXL_KEY_PREFIX + "1.") for k in keys) else "sdxl-refiner"


def load_single_file(path: Path, opts: ConvertOptions) -> Parts:
    import torch
    import diffusers

    kind = single_file_kind(path)
    quiet_loading()
    pipeline_class = {"sd": diffusers.StableDiffusionPipeline, "sdxl": diffusers.StableDiffusionXLPipeline,
                      "sdxl-refiner": diffusers.StableDiffusionXLImg2ImgPipeline}[kind]
    # diffusers loads pickled checkpoints with torch.load(weights_only=True)
    kwargs = {"config": opts.config} if opts.config else {}
    if kind == "sd":
        kwargs.update(safety_checker=None)
    try:
        pipe = pipeline_class.from_single_file(str(path), torch_dtype=torch.float32, **kwargs)
    except Exception as exc:  # diffusers raises many kinds here; the first line says which
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        family = "Stable Diffusion XL" if kind != "sd" else "Stable Diffusion"
        raise UsageError(
            f"cannot load {path.name} as a {family} checkpoint: {first} "
            "(offline? pass --config with a diffusers folder of the same architecture)"
        ) from exc
    parts = {name: getattr(pipe, name, None) for name in ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")}
    check_all_weights_loaded(path, {"unet": pipe.unet, "vae": pipe.vae, "text_encoder": parts["text_encoder"],
                                    "text_encoder_2": parts["text_encoder_2"]})
    index = {"_class_name": pipeline_class.__name__, "_diffusers_version": diffusers.__version__,
             "scheduler": ["diffusers", type(pipe.scheduler).__name__],
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    for name, module in parts.items():
        if module is not None:
            index[name] = ["transformers", type(module).__name__]
    if kind != "sd":
        index["force_zeros_for_empty_prompt"] = bool(pipe.config.get("force_zeros_for_empty_prompt", kind == "sdxl"))
        if kind == "sdxl-refiner":
            index["requires_aesthetics_score"] = bool(pipe.config.get("requires_aesthetics_score", True))
    # the configs stay when convert frees each component once written (it asks is_sdxl afterwards)
    configs = {"unet": dict(pipe.unet.config), "vae": dict(pipe.vae.config)}
    configs.update({name: parts[name].config.to_dict() for name in ("text_encoder", "text_encoder_2") if parts[name]})
    return Parts(pipe.unet, pipe.vae, parts["text_encoder"], parts["tokenizer"], dict(pipe.scheduler.config), index,
                 parts["text_encoder_2"], parts["tokenizer_2"], configs=configs)


def check_all_weights_loaded(path: Path, modules: dict) -> None:
    """UsageError when diffusers left some of a component's weights unloaded (on the meta
    device): the checkpoint lacks them where diffusers looked, and export would fail midway."""
    for name, module in modules.items():
        if module is None:
            continue
        tensors = [*module.parameters(), *module.buffers()]
        empty = sum(t.is_meta for t in tensors)
        if empty:
            raise UsageError(f"cannot load {path.name}: diffusers found no weights in it for {empty} of the "
                             f"{len(tensors)} tensors of its {name} (an incomplete checkpoint, or one whose "
                             "architecture --config does not describe)")


def load_or_fail(component: str, load: Callable):
    """`load()`, with any failure of diffusers, transformers or safetensors (a cut-off or
    corrupt file) as one line naming the component."""
    try:
        return load()
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise UsageError(f"{component}: cannot load it: {type(exc).__name__}: {first}") from None
