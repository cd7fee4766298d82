"""One benchmark run of a peer, in its own process: `python -m sdcli.bench.runners PEER ...`.

Prints one JSON line of timings (seconds) on stdout, with `steps`: the intervals between
consecutive per-step callbacks (the same definition for every peer; sdcli reports its own
in `sdcli generate --json`).  The driver (sdcli/bench/peers.py) measures the process's
wall time and peak RSS from outside.  Only the standard library is imported at the top, so
that optimum-intel's runs can use a virtualenv of their own (its pins clash with ours).

Each peer gets its best documented settings: a static reshape to the requested size
before compiling, and with --cache-dir OpenVINO's compiled-model cache (CACHE_DIR).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sdcli.util.breakdown import age_at  # (standard library only)

STARTED = time.perf_counter()


class StepClock:
    """The intervals between consecutive per-step callbacks, the first from start()."""

    def __init__(self):
        self.steps: list[float] = []
        self.last = 0.0

    def start(self) -> float:
        self.last = time.perf_counter()
        return self.last

    def tick(self) -> None:
        now = time.perf_counter()
        self.steps.append(now - self.last)
        self.last = now

    def diffusers_callback(self, pipe, i, t, kwargs):
        self.tick()
        return kwargs


def _ov_config(args) -> dict:
    config = {} if args.precision == "auto" else {"INFERENCE_PRECISION_HINT": args.precision}
    if args.cache_dir:
        config["CACHE_DIR"] = args.cache_dir
    return config


def run_genai(args) -> dict:
    import openvino_genai as ov_genai

    pipe = ov_genai.Text2ImagePipeline(args.model)  # read, not compiled yet
    sched_file = str(Path(args.model) / "scheduler" / "scheduler_config.json")
    if not args.own_scheduler:
        pipe.set_scheduler(ov_genai.Scheduler.from_config(sched_file, ov_genai.Scheduler.Type.EULER_DISCRETE))
    if not args.no_reshape:
        pipe.reshape(1, args.size, args.size, args.guidance_scale)  # static shapes, as genai's docs advise
    pipe.compile(args.device, **_ov_config(args))
    load = time.perf_counter() - STARTED
    config = pipe.get_generation_config()  # what this run leaves at genai's defaults (TaylorSeer: opt-in)
    settings = {"reshape": not args.no_reshape, "cache_dir": bool(args.cache_dir),
                "taylorseer": None if getattr(config, "taylorseer_config", None) is None else str(config.taylorseer_config),
                "max_sequence_length": getattr(config, "max_sequence_length", None)}
    clock = StepClock()

    def on_step(step, num_steps, latent):
        clock.tick()
        return False

    t0 = clock.start()
    image = pipe.generate(args.prompt, width=args.size, height=args.size, num_inference_steps=args.steps,
                          guidance_scale=args.guidance_scale, rng_seed=args.seed, callback=on_step)
    generate = time.perf_counter() - t0
    steps = clock.steps
    out = {"load_compile": load, "generate": generate, "steps": steps, "settings": settings}
    metrics = pipe.get_performance_metrics() if hasattr(pipe, "get_performance_metrics") else None
    if metrics is not None:
        out.update(genai_metrics(metrics))
    if "vae_decode" not in out and steps:
        out["vae_decode"] = max(0.0, generate - sum(steps))
    _ = image
    return out


def genai_metrics(metrics) -> dict:
    """genai's own split of a generate call, in seconds (its figures are milliseconds; the text
    encoders' is a dict per encoder in 2026.4, summed here)."""
    out = {}
    for name, key in [("get_text_encoder_infer_duration", "text_encoder"), ("get_unet_infer_duration", "unet"),
                      ("get_transformer_infer_duration", "transformer"),
                      ("get_vae_decoder_infer_duration", "vae_decode"), ("get_load_time", "load_ms")]:
        fn = getattr(metrics, name, None)
        if fn is None:
            continue
        try:
            value = fn()
        except Exception:  # a metric this genai version or pipeline does not fill
            continue
        if isinstance(value, dict):
            value = sum(float(v) for v in value.values())
        elif hasattr(value, "mean"):
            value = value.mean
        elif isinstance(value, (tuple, list)):
            value = value[0]
        if float(value) >= 0:  # -1: not measured (the UNet's of a transformer pipeline)
            out[key] = float(value) / 1000
    return out


def run_optimum(args) -> dict:
    """optimum-intel's OVStableDiffusionPipeline (OVStableDiffusionXLPipeline for an SDXL
    folder: the engines FastSD CPU runs), reshaped to static shapes and compiled as its
    documentation shows."""
    if (Path(args.model) / "transformer").is_dir():
        return run_optimum_transformer(args)
    import torch
    from diffusers import EulerDiscreteScheduler
    from optimum.intel import OVStableDiffusionPipeline, OVStableDiffusionXLPipeline

    imported = time.perf_counter()
    sdxl = (Path(args.model) / "text_encoder_2").is_dir()
    pipeline_class = OVStableDiffusionXLPipeline if sdxl else OVStableDiffusionPipeline
    pipe = pipeline_class.from_pretrained(args.model, compile=False, ov_config=_ov_config(args))
    if args.tiny_vae:  # FastSD CPU's way: the pipeline's VAE decoder model swapped for TAESD's (same cost as
        import openvino as ov  # a proper wrapper: the latents' scaling differs, not the work)

        pipe.vae_decoder.model = ov.Core().read_model(Path(args.model) / "vae_decoder_tiny" / "openvino_model.xml")
    if not args.own_scheduler:
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    # optimum's reshape doubles the UNet's batch for guidance; without guidance (a Turbo-style run)
    # the batch stays dynamic and the sizes static
    pipe.reshape(batch_size=1 if args.guidance_scale > 1 else -1, height=args.size, width=args.size,
                 num_images_per_prompt=1)
    pipe.compile()
    compiled = time.perf_counter()
    load = compiled - STARTED
    parts = {"text_encoder": _timed(pipe.text_encoder), "unet": _timed(pipe.unet), "decode": _timed(pipe.vae_decoder)}
    if sdxl and getattr(pipe, "text_encoder_2", None) is not None:
        parts["text_encoder_2"] = _timed(pipe.text_encoder_2)
    clock = StepClock()
    t0 = clock.start()
    pipe(args.prompt, width=args.size, height=args.size, num_inference_steps=args.steps,
         guidance_scale=args.guidance_scale, generator=torch.Generator().manual_seed(args.seed),
         callback_on_step_end=clock.diffusers_callback, output_type="np")
    generate = time.perf_counter() - t0
    steps = clock.steps
    spent = {name: sum(times) for name, times in parts.items()}
    text = spent.get("text_encoder", 0.0) + spent.pop("text_encoder_2", 0.0)
    return {"load_compile": load, "generate": generate, "steps": steps, "text_encoder": text,
            "vae_decode": spent["decode"],
            "breakdown": peer_breakdown(age_at(STARTED), imported - STARTED, compiled - imported, text,
                                        spent["unet"], spent["decode"], generate, age_at(time.perf_counter()))}


def run_optimum_transformer(args) -> dict:
    """optimum-intel's OVDiffusionPipeline on a transformer folder (FLUX.2-klein, Z-Image: it picks
    OVFlux2KleinPipeline / OVZImagePipeline from model_index.json), on the folder's own scheduler,
    reshaped to static sizes (the batch left dynamic without guidance: its reshape doubles the
    batch for classifier-free guidance) and compiled; the prompt passed by name (klein's first
    positional argument is its reference image)."""
    import torch
    from optimum.intel import OVDiffusionPipeline

    imported = time.perf_counter()
    pipe = OVDiffusionPipeline.from_pretrained(args.model, compile=False, ov_config=_ov_config(args))
    pipe.reshape(batch_size=1 if args.guidance_scale > 1 else -1, height=args.size, width=args.size,
                 num_images_per_prompt=1)
    pipe.compile()
    compiled = time.perf_counter()
    parts = {"text_encoder": _timed(pipe.text_encoder), "decode": _timed(pipe.vae_decoder)}
    clock = StepClock()
    t0 = clock.start()
    try:
        pipe(prompt=args.prompt, width=args.size, height=args.size, num_inference_steps=args.steps,
             guidance_scale=args.guidance_scale, generator=torch.Generator().manual_seed(args.seed),
             callback_on_step_end=clock.diffusers_callback, output_type="np")
    except IndexError as exc:  # say why, where it is the text encoder's outputs (the failure stays one)
        names = [out.get_any_name() for out in pipe.text_encoder.model.outputs]
        raise RuntimeError(
            f"{type(pipe).__name__} cannot run this folder: it takes the text encoder's hidden states by layer "
            f"number from the list of its hidden_states.N outputs, and this folder's text encoder has only "
            f"{', '.join(names)} (optimum-cli exports every layer's) ({type(exc).__name__}: {exc})") from exc
    generate = time.perf_counter() - t0
    spent = {name: sum(times) for name, times in parts.items()}
    steps = clock.steps
    if steps:  # the first interval holds the pipeline's prompt encoding
        steps[0] = max(0.0, steps[0] - spent["text_encoder"])
    return {"load_compile": compiled - STARTED, "generate": generate, "steps": steps,
            "text_encoder": spent["text_encoder"], "vae_decode": spent["decode"],
            "settings": {"pipeline": type(pipe).__name__, "reshape": True, "cache_dir": bool(args.cache_dir)},
            "breakdown": peer_breakdown(age_at(STARTED), imported - STARTED, compiled - imported,
                                        spent["text_encoder"], sum(steps), spent["decode"], generate,
                                        age_at(time.perf_counter()))}


def run_sdcli_text_encoder(args) -> dict:
    """sdcli's text encoder alone (its time and memory apart): the folder's family encodes the
    prompt as `sdcli generate` would (Engine.encode_prompt: the text encoder compiled, or read
    from sdcli's blob cache in --cache-dir, then run once)."""
    from sdcli.engine.engine import Engine
    from sdcli.engine.request import GenerationRequest

    imported = time.perf_counter()
    engine = Engine(args.model, args.device, args.precision, cache_dir=Path(args.cache_dir) if args.cache_dir else None)
    request = GenerationRequest(prompt=args.prompt, steps=args.steps, guidance_scale=args.guidance_scale,
                                seed=args.seed, width=args.size, height=args.size)
    waited_before = engine.components.waited
    t0 = time.perf_counter()
    engine.encode_prompt(request, engine.classifier_free_guidance(args.guidance_scale))
    encode = time.perf_counter() - t0
    waited = engine.components.waited - waited_before  # the wait for the encoder's load, as generate counts it
    timings = dict(engine.timings)
    compile_s = sum(v for k, v in timings.items() if k.startswith("compile_text_encoder"))
    return {"imports": imported - STARTED, "load_compile": compile_s, "text_encoder": max(0.0, encode - waited),
            "encode_with_load": encode, "timings": timings}


def run_genai_text_encoder(args) -> dict:
    """openvino-genai's Qwen3TextEncoder alone (what its FLUX.2-klein and Z-Image pipelines run),
    compiled with CACHE_DIR where given, then run once on the prompt (no guidance: a second,
    negative row with it)."""
    import openvino_genai as ov_genai

    imported = time.perf_counter()
    encoder = ov_genai.Qwen3TextEncoder(str(Path(args.model) / "text_encoder"), args.device, **_ov_config(args))
    compiled = time.perf_counter()
    length = args.max_sequence_length
    t0 = time.perf_counter()
    encoder.infer(args.prompt, "", args.guidance_scale > 1, length)
    return {"imports": imported - STARTED, "load_compile": compiled - imported,
            "text_encoder": time.perf_counter() - t0, "max_sequence_length": length}


def _timed(part) -> list[float]:
    """The seconds of each call of an optimum-intel pipeline part (its __call__ runs its forward)."""
    times: list[float] = []
    forward = part.forward

    def timed_forward(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return forward(*args, **kwargs)
        finally:
            times.append(time.perf_counter() - t0)

    part.forward = timed_forward
    return times


def peer_breakdown(process_start: float | None, imports: float, model_load: float, text_encoder: float,
                   unet: float, decode: float, call: float, total: float | None) -> dict:
    """A peer's process in the stages of sdcli.util.breakdown: its start-up to this module,
    the imports of its libraries, the load and compilation of its models, and its pipeline call
    split into the calls of its models (the rest of the call, its scheduler and image
    post-processing, is steps_other); `other` is what is left of the process's age."""
    stages = {"process_start": process_start or 0.0, "imports": imports, "model_load": model_load,
              "text_encoder": text_encoder, "unet": unet, "decode": decode,
              "steps_other": max(0.0, call - text_encoder - unet - decode)}
    if total is None:
        total = sum(stages.values())
    stages["other"] = total - sum(stages.values())
    return {**{k: round(v, 4) for k, v in stages.items()}, "total": round(total, 4)}


def run_diffusers(args) -> dict:
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    torch.set_grad_enabled(False)
    pipe = StableDiffusionPipeline.from_pretrained(args.model, torch_dtype=torch.float32, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    load = time.perf_counter() - STARTED
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
        pipe.encode_prompt(args.prompt, "cpu", 1, True)
    text = time.perf_counter() - t0
    clock = StepClock()
    t0 = clock.start()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
        pipe(args.prompt, width=args.size, height=args.size, num_inference_steps=args.steps,
             guidance_scale=args.guidance_scale, generator=torch.Generator().manual_seed(args.seed),
             callback_on_step_end=clock.diffusers_callback, output_type="np")
    generate = time.perf_counter() - t0
    steps = clock.steps
    steps[0] -= text  # the first interval includes the pipeline's own prompt encoding
    return {"load_compile": load, "text_encoder": text, "generate": generate, "steps": steps,
            "vae_decode": max(0.0, generate - sum(steps) - text)}


RUNNERS = {"genai": run_genai, "optimum": run_optimum, "diffusers": run_diffusers,
           "sdcli-text-encoder": run_sdcli_text_encoder, "genai-text-encoder": run_genai_text_encoder}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("peer", choices=sorted(RUNNERS))
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--guidance-scale", type=float, default=7.5)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--device", default="CPU")
    parser.add_argument("--own-scheduler", action="store_true", help="keep the folder's scheduler (else Euler)")
    parser.add_argument("--cache-dir", default=None, help="OpenVINO's compiled-model cache (CACHE_DIR)")
    parser.add_argument("--tiny-vae", action="store_true", help="optimum: decode with the folder's vae_decoder_tiny/")
    parser.add_argument("--no-reshape", action="store_true", help="genai: no static reshape (its defaults)")
    parser.add_argument("--max-sequence-length", type=int, default=512,
                        help="genai-text-encoder: the prompt's padded length (genai's pipelines' default)")
    args = parser.parse_args()
    result = RUNNERS[args.peer](args)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
