"""Hash the PNGs that a fixed list of `sdcli` commands writes, to show that a change of the
code (a refactoring) leaves every output byte-identical.

    python scripts/png_identity.py WORKDIR --out before.json    # on the old code
    python scripts/png_identity.py WORKDIR --out after.json     # on the new code
    python scripts/png_identity.py WORKDIR --compare before.json after.json

WORKDIR keeps the tiny random models (built and converted on the first run, with
`python -m sdcli.convert.random_model` or, on older code, `python -m sdcli.random_model`),
so both runs use the very same model files.  Every command runs at --precision f32
with fixed seeds, where sdcli's output is deterministic.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

SCHEDULERS = ("pndm", "ddim", "euler", "euler_a", "lms", "heun", "dpmpp_2m", "dpmpp_2m_karras",
              "dpmpp_sde", "dpmpp_sde_karras", "unipc", "lcm")
LONG_PROMPT = ", ".join(f"word{i} (detail:1.2) [soft]" for i in range(40))


def sdcli(*args: str, cwd: Path | None = None, stdin: str | None = None) -> None:
    result = subprocess.run([sys.executable, "-m", "sdcli", *args], cwd=cwd, input=stdin, text=True,
                            capture_output=True)
    if result.returncode != 0:
        raise SystemExit(f"sdcli {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")


def build_models(work: Path) -> dict[str, Path]:
    """Tiny models: epsilon, v-prediction, 9-channel inpainting, LCM; the first with a tiny VAE."""
    specs = {"eps": [], "vpred": ["--prediction-type", "v_prediction", "--seed", "7"],
             "inpaint9": ["--in-channels", "9", "--seed", "3"], "lcm": ["--lcm", "--seed", "5"]}
    out = {}
    for name, extra in specs.items():
        ov_dir = work / f"{name}-ov"
        out[name] = ov_dir
        if ov_dir.is_dir():
            continue
        src = work / name
        module = _builder_module()
        subprocess.run([sys.executable, "-m", module, str(src), "--tiny", *extra], check=True, capture_output=True)
        convert = ["convert", str(src), "--output", str(ov_dir), "--weight-format", "fp32", "--quiet"]
        if name == "eps":
            taesd = work / "taesd"
            subprocess.run([sys.executable, "-m", module, str(taesd), "--tiny-taesd"], check=True, capture_output=True)
            convert += ["--tiny-vae", str(taesd)]
        sdcli(*convert)
    return out


def _builder_module() -> str:
    import importlib.util

    try:
        found = importlib.util.find_spec("sdcli.convert.random_model")
    except ModuleNotFoundError:  # sdcli.convert is a module, not a package, on older code
        found = None
    return "sdcli.convert.random_model" if found else "sdcli.random_model"


def write_images(work: Path) -> tuple[Path, Path]:
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:64, 0:96].astype(np.float32)
    img = np.stack([127 + 120 * np.sin(x / 9.0), 127 + 120 * np.cos(y / 7.0), 127 + 120 * np.sin((x + y) / 13.0)],
                   axis=-1).round().astype(np.uint8)
    init = work / "init.png"
    Image.fromarray(img).save(init)
    mask = np.zeros((64, 96), np.uint8)
    mask[16:48, 24:72] = 255
    mask_path = work / "mask.png"
    Image.fromarray(mask).save(mask_path)
    return init, mask_path


def commands(models: dict[str, Path], init: Path, mask: Path) -> dict[str, list[str]]:
    """name -> generate arguments (the output file is added)."""
    eps, vpred = str(models["eps"]), str(models["vpred"])
    base = ["--prompt", "a photo of an astronaut riding a horse", "--negative-prompt", "blurry", "--steps", "6",
            "--seed", "1234", "--precision", "f32", "--quiet"]
    cmds: dict[str, list[str]] = {}
    for s in SCHEDULERS:
        cmds[f"txt2img-{s}"] = ["--model", eps, *base, "--scheduler", s, "-W", "64", "-H", "64"]
    cmds["txt2img-vpred-euler_a-96x64"] = ["--model", vpred, *base, "--scheduler", "euler_a", "-W", "96", "-H", "64"]
    cmds["txt2img-default-scheduler"] = ["--model", eps, *base]
    cmds["txt2img-numpy-rng"] = ["--model", eps, *base, "--rng", "numpy"]
    for strength in ("0.3", "0.6", "1.0"):
        cmds[f"img2img-ddim-{strength}"] = ["--model", eps, *base, "--scheduler", "ddim", "--init-image", str(init),
                                            "--strength", strength]
    cmds["img2img-vpred-dpmpp_2m-0.6"] = ["--model", vpred, *base, "--scheduler", "dpmpp_2m", "--init-image",
                                          str(init), "--strength", "0.6"]
    for blur in ("0", "4"):
        cmds[f"inpaint4-euler-blur{blur}"] = ["--model", eps, *base, "--scheduler", "euler", "--init-image", str(init),
                                              "--mask", str(mask), "--mask-blur", blur, "--strength", "0.8"]
        cmds[f"inpaint9-ddim-blur{blur}"] = ["--model", str(models["inpaint9"]), *base, "--scheduler", "ddim",
                                             "--init-image", str(init), "--mask", str(mask), "--mask-blur", blur,
                                             "--strength", "1.0"]
    cmds["clip-skip-2"] = ["--model", eps, *base, "--clip-skip", "2", "-W", "64", "-H", "64"]
    cmds["deepcache-3"] = ["--model", eps, *base, "--deepcache", "3", "-W", "64", "-H", "64"]
    cmds["vae-tiny"] = ["--model", eps, *base, "--vae", "tiny", "-W", "64", "-H", "64"]
    cmds["vae-tiny-img2img"] = ["--model", eps, *base, "--vae", "tiny", "--init-image", str(init), "--strength", "0.6"]
    cmds["long-weighted-prompt"] = ["--model", eps, *base[:1], LONG_PROMPT, *base[2:], "-W", "64", "-H", "64"]
    cmds["no-emphasis"] = ["--model", eps, *base[:1], "a (red:1.3) fox", *base[2:], "--no-emphasis", "-W", "64", "-H", "64"]
    cmds["num-images-2"] = ["--model", eps, *base, "--num-images", "2", "-W", "64", "-H", "64"]
    cmds["low-memory"] = ["--model", eps, *base, "--low-memory", "-W", "64", "-H", "64"]
    cmds["lcm-defaults"] = ["--model", str(models["lcm"]), "--prompt", "a fox", "--seed", "9", "--precision", "f32",
                            "--quiet"]
    cmds["lcm-img2img"] = ["--model", str(models["lcm"]), "--prompt", "a fox", "--seed", "9", "--precision", "f32",
                           "--init-image", str(init), "--strength", "0.6", "--quiet"]
    return cmds


def run(work: Path) -> dict[str, str]:
    work.mkdir(parents=True, exist_ok=True)
    models = build_models(work)
    init, mask = write_images(work)
    outdir = work / "out"
    if outdir.exists():
        import shutil

        shutil.rmtree(outdir)
    outdir.mkdir()
    for name, args in commands(models, init, mask).items():
        sdcli("generate", *args, "--output", str(outdir / f"{name}.png"))
    # --from-image: redo three of them with no other flag, and one with an override
    for name in ("txt2img-euler_a", "img2img-ddim-0.6", "clip-skip-2"):
        extra = ["--init-image", str(init)] if "img2img" in name else []
        sdcli("generate", "--from-image", str(outdir / f"{name}.png"), "--model",
              str(models["eps"]), *extra, "--quiet", "--output", str(outdir / f"from-{name}.png"))
    sdcli("generate", "--from-image", str(outdir / "txt2img-euler.png"), "--model", str(models["eps"]),
          "--seed", "77", "--quiet", "--output", str(outdir / "from-txt2img-euler-seed77.png"))
    # batch: a txt file, a jsonl file with per-row settings, rows one at a time and two at once
    prompts = work / "prompts.txt"
    prompts.write_text("a red fox\na (blue:1.2) bird, long tail\n# a comment\nan old lighthouse\n")
    rows = work / "rows.jsonl"
    rows.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "a cat", "seed": 5, "steps": 4, "scheduler": "euler"},
        {"prompt": "a dog", "negative_prompt": "ugly", "guidance_scale": 5, "width": 96, "height": 64},
        {"prompt": "a castle", "init_image": str(init), "strength": 0.5, "name": "castle"},
    ]) + "\n")
    common = ["--model", str(models["eps"]), "--seed", "42", "--steps", "5", "--precision", "f32", "--quiet",
              "-W", "64", "-H", "64"]
    sdcli("batch", str(prompts), "--output-dir", str(outdir / "batch-txt"), *common, "--parallel", "1")
    sdcli("batch", str(rows), "--output-dir", str(outdir / "batch-jsonl"), *common[:-4], "--parallel", "1")
    sdcli("batch", str(prompts), "--output-dir", str(outdir / "batch-tiny-deepcache"), *common, "--parallel", "1",
          "--vae", "tiny", "--deepcache", "2", "--clip-skip", "2")
    hashes = {}
    for path in sorted(outdir.rglob("*.png")):
        hashes[str(path.relative_to(outdir))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path, nargs="?")
    parser.add_argument("--out", type=Path, help="write {png: sha256} here")
    parser.add_argument("--compare", type=Path, nargs=2, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.compare:
        before, after = (json.loads(p.read_text()) for p in args.compare)
        differ = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        print(f"{len(before)} before, {len(after)} after, {len(differ)} differ")
        for name in differ:
            print(f"  {name}: {before.get(name, '-')[:12]} -> {after.get(name, '-')[:12]}")
        raise SystemExit(1 if differ else 0)
    if args.workdir is None:
        parser.error("WORKDIR is required unless --compare")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hashes = run(args.workdir)
    text = json.dumps(hashes, indent=1, sort_keys=True) + "\n"
    if args.out:
        args.out.write_text(text)
    print(f"{len(hashes)} PNGs hashed")


if __name__ == "__main__":
    main()
