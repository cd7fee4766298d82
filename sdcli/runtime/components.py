"""One class per compiled model component: each reads its IR, fixes its shapes for the
requested size, compiles it, and runs it on numpy arrays."""
from __future__ import annotations

import threading
from functools import cached_property

import numpy as np

from sdcli.model.config_checks import ir_header, read_json
from sdcli.model.folder import ModelFolder
from sdcli.runtime.core import Runtime
from sdcli.runtime.lora import WeightPatch
from sdcli.runtime.timestep import float_timestep
from sdcli.util.errors import UsageError


class CompiledComponent:
    """A compiled component; each thread gets its own infer request, so that several rows
    can run at once on a model compiled for throughput."""

    compiled = None
    _mapping = None  # the weights' MappedFile (runtime.load's second value), where the component keeps one
    _inferred = False  # whether infer_dropping_once ran an inference

    @cached_property
    def _local(self) -> threading.local:
        return threading.local()

    @property
    def request(self):
        if not hasattr(self._local, "request"):
            self._local.request = self.compiled.create_infer_request()
        return self._local.request

    def infer_dropping_once(self, inputs: dict) -> None:
        """Run the request; the component's first inference drops its weight file's mapped pages
        as it goes (runtime/core.py's MappedFile).  A model compiled for a dynamic shape copies
        its weights at its first inference, not at compile time, reading them through the
        mapping, and the pages read would stay resident beside the copy until the component is
        released: Z-Image's Qwen3 at int8 held 3.4 GB of them on top of its 3.5 GB copy, which
        overlapped the transformer's load on a warm cache (peak RSS 13.1 GB against 7.2 GB)."""
        if self._mapping is None or self._inferred:
            self.request.infer(inputs)
            return
        with self._mapping.dropping_pages():
            self.request.infer(inputs)
        self._inferred = True


class TextEncoder(CompiledComponent):
    def __init__(self, runtime: Runtime, folder: ModelFolder, seq_len: int, clip_skip: int = 1,
                 embeddings: bool = False, patch: WeightPatch | None = None, name: str = "text_encoder"):
        """Text encoder `name` (SDXL's second is text_encoder_2).  `clip_skip`: A1111's Clip skip
        (1: the layer the model's pipeline uses — the last for SD, the penultimate for SDXL;
        2: the one before, ...).  `embeddings`: take textual-inversion vectors as inputs
        (runtime/embeddings.py); `patch`: LoRAs fused into the weights (runtime/lora.py)."""
        from sdcli.runtime.clip_skip import keep_hidden_state, skip_layers
        from sdcli.runtime.embeddings import EMBEDS, MASK, add_embedding_inputs

        component = name if clip_skip <= 1 else f"{name}-clipskip{clip_skip}"
        shapes = {"input_ids": [1, seq_len]}
        if embeddings:
            component += "-ti"
            width = int(read_json(folder.root / name / "config.json").get("hidden_size", 768))
            shapes.update({EMBEDS: [1, seq_len, width], MASK: [1, seq_len, 1]})
        if patch is not None:
            component += f"-lora{patch.tag}"
        self.pooled_name = "text_embeds" if folder.is_sdxl and name == "text_encoder_2" else None

        def prepare(model):
            if patch is not None:  # first: the edits below leave the layers after the one read out of the graph
                patch.apply(model, name)
            if folder.is_sdxl:  # outputs: the hidden states the UNet takes, then the pooled projection
                keep_hidden_state(model, clip_skip, self.pooled_name)
            else:
                skip_layers(model, clip_skip)
            if embeddings:
                add_embedding_inputs(model)

        self.compiled, self._mapping = runtime.load(component, folder.ir(name), shapes, prepare=prepare)
        self.embeddings = embeddings
        names = [output.get_names() for output in self.compiled.outputs]
        # SDXL: the one hidden-states output kept (see keep_hidden_state), wherever it is
        self._hidden = next((i for i, n in enumerate(names) if any(x.startswith("hidden_states.") for x in n)), 0) \
            if folder.is_sdxl else 0
        self._pooled = next((i for i, n in enumerate(names) if self.pooled_name in n), None)

    def __call__(self, input_ids: np.ndarray, embeds: np.ndarray | None = None,
                 mask: np.ndarray | None = None) -> np.ndarray:
        """Hidden states of `input_ids`; with embeddings, `embeds` [1, tokens, width] where
        `mask` [1, tokens, 1] is true."""
        inputs = {"input_ids": input_ids}
        if self.embeddings:
            from sdcli.runtime.embeddings import EMBEDS, MASK

            shape = (*input_ids.shape, self.compiled.input(EMBEDS).get_partial_shape()[2].get_length())
            inputs[EMBEDS] = embeds if embeds is not None else np.zeros(shape, np.float32)
            inputs[MASK] = mask if mask is not None else np.zeros((*input_ids.shape, 1), bool)
        self.request.infer(inputs)
        return self.request.get_output_tensor(self._hidden).data.copy()

    def pooled(self) -> np.ndarray:
        """The pooled projection (SDXL's text_encoder_2: `text_embeds`) of the last call."""
        if self._pooled is None:
            raise UsageError("this text encoder has no pooled projection output (text_embeds)")
        return self.request.get_output_tensor(self._pooled).data.copy()


class UNet(CompiledComponent):
    """The denoising UNet.  It is fed whatever inputs its IR declares: `sample`, `timestep`
    and `encoder_hidden_states`, plus any a model family adds (an LCM's `timestep_cond`;
    SDXL's `text_embeds` and `time_ids`), each compiled at the static shape it is given."""

    recorder = None  # called with each call's inputs (calibration for --quantize hybrid)

    def __init__(self, runtime: Runtime, folder: ModelFolder, shapes: dict[str, list[int]],
                 variant: str | None = None, patch: WeightPatch | None = None):
        """`shapes`: input name -> static shape, for every input of the IR (see input_shapes).
        `variant`: None for the UNet as it is, or one of deepcache.VARIANTS or controlnet.VARIANTS
        (the UNet with ControlNet residual inputs); `patch`: LoRAs
        fused into the weights (runtime/lora.py)."""
        declared = set(ir_header(folder.ir("unet"))[1])
        missing = sorted(declared - set(shapes))
        if missing:
            raise UsageError(f"unet: its IR takes {', '.join(missing)}, which this model family does not provide")
        component, edit = "unet", None
        if variant is not None:
            from sdcli.runtime import controlnet, deepcache

            component, edit = {**deepcache.VARIANTS, **controlnet.VARIANTS}[variant]

        if patch is not None:
            component += f"-lora{patch.tag}"

        def prepare(model):
            float_timestep(model)
            if patch is not None:
                patch.apply(model, "unet")
            if edit is not None:
                edit(model, shapes)

        self.compiled, self._mapping = runtime.load(component, folder.ir("unet"), shapes, prepare=prepare)
        import openvino as ov

        self.float_timestep = self.compiled.input("timestep").get_element_type() == ov.Type.f32
        self._timestep_dtype = np.float32 if self.float_timestep else np.int64
        self._timestep_shape = shapes["timestep"]

    @staticmethod
    def input_shapes(folder: ModelFolder, batch: int, latent_hw: tuple[int, int], seq_len: int,
                     extra: dict[str, tuple[int, ...]] | None = None) -> dict[str, list[int]]:
        """The static shapes of a call on `batch` latents of `latent_hw` with `seq_len` text
        tokens; `extra`: the shapes of the inputs a model family adds."""
        cfg = folder.unet_config
        shapes = {
            "sample": [batch, cfg.get("in_channels", 4), *latent_hw],
            "timestep": [batch],
            "encoder_hidden_states": [batch, seq_len, cfg.get("cross_attention_dim", 768)],
        }
        shapes.update({name: list(shape) for name, shape in (extra or {}).items()})
        return shapes

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


class Transformer(CompiledComponent):
    """A flow-matching diffusion transformer (Z-Image's), called like the UNet: (sample,
    timestep, context, **extra) feed its IR's `hidden_states`, `timestep` (float) and
    `encoder_hidden_states`, and the inputs its model family adds by their IR names (the
    caption's mask, the RoPE positions), each compiled at the static shape it is given."""

    recorder = None  # called with each call's inputs

    def __init__(self, runtime: Runtime, folder: ModelFolder, shapes: dict[str, list[int]],
                 patch: WeightPatch | None = None):
        """`shapes`: input name -> static shape, for every input of the IR (the family's
        denoiser_shapes); `patch`: LoRAs fused into the weights (runtime/lora.py)."""
        declared = set(ir_header(folder.ir("transformer"))[1])
        missing = sorted(declared - set(shapes))
        if missing:
            raise UsageError(f"transformer: its IR takes {', '.join(missing)}, which this model family does not provide")
        component = "transformer" if patch is None else f"transformer-lora{patch.tag}"

        def prepare(model):
            if patch is not None:
                patch.apply(model, "transformer")

        self.compiled, self._mapping = runtime.load(component, folder.ir("transformer"), shapes, prepare=prepare)
        self._timestep_shape = shapes["timestep"]

    def __call__(self, sample: np.ndarray, timestep, context: np.ndarray, **extra) -> np.ndarray:
        t = np.full(self._timestep_shape, timestep, dtype=np.float32)
        inputs = {"hidden_states": sample, "timestep": t, "encoder_hidden_states": context, **extra}
        if self.recorder is not None:
            self.recorder(inputs)
        self.request.infer(inputs)
        return self.request.get_output_tensor(0).data.copy()

    def output(self, index: int) -> np.ndarray:
        """Output `index` of the last call."""
        return self.request.get_output_tensor(index).data.copy()


class LLMTextEncoder(CompiledComponent):
    """A language model as text encoder (Z-Image's Qwen3): its IR gives the hidden state the
    denoiser reads (`last_hidden_state`), and is compiled for any sequence length, so that each
    prompt is encoded at its own length, without padding (its attention is causal: padding
    after the prompt would not change the prompt's states)."""

    def __init__(self, runtime: Runtime, folder: ModelFolder, name: str = "text_encoder",
                 patch: WeightPatch | None = None):
        declared = ir_header(folder.ir(name))[1]
        if "input_ids" not in declared:
            raise UsageError(f"{name}: its IR has no input_ids input")
        shapes = {input_name: [1, -1] for input_name in ("input_ids", "attention_mask") if input_name in declared}
        component = name if patch is None else f"{name}-lora{patch.tag}"

        def prepare(model):
            if patch is not None:
                patch.apply(model, name)

        self.compiled, self._mapping = runtime.load(component, folder.ir(name), shapes, prepare=prepare)
        self._mask = "attention_mask" in shapes
        names = [output.get_names() for output in self.compiled.outputs]
        self._hidden = next((i for i, n in enumerate(names) if "last_hidden_state" in n), 0)

    def __call__(self, ids: list[int]) -> np.ndarray:
        """[tokens, hidden size]: the hidden states of `ids`."""
        input_ids = np.asarray([ids], dtype=np.int64)
        inputs = {"input_ids": input_ids}
        if self._mask:
            inputs["attention_mask"] = np.ones_like(input_ids)
        self.infer_dropping_once(inputs)
        return self.request.get_output_tensor(self._hidden).data[0].copy()


STACKED = "prompt_embeds"  # FastSD CPU's klein text encoder: the hidden states already side by side


def stacked_outputs(names: list[set[str]], layers: list[int], num_layers: int | None, name: str) -> list[int]:
    """The indices of the IR outputs (`names`: each output's names) whose side-by-side values are
    the prompt's states: transformers' hidden_states[k] for each k in `layers` (the output of
    layer k, before the final norm).  Three layouts are read:

    - sdcli's (and openvino-genai's): `hidden_states.k` for each layer read;
    - optimum-intel 2.2.0's (`optimum-cli export openvino --task text-to-image` of a klein folder):
      every hidden state exported, `last_hidden_state` and `hidden_states.0` .. `hidden_states.{n-1}`
      for n layers, each name one behind its tensor (the first output, `last_hidden_state`, is
      the embeddings, hidden_states[0]; `hidden_states.j` is hidden_states[j + 1]: measured on a
      tiny export against transformers, 1e-5), so layer k is read from `hidden_states.{k-1}`;
    - FastSD CPU's: one output `prompt_embeds`, the layers already side by side.
    """
    def find(output: str) -> int | None:
        return next((i for i, n in enumerate(names) if output in n), None)

    if find(STACKED) is not None:
        return [find(STACKED)]
    numbered = {int(n.split(".", 1)[1]) for names_ in names for n in names_
                if n.startswith("hidden_states.") and n.split(".", 1)[1].isdigit()}
    one_behind = (num_layers is not None and find("last_hidden_state") is not None
                  and numbered == set(range(num_layers)))
    wanted = [("last_hidden_state" if k == 0 else f"hidden_states.{k - 1}") if one_behind else f"hidden_states.{k}"
              for k in layers]
    missing = [output for output in wanted if find(output) is None]
    if missing:
        raise UsageError(f"{name}: its IR has no output {missing[0]} (config.json's hidden_states_layers) and no "
                         f"{STACKED} output")
    return [find(output) for output in wanted]


class StackedLLMTextEncoder(CompiledComponent):
    """A language model as text encoder whose IR gives several hidden states (FLUX.2-klein's
    Qwen3: `hidden_states.9`, `.18`, `.27`, listed in its config.json's hidden_states_layers;
    optimum-cli's and FastSD CPU's layouts too: see stacked_outputs), put side by side per
    token; run on a fixed length of padded tokens with their mask (the denoiser reads the
    padding's states too)."""

    def __init__(self, runtime: Runtime, folder: ModelFolder, length: int, name: str = "text_encoder"):
        declared = ir_header(folder.ir(name))[1]
        if "input_ids" not in declared or "attention_mask" not in declared:
            raise UsageError(f"{name}: its IR does not take input_ids and attention_mask")
        config = read_json(folder.root / name / "config.json", required=False) or {}
        layers = config.get("hidden_states_layers") or [9, 18, 27]
        shapes = {"input_ids": [1, length], "attention_mask": [1, length]}
        self.compiled, self._mapping = runtime.load(name, folder.ir(name), shapes)
        names = [output.get_names() for output in self.compiled.outputs]
        num_layers = config.get("num_hidden_layers")
        self._index = stacked_outputs(names, [int(k) for k in layers],
                                      int(num_layers) if isinstance(num_layers, int) else None, name)

    def __call__(self, ids: list[int], mask: list[int]) -> np.ndarray:
        """[tokens, layers x hidden size] for the padded `ids` and their attention `mask`."""
        self.request.infer({"input_ids": np.asarray([ids], np.int64), "attention_mask": np.asarray([mask], np.int64)})
        return np.concatenate([self.request.get_output_tensor(i).data[0] for i in self._index], axis=-1)


def vae_precision(runtime: Runtime, folder: ModelFolder, component: str) -> str | None:
    """f32 for a VAE whose config says force_upcast (SDXL's, which overflows float16 into NaN
    and black images, as diffusers upcasts it) where the run would compute in f16; bf16 has
    float32's range and stays.  None: the runtime's precision."""
    config = read_json(folder.root / component / "config.json", required=False) or {}
    if config.get("force_upcast") and runtime.computes_in_f16():
        return "f32"
    return None


class VaeDecoder(CompiledComponent):
    def __init__(self, runtime: Runtime, folder: ModelFolder, latent_hw: tuple[int, int],
                 component: str = "vae_decoder"):
        shapes = {"latent_sample": [1, folder.latent_channels, *latent_hw]}
        self.compiled, self._mapping = runtime.load(component, folder.ir(component), shapes,
                                                    precision=vae_precision(runtime, folder, component))

    def __call__(self, latents: np.ndarray) -> np.ndarray:
        self.request.infer({0: latents})
        return self.request.get_output_tensor(0).data.copy()


class VaeEncoder(CompiledComponent):
    def __init__(self, runtime: Runtime, folder: ModelFolder, image_hw: tuple[int, int],
                 component: str = "vae_encoder"):
        if not folder.ir(component).is_file():
            raise UsageError(f"model folder {folder.root} has no {component}/, which --init-image needs")
        self.compiled, self._mapping = runtime.load(component, folder.ir(component), {"sample": [1, 3, *image_hw]},
                                                    precision=vae_precision(runtime, folder, component))
        self.latent_channels = folder.latent_channels

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Return (mean, log-variance); the variance is None for an encoder that outputs a sample."""
        self.request.infer({0: image})
        out = self.request.get_output_tensor(0).data.copy()
        if out.shape[1] == 2 * self.latent_channels:
            return out[:, : self.latent_channels], out[:, self.latent_channels :]
        return out, None
