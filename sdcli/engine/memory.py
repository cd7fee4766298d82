"""Will a request fit in this machine's memory?  An estimate of the peak resident memory
of `sdcli generate`, from the model's IR and configs and the image size, checked before
anything is compiled so that a size too large is refused with a number instead of being
killed half-way.

The estimate (bytes):

    peak       = BASE + max(stages)
    weights(c) = 1.06 x parameters of c's IR x E    E: bytes of the compute precision
                 + COMPONENT                        (bf16/f16: 2, f32: 4; OpenVINO's CPU
                                                    plugin expands int8 weights to it)
    unet_act   = UNET_K x batch x E x sum_l C_l x latent pixels / 4^l
    controlnet_act = unet_act / 2 with the ControlNet's C_l (its down half's), batch 1 in
                 guess mode with guidance (the prompt's row only)
                 (a transformer: TRANSFORMER_K x batch x E x tokens x width)
    vae_act    = (VAE_K x E x sum_l V_l / 4^l + PIXEL_BYTES) x image pixels
    stages     = prompt:    text_encoder weights
                 denoising: unet weights + unet_act
                 encoding:  unet + vae_encoder weights + vae_act  (init image)
                 (denoising with ControlNet units: + each unit's weights + the largest
                 unit's controlnet_act + the residuals, 2 x 4 bytes x batch x their values)
                 decoding:  vae_decoder weights + vae_act (+ unet weights when more
                            images follow); when that is the peak and too large,
                            the VAE (full or tiny) decodes in tiles (engine/vae_tiling.py) and
                            vae_act is a tile's (+ PIXEL_BYTES x image pixels)

C_l: the UNet's block_out_channels (level l runs at 1/2^l of the latent size); V_l: the
VAE's (level 0 at the image size); batch 2 with classifier-free guidance.  A flow-matching
transformer's tokens are all those its attention runs over in a row (ModelFamily.attention_size:
the image's patches, the text's, and FLUX.2-klein's reference images', each of which adds its
latent patches) and width its model width.  --low-memory
holds one component's weights at a time.  The constants were fitted to whole-process
peak RSS of a random-weight SD 1.5 UNet and VAE (scripts/calibrate_memory.py; README,
"Bad input and safety"); TRANSFORMER_K is not fitted (a transformer block's
activations: its input, Q, K, V, the attention's output and the MLP's hidden layer, about 16
widths per token; OpenVINO's fused attention holds no tokens x tokens scores).  It is the
peak of a run whose compiled model is cached: the first run at a new size also compiles and
caches it, for a moment about 1.7 GB more with SD 1.5 (the exported blob).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from sdcli.util.errors import UsageError

MB = 1_000_000
GB = 1_000_000_000

BASE = 100 * MB  # python, numpy, OpenVINO and the tokenizer, before any model is loaded
WEIGHT_FACTOR = 1.06  # OpenVINO's copy of the weights, and what it keeps beside them
COMPONENT = 64 * MB  # each compiled model's own buffers, whatever its size
UNET_K = 12.5  # UNet activations, in units of batch x sum_l C_l x latent pixels / 4^l values
TRANSFORMER_K = 16.0  # transformer activations, in units of batch x tokens x width values (not fitted)
VAE_K = 3.0  # VAE activations, in units of sum_l V_l x image pixels / 4^l values
PIXEL_BYTES = 200  # per image pixel whatever the channels: the decoded image and its copies

SKIP_ENV = "SDCLI_SKIP_MEMORY_CHECK"

_CONST = re.compile(rb'type="Const"[^>]*>\s*<data\b([^>]*)>')
_SHAPE = re.compile(rb'shape="([^"]*)"')


def ir_parameters(xml: Path) -> int:
    """The number of weights (elements of all constants) in an OpenVINO IR."""
    total = 0
    for match in _CONST.finditer(Path(xml).read_bytes()):
        shape = _SHAPE.search(match.group(1))
        count = 1
        for dim in (shape.group(1).split(b",") if shape and shape.group(1).strip() else []):
            count *= int(dim)
        total += count
    return total


def available_bytes() -> int | None:
    """Memory this process may still take: MemAvailable plus free swap, lowered to what
    a cgroup (container) limit leaves; None when the system does not say."""
    info: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, value = line.partition(":")
            parts = value.split()
            if parts and parts[0].isdigit():
                info[key] = int(parts[0]) * 1024
    except OSError:
        pass
    if "MemAvailable" in info:
        free = info["MemAvailable"] + info.get("SwapFree", 0)
    else:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    limit = _cgroup_room()
    return min(free, limit) if limit is not None else free


def _cgroup_room() -> int | None:
    try:
        line = next(l for l in Path("/proc/self/cgroup").read_text().splitlines() if l.startswith("0::"))
        folder = Path("/sys/fs/cgroup") / line[3:].lstrip("/")
        maximum = (folder / "memory.max").read_text().strip()
        if maximum == "max":
            return None
        return max(int(maximum) - int((folder / "memory.current").read_text()), 0)
    except (OSError, ValueError, StopIteration):
        return None


def resident_bytes() -> int:
    """This process's resident memory now (part of the estimate's BASE is already taken)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _levels(channels, pixels: int) -> int:
    return sum(int(c) * pixels // 4**level for level, c in enumerate(channels))


@dataclass
class MemoryEstimate:
    peak: int  # bytes
    stage: str  # the stage that peaks
    stages: dict[str, int]


def component_bytes(xml: Path, element_bytes: int) -> int:
    """A compiled component's memory: its weights at `element_bytes` per value, as OpenVINO holds them."""
    return int(WEIGHT_FACTOR * ir_parameters(xml) * element_bytes) + COMPONENT


def estimate(folder, width: int, height: int, *, batch: int = 2, element_bytes: int = 2,
             init_image: bool = False, images: int = 1, low_memory: bool = False, vae: str = "full",
             requests: int = 1, held: dict[str, int] | None = None,
             attention: tuple[int, int] | None = None, vae_tile: int | None = None) -> MemoryEstimate:
    """The peak resident memory of generating `images` images of width x height with
    `folder` (a ModelFolder), see the module docstring; `requests` images in flight at once
    (batch --parallel) each hold their own activations; `held`: bytes held beside a component
    while its stage runs, by component (see held_bytes); `attention`: (tokens, width) of a
    transformer's sequence (ModelFamily.attention_size), None for a UNet; `vae_tile`: the tile size
    in pixels of a tiled decode (engine/vae_tiling.py), whose activations are a tile's."""
    f = folder.vae_scale_factor
    parts = folder.vae(vae)
    # "unet": the denoiser, whichever it is (a transformer's activations are estimated as a UNet's)
    components = {**{name: name for name in folder.text_encoders}, "unet": folder.denoiser, "decoder": parts.decoder}
    if init_image:
        components["encoder"] = parts.encoder
    try:
        weights = {key: component_bytes(folder.ir(name), element_bytes) for key, name in components.items()}
    except FileNotFoundError as exc:
        from sdcli.util.errors import UsageError

        raise UsageError(f"model folder {folder.root} lacks {exc.filename}, which this run needs") from None
    vae_config = folder.vae_config
    if vae != "full":
        from sdcli.model.config_checks import read_json

        vae_config = read_json(folder.root / parts.decoder / "config.json")
    vae_channels = vae_config.get("decoder_block_out_channels") or vae_config.get("block_out_channels", [128])
    latent_pixels = (height // f) * (width // f)
    if attention is not None:
        tokens, model_width = attention
        unet_act = requests * int(TRANSFORMER_K * batch * element_bytes * tokens * model_width)
    else:
        unet_act = requests * int(UNET_K * batch * element_bytes * _levels(folder.unet_config.get("block_out_channels", [320]), latent_pixels))
    vae_act = requests * int(VAE_K * element_bytes * _levels(vae_channels, width * height)) + PIXEL_BYTES * width * height
    decode_act = vae_act
    if vae_tile and vae_tile * vae_tile < width * height:
        decode_act = requests * int(VAE_K * element_bytes * _levels(vae_channels, vae_tile * vae_tile)) \
            + PIXEL_BYTES * width * height
    unet = 0 if low_memory else weights["unet"]
    stages = {
        # freed before the UNet finishes loading (SDXL: both encoders)
        "encoding the prompt": sum(weights[name] for name in folder.text_encoders),
        "denoising": weights["unet"] + unet_act,
        "decoding": weights["decoder"] + decode_act + (unet if images > 1 else 0),
    }
    if init_image:
        stages["encoding the init image"] = unet + weights["encoder"] + vae_act
    held = held or {}
    stages["denoising"] += held.get("unet", 0) + held.get("transformer", 0)
    stages["encoding the prompt"] += sum(n for c, n in held.items() if c not in ("unet", "transformer"))
    stage = max(stages, key=stages.get)
    return MemoryEstimate(BASE + stages[stage], stage, stages)


def refiner_unet_bytes(engine) -> int:
    """The weights of an SDXL refiner's UNet, loaded (preloaded) while the base model's runs."""
    refiner = getattr(engine, "refiner", None)
    if refiner is None:
        return 0
    element = compute_element_bytes(refiner.runtime.device, refiner.runtime.precision, refiner.runtime.core)
    return component_bytes(refiner.folder.ir("unet"), element)


def fused_bytes(folder, networks) -> dict[str, int]:
    """{component: bytes} of the float32 weights a request's LoRAs are fused into (runtime/lora.py
    builds W + ΔW in float32 for each layer a LoRA touches)."""
    if networks is None or not getattr(networks, "patches", None):
        return {}
    from sdcli.model.lora_names import ir_weights

    sizes = {}
    for component, patch in networks.patches.items():
        counts = {constant: count for constant, count in ir_weights(folder.ir(component)).values()}
        sizes[component] = 4 * sum(counts.get(name, 0) for name in patch.deltas)
    return sizes


def held_bytes(engine, request) -> dict[str, int]:
    """{component: bytes} held beside a component while its stage runs: the layers the request's
    LoRAs are fused into, and beside the UNet a refiner's UNet."""
    held = fused_bytes(engine.folder, getattr(request, "networks", None))
    refiner = refiner_unet_bytes(engine)
    if refiner:
        held["unet"] = held.get("unet", 0) + refiner
    return held


def compute_element_bytes(device: str = "CPU", precision: str = "auto", core=None) -> int:
    """Bytes per value at the precision OpenVINO will compute in (`auto`: the device's default)."""
    from sdcli.runtime.core import effective_precision

    if core is None and precision == "auto":
        import openvino as ov

        core = ov.Core()
    return 4 if effective_precision(core, device, precision) in ("f32", "float32") else 2


def require(folder, width: int, height: int, *, device: str = "CPU", precision: str = "auto", core=None,
            guidance: bool = True, init_image: bool = False, images: int = 1, low_memory: bool = False,
            vae: str = "full", requests: int = 1, held: dict[str, int] | None = None,
            attention: tuple[int, int] | None = None, references: int = 0, vae_tiling: bool | None = None,
            vae_tile_size: int | None = None) -> MemoryEstimate | None:
    """Raise UsageError when `width` x `height` would need more memory than is available
    (`references`: how many reference images `attention`'s tokens include, said in the message;
    `vae_tiling` None: the VAE decodes in tiles when a whole decode is what does not fit).
    CPU only; skipped when SDCLI_SKIP_MEMORY_CHECK is set or the system does not say what
    is free.  Returns the estimate (None when skipped)."""
    if os.environ.get(SKIP_ENV) or not device.upper().startswith("CPU"):
        return None
    have = available_bytes()
    if have is None:
        return None
    est = estimate(folder, width, height, batch=2 if guidance else 1,
                   element_bytes=compute_element_bytes(device, precision, core), init_image=init_image,
                   images=images, low_memory=low_memory, vae=vae, requests=requests, held=held,
                   attention=attention)
    have += resident_bytes()
    tile = _vae_tile(folder, vae, vae_tiling, vae_tile_size)
    if tile and (vae_tiling or (est.peak > have and est.stage == "decoding")):  # decoded in tiles
        est = estimate(folder, width, height, batch=2 if guidance else 1,
                       element_bytes=compute_element_bytes(device, precision, core), init_image=init_image,
                       images=images, low_memory=low_memory, vae=vae, requests=requests, held=held,
                       attention=attention, vae_tile=tile)
    if est.peak > have:
        hint = "" if low_memory or est.stage == "denoising" else ", or --low-memory"
        stage = est.stage + (f" with {references} reference image{'s' * (references > 1)}"
                             if references and est.stage == "denoising" else "")
        raise UsageError(
            f"{width}x{height} would need about {est.peak / GB:.1f} GB of memory ({stage}), and "
            f"{have / GB:.1f} GB is available: use a smaller size{hint} (or set {SKIP_ENV}=1 to try anyway)"
        )
    return est


def residual_values(config: dict, latent_pixels: int) -> int:
    """How many values a ControlNet of `config` (a ControlNetModel's, or its UNet's) gives for one
    image of `latent_pixels`: conv_in's skip, every down resnet's and downsampler's, the mid block's."""
    channels = [int(c) for c in config.get("block_out_channels", [320])]
    layers = config.get("layers_per_block", 2)
    layers = list(layers) if isinstance(layers, (list, tuple)) else [layers] * len(channels)
    total = channels[0] * latent_pixels
    for level, (c, n) in enumerate(zip(channels, layers)):
        total += int(n) * c * latent_pixels // 4**level
        if level < len(channels) - 1:
            total += c * latent_pixels // 4**(level + 1)
    return total + channels[-1] * latent_pixels // 4**(len(channels) - 1)


def controlnet_bytes(engine, request, width: int, height: int, guidance: bool, element_bytes: int) -> int:
    """What a request's ControlNet units hold beside the UNet while it denoises: each unit's
    weights (as a component's: its IR's parameters at the compute precision, or its
    openvino_model.bin where that is larger), the activations of
    the largest (a UNet's down half: half of unet_act with its block_out_channels; units run one
    at a time), and the residuals (their sum and the running unit's, float32)."""
    units = getattr(request, "controlnets", ())
    if not units:
        return 0
    from sdcli.engine.controlnet import find_controlnet, pools, prompt_row_only
    from sdcli.model.config_checks import read_json

    f = engine.folder.vae_scale_factor
    latent_pixels = (height // f) * (width // f)
    rows = 2 if guidance else 1
    weights, activations = 0, 0
    for unit in units:
        path = find_controlnet(unit.model, getattr(engine, "controlnet_dir", None))
        on_disk = int(WEIGHT_FACTOR * (path / "openvino_model.bin").stat().st_size) + COMPONENT
        weights += max(component_bytes(path / "openvino_model.xml", element_bytes), on_disk)
        config = read_json(path / "config.json")
        batch = 1 if prompt_row_only(unit, pools(config), rows) else rows
        activations = max(activations, int(UNET_K * batch * element_bytes *
                                           _levels(config.get("block_out_channels", [320]), latent_pixels) / 2))
    return weights + activations + 2 * 4 * rows * residual_values(engine.folder.unet_config, latent_pixels)


def check_fits(engine, config, images: int = 1) -> MemoryEstimate | None:
    """`require` for one GenerationRequest on an Engine, before anything loads."""
    width, height = engine.resolve_size(config)
    runtime = engine.runtime
    guidance = engine.classifier_free_guidance(config.guidance_scale)
    f = engine.folder.vae_scale_factor
    attention = engine.family.attention_size(config, guidance, (height // f, width // f))
    held = held_bytes(engine, config)
    control = 0
    if getattr(config, "controlnets", ()) and not os.environ.get(SKIP_ENV) and runtime.device.upper().startswith("CPU"):
        control = controlnet_bytes(engine, config, width, height, guidance,
                                   compute_element_bytes(runtime.device, runtime.precision, runtime.core))
    if control:
        held["unet"] = held.get("unet", 0) + control
    return require(engine.folder, width, height, device=runtime.device, precision=runtime.precision,
                   core=runtime.core, guidance=guidance, attention=attention,
                   references=len(getattr(config, "reference_images", ())),
                   init_image=config.init_image is not None, images=images, low_memory=engine.low_memory,
                   vae=getattr(config, "vae", "full"), requests=max(1, getattr(runtime, "streams", None) or 1),
                   held=held, vae_tiling=getattr(config, "vae_tiling", None),
                   vae_tile_size=getattr(config, "vae_tile_size", None))


def _vae_tile(folder, vae: str, vae_tiling: bool | None, tile_size: int | None) -> int | None:
    """The tile size in pixels the VAE `vae` decodes with when tiled (None: never tiled)."""
    if vae_tiling is False:
        return None
    from sdcli.engine.vae_tiling import tiling_for

    tiling = tiling_for(folder, vae, tile_size)
    return tiling.sample if tiling is not None else None


def decode_fits(engine, width: int, height: int, vae: str = "full") -> bool:
    """Whether the VAE `vae` (full or tiny) can decode width x height whole in the memory available now (its
    activations and the image, and its weights unless compiled already; engine/decode.py tiles
    when not).  True where the check is skipped ($SDCLI_SKIP_MEMORY_CHECK, not a CPU, the system
    does not say what is free)."""
    runtime = engine.runtime
    if os.environ.get(SKIP_ENV) or not runtime.device.upper().startswith("CPU"):
        return True
    have = available_bytes()
    if have is None:
        return True
    folder = engine.folder
    element = compute_element_bytes(runtime.device, runtime.precision, runtime.core)
    config = folder.vae_config
    decoder = folder.vae(vae).decoder
    if vae != "full":
        from sdcli.model.config_checks import read_json

        config = read_json(folder.root / decoder / "config.json")
    channels = config.get("decoder_block_out_channels") or config.get("block_out_channels", [128])
    need = int(VAE_K * element * _levels(channels, width * height)) + PIXEL_BYTES * width * height
    if not engine.components.has(decoder):
        need += component_bytes(folder.ir(decoder), element)
    return need <= have
