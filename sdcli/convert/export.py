"""`sdcli convert`: a diffusers model (Hub repo, local folder or single checkpoint) to
OpenVINO IR, in the folder layout that `optimum-cli export openvino` writes.

Needs the ``convert`` extra (torch, diffusers, nncf); nothing else in sdcli imports this
module's heavy dependencies.
"""
from __future__ import annotations

import gc
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sdcli.util.errors import UsageError
from sdcli.util.fsutil import atomic_directory

WEIGHT_FORMATS = ("fp32", "fp16", "int8")
COMPONENTS = ("text_encoder", "unet", "vae_encoder", "vae_decoder")
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


@dataclass
class ConvertOptions:
    weight_format: str = "fp16"
    force: bool = False
    allow_pickle: bool = False
    config: str | None = None  # diffusers folder or repo giving the configs of a single-file checkpoint
    lora: str | None = None  # LoRA file, folder or Hub repo fused into the UNet (and text encoder)
    lora_scale: float = 1.0
    scheduler: str | None = None  # write this scheduler (one of sdcli's names) into scheduler_config.json
    tiny_vae: str | None = None  # AutoencoderTiny folder or repo to add as vae_decoder_tiny/, vae_encoder_tiny/
    quantize: str | None = None  # "hybrid": NNCF hybrid quantization of the UNet (the rest int8 weight-only)
    calibration_prompts: list[str] | None = None  # for --quantize hybrid [default: quantize.DEFAULT_PROMPTS]
    calibration_samples: int = 32  # UNet calls measured for --quantize hybrid


def require_convert_extra() -> None:
    missing = []
    for mod in ("torch", "diffusers"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise UsageError(
            f"sdcli convert needs {' and '.join(missing)}: pip install \"sdcli[convert]\" "
            "(on CPU-only machines: pip install torch --index-url https://download.pytorch.org/whl/cpu first)"
        )


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
    except LocalEntryNotFoundError as exc:
        raise UsageError(f"cannot download {repo_id} (offline, or no network): {exc}") from exc
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
    unet = _load("unet", lambda: UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=torch.float32))
    vae = _load("vae", lambda: AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=torch.float32))
    text_encoder = _load("text_encoder", lambda: CLIPTextModel.from_pretrained(path, subfolder="text_encoder",
                                                                               torch_dtype=torch.float32))
    tokenizer = _load("tokenizer", lambda: CLIPTokenizer.from_pretrained(path, subfolder="tokenizer"))
    return unet, vae, text_encoder, tokenizer, scheduler_config, index


def _load(component: str, load: Callable):
    """`load()`, with any failure of diffusers, transformers or safetensors (a cut-off or
    corrupt file) as one line naming the component."""
    try:
        return load()
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise UsageError(f"{component}: cannot load it: {type(exc).__name__}: {first}") from None


# --- torch wrappers that fix the names and signatures optimum-intel uses ---------------

def _wrappers():
    import torch

    class TextEncoder(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids):
            out = self.model(input_ids=input_ids, return_dict=True)
            return out.last_hidden_state, out.pooler_output

    class UNet(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, sample, timestep, encoder_hidden_states, timestep_cond=None):
            # The graph converts the int64 timestep to float first thing, which lets the
            # engine swap the input for a float one (Euler's timesteps are fractional).
            t = timestep.to(torch.float32)
            # timestep_cond: an LCM UNet's guidance-scale embedding (optimum-cli's name for it)
            return self.model(sample, t, encoder_hidden_states, timestep_cond=timestep_cond, return_dict=False)[0]

    class VaeEncoder(torch.nn.Module):
        def __init__(self, vae):
            super().__init__()
            self.vae = vae

        def forward(self, sample):
            return self.vae.encode(sample, return_dict=True).latent_dist.parameters

    class VaeDecoder(torch.nn.Module):
        def __init__(self, vae):
            super().__init__()
            self.vae = vae

        def forward(self, latent_sample):
            return self.vae.decode(latent_sample, return_dict=False)[0]

    return TextEncoder, UNet, VaeEncoder, VaeDecoder


def _to_ov(module, example: dict, inputs: list, output_names: list[str]):
    import openvino as ov
    import torch

    module.eval()
    with torch.no_grad():
        model = ov.convert_model(module, example_input=example, input=inputs)
    for port, name in zip(model.inputs, example):
        port.get_tensor().set_names({name})
    for port, name in zip(model.outputs, output_names):
        port.get_tensor().set_names({name})
    return model


def _save(model, folder: Path, weight_format: str) -> None:
    import openvino as ov

    if weight_format == "int8":
        import nncf

        model = nncf.compress_weights(model)
    folder.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, folder / "openvino_model.xml", compress_to_fp16=(weight_format == "fp16"))


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def _model_config(model) -> dict:
    config = dict(model.config)
    config["_class_name"] = type(model).__name__
    return config


def export_tokenizer(tokenizer, folder: Path) -> None:
    import openvino as ov

    tokenizer.save_pretrained(folder)
    try:
        from openvino_tokenizers import convert_tokenizer
    except ImportError:
        return
    ov_tok, ov_detok = convert_tokenizer(tokenizer, with_detokenizer=True)
    ov.save_model(ov_tok, folder / "openvino_tokenizer.xml")
    ov.save_model(ov_detok, folder / "openvino_detokenizer.xml")


def convert(
    source: str,
    output: Path,
    opts: ConvertOptions,
    log: Callable[[str], None] = print,
) -> Path:
    if opts.weight_format not in WEIGHT_FORMATS:
        raise UsageError(f"--weight-format must be one of {', '.join(WEIGHT_FORMATS)}")
    if output.exists() and not opts.force:
        raise UsageError(f"{output} already exists (pass --force to replace it)")
    if opts.scheduler:
        from sdcli.schedulers import resolve_scheduler_name

        try:
            resolve_scheduler_name(opts.scheduler)
        except ValueError as exc:
            raise UsageError(f"--scheduler: {exc}") from None
    require_convert_extra()
    if opts.quantize not in (None, "hybrid"):
        raise UsageError(f"--quantize takes hybrid, got {opts.quantize!r}")
    if opts.quantize and opts.weight_format != "int8":
        raise UsageError("--quantize hybrid compresses the other components to int8: pass --weight-format int8 or leave it out")
    if opts.weight_format == "int8":
        try:
            import nncf  # noqa: F401
        except ImportError as exc:
            raise UsageError('--weight-format int8 needs nncf: pip install "sdcli[convert]"') from exc
    kind, path = resolve_source(source, opts)

    import torch
    from openvino import PartialShape, Type

    torch.set_grad_enabled(False)
    taesd = None
    if opts.tiny_vae:
        from sdcli.convert.tiny_vae import check_matches, export_tiny_vae, load_tiny_vae

        log(f"loading {opts.tiny_vae}")
        taesd = load_tiny_vae(opts.tiny_vae)
    log(f"loading {source}")
    unet, vae, text_encoder, tokenizer, scheduler_config, index = load_components(kind, path, opts)
    if taesd is not None:
        check_matches(taesd.config, vae.config.latent_channels, 2 ** (len(vae.config.block_out_channels) - 1))
    if opts.lora:
        log(f"fusing LoRA {opts.lora} (scale {opts.lora_scale:g})")
        fuse_lora(unet, vae, text_encoder, tokenizer, opts.lora, opts.lora_scale)
    if opts.scheduler:
        scheduler_config = replacement_scheduler_config(opts.scheduler, scheduler_config, unet.config)
    TextEncoder, UNet, VaeEncoder, VaeDecoder = _wrappers()

    with atomic_directory(output, replace=opts.force) as tmp:
        started = time.perf_counter()

        def step(i: int, name: str) -> None:
            log(f"[{i}/6] {name}")

        step(1, "tokenizer")
        export_tokenizer(tokenizer, tmp / "tokenizer")
        _write_json(tmp / "scheduler" / "scheduler_config.json", scheduler_config)

        step(2, "text_encoder")
        seq = tokenizer.model_max_length if tokenizer.model_max_length < 10_000 else 77
        ids = torch.ones((1, seq), dtype=torch.int64)
        model = _to_ov(
            TextEncoder(text_encoder),
            {"input_ids": ids},
            [(PartialShape([-1, -1]), Type.i64)],
            ["last_hidden_state", "pooler_output"],
        )
        _save(model, tmp / "text_encoder", opts.weight_format)
        _write_json(tmp / "text_encoder" / "config.json", text_encoder.config.to_dict())
        hidden = text_encoder.config.hidden_size
        del model, text_encoder
        gc.collect()

        step(3, "unet")
        ucfg = unet.config
        lat = 8
        example = {
            "sample": torch.randn(2, ucfg.in_channels, lat, lat),
            "timestep": torch.tensor([1, 1], dtype=torch.int64),
            "encoder_hidden_states": torch.randn(2, seq, ucfg.cross_attention_dim or hidden),
        }
        inputs = [
            (PartialShape([-1, ucfg.in_channels, -1, -1]), Type.f32),
            (PartialShape([-1]), Type.i64),
            (PartialShape([-1, -1, ucfg.cross_attention_dim]), Type.f32),
        ]
        if ucfg.get("time_cond_proj_dim"):  # a Latent Consistency Model
            example["timestep_cond"] = torch.randn(2, ucfg.time_cond_proj_dim)
            inputs.append((PartialShape([-1, ucfg.time_cond_proj_dim]), Type.f32))
        model = _to_ov(UNet(unet), example, inputs, ["out_sample"])
        _save(model, tmp / "unet", "fp16" if opts.quantize else opts.weight_format)  # quantized at the end
        _write_json(tmp / "unet" / "config.json", _model_config(unet))
        del model, unet
        gc.collect()

        vcfg = vae.config
        scale = 2 ** (len(vcfg.block_out_channels) - 1)
        step(4, "vae_encoder")
        model = _to_ov(
            VaeEncoder(vae),
            {"sample": torch.randn(1, vcfg.in_channels, lat * scale, lat * scale)},
            [(PartialShape([-1, vcfg.in_channels, -1, -1]), Type.f32)],
            ["latent_parameters"],
        )
        _save(model, tmp / "vae_encoder", opts.weight_format)
        _write_json(tmp / "vae_encoder" / "config.json", _model_config(vae))
        del model

        step(5, "vae_decoder")
        model = _to_ov(
            VaeDecoder(vae),
            {"latent_sample": torch.randn(1, vcfg.latent_channels, lat, lat)},
            [(PartialShape([-1, vcfg.latent_channels, -1, -1]), Type.f32)],
            ["sample"],
        )
        _save(model, tmp / "vae_decoder", opts.weight_format)
        _write_json(tmp / "vae_decoder" / "config.json", _model_config(vae))
        del model, vae
        gc.collect()
        if taesd is not None:
            log("[5/6] vae_encoder_tiny, vae_decoder_tiny")
            export_tiny_vae(taesd, tmp, opts.weight_format)

        step(6, "model_index.json")
        index = {k: v for k, v in index.items() if not (isinstance(v, list) and v[0] is None)}
        _write_json(tmp / "model_index.json", index)
        _write_json(
            tmp / "sdcli.json",
            {"source": source, "weight_format": opts.weight_format, "converted_in_s": round(time.perf_counter() - started, 1),
             **({"tiny_vae": opts.tiny_vae} if opts.tiny_vae else {}),
             **({"quantize": opts.quantize} if opts.quantize else {})},
        )
        if opts.quantize == "hybrid":
            from sdcli.convert.quantize import hybrid_quantize_unet

            log("[6/6] unet: hybrid quantization")
            hybrid_quantize_unet(tmp, opts.calibration_prompts, opts.calibration_samples, log)
    log(f"wrote {output} ({_folder_size(output) / 1e6:.1f} MB, {opts.weight_format})")
    return output


def fuse_lora(unet, vae, text_encoder, tokenizer, lora: str, scale: float) -> None:
    """Fuse a LoRA (a .safetensors file, a folder holding one, or a Hub repo such as
    latent-consistency/lcm-lora-sdv1-5) into the UNet, and into the text encoder where it has
    weights for it, in place: diffusers' load_lora_weights, fuse_lora(lora_scale), unload."""
    try:
        import peft  # noqa: F401  (diffusers' LoRA loading needs it)
    except ImportError as exc:
        raise UsageError('--lora needs peft: pip install "sdcli[convert]"') from exc
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    path = Path(lora).expanduser()
    if path.is_file():
        source, kwargs = str(path.parent), {"weight_name": path.name}
    elif path.is_dir() or (lora.count("/") == 1 and not path.exists()):
        source, kwargs = str(path) if path.is_dir() else lora, {}
    else:
        raise UsageError(f"--lora: not a LoRA file, folder or Hub repo id: {lora}")
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDPMScheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    try:
        pipe.load_lora_weights(source, **kwargs)
    except Exception as exc:  # diffusers raises many kinds here; the first line says which
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"--lora: cannot load {lora}: {first}") from exc
    pipe.fuse_lora(lora_scale=scale)
    pipe.unload_lora_weights()  # the fused weights stay; the LoRA layers go


def replacement_scheduler_config(name: str, config: dict, unet_config) -> dict:
    """The scheduler_config.json that makes `name` the folder's own scheduler: what `sdcli
    generate --scheduler NAME` (diffusers' XScheduler.from_config(pipe.scheduler.config))
    runs on the original folder."""
    from sdcli.schedulers import create_scheduler, pipeline_switch_config, resolve_scheduler_name

    try:
        key = resolve_scheduler_name(name)
        lcm_unet = bool(unet_config.get("time_cond_proj_dim"))
        if lcm_unet and key != "lcm":
            raise UsageError(f"--scheduler {name}: this is a Latent Consistency Model, which runs with lcm only")
        scheduler = create_scheduler(key, config if lcm_unet else pipeline_switch_config(config))
    except ValueError as exc:
        raise UsageError(f"--scheduler: {exc}") from None
    return {"_class_name": scheduler.diffusers_class, **scheduler.config}


def _folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
