"""What the flow-matching transformer families (FLUX.2-klein, Z-Image) share: a prompt for a
language-model text encoder (llm_prompt.py), diffusers' FlowMatchEulerDiscreteScheduler as the
only sampler, LoRAs on the transformer only, and the refusals of options that only a UNet or a
CLIP text encoder takes, and of sizes that are not whole 2x2 patches of latents."""
from __future__ import annotations

from sdcli.engine.families.base import ModelFamily
from sdcli.util.errors import UsageError

PATCH = 2  # the transformers take the latents in 2x2 patches
ENCODER = "text_encoder"
SCHEDULER_NAMES = ("flow_euler", "euler", "flowmatcheulerdiscretescheduler")


class FlowTransformer(ModelFamily):
    """A family whose denoiser is a flow-matching transformer fed by a Qwen3 text encoder."""

    model = "?"  # its name in messages ("FLUX.2-klein")
    transformer = "?"  # its transformer's ("FLUX.2")
    thinking = False  # the chat template's enable_thinking
    max_tokens = 512  # the pipeline's max_sequence_length

    # LoRAs: on the transformer only (families/transformer_lora.py: the names they come in)
    lora_components = ("unet",)
    whitespace_tokens = True  # Qwen3's: "a cat <lora:x:1>" is encoded as "a cat"

    def __init__(self, folder):
        super().__init__(folder)
        from sdcli.engine.families.llm_prompt import ChatPrompt

        self.prompt = ChatPrompt(folder.root, thinking=self.thinking, max_tokens=self.max_tokens, model=self.model)
        self.tokenizer = self.prompt.tokenizer

    def token_ids(self, text: str) -> tuple[list[int], bool]:
        return self.prompt.token_ids(text)

    # -- before anything is compiled -------------------------------------------------
    def refusals(self, request) -> list[tuple[bool, str]]:
        """(refused, message) of what this family cannot do with `request`, before the size."""
        return [(request.mask is not None, f"--mask (inpainting) is not supported for {self.model} models"),
                (request.deepcache > 1, f"--deepcache is for UNet models; this is a {self.transformer} transformer"),
                (request.clip_skip > 1, f"--clip-skip is for CLIP text encoders; {self.model}'s is Qwen3"),
                (request.guidance_rescale > 0, f"--guidance-rescale is for UNet models; this is a {self.transformer} "
                 "transformer")]

    def check_request(self, request) -> None:
        from sdcli.engine.latents import resolve_size

        for refused, message in self.refusals(request):
            if refused:
                raise UsageError(message)
        self.check_images(request)
        width, height = resolve_size(self.folder, request)
        step = PATCH * self.folder.vae_scale_factor
        if width % step or height % step:
            raise UsageError(f"--width and --height must be multiples of {step} for this model (its transformer "
                             f"takes 2x2 patches of latents), got {width}x{height}")

    def check_images(self, request) -> None:
        """UsageError for the request's images this family cannot take (after refusals)."""

    def make_scheduler(self, name: str | None):
        """The model's own FlowMatchEulerDiscreteScheduler (the only sampler of these families)."""
        from sdcli.schedulers.flow_match import FlowMatchEulerDiscreteScheduler

        if name is not None and name.strip().lower() not in SCHEDULER_NAMES:
            raise UsageError(f"--scheduler {name}: a {self.model} model samples with its flow-matching Euler "
                             "scheduler only (flow_euler)")
        try:
            return FlowMatchEulerDiscreteScheduler.from_config(self.folder.scheduler_config)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"scheduler/scheduler_config.json: {exc}") from None

    # -- the text encoder ---------------------------------------------------------------
    def _encoder(self, components):
        """(key, build) of the text encoder in `components` (a ComponentCache)."""
        raise NotImplementedError

    def start_text_encoders(self, components, request) -> None:
        components.start(*self._encoder(components))

    def release_text_encoders(self, components) -> None:
        components.release(ENCODER)
