"""`sdcli bench-features`: what each opt-in speed-up buys, on the SD 1.5 architecture.

Whole `sdcli generate` / `sdcli batch` processes with the compiled-model cache warm (every
configuration runs once unmeasured first), openvino-genai as the reference where an issue
sets a target against it.  Cases:

- deepcache: 6-step Euler runs with and without `--deepcache 3` (wall, UNet time per step);
- tiny_vae: the same with `--vae tiny` (decode time against the full VAE);
- combo: 20 steps plain, with `--vae tiny --deepcache 3`, and genai's 20 steps;
- lcm: an LCM model (time_cond_proj_dim 256), 4 steps, full and tiny VAE, and genai's LCM;
- quantize: step time and UNet size of the fp16, int8 (weight-only) and hybrid folders;
- throughput: `sdcli batch` of several prompts, `--parallel 1` against `--parallel auto`.

Writes features.json and features.md (a table per case plus each target and whether it is met).
"""
from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

from sdcli.bench.peers import PROMPT, ensure_models, machine_info, run_measured

CASES = ("deepcache", "tiny_vae", "combo", "lcm", "quantize", "throughput")
BATCH_PROMPTS = [f"{PROMPT}, variation {i}" for i in range(8)]


def _sh(cmd: list, log: Callable[[str], None]) -> None:
    log("$ " + " ".join(map(str, cmd)))
    subprocess.run([str(c) for c in cmd], check=True, stdout=subprocess.DEVNULL)


def _sdcli(*args) -> list[str]:
    return [sys.executable, "-m", "sdcli", *map(str, args)]


class Models:
    """The random-weight folders the cases need, built once in `workdir`."""

    def __init__(self, workdir: Path, arch: str, log: Callable[[str], None]):
        self.workdir, self.arch, self.log = workdir, arch, log
        self.src, self.fp16 = ensure_models(workdir, "fp16", log, arch)

    def _once(self, path: Path, build: Callable[[Path], None]) -> Path:
        if not (path / "model_index.json").is_file() and not (path / "config.json").is_file():
            tmp = path.with_name("." + path.name + ".part")
            shutil.rmtree(tmp, ignore_errors=True)
            build(tmp)
            tmp.replace(path)
        return path

    def taesd(self) -> Path:
        flag = "--taesd" if self.arch == "sd15" else "--tiny-taesd"
        return self._once(self.workdir / f"taesd-{self.arch}-random",
                          lambda p: _sh([sys.executable, "-m", "sdcli.convert.random_model", p, flag], self.log))

    def with_tiny_vae(self) -> Path:
        if not (self.fp16 / "vae_decoder_tiny").is_dir():
            _sh(_sdcli("convert", "--tiny-vae", self.taesd(), "--into", self.fp16, "--quiet"), self.log)
        return self.fp16

    def lcm(self) -> Path:
        src = self._once(self.workdir / f"{self.arch}-lcm-random",
                         lambda p: _sh([sys.executable, "-m", "sdcli.convert.random_model", p, f"--{self.arch}", "--lcm"], self.log))
        return self._once(self.workdir / f"{self.arch}-lcm-random-ov-fp16",
                          lambda p: _sh(_sdcli("convert", src, "--output", p, "--tiny-vae", self.taesd(), "--quiet"), self.log))

    def converted(self, *options: str) -> Path:
        name = "-".join(o.strip("-") for o in options)
        return self._once(self.workdir / f"{self.arch}-random-ov-{name}",
                          lambda p: _sh(_sdcli("convert", self.src, "--output", p, *options, "--quiet"), self.log))


def _generate(model: Path, steps: int, size: int, extra: list[str]) -> list[str]:
    return _sdcli("generate", "--model", model, "--prompt", PROMPT, "--steps", steps, "--seed", 42,
                  "--width", size, "--height", size, "--json", "--quiet", "--output", "{out}", *extra)


def _genai(model: Path, steps: int, size: int, own_scheduler: bool) -> list[str]:
    """genai as sdcli is measured here, warm: its compiled-model cache (kept beside the model
    folder's name, under the bench work folder) and a static reshape (runners.py)."""
    cache = Path(model).parent / f".genai-cache-{Path(model).name}"
    return [sys.executable, "-m", "sdcli.bench.runners", "genai", "--model", str(model), "--prompt", PROMPT,
            "--steps", str(steps), "--seed", "42", "--size", str(size), "--cache-dir", str(cache)] \
        + (["--own-scheduler"] if own_scheduler else [])


def _batch(model: Path, steps: int, size: int, parallel: str, prompts: Path) -> list[str]:
    return _sdcli("batch", prompts, "--output-dir", "{outdir}", "--model", model, "--steps", steps, "--seed", 42,
                  "--width", size, "--height", size, "--parallel", parallel, "--quiet")


def _run(cmd: list[str], tmp: Path) -> dict:
    outdir = Path(tempfile.mkdtemp(dir=tmp))
    cmd = [c.replace("{out}", str(outdir / "out.png")).replace("{outdir}", str(outdir / "batch")) for c in cmd]
    wall, rss, rc, out, err = run_measured(cmd)
    row = {"wall_s": round(wall, 3), "peak_rss_mb": round(rss, 1), "rc": rc}
    if rc != 0:
        row["error"] = (err.strip().splitlines() or ["?"])[-1][:300]
        return row
    lines = [line for line in out.strip().splitlines() if line.startswith("{")]
    if lines:
        row["timings"] = json.loads(lines[-1]).get("timings", json.loads(lines[-1]))
    return row


def _summary(name: str, runs: list[dict], steps: int) -> dict:
    ok = [r for r in runs if r["rc"] == 0]
    row = {"config": name, "runs": len(ok), "steps": steps}
    if not ok:
        row["error"] = runs[0].get("error", "") if runs else ""
        return row

    def med(values):
        values = [v for v in values if v is not None]
        return round(statistics.median(values), 3) if values else None

    row["wall_s"] = med([r["wall_s"] for r in ok])
    row["peak_rss_mb"] = med([r["peak_rss_mb"] for r in ok])
    timings = [r.get("timings", {}) for r in ok]
    if any("denoise" in t for t in timings):  # sdcli generate (genai reports its own "unet" metric)
        row["unet_per_step_s"] = med([t["unet"] / max(1, len(t.get("steps") or [1])) for t in timings if "denoise" in t])
        row["decode_s"] = med([t.get("decode") for t in timings])
        per_step = [t.get("steps") or [] for t in timings]
        row["step_median_s"] = med([statistics.median(s) for s in per_step if s])
    elif any("generate" in t for t in timings):  # genai
        row["step_median_s"] = med([statistics.median(t["steps"]) for t in timings if t.get("steps")])
        row["decode_s"] = med([t.get("vae_decode") for t in timings])
    return row


def _measure(configs: dict[str, tuple[list[str], int]], rounds: int, tmp: Path, log, warm_up: bool = True) -> dict[str, dict]:
    """Run every configuration once unmeasured (sdcli's and genai's: both fill their
    compiled-model caches; unless the caches are known to be warm), then `rounds`
    interleaved rounds, the order rotated each round (every run records its round and position)."""
    for name, (cmd, _) in configs.items():
        if warm_up:
            log(f"warm-up {name}")
            _run(cmd, tmp)
    runs: dict[str, list[dict]] = {name: [] for name in configs}
    names = list(configs)
    for rnd in range(rounds):
        order = names[rnd % len(names):] + names[:rnd % len(names)]
        for position, name in enumerate(order):
            row = dict(_run(configs[name][0], tmp), round=rnd, position=position)
            runs[name].append(row)
            log(f"round {rnd + 1}/{rounds} {name:<22} {row['wall_s']:8.1f} s {row['peak_rss_mb']:7.0f} MB"
                + (f"  FAILED: {row.get('error')}" if row["rc"] else ""))
    return {name: {**_summary(name, runs[name], configs[name][1]), "all": runs[name]} for name in configs}


def _target(what: str, value, target: str, met) -> dict:
    return {"what": what, "value": value, "target": target, "met": met}


def _ratio(a, b):
    return round(a / b, 3) if a and b else None


def run_features(workdir: Path, output_dir: Path, cases: list[str], rounds: int, size: int, arch: str,
                 batch_images: int, batch_steps: int, log: Callable[[str], None], warm_up: bool = True) -> dict:
    models = Models(workdir, arch, log)
    report: dict = {"machine": machine_info(), "arch": arch, "size": size, "rounds": rounds, "prompt": PROMPT,
                    "cases": {}, "targets": []}
    earlier = _earlier_report(output_dir / "features.json", report)
    targets = report["targets"]

    def save() -> None:
        """After every case, so a run cut short keeps what it measured; cases measured by an
        earlier run on the same machine, size and architecture are kept."""
        from sdcli.util.fsutil import atomic_write_bytes

        merged = dict(report, cases={**earlier.get("cases", {}), **report["cases"]},
                      targets=[t for t in earlier.get("targets", []) if t["what"] not in {x["what"] for x in targets}]
                      + targets)
        output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(output_dir / "features.json", json.dumps(merged, indent=1).encode())
        atomic_write_bytes(output_dir / "features.md", markdown(merged).encode())
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if {"deepcache", "tiny_vae", "combo"} & set(cases):
            fp16 = models.with_tiny_vae()
            configs: dict[str, tuple[list[str], int]] = {}
            if {"deepcache", "tiny_vae"} & set(cases):
                configs["plain 6"] = (_generate(fp16, 6, size, ["--scheduler", "euler"]), 6)
            if "deepcache" in cases:
                configs["deepcache3 6"] = (_generate(fp16, 6, size, ["--scheduler", "euler", "--deepcache", "3"]), 6)
            if "tiny_vae" in cases:
                configs["tiny-vae 6"] = (_generate(fp16, 6, size, ["--scheduler", "euler", "--vae", "tiny"]), 6)
            if "combo" in cases:
                configs["plain 20"] = (_generate(fp16, 20, size, ["--scheduler", "euler"]), 20)
                configs["tiny-vae+deepcache3 20"] = (
                    _generate(fp16, 20, size, ["--scheduler", "euler", "--vae", "tiny", "--deepcache", "3"]), 20)
                configs["genai 20"] = (_genai(fp16, 20, size, own_scheduler=False), 20)
            rows = _measure(configs, rounds, tmp, log, warm_up)
            report["cases"]["sd15"] = rows
            if "deepcache" in cases:
                plain, dc = rows["plain 6"], rows["deepcache3 6"]
                speed = _ratio(plain.get("unet_per_step_s"), dc.get("unet_per_step_s"))
                targets.append(_target("DeepCache 3: UNet time per step, plain / deepcache", speed, ">= 2.0",
                                       speed is not None and speed >= 2.0))
                wall = _ratio(dc.get("wall_s"), plain.get("wall_s"))
                targets.append(_target("DeepCache 3: 6-step run wall, deepcache / plain", wall, "<= 0.65",
                                       wall is not None and wall <= 0.65))
            if "tiny_vae" in cases:
                dec = _ratio(rows["plain 6"].get("decode_s"), rows["tiny-vae 6"].get("decode_s"))
                targets.append(_target("TAESD: decode time, full / tiny", dec, "(report)", None))
            if "combo" in cases:
                speed = _ratio(rows["genai 20"].get("wall_s"), rows["tiny-vae+deepcache3 20"].get("wall_s"))
                targets.append(_target("--vae tiny --deepcache 3, 20 steps: genai wall / sdcli wall", speed, ">= 2.5",
                                       speed is not None and speed >= 2.5))
            save()
        if "lcm" in cases:
            lcm = models.lcm()
            rows = _measure({
                "lcm 4": (_generate(lcm, 4, size, []), 4),
                "lcm 4 tiny-vae": (_generate(lcm, 4, size, ["--vae", "tiny"]), 4),
                "genai lcm 4": (_genai(lcm, 4, size, own_scheduler=True), 4),
            }, rounds, tmp, log, warm_up)
            report["cases"]["lcm"] = rows
            ratio = _ratio(rows["lcm 4"].get("wall_s"), rows["genai lcm 4"].get("wall_s"))
            targets.append(_target("LCM 4 steps: sdcli wall / genai wall (same folder, full VAE)", ratio, "<= 1.00",
                                   ratio is not None and ratio <= 1.0))
            tiny_wall = rows["lcm 4 tiny-vae"].get("wall_s")
            targets.append(_target("LCM 4 steps with --vae tiny: wall seconds", tiny_wall, "<= 15 (2-core machine)",
                                   tiny_wall is not None and tiny_wall <= 15))
            save()
        if "quantize" in cases:
            folders = {"fp16": models.fp16, "int8": models.converted("--weight-format", "int8"),
                       "hybrid": models.converted("--quantize", "hybrid")}
            rows = _measure({f"{name} 6": (_generate(folder, 6, size, ["--scheduler", "euler"]), 6)
                             for name, folder in folders.items()}, rounds, tmp, log, warm_up)
            for name, folder in folders.items():
                rows[f"{name} 6"]["unet_mb"] = round(sum(p.stat().st_size for p in (folder / "unet").iterdir()) / 1e6, 1)
                rows[f"{name} 6"]["folder_mb"] = round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6, 1)
            report["cases"]["quantize"] = rows
            for name in ("int8", "hybrid"):
                speed = _ratio(rows["fp16 6"].get("step_median_s"), rows[f"{name} 6"].get("step_median_s"))
                targets.append(_target(f"{name}: step time, fp16 / {name}", speed, "(report)", None))
            save()
        if "throughput" in cases:
            prompts = tmp / "prompts.txt"
            prompts.write_text("\n".join(BATCH_PROMPTS[:batch_images]) + "\n")
            rows = _measure({
                f"batch --parallel {p}": (_batch(models.fp16, batch_steps, size, p, prompts), batch_steps)
                for p in ("1", "auto")}, rounds, tmp, log, warm_up)
            for row in rows.values():
                if row.get("wall_s"):
                    row["images_per_hour"] = round(batch_images * 3600 / row["wall_s"], 1)
                    row["images"] = batch_images
            report["cases"]["throughput"] = rows
            gain = _ratio(rows["batch --parallel auto"].get("images_per_hour"),
                          rows["batch --parallel 1"].get("images_per_hour"))
            targets.append(_target(f"batch of {batch_images} x {batch_steps} steps: images/hour, auto / sequential",
                                   gain, "(report; the default is the faster)", None))
            save()
    return report


def _earlier_report(path: Path, report: dict) -> dict:
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    same = all(earlier.get(k) == report[k] for k in ("arch", "size")) and \
        earlier.get("machine", {}).get("cpu") == report["machine"]["cpu"]
    return earlier if same else {}


def markdown(report: dict) -> str:
    info = report["machine"]
    out = [f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB; OpenVINO {info['openvino']}; "
           f"{info['date']}. {report['arch']} architecture (random weights), {report['size']}x{report['size']}, "
           f"whole processes with the compiled-model cache warm, medians of {report['rounds']} round(s).\n"]
    cols = ["config", "runs", "steps", "wall_s", "peak_rss_mb", "step_median_s", "unet_per_step_s", "decode_s",
            "unet_mb", "folder_mb", "images_per_hour"]
    for case, rows in report["cases"].items():
        present = [c for c in cols if any(r.get(c) is not None for r in rows.values())]
        out += [f"\n**{case}**\n", "| " + " | ".join(present) + " |", "|" + "---|" * len(present)]
        for row in rows.values():
            out.append("| " + " | ".join("" if row.get(c) is None else str(row[c]) for c in present) + " |")
    if report["targets"]:
        out += ["\n**targets**\n", "| what | value | target | met |", "|---|---|---|---|"]
        for t in report["targets"]:
            met = "" if t["met"] is None else ("yes" if t["met"] else "no")
            out.append(f"| {t['what']} | {t['value']} | {t['target']} | {met} |")
    return "\n".join(out) + "\n"


def update_readme(readme: Path, report_json: Path, name: str) -> None:
    """Render `report_json` (what bench-features wrote) into the README block `name`."""
    from sdcli.bench.peers import render_report, replace_block

    replace_block(readme, name, render_report(report_json, markdown))
