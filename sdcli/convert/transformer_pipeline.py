"""`sdcli convert` for a flow-matching transformer pipeline (FLUX.2-klein, Z-Image, and the next
ones): one driver, which each family's module parameterises with a `TransformerPipeline` (its
classes, its component exporters, its defaults).

    tokenizer/ (with openvino_tokenizer.xml), scheduler/  ->  transformer/ (the largest first)
    ->  text_encoder/  ->  vae_encoder/, vae_decoder/  ->  model_index.json, sdcli.json

Components are loaded one at a time, each exported and freed before the next.  The source is a
diffusers folder, or a single-file transformer checkpoint (ComfyUI / civitai: the transformer's
weights alone, in diffusers' names or the original ones) with `--config`, a diffusers folder of
the same family, giving the other components: diffusers' own `from_single_file` maps the
original names (its convert_*_transformer_checkpoint_to_diffusers).
"""
from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sdcli.convert.defaults import defaults_metadata
from sdcli.convert.ir import Int4, export_tokenizer, load_dtype, vae_weight_format, write_json
from sdcli.convert.options import ConvertOptions
from sdcli.convert.vae_export import export_vae
from sdcli.util.errors import UsageError
from sdcli.util.fsutil import atomic_directory

COMPONENTS = ("transformer", "text_encoder", "tokenizer", "vae", "scheduler")
COMFY_PREFIX = "model.diffusion_model."  # ComfyUI's prefix of a diffusion model's tensors


@dataclass(frozen=True)
class TransformerPipeline:
    """What differs between the flow-matching transformer families' conversions."""

    name: str  # in messages: "FLUX.2-klein"
    pipeline: str  # model_index.json's _class_name
    transformer: str  # diffusers' class of transformer/
    text_encoder: str  # transformers' class of text_encoder/
    vae: str  # diffusers' class of vae/
    export_transformer: Callable[[object, Path, str, Int4 | None], None]
    export_text_encoder: Callable[[object, Path, str, Int4 | None], None]
    defaults: Callable[[dict], tuple[int, float]]  # (steps, guidance) from model_index.json
    marker: str  # a substring of its transformer's tensor names, original and diffusers' alike
    after_vae: Callable[[object, Path], None] | None = None  # more of the VAE written (klein's statistics)
    by_transformer_config: bool = False  # a folder is this family's where transformer/'s class says so

    def is_folder(self, root: Path) -> bool:
        """A diffusers folder of this pipeline (model_index.json names it, or its transformer's config)."""
        from sdcli.model.config_checks import read_json

        index = read_json(root / "model_index.json", required=False) or {}
        if index.get("_class_name") == self.pipeline:
            return True
        config = read_json(root / "transformer" / "config.json", required=False) or {} \
            if self.by_transformer_config else {}
        return config.get("_class_name") == self.transformer


def check_options(family: TransformerPipeline, opts: ConvertOptions, transformer_file: Path | None = None) -> None:
    """The options a conversion of `family` does not take yet, refused before anything loads
    (--config only with a single-file transformer)."""
    for flag, given in (("--lora", opts.lora), ("--tiny-vae", opts.tiny_vae), ("--quantize", opts.quantize),
                        ("--scheduler", opts.scheduler), ("--timestep-spacing", opts.timestep_spacing),
                        ("--config", opts.config and transformer_file is None)):
        if given:
            raise UsageError(f"{flag} is not supported for {family.name} models yet")
    if opts.default_vae == "tiny":
        raise UsageError(f"--default-vae tiny: {family.name} folders have no tiny VAE")


# --- single-file transformers --------------------------------------------------------------------

def tensor_names(path: Path) -> list[str]:
    """The tensor names in a .safetensors file's header (nothing loaded); UsageError if it is not one."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except Exception as exc:  # safetensors' errors have several types; the first line says which
        raise UsageError(f"cannot read {path.name} as a .safetensors file: {str(exc).splitlines()[0]}") from None


def holds_transformer(names: list[str], families: tuple[TransformerPipeline, ...]) -> TransformerPipeline | None:
    """The family whose transformer tensors `names` are (by its marker), or None."""
    return next((family for family in families if any(family.marker in name for name in names)), None)


def transformer_family(path: Path, families: tuple[TransformerPipeline, ...]) -> TransformerPipeline | None:
    """The family whose transformer the single file `path` holds (by its tensor names), or None."""
    if path.suffix != ".safetensors":
        return None
    return holds_transformer(tensor_names(path), families)


def load_transformer_file(family: TransformerPipeline, path: Path, config_root: Path, weight_format: str):
    """The transformer of `family` from the single file `path` (diffusers' or the original tensor
    names, ComfyUI's prefix removed), configured by `config_root`'s transformer/, in the 16-bit
    type its weights are stored in (float32 for fp32 output or float32 files, as load_dtype);
    UsageError where its tensors do not fill the model (the file is not this model's)."""
    from collections import Counter

    import diffusers
    import torch
    from safetensors.torch import load_file

    from sdcli.convert.sources import check_all_weights_loaded

    state = load_file(str(path))
    state = {name.removeprefix(COMFY_PREFIX): tensor for name, tensor in state.items()}
    stored = Counter()
    for tensor in state.values():
        stored[tensor.dtype] += tensor.numel()
    dtype = torch.float32
    if weight_format != "fp32" and stored and stored.most_common(1)[0][0] in (torch.float16, torch.bfloat16):
        dtype = stored.most_common(1)[0][0]
    cls = getattr(diffusers, family.transformer)
    try:
        model = cls.from_single_file(state, config=str(config_root), subfolder="transformer", torch_dtype=dtype)
    except Exception as exc:  # diffusers raises many kinds here (shapes, keys); the first line says which
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"cannot load {path.name} as the transformer of {config_root}: {first[:300]}") from None
    del state
    check_all_weights_loaded(path, {"transformer": model})
    return model


def transformer_source(kind: str, path: Path, opts: ConvertOptions, families: tuple[TransformerPipeline, ...]
                       ) -> tuple[TransformerPipeline, Path, Path | None] | None:
    """(family, diffusers folder, single transformer file or None) where `path` is a transformer
    pipeline's folder, or a single file of one's transformer (with --config, a folder of the same
    family); None for anything else (the UNet models).  UsageError for a transformer file without
    --config or with the wrong family's, or another file with a transformer folder as --config."""
    if kind == "folder":
        family = next((family for family in families if family.is_folder(path)), None)
        return None if family is None else (family, path, None)
    if kind != "single_file":
        return None
    family = transformer_family(path, families)
    if family is None:  # a UNet model's checkpoint, unless --config names a transformer pipeline's folder
        local = Path(opts.config).expanduser() if opts.config else None
        config_family = next((f for f in families if f.is_folder(local)), None) if local and local.is_dir() else None
        if config_family is not None:
            raise UsageError(f"{path.name} holds no {config_family.name} transformer (none of its tensor names has "
                             f"{config_family.marker!r}), which --config {opts.config} is a folder of")
        return None
    config = config_folder(opts.config)
    if config is None:
        raise UsageError(f"{path.name} holds a {family.name} transformer alone: pass --config DIR, a diffusers "
                         f"folder of {family.name}, for its text encoder, VAE, tokenizer and scheduler")
    if not family.is_folder(config):
        raise UsageError(f"{path.name} holds a {family.name} transformer, but --config {opts.config} is not a "
                         f"{family.name} diffusers folder")
    return family, config, path


def config_folder(config: str | None) -> Path | None:
    """--config as a local diffusers folder (a Hub repo id is downloaded first, all but its
    transformer's weights, which the single file replaces); None without it or where it is neither."""
    if not config:
        return None
    root = Path(config).expanduser()
    if root.is_dir():
        return root
    if config.count("/") == 1 and not root.exists():
        from sdcli.convert.sources import DIFFUSERS_FILES, download_repo

        return download_repo(config, [p for p in DIFFUSERS_FILES if p != "transformer/*.safetensors"])
    return None


# --- the driver ----------------------------------------------------------------------------------

def convert_transformer_pipeline(family: TransformerPipeline, source: str, root: Path, output: Path,
                                 opts: ConvertOptions, log: Callable[[str], None] = print,
                                 transformer_file: Path | None = None) -> Path:
    """Convert the `family` pipeline folder `root` (from `source`) into `output`; with
    `transformer_file`, its transformer from that single file instead of root's transformer/."""
    check_options(family, opts, transformer_file)
    import diffusers
    import torch
    import transformers

    from sdcli.convert.sources import load_or_fail, quiet_loading
    from sdcli.model.config_checks import check_scheduler, read_json

    torch.set_grad_enabled(False)
    quiet_loading()
    index = read_json(root / "model_index.json")
    scheduler = read_json(root / "scheduler" / "scheduler_config.json")
    check_scheduler(scheduler, known_class=False)
    for sub in COMPONENTS:
        if not (root / sub).is_dir() and not (sub == "transformer" and transformer_file is not None):
            raise UsageError(f"{root} has no {sub}/ folder")

    def load(name: str, cls):
        dtype = load_dtype(root / name, opts.weight_format)
        return load_or_fail(name, lambda: cls.from_pretrained(root, subfolder=name, torch_dtype=dtype))

    def transformer():
        if transformer_file is None:
            return load("transformer", getattr(diffusers, family.transformer))
        return load_transformer_file(family, transformer_file, root, opts.weight_format)

    with atomic_directory(output, replace=opts.force) as tmp:
        started = time.perf_counter()
        log("[1/5] tokenizer")
        tokenizer = load_or_fail("tokenizer", lambda: transformers.AutoTokenizer.from_pretrained(root,
                                                                                                 subfolder="tokenizer"))
        export_tokenizer(tokenizer, tmp / "tokenizer")
        write_json(tmp / "scheduler" / "scheduler_config.json", scheduler)
        log("[2/5] transformer")  # the largest first
        family.export_transformer(transformer(), tmp, opts.weight_format, opts.int4_config)
        gc.collect()
        log("[3/5] text_encoder")
        family.export_text_encoder(load("text_encoder", getattr(transformers, family.text_encoder)), tmp,
                                   opts.weight_format, opts.int4_config)
        gc.collect()
        vae = load("vae", getattr(diffusers, family.vae))
        export_vae(vae, tmp, vae_weight_format(opts.weight_format), log, ("[4/5] vae_encoder", "[4/5] vae_decoder"))
        if family.after_vae is not None:
            family.after_vae(vae, tmp)
        del vae
        gc.collect()
        log("[5/5] model_index.json")
        index = {k: v for k, v in index.items() if not (isinstance(v, list) and v and v[0] is None)}
        write_json(tmp / "model_index.json", index)
        default_steps, default_guidance = family.defaults(index)
        steps = opts.default_steps if opts.default_steps is not None else default_steps
        guidance = opts.default_guidance if opts.default_guidance is not None else default_guidance
        write_json(tmp / "sdcli.json", {"source": source, **opts.weight_metadata(),
                                        "converted_in_s": round(time.perf_counter() - started, 1),
                                        **defaults_metadata(steps, guidance, opts.default_vae)})
    return output

