"""Issue 23's hires-fix benchmarks: whole `sdcli generate` processes on random-weight models of the
real architectures, on this CPU.

    python scripts/bench_hires.py --output-dir bench-results/local-hires [--cases sd15,sdxl] [--rounds 3]
    python scripts/bench_hires.py --tiny --output-dir /tmp/bench-hires-tiny     # the script itself, in seconds

Cases (first pass, then `--hires-scale 2`, `--hires-upscaler Latent`, denoise 0.5, Euler):
- sd15: the SD 1.5 architecture, 512² -> 1024², 4 + 4 steps;
- sdxl: the SDXL 1.0 architecture, 1024² -> 2048², 4 + 4 steps (issue 23's target: peak RSS
  within 8 GB with the VAE tiled).
Each case runs as `base` (the first pass alone), `hires` (`--no-vae-tiling`: the whole 2x decode,
refused up front where the memory check says it would not fit) and `hires-tiled` (`--vae-tiling`,
tiles of `--vae-tile-size` or the VAE's own sample_size: 512 for SD 1.5, 1024 for SDXL).
`--tiny`: the same on the tiny test models (`random_model --tiny` / `--tiny-sdxl`), 64² -> 128²,
2 + 2 steps, tiles of 64 pixels (3 x 3 tiles).

The random models are built and converted once (sdcli.bench.peers.ensure_models, the folders
`sdcli bench --arch sd15/sdxl` uses, under --workdir). sdcli runs at --precision (auto: bf16
where the CPU has it). Per case, two unmeasured warm-ups of each configuration (the compiled-model
cache filled), then N rounds in rotated order (sdcli.bench.rounds); wall and peak RSS from
outside (GNU time where there is one), the stages from `sdcli generate --json`. bench.json keeps
every run; bench.md the medians, rendered from it (`--render bench.json` redoes bench.md alone).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PROMPT = "a castle on a hill above a lake, detailed, golden hour"
# case: (random_model's arch, first-pass size, steps, hires steps, VAE tile size (None: the VAE's own))
CASES = {"sd15": ("sd15", 512, 4, 4, None), "sdxl": ("sdxl", 1024, 4, 4, None)}
TINY_CASES = {"sd15": ("tiny", 64, 2, 2, 64), "sdxl": ("tiny-sdxl", 64, 2, 2, 64)}
VARIANTS = ("base", "hires", "hires-tiled")
SCALE, DENOISE, UPSCALER = 2, 0.5, "Latent"
RSS_TARGET_MIB = 8e9 / 2**20  # issue 23: SDXL 2048² within 8 GB with tiling
STAGES = ("model_load", "text_encoder", "unet", "steps_other", "decode", "png_write", "other")
COLUMNS = ["config", "size", "steps", "runs", "wall_s", "peak_rss_mb", "model_load_s", "text_encoder_s", "unet_s",
           "step_s", "hires_step_s", "hires_upscale_s", "decode_s", "png_write_s"]


def command(case: dict, variant: str, ov_dir: Path, work: Path, precision: str) -> tuple[list[str], dict]:
    from sdcli.bench.peers import tree_env

    env = tree_env(ROOT, SDCLI_CACHE_DIR=str(work / "cache"))
    size = case["size"]
    cmd = [sys.executable, "-m", "sdcli", "generate", "--model", str(ov_dir), "--prompt", PROMPT, "--steps",
           str(case["steps"]), "--seed", "42", "--scheduler", "euler", "--width", str(size), "--height", str(size),
           "--precision", precision, "--output", str(work / f"{case['name']}-{variant}.png"), "--json", "--quiet"]
    if variant != "base":
        cmd += ["--hires-scale", str(SCALE), "--hires-upscaler", UPSCALER, "--hires-steps", str(case["hires_steps"]),
                "--hires-denoise", str(DENOISE)]
    if variant == "hires-tiled":
        cmd += ["--vae-tiling"] + (["--vae-tile-size", str(case["tile"])] if case["tile"] else [])
    elif variant == "hires":
        cmd.append("--no-vae-tiling")
    return cmd, env


def stages(stdout: str) -> dict:
    """A run's stages from `sdcli generate --json`: the breakdown's (seconds from process start to
    exit), the median step of each pass and the upscale between them; all its timings kept too."""
    from sdcli.bench.rounds import last_json

    timings = last_json(stdout)["timings"]
    out = {f"{k}_s": timings["breakdown"][k] for k in STAGES if k in timings.get("breakdown", {})}
    out.update(step_s=timings.get("step_median"), hires_step_s=timings.get("hires_step_median"),
               hires_upscale_s=timings.get("hires_upscale"), timings=timings)
    return out


def compare_pictures(report: dict, work: Path) -> dict:
    """Each case's last hires-tiled picture against its last hires one (max and mean of 255)."""
    import numpy as np
    from PIL import Image

    done = {r["config"] for r in report["runs"] if r["rc"] == 0}
    out = {}
    for name in dict.fromkeys(c.split("/")[0] for c in report["configs"]):
        if {f"{name}/hires", f"{name}/hires-tiled"} <= done:
            a, b = (np.asarray(Image.open(work / f"{name}-{v}.png").convert("RGB")).astype(int)
                    for v in ("hires", "hires-tiled"))
            out[name] = {"max": int(np.abs(a - b).max()), "mean": round(float(np.abs(a - b).mean()), 3)}
    return out


def markdown(report: dict) -> str:
    from sdcli.bench.rounds import median_rows, rounds_phrase, table, warm_up_phrase

    m, configs = report["machine"], report["configs"]
    lines = [f"Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('memory_gb')} GB; OpenVINO {m.get('openvino')}; "
             f"{m.get('date')}. {'Tiny test models' if report['tiny'] else 'The real architectures'} (random weights), "
             f"weights {report['weight_format']}, precision {report['precision']}; `sdcli generate`, Euler, first "
             f"pass then `--hires-scale {SCALE} --hires-upscaler {UPSCALER} --hires-denoise {DENOISE}`; base: the "
             "first pass alone; hires: `--no-vae-tiling`; hires-tiled: `--vae-tiling`. Whole processes, "
             f"{rounds_phrase(report['runs'], ['config'])} {'after ' + warm_up_phrase(report) + ' each' if report.get('warm_up', True) else '(no warm-up)'}; "
             "load average "
             f"{report['load_average_start'][0]:.1f} at the start, {report.get('load_average_end', [0])[0]:.1f} at the "
             "end. Stages (seconds) from `--json`'s breakdown (both passes); step_s / hires_step_s: each pass's "
             "median step.", ""]
    rows = median_rows(report["runs"], ["config"], [c for c in COLUMNS[4:]])
    for row in rows:
        meta = configs[row["config"]]
        row.update(size=meta["size"], steps=meta["steps"])
    lines += table(rows, COLUMNS)
    if report.get("tiled_vs_whole_pixels"):
        lines += ["", "hires-tiled's picture against hires' (the tiling is exercised where they differ): " + ", ".join(
            f"{case} max {v['max']} mean {v['mean']} of 255" for case, v in report["tiled_vs_whole_pixels"].items())]
    errors = [f"- {row['config']}: {row['error']}" for row in rows if row.get("error")]
    if errors:
        lines += ["", "Failed:", *errors]
    target = next((row for row in rows if row["config"] == "sdxl/hires-tiled" and row.get("runs")), None)
    if target and not report["tiny"]:
        met = target["peak_rss_mb"] <= RSS_TARGET_MIB
        lines += ["", f"SDXL 2048² with the VAE tiled: peak RSS {target['peak_rss_mb']:.0f} MiB against issue 23's "
                  f"8 GB ({RSS_TARGET_MIB:.0f} MiB): {'met' if met else 'not met'}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    from sdcli.bench.peers import ensure_models, machine_info
    from sdcli.bench.rounds import appended_runs, bench_parser, made_dirs, measure_rounds, rendered_only, save_report
    from sdcli.runtime.core import default_cache_dir

    parser = bench_parser("hires", ROOT, rounds=3, workdir=default_cache_dir().parent / "bench",
                          description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="sd15,sdxl")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--steps", type=int, default=None, help="first-pass steps [4; --tiny: 2]")
    parser.add_argument("--hires-steps", type=int, default=None, help="second-pass steps [4; --tiny: 2]")
    parser.add_argument("--vae-tile-size", type=int, default=None, help="[the VAE's sample_size; --tiny: 64]")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--weight-format", default="fp16")
    parser.add_argument("--no-warm-up", action="store_true", help="measure from the first run")
    parser.add_argument("--tiny", action="store_true", help="the tiny test models: checks the script in seconds")
    args = parser.parse_args()
    if rendered_only(args, markdown):
        return
    work, out_dir = made_dirs(args)
    variants = args.variants.split(",")
    report = {"machine": machine_info(), "tiny": args.tiny, "precision": args.precision,
              "weight_format": args.weight_format, "rounds": args.rounds, "warm_up": not args.no_warm_up, "configs": {},
              "runs": appended_runs(args),
              "load_average_start": os.getloadavg()}
    for name in args.cases.split(","):
        arch, size, steps, hires_steps, tile = (TINY_CASES if args.tiny else CASES)[name]
        case = dict(name=name, arch=arch, size=size, steps=args.steps or steps,
                    hires_steps=args.hires_steps or hires_steps, tile=args.vae_tile_size or tile)
        _, ov_dir = ensure_models(work, args.weight_format, print, arch)
        names = [f"{name}/{variant}" for variant in variants]
        for variant in variants:
            hires = variant != "base"
            report["configs"][f"{name}/{variant}"] = {
                **case, "variant": variant,
                "size": f"{size}²" + (f" -> {size * SCALE}²" if hires else ""),
                "steps": f"{case['steps']}" + (f" + {case['hires_steps']}" if hires else "")}
        measure_rounds(report, names, lambda config: command(case, config.split("/")[1], ov_dir, work, args.precision),
                       args.rounds, parse=stages, warm_up=[] if args.no_warm_up else None,
                       save=lambda: save_report(out_dir, report))
    report["tiled_vs_whole_pixels"] = compare_pictures(report, work)
    report["load_average_end"] = os.getloadavg()
    save_report(out_dir, report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
