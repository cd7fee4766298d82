"""LoRAs at run time, fused or as side branches: the cost per step and the time to switch.

    python scripts/bench_lora.py --model models/sd15 --lora models/Lora/style.safetensors
    python scripts/bench_lora.py --model models/sd15 --make-lora 32     # a random linear LoRA
    python scripts/bench_lora.py --model DIR --lora A.safetensors --size 512 --steps 8 --out bench_lora.json

Two ways of applying a LoRA on OpenVINO, on the same folder, LoRA, size and steps:

* sdcli (fused): ΔW added to the weights before compiling (runtime/lora.py).  Nothing per
  step; a switch to another set of LoRAs (or weights) is a fuse + compile, or an import of
  the cached blob once that set has been used twice.
* openvino-genai (side branches): the pipeline is compiled once with the LoRA's A and B
  matrices as state; each step computes x·Aᵀ·Bᵀ beside every changed layer; a switch only
  sets other tensors.  (It reads linear layers only, and leaves kohya alpha tensors out,
  which does not change the timings.)

Reported: the median step time without a LoRA and with one, for each; the switch time
(sdcli: compile seconds of the first image after the switch, cold and from the blob; genai:
the first image's time beyond its steps after the switch).  Steps are timed as the median
interval between per-step callbacks, the first left out.  Timings vary with what else the
machine runs: use an idle one, and compare only numbers from one run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "a photo of an astronaut riding a horse on mars"


def make_linear_lora(model_dir: Path, rank: int, out: Path) -> Path:
    """A random kohya LoRA of rank `rank` on every attention, feed-forward and text-encoder
    linear layer of the folder's IRs (shapes read from the IRs; no torch needed)."""
    import numpy as np
    import openvino as ov

    from sdcli.model.lora_names import flat_ir_name

    rng = np.random.default_rng(0)
    tensors = {}
    for component, prefix in (("unet", "lora_unet_"), ("text_encoder", "lora_te_")):
        model = ov.Core().read_model(model_dir / component / "openvino_model.xml")
        for op in model.get_ordered_ops():
            name = op.get_friendly_name().removesuffix("_compressed")  # fp16 IRs: `<path>.weight_compressed`
            if op.get_type_name() != "Constant" or not name.endswith(".weight") or len(op.shape) != 2:
                continue
            if not any(key in name for key in ("attn", "ff.net", "self_attn", "mlp")):
                continue
            out_features, in_features = op.shape
            key = prefix + flat_ir_name(name[: -len(".weight")])
            tensors[f"{key}.lora_down.weight"] = (rng.standard_normal((rank, in_features)) * 0.01).astype(np.float16)
            tensors[f"{key}.lora_up.weight"] = (rng.standard_normal((out_features, rank)) * 0.01).astype(np.float16)
            tensors[f"{key}.alpha"] = np.array(rank, np.float16)
    write_safetensors(tensors, out)
    return out


def write_safetensors(tensors: dict, path: Path) -> None:
    import numpy as np

    header, chunks, offset = {}, [], 0
    for name, value in tensors.items():
        data = np.ascontiguousarray(value).tobytes()
        header[name] = {"dtype": {"float16": "F16", "float32": "F32"}[value.dtype.name], "shape": list(value.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + b"".join(chunks))


def median_interval(times: list[float]) -> float | None:
    gaps = [b - a for a, b in zip(times, times[1:])]
    return statistics.median(gaps) if gaps else None


def bench_sdcli(model: Path, lora: Path, size: int, steps: int) -> dict:
    """Step times and switch times of sdcli's fused LoRAs."""
    from sdcli.engine.engine import Engine
    from sdcli.engine.networks import NetworkFolders
    from sdcli.engine.request import GenerationRequest

    cache = Path(tempfile.mkdtemp(prefix="bench-lora-cache-"))
    folders = NetworkFolders(lora.parent)

    def run(engine, tag: str) -> dict:
        stamps: list[float] = []
        request = GenerationRequest(prompt=f"{PROMPT} {tag}", steps=steps, seed=1, width=size, height=size)
        started = time.perf_counter()
        result = engine.generate(request, lambda info: stamps.append(time.perf_counter()))
        wall = time.perf_counter() - started
        return {"wall": wall, "compile": result.timings.get("compile", 0.0), "step": median_interval(stamps)}

    engine = Engine(model, cache_dir=cache, networks=folders)
    out = {"plain_first": run(engine, ""), "plain": run(engine, "")}
    name = lora.stem
    out["lora_first"] = run(engine, f"<lora:{name}:1>")  # switch: fuse + compile (cold)
    out["lora"] = run(engine, f"<lora:{name}:1>")  # the same set: nothing to do
    out["switch_weight"] = run(engine, f"<lora:{name}:0.5>")  # another set: fuse + compile (cold)
    # A blob is written by a set's second compile (Runtime._second_compile) and imported from the third on.
    out["switch_back_lora"] = run(engine, f"<lora:{name}:1>")  # second compile: it writes the blob
    out["switch_weight_again"] = run(engine, f"<lora:{name}:0.5>")
    out["lora_from_blob"] = run(engine, f"<lora:{name}:1>")  # switch to a set with a blob: import
    out["plain_from_blob"] = run(engine, "")
    return out


def bench_genai(model: Path, lora: Path, size: int, steps: int) -> dict:
    """Step times and switch times of openvino-genai's adapters (side branches)."""
    import openvino_genai as ov_genai

    adapter = ov_genai.Adapter(str(lora))

    def run(pipe, adapters=None) -> dict:
        stamps: list[float] = []

        def callback(step, total, latent):
            stamps.append(time.perf_counter())
            return False

        kwargs = {"adapters": adapters} if adapters is not None else {}
        started = time.perf_counter()
        pipe.generate(PROMPT, width=size, height=size, num_inference_steps=steps, guidance_scale=7.5,
                      callback=callback, rng_seed=1, **kwargs)
        wall = time.perf_counter() - started
        step = median_interval(stamps)
        return {"wall": wall, "step": step, "beyond_steps": wall - (step or 0) * len(stamps)}

    out = {}
    started = time.perf_counter()
    plain = ov_genai.Text2ImagePipeline(str(model), "CPU")
    out["compile_plain"] = time.perf_counter() - started
    run(plain)
    out["plain"] = run(plain)
    del plain
    started = time.perf_counter()
    pipe = ov_genai.Text2ImagePipeline(str(model), "CPU", adapters=ov_genai.AdapterConfig(adapter, 1.0))
    out["compile_with_adapters"] = time.perf_counter() - started
    out["lora_first"] = run(pipe, ov_genai.AdapterConfig(adapter, 1.0))
    out["lora"] = run(pipe, ov_genai.AdapterConfig(adapter, 1.0))
    out["switch_weight"] = run(pipe, ov_genai.AdapterConfig(adapter, 0.5))
    out["no_lora_same_pipeline"] = run(pipe, ov_genai.AdapterConfig())
    out["switch_back_lora"] = run(pipe, ov_genai.AdapterConfig(adapter, 1.0))
    return out


def report(results: dict) -> None:
    def s(value):
        return f"{value:.3f}" if isinstance(value, (int, float)) else "-"

    if "sdcli" in results:
        r = results["sdcli"]
        print("sdcli (fused)       step plain {}  step LoRA {}  switch: cold {} s, another weight {} s, "
              "back from blob {} s".format(s(r["plain"]["step"]), s(r["lora"]["step"]), s(r["lora_first"]["compile"]),
                                           s(r["switch_weight"]["compile"]), s(r["lora_from_blob"]["compile"])))
    if "genai" in results:
        r = results["genai"]
        print("genai (branches)    step plain {}  step LoRA {}  step no-LoRA on the LoRA pipeline {}  switch "
              "(beyond steps) {} s  compile with adapters {} s".format(
                  s(r["plain"]["step"]), s(r["lora"]["step"]), s(r["no_lora_same_pipeline"]["step"]),
                  s(r["switch_weight"]["beyond_steps"]), s(r["compile_with_adapters"])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--lora", type=Path, help="a LoRA .safetensors (linear layers, for genai)")
    parser.add_argument("--make-lora", type=int, metavar="RANK", help="make a random linear kohya LoRA of this rank")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--peers", default="sdcli,genai")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    lora = args.lora
    if lora is None:
        if not args.make_lora:
            sys.exit("give --lora FILE or --make-lora RANK")
        lora = make_linear_lora(args.model, args.make_lora, Path(tempfile.mkdtemp()) / f"random_r{args.make_lora}.safetensors")
    results = {"model": str(args.model), "lora": str(lora), "size": args.size, "steps": args.steps,
               "cpus": os.cpu_count()}
    for peer in args.peers.split(","):
        results[peer] = (bench_sdcli if peer == "sdcli" else bench_genai)(args.model, lora, args.size, args.steps)
        print(json.dumps({peer: results[peer]}), flush=True)
    report(results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
