"""Issue 22's ControlNet benchmark on the SD 1.5 or SDXL architecture (random weights): `sdcli
generate` with no ControlNet, one and two units, and diffusers' StableDiffusionControlNetPipeline
(StableDiffusionXLControlNetPipeline for --arch sdxl) in PyTorch with one unit, whole processes,
on this CPU.

    python scripts/bench_controlnet.py --workdir .bench/controlnet --output-dir bench-results/local-controlnet \
        [--steps 8] [--rounds 3] [--size 512] [--configs sdcli-1cn,sdcli-1cn-int8,torch-1cn,torch-1cn-bf16,...]
        [--baseline-tree DIR] [--arch sd15|sdxl|tiny|tiny-sdxl]

The model folder is built by `random_model --sd15` (--sdxl, --tiny, --tiny-sdxl: --arch) and
converted once, under --workdir/ARCH-src (sd15-src for sd15); the ControlNet is a random
ControlNetModel shaped like that UNet (lllyasviel's conditioning embedding: 16, 32, 96, 256),
converted once at fp32. Configurations: sdcli-{0,1,2}cn at its default precision, -f32 at f32,
-int8 on folders converted with --weight-format int8 (the SD model and the ControlNets);
-hybrid on the SD model converted with --quantize hybrid (NNCF: int8 weights and activations in
the UNet, as the OpenVINO notebook's int8 ControlNet pipeline quantizes it) and the ControlNets
as for the default;
torch-1cn in f32 (diffusers' default on a CPU), torch-1cn-bf16 with bfloat16 weights.
A -cold suffix (sdcli-1cn-cold) runs with an empty compiled-model cache every time (a fresh
cache folder, removed before the run): the first run a user sees; the others are warm.
sdcli-0cn-base: no ControlNet, run by the sdcli of --baseline-tree (a checkout from before the
ControlNet work, e.g. `git worktree add /tmp/pre-cn 6cef4c7~1`), with its own cache folder: beside
sdcli-0cn it measures what the load-time ControlNet edit costs a run that uses none (issue 22).
Rounds rotate the configurations; two unmeasured warm-ups each for sdcli (its first run of a model
compiles it, the second writes the compiled blob that later runs import: sdcli.bench.rounds).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PROMPT = "a house in a forest, detailed"
ARCH_NAMES = {"sd15": "SD 1.5", "sdxl": "SDXL 1.0", "tiny": "tiny SD 1.x-shaped", "tiny-sdxl": "tiny SDXL-shaped"}

TORCH_PEER = r"""
import sys, time, json
t0 = time.perf_counter()
import torch, diffusers
from PIL import Image
src, cn, image, out, steps, size, dtype = sys.argv[1:8]
dtype = getattr(torch, dtype)
net = diffusers.ControlNetModel.from_pretrained(cn, torch_dtype=dtype)
if "text_encoder_2" in diffusers.DiffusionPipeline.load_config(src):  # SDXL
    pipe = diffusers.StableDiffusionXLControlNetPipeline.from_pretrained(src, controlnet=net, torch_dtype=dtype)
else:
    pipe = diffusers.StableDiffusionControlNetPipeline.from_pretrained(src, controlnet=net, torch_dtype=dtype,
                                                                      safety_checker=None, requires_safety_checker=False)
pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
pipe.set_progress_bar_config(disable=True)
t1 = time.perf_counter()
marks = []
def cb(p, i, t, kw):
    marks.append(time.perf_counter()); return kw
img = pipe("%s", image=Image.open(image).convert("RGB"), num_inference_steps=int(steps), guidance_scale=7.5, width=int(size),
           height=int(size), generator=torch.Generator().manual_seed(42), callback_on_step_end=cb).images[0]
img.save(out)
steps_s = [b - a for a, b in zip(marks, marks[1:])]
print(json.dumps({"load_s": t1 - t0, "step_s": sorted(steps_s)[len(steps_s) // 2] if steps_s else None}))
""" % PROMPT


def prepare(work: Path, int8: bool = False, arch: str = "sd15", hybrid: bool = False) -> dict:
    from sdcli.convert.random_controlnet import build_random_controlnet

    src, ov, ov8 = work / f"{arch}-src", work / f"{arch}-ov", work / f"{arch}-ov-int8"
    hyb = work / f"{arch}-ov-hybrid"
    if not (src / "model_index.json").is_file():
        subprocess.run([sys.executable, "-m", "sdcli.convert.random_model", str(src), f"--{arch}"], check=True, cwd=ROOT)
    for folder, args in ((ov, []), (ov8, ["--weight-format", "int8"]) if int8 else (None, None),
                         (hyb, ["--quantize", "hybrid"]) if hybrid else (None, None)):
        if folder is not None and not (folder / "model_index.json").is_file():
            subprocess.run([sys.executable, "-m", "sdcli", "convert", str(src), "--output", str(folder), "--quiet",
                            *args], check=True, cwd=ROOT)
    cns = {}
    tag = "" if arch == "sd15" else f"{arch}-"  # (the sd15 names as before: folders converted earlier are kept)
    for seed, name in enumerate((f"{tag}cn-a", f"{tag}cn-b")):
        cn_src = work / f"{name}-src"
        if not (cn_src / "config.json").is_file():
            levels = len(json.loads((src / "vae" / "config.json").read_text())["block_out_channels"])
            channels = ((16, 32, 96, 256) if "tiny" not in arch else (8, 16, 16, 16))[:levels]  # down as the VAE
            build_random_controlnet(src / "unet", cn_src, embedding_channels=channels, seed=seed)
        for cn_dir, fmt in (("ControlNet", "fp32"), ("ControlNet-int8", "int8") if int8 else (None, None)):
            if cn_dir is not None and not (work / cn_dir / name / "openvino_model.xml").is_file():
                subprocess.run([sys.executable, "-m", "sdcli", "convert", str(cn_src), "--weight-format", fmt,
                                "--controlnet-dir", str(work / cn_dir), "--quiet"], check=True, cwd=ROOT)
                (work / cn_dir / f"{name}-src").rename(work / cn_dir / name)
        cns[name.removeprefix(tag)] = (name, cn_src)
    return {"src": src, "ov": ov, "ov-int8": ov8, "ov-hybrid": hyb, "cns": cns}


def command(config: str, made: dict, work: Path, image: Path, steps: int, size: int,
            baseline: Path | None = None) -> tuple[list[str], dict]:
    from sdcli.bench.peers import tree_env

    env = tree_env(ROOT, SDCLI_CACHE_DIR=str(work / "cache"))
    if config == "sdcli-0cn-base":  # the same run by the sdcli from before the ControlNet work
        if baseline is None:
            raise SystemExit("sdcli-0cn-base needs --baseline-tree")
        env = tree_env(baseline, SDCLI_CACHE_DIR=str(work / "cache-base"))
        return [sys.executable, "-m", "sdcli", "generate", "--model", str(made["ov"]), "--prompt", PROMPT, "--steps",
                str(steps), "--scheduler", "euler", "--guidance-scale", "7.5", "--seed", "42", "--width", str(size), "--height", str(size),
                "--output", str(work / f"{config}.png"), "--json", "--quiet"], env
    if config.startswith("torch-1cn"):  # torch-1cn: f32 (diffusers' default on a CPU); torch-1cn-bf16
        return [sys.executable, "-c", TORCH_PEER, str(made["src"]), str(made["cns"]["cn-a"][1]), str(image),
                str(work / "torch.png"), str(steps), str(size),
                "bfloat16" if config.endswith("-bf16") else "float32"], env
    if config.endswith("-cold"):  # the first run: an empty compiled-model cache every time
        config = config.removesuffix("-cold")
        cold = work / "cache-cold"
        shutil.rmtree(cold, ignore_errors=True)
        env["SDCLI_CACHE_DIR"] = str(cold)
    precision = "f32" if config.endswith("-f32") else "auto"
    int8 = config.endswith("-int8")  # the int8 folder (sdcli convert --weight-format int8) and int8 ControlNets
    folder = made["ov-int8" if int8 else "ov-hybrid" if config.endswith("-hybrid") else "ov"]
    units = {"0cn": [], "1cn": ["cn-a"], "2cn": ["cn-a", "cn-b"]}[config.split("-")[1]]
    cmd = [sys.executable, "-m", "sdcli", "generate", "--model", str(folder), "--prompt",
           PROMPT, "--steps", str(steps), "--scheduler", "euler", "--guidance-scale", "7.5", "--seed", "42", "--width", str(size), "--height",
           str(size), "--precision", precision, "--controlnet-dir", str(work / ("ControlNet-int8" if int8 else
                                                                                "ControlNet")), "--output",
           str(work / f"{config}.png"), "--json", "--quiet"]
    for unit in units:
        cmd += ["--controlnet", made["cns"][unit][0], "--control-image", str(image)]
    return cmd, env


def markdown(report: dict) -> str:
    """bench.md from a bench.json's report: the machine, the settings and one row of medians per configuration."""
    from sdcli.bench.rounds import median_rows, rounds_phrase, table, warm_up_phrase

    cold = "; -cold: an empty compiled-model cache every run" if any(c.endswith("-cold") for c in report["configs"]) else ""
    lines = [f"Machine: {report['machine'].get('cpu')}, {report['machine'].get('cores')} cores; "
             f"{ARCH_NAMES[report['arch']]} architecture (random weights), {report['size']}x{report['size']}, "
             f"{report['steps']} steps, Euler; whole processes, {rounds_phrase(report['runs'], ['config'])} (sdcli "
             f"after {warm_up_phrase(report)} each{cold}); load average "
             f"{report['load_average_start'][0]:.1f} at the start, "
             f"{(report.get('load_average_end') or [float('nan')])[0]:.1f} at the end.", ""]
    lines += table(median_rows(report["runs"], ["config"], ["wall_s", "peak_rss_mb", "step_s"]),
                   ["config", "runs", "wall_s", "peak_rss_mb", "step_s"])
    return "\n".join(lines) + "\n"


def main() -> None:
    import numpy as np
    from PIL import Image

    from sdcli.bench.peers import machine_info
    from sdcli.bench.rounds import (appended_runs, bench_parser, last_json, made_dirs, measure_rounds, rendered_only,
                                    save_report)

    parser = bench_parser("controlnet", ROOT, rounds=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=None, help="[512; 1024 for sdxl; 64 for tiny ones]")
    parser.add_argument("--arch", default="sd15", choices=["sd15", "sdxl", "tiny", "tiny-sdxl"])
    parser.add_argument("--configs", default="sdcli-0cn,sdcli-1cn,sdcli-2cn,sdcli-1cn-f32,torch-1cn")
    parser.add_argument("--no-warm-up", action="store_true", help="no unmeasured warm-up (the cache filled before)")
    parser.add_argument("--baseline-tree", type=Path, default=None,
                        help="a checkout of sdcli from before the ControlNet work, for sdcli-0cn-base")
    args = parser.parse_args()
    if rendered_only(args, markdown):
        return
    work, out_dir = made_dirs(args)
    args.size = args.size or {"sdxl": 1024, "sd15": 512}.get(args.arch, 64)
    configs = args.configs.split(",")
    made = prepare(work, int8=any(c.endswith("-int8") for c in configs), arch=args.arch,
                   hybrid=any(c.endswith("-hybrid") for c in configs))
    image = work / "control.png"
    y, x = np.mgrid[0:args.size, 0:args.size]
    Image.fromarray(np.where(((x // 32) + (y // 48)) % 2 == 0, 230, 20).astype(np.uint8)).convert("RGB").save(image)
    report = {"machine": machine_info(), "arch": args.arch, "size": args.size, "steps": args.steps, "rounds": args.rounds,
              "configs": configs, "runs": appended_runs(args), "load_average_start": os.getloadavg()}

    def parse(stdout: str) -> dict:
        data = last_json(stdout)
        return {"step_s": data.get("step_s") or data.get("timings", {}).get("step_median")}

    if args.baseline_tree is not None:
        report["baseline_commit"] = subprocess.run(["git", "-C", str(args.baseline_tree), "rev-parse", "HEAD"],
                                                   capture_output=True, text=True).stdout.strip()
    warm_up = [] if args.no_warm_up else [c for c in configs if not c.startswith("torch") and not c.endswith("-cold")]
    measure_rounds(report, configs, lambda config: command(config, made, work, image, args.steps, args.size,
                                                           args.baseline_tree),
                   args.rounds, parse=parse, warm_up=warm_up,
                   save=lambda: save_report(out_dir, report))
    report["load_average_end"] = os.getloadavg()
    text = markdown(report)
    save_report(out_dir, report, text)
    print(text)


if __name__ == "__main__":
    main()
