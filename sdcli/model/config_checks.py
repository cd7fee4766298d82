"""Checks of a converted model folder's configs and IR headers before anything is built
from them: a broken or malicious folder gets one line naming the file, the key and what
it should be (UsageError, exit 2), never a crash or a huge allocation.

Only what sdcli reads is checked, each key with its type and a range wide enough for any
real Stable Diffusion model; consistency between components (the UNet's inputs against
the text encoder's and the VAE's outputs, as the configs and the IR graphs declare them)
catches a component copied in from another model.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from sdcli.util.errors import UsageError

MAX_CONFIG_BYTES = 4 << 20  # real configs are a few kB (trained_betas included)
IR_VERSIONS = (10, 11)  # what OpenVINO's IR reader takes
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "original_sample")
_MISSING = object()


def read_json(path: Path, required: bool = True) -> dict | None:
    """A JSON object from `path` (None when it is missing and not `required`)."""
    where = f"{path.parent.name}/{path.name}"
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise UsageError(f"{where} is {size / 1e6:.0f} MB, not a model config (at most {MAX_CONFIG_BYTES >> 20} MB)")
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
    except FileNotFoundError:
        if not required:
            return None
        raise UsageError(f"model folder is incomplete: {where} is missing") from None
    except IsADirectoryError:
        raise UsageError(f"{where} is a folder, not a JSON file") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # JSONDecodeError, too many digits, nesting
        raise UsageError(f"{path} is not valid JSON: {_short(str(exc), 120)}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{where} must hold a JSON object, not {_kind(data)}")
    return data


def _short(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else repr(value)
    text = str(text).splitlines()[0] if str(text).strip() else str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "true/false",
            type(None): "null"}.get(type(value), type(value).__name__)


class Config:
    """Typed, range-checked reads of one JSON config; every failure names file and key."""

    def __init__(self, data: dict, where: str):
        self.data = data
        self.where = where

    def fail(self, key: str, wanted: str, value: Any) -> UsageError:
        return UsageError(f"{self.where}: {key} must be {wanted}, got {_short(value)}")

    def integer(self, key: str, low: int, high: int, default: Any = _MISSING) -> int | None:
        value = self.data.get(key, default)
        if value is _MISSING:
            raise self.fail(key, f"an integer from {low} to {high}", "nothing")
        if value is None and default is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(key, f"an integer from {low} to {high}", value)
        return value

    def number(self, key: str, low: float, high: float, default: Any = _MISSING, low_open: bool = False) -> float | None:
        value = self.data.get(key, default)
        if value is None and default is None:
            return None
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value > high or value < low or (low_open and value == low):
            bound = f"more than {low:g}" if low_open else f"at least {low:g}"
            raise self.fail(key, f"a number {bound} and at most {high:g}", value)
        return float(value)

    def text(self, key: str, choices: tuple[str, ...] | None = None, default: Any = _MISSING) -> str | None:
        value = self.data.get(key, default)
        if value is None and default is None:
            return None
        if not isinstance(value, str) or (choices is not None and value not in choices):
            raise self.fail(key, "one of " + ", ".join(choices) if choices else "a string", value)
        return value

    def flag(self, key: str) -> None:
        value = self.data.get(key, False)
        if not isinstance(value, bool):
            raise self.fail(key, "true or false", value)

    def integers(self, key: str, low: int, high: int, lengths: tuple[int, int], default: Any = _MISSING) -> list[int]:
        value = self.data.get(key, default)
        wanted = f"a list of {lengths[0]} to {lengths[1]} integers from {low} to {high}"
        if not isinstance(value, (list, tuple)) or not lengths[0] <= len(value) <= lengths[1]:
            raise self.fail(key, wanted, value)
        if any(isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high for v in value):
            raise self.fail(key, wanted, value)
        return list(value)


def check_unet(cfg: dict) -> None:
    c = Config(cfg, "unet/config.json")
    c.integer("in_channels", 1, 64, 4)
    c.integer("out_channels", 1, 64, 4)
    c.integer("sample_size", 1, 1024, 64)  # latents: 8192 pixels at the usual factor 8
    c.integer("cross_attention_dim", 1, 16384, 768)
    c.integers("block_out_channels", 1, 16384, (1, 8), [320, 640, 1280, 1280])
    c.integer("time_cond_proj_dim", 1, 16384, None)
    c.text("addition_embed_type", default=None)  # "text_time": SDXL's added conditioning
    c.integer("addition_time_embed_dim", 1, 16384, None)
    c.integer("projection_class_embeddings_input_dim", 1, 1 << 20, None)


def check_vae(cfg: dict, where: str) -> None:
    c = Config(cfg, where)
    c.integer("latent_channels", 1, 64, 4)
    c.integers("block_out_channels", 1, 16384, (1, 8), [128, 256, 512, 512])
    c.number("scaling_factor", 0.0, 100.0, 0.18215, low_open=True)
    c.number("shift_factor", -100.0, 100.0, None)
    c.flag("force_upcast")


def check_scheduler(cfg: dict, known_class: bool = True) -> None:
    """`known_class`: the class it names must be one sdcli has (not for `convert`, which may
    be told to write another scheduler)."""
    c = Config(cfg, "scheduler/scheduler_config.json")
    class_name = c.text("_class_name", default=None)
    if class_name is not None and known_class:
        from sdcli.schedulers import name_for_diffusers_class

        try:
            name_for_diffusers_class(class_name)
        except ValueError as exc:
            raise UsageError(f"scheduler/scheduler_config.json: {exc}") from None
    steps = c.integer("num_train_timesteps", 1, 100_000, 1000)
    trained = cfg.get("trained_betas")
    if trained is not None:
        if not isinstance(trained, list) or len(trained) != steps or not all(
                isinstance(b, (int, float)) and not isinstance(b, bool) and 0 < b < 1 for b in trained):
            raise c.fail("trained_betas", f"null or a list of num_train_timesteps ({steps}) numbers between 0 and 1",
                         trained)
    start = c.number("beta_start", 0.0, 1.0, 0.0001, low_open=True)
    end = c.number("beta_end", 0.0, 1.0, 0.02, low_open=True)
    if trained is None and cfg.get("beta_schedule", "linear") in ("linear", "scaled_linear") and not start < end:
        raise UsageError(f"scheduler/scheduler_config.json: beta_start ({start:g}) must be less than beta_end ({end:g})")
    c.text("beta_schedule", default="linear")
    c.text("prediction_type", PREDICTION_TYPES, default="epsilon")
    c.text("timestep_spacing", default="leading")
    c.integer("steps_offset", 0, steps, 0)
    c.integer("original_inference_steps", 1, steps, None)
    c.number("timestep_scaling", 0.0, 1e6, None)
    for key in ("clip_sample", "set_alpha_to_one", "skip_prk_steps", "rescale_betas_zero_snr", "use_karras_sigmas"):
        c.flag(key)


def check_text_encoder(cfg: dict, where: str = "text_encoder/config.json") -> int:
    c = Config(cfg, where)
    c.integer("max_position_embeddings", 1, 100_000, 77)
    c.integer("vocab_size", 1, 10_000_000, 49408)
    return c.integer("hidden_size", 1, 16384, 768)


def check_model_index(cfg: dict) -> None:
    Config(cfg, "model_index.json").text("_class_name", default=None)
    for key, value in cfg.items():
        if not key.startswith("_") and isinstance(value, list) and not (
                len(value) == 2 and all(v is None or isinstance(v, str) for v in value)):
            raise UsageError(f"model_index.json: {key} must be a [library, class] pair, got {_short(value)}")


_NET = re.compile(rb"<net\b[^>]*\bversion=\"([^\"]*)\"")
# a Parameter layer: its name, its shape, and the tensor names of its output port (optimum-cli
# names some layers "Parameter_123" and puts the input's name on the port only)
_PARAMETER = re.compile(rb'<layer\b[^>]*\bname="([^"]*)"[^>]*\btype="Parameter"[^>]*>\s*<data\b[^>]*\bshape="([^"]*)"'
                        rb'[^>]*>\s*(?:<rt_info>.*?</rt_info>\s*)?(?:<output>\s*<port\b[^>]*\bnames="([^"]*)")?',
                        re.DOTALL)


def ir_header(xml: Path) -> tuple[int | None, dict[str, list[str]]]:
    """(IR version, {input name: dims}) from the start of an IR's XML (inputs come first)."""
    with open(xml, "rb") as f:
        head = f.read(1 << 20)
    found = _NET.search(head[:4096])
    version = int(found.group(1)) if found and found.group(1).isdigit() else None
    inputs = {}
    for m in _PARAMETER.finditer(head):
        dims = [d.strip() for d in m.group(2).decode("ascii", "replace").split(",")]
        names = m.group(3).decode("utf-8", "replace").split(",") if m.group(3) else [m.group(1).decode("utf-8", "replace")]
        inputs.update({name.strip(): dims for name in names if name.strip()})
    return version, inputs


_PORT = re.compile(rb'<port\b[^>]*\bnames="([^"]*)"[^>]*>((?:\s*<dim>[^<]*</dim>)*)')


def ir_output_dims(xml: Path, name: str) -> list[str] | None:
    """The dims of the tensor called `name` in an IR (None when no port names it)."""
    for match in _PORT.finditer(Path(xml).read_bytes()):
        if name in match.group(1).decode("utf-8", "replace").split(","):
            return re.findall(r"<dim>([^<]*)</dim>", match.group(2).decode("ascii", "replace"))
    return None


def check_ir_version(xml: Path, component: str) -> dict[str, list[str]]:
    version, inputs = ir_header(xml)
    if version is not None and version not in IR_VERSIONS:
        import openvino as ov

        made = "a newer" if version > max(IR_VERSIONS) else "an older"
        raise UsageError(f"{component}: {xml.name} is IR version {version}, which OpenVINO {ov.__version__.split('-')[0]} "
                         f"does not read (made by {made} OpenVINO? convert the model again)")
    return inputs


def _dim(inputs: dict[str, list[str]], name: str, index: int) -> int | None:
    dims = inputs.get(name)
    if dims is None or len(dims) <= index or not dims[index].isdigit():
        return None
    return int(dims[index])


def check_components(unet: dict, vae: dict, hidden: int | None) -> None:
    """A UNet, VAE and text encoder (hidden size) that can work together."""
    latent = vae.get("latent_channels", 4)
    in_channels = unet.get("in_channels", 4)
    cross = unet.get("cross_attention_dim", 768)
    if in_channels not in (latent, 2 * latent + 1):
        raise UsageError(f"unet/config.json: in_channels {in_channels} does not fit the VAE's {latent} latent channels "
                         f"({latent}, or {2 * latent + 1} for an inpainting UNet): a UNet from another model?")
    if unet.get("out_channels", 4) != latent:
        raise UsageError(f"unet/config.json: out_channels {unet.get('out_channels')} is not the VAE's {latent} "
                         "latent channels: a UNet from another model?")
    if hidden is not None and cross != hidden:
        raise UsageError(f"unet/config.json: cross_attention_dim {cross} is not the text encoder's hidden_size "
                         f"{hidden}: a UNet or text encoder from another model?")


def check_folder(root: Path, unet: dict, vae: dict, scheduler: dict) -> None:
    """A converted model folder: every check above, the components against each other in
    their configs, then the IR graphs' versions and inputs against the configs."""
    check_unet(unet)
    check_vae(vae, "vae_decoder/config.json")
    check_scheduler(scheduler)
    encoder_vae = read_json(root / "vae_encoder" / "config.json", required=False)
    if encoder_vae is not None:
        check_vae(encoder_vae, "vae_encoder/config.json")
    sdxl = unet.get("addition_embed_type") == "text_time"
    encoders = ("text_encoder", "text_encoder_2") if sdxl else ("text_encoder",)
    configs = {name: read_json(root / name / "config.json", required=False) for name in encoders
               if (root / name).is_dir()}
    widths = [check_text_encoder(cfg, f"{name}/config.json") for name, cfg in configs.items() if cfg is not None]
    # SDXL's UNet attends to both encoders' hidden states side by side (its refiner's: the second's)
    hidden = sum(widths) if widths and len(widths) == len(configs) else None
    index = read_json(root / "model_index.json", required=False)
    if index is not None:
        check_model_index(index)
    check_components(unet, vae, hidden)
    latent = vae.get("latent_channels", 4)
    in_channels = unet.get("in_channels", 4)
    cross = unet.get("cross_attention_dim", 768)

    graphs = {c: check_ir_version(root / c / "openvino_model.xml", c)
              for c in ("text_encoder", "unet", "vae_decoder", "vae_encoder") if (root / c / "openvino_model.xml").is_file()}
    declared = [
        ("unet", "sample", 1, in_channels, "unet/config.json in_channels"),
        ("unet", "encoder_hidden_states", 2, cross, "unet/config.json cross_attention_dim"),
        ("vae_decoder", "latent_sample", 1, latent, "vae_decoder/config.json latent_channels"),
    ]
    if "text_encoder" in graphs and not sdxl:
        dims = ir_output_dims(root / "text_encoder" / "openvino_model.xml", "last_hidden_state") or []
        graphs["text_encoder"]["last_hidden_state"] = dims
        declared.append(("text_encoder", "last_hidden_state", 2, cross, "unet/config.json cross_attention_dim"))
    for component, name, index, expected, source in declared:
        got = _dim(graphs.get(component, {}), name, index)
        if got is not None and got != expected:
            verb = "gives" if name == "last_hidden_state" else "takes"
            raise UsageError(f"{component}/openvino_model.xml {verb} {name} with {got} in dimension {index}, but "
                             f"{source} says {expected}: files from different models?")


def check_transformer_folder(root: Path, transformer: dict, vae: dict, scheduler: dict) -> None:
    """A flow-matching transformer model's folder (Z-Image): the configs sdcli reads, the
    components against each other, the IRs' versions and inputs against the configs."""
    if transformer.get("_class_name") == "Flux2Transformer2DModel":
        return check_flux2_folder(root, transformer, vae, scheduler)
    c = Config(transformer, "transformer/config.json")
    in_channels = c.integer("in_channels", 1, 256, 16)
    caption = c.integer("cap_feat_dim", 1, 65536, 2560)
    patches = transformer.get("all_patch_size", [2])
    if not isinstance(patches, (list, tuple)) or 2 not in patches:
        raise c.fail("all_patch_size", "a list with 2 (2x2 patches)", patches)
    check_vae(vae, "vae_decoder/config.json")
    encoder_vae = read_json(root / "vae_encoder" / "config.json", required=False)
    if encoder_vae is not None:
        check_vae(encoder_vae, "vae_encoder/config.json")
    sched = Config(scheduler, "scheduler/scheduler_config.json")
    sched.text("_class_name", ("FlowMatchEulerDiscreteScheduler",), "FlowMatchEulerDiscreteScheduler")
    sched.integer("num_train_timesteps", 1, 100_000, 1000)
    sched.number("shift", 0.0, 1000.0, 1.0, low_open=True)
    sched.flag("use_dynamic_shifting")
    index = read_json(root / "model_index.json", required=False)
    if index is not None:
        check_model_index(index)
    latent = vae.get("latent_channels", 4)
    if latent != in_channels:
        raise UsageError(f"transformer/config.json: in_channels {in_channels} is not the VAE's {latent} latent "
                         "channels: files from different models?")
    text = read_json(root / "text_encoder" / "config.json", required=False)
    if text is not None:
        hidden = Config(text, "text_encoder/config.json").integer("hidden_size", 1, 65536, caption)
        if hidden != caption:
            raise UsageError(f"transformer/config.json: cap_feat_dim {caption} is not the text encoder's hidden_size "
                             f"{hidden}: files from different models?")
    graphs = {name: check_ir_version(root / name / "openvino_model.xml", name)
              for name in ("text_encoder", "transformer", "vae_decoder", "vae_encoder")
              if (root / name / "openvino_model.xml").is_file()}
    declared = [("transformer", "hidden_states", 1, in_channels, "transformer/config.json in_channels"),
                ("transformer", "encoder_hidden_states", 2, caption, "transformer/config.json cap_feat_dim"),
                ("vae_decoder", "latent_sample", 1, latent, "vae_decoder/config.json latent_channels")]
    for component, name, index_, expected, source in declared:
        got = _dim(graphs.get(component, {}), name, index_)
        if got is not None and got != expected:
            raise UsageError(f"{component}/openvino_model.xml takes {name} with {got} in dimension {index_}, but "
                             f"{source} says {expected}: files from different models?")
    missing = [name for name in ("hidden_states", "timestep", "encoder_hidden_states")
               if "transformer" in graphs and name not in graphs["transformer"]]
    if missing:
        raise UsageError(f"transformer/openvino_model.xml has no input {missing[0]}: not a transformer sdcli runs")


def check_flux2_folder(root: Path, transformer: dict, vae: dict, scheduler: dict) -> None:
    """A FLUX.2 (klein) folder: the transformer takes the VAE's latents in 2x2 patches (4x its
    channels), its text width is the text encoder's layers read side by side; the VAE's config
    carries the BatchNorm statistics of those patches."""
    c = Config(transformer, "transformer/config.json")
    in_channels = c.integer("in_channels", 1, 1024, 128)
    c.integer("joint_attention_dim", 1, 1 << 20, 7680)
    c.flag("guidance_embeds")
    check_vae(vae, "vae_decoder/config.json")
    latent = vae.get("latent_channels", 32)
    if 4 * latent != in_channels:
        raise UsageError(f"transformer/config.json: in_channels {in_channels} is not 4 x the VAE's {latent} latent "
                         "channels (2x2 patches): files from different models?")
    for key in ("bn_running_mean_data", "bn_running_var_data"):
        values = vae.get(key)
        if not isinstance(values, list) or len(values) != in_channels:
            raise UsageError(f"vae_decoder/config.json: {key} must list {in_channels} numbers (the VAE's BatchNorm "
                             "statistics, which sdcli convert writes)")
    sched = Config(scheduler, "scheduler/scheduler_config.json")
    sched.text("_class_name", ("FlowMatchEulerDiscreteScheduler",), "FlowMatchEulerDiscreteScheduler")
    index = read_json(root / "model_index.json", required=False)
    if index is not None:
        check_model_index(index)
    ir = root / "transformer" / "openvino_model.xml"
    if ir.is_file():
        declared = check_ir_version(ir, "transformer")
        missing = [name for name in ("hidden_states", "timestep", "encoder_hidden_states", "txt_ids", "img_ids")
                   if name not in declared]
        if missing:
            raise UsageError(f"transformer/openvino_model.xml has no input {missing[0]}: not a FLUX.2 transformer "
                             "sdcli runs")


def check_safetensors(path: Path, component: str) -> None:
    """A .safetensors file whose header covers the whole file (a cut-off or empty one fails
    here, before any component is loaded: the components load one after another)."""
    try:
        from safetensors import safe_open
    except ImportError:  # the convert extra brings it; without it, loading says what is wrong
        return
    try:
        with safe_open(str(path), framework="np"):
            pass
    except Exception as exc:  # SafetensorError and OSError alike
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UsageError(f"{component}: cannot load it: {path.name} is not a complete safetensors file ({first})") from None


def check_diffusers_folder(root: Path, allow_pickle: bool = False) -> tuple[dict, dict, list[str]]:
    """A diffusers folder that `sdcli convert` reads: its configs (as above), a tokenizer and
    weights in each component.  Returns (model_index, scheduler config, the text encoders'
    folder names: text_encoder, and SDXL's text_encoder_2; an SDXL refiner has only the second)."""
    index = read_json(root / "model_index.json")
    check_model_index(index)
    # the text encoders present: a folder model_index.json does not list as [null, null]
    encoders = [name for name in ("text_encoder", "text_encoder_2")
                if (root / name).is_dir() and index.get(name, [name]) != [None, None]]
    for sub in ("unet", "vae", "scheduler", *encoders, *[e.replace("text_encoder", "tokenizer") for e in encoders]):
        if not (root / sub).is_dir():
            raise UsageError(f"{root} has no {sub}/ folder")
    if not encoders:
        raise UsageError(f"{root} has no text_encoder/ folder")
    unet = read_json(root / "unet" / "config.json")
    vae = read_json(root / "vae" / "config.json")
    scheduler = read_json(root / "scheduler" / "scheduler_config.json")
    check_unet(unet)
    check_vae(vae, "vae/config.json")
    check_scheduler(scheduler, known_class=False)
    hidden = sum(check_text_encoder(read_json(root / name / "config.json"), f"{name}/config.json") for name in encoders)
    check_components(unet, vae, hidden)
    for name in encoders:
        tokenizer = root / name.replace("text_encoder", "tokenizer")
        if not ((tokenizer / "tokenizer.json").is_file() or
                ((tokenizer / "vocab.json").is_file() and (tokenizer / "merges.txt").is_file())):
            raise UsageError(f"{tokenizer} has neither tokenizer.json nor vocab.json and merges.txt: the tokenizer is missing")
    for component in ("unet", "vae", *encoders):
        files = [f.name for f in (root / component).iterdir() if f.is_file()]
        if any(f.endswith(".safetensors") for f in files):
            for name in (f for f in files if f.endswith(".safetensors")):
                check_safetensors(root / component / name, component)
            continue
        if not any(f.endswith(".bin") for f in files):
            raise UsageError(f"{root / component} has no weights (*.safetensors)")
        if not allow_pickle:
            raise UsageError(f"{root / component} has only pickled .bin weights, which can run code when loaded; "
                             "pass --allow-pickle if you trust them")
    return index, scheduler, encoders