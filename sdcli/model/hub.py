"""Models from the Hugging Face Hub: pre-converted OpenVINO folders (optimum-cli's
layout) downloaded into the Hugging Face cache; no torch needed."""
from __future__ import annotations

import os
from pathlib import Path

from sdcli.util.errors import UsageError

# Used when no model is given and none is found locally.  Converted by optimum-cli from
# stable-diffusion-v1-5 with int8 weights; CreativeML OpenRAIL-M licence (use, share and
# modify, with the use restrictions listed in the licence).
DEFAULT_REPO = "OpenVINO/stable-diffusion-v1-5-int8-ov"

IR_FILES = [
    "model_index.json",
    "scheduler/*",
    "tokenizer/*",
    "text_encoder/*",
    "unet/*",
    "transformer/*",
    "vae_decoder/*",
    "vae_encoder/*",
]


def looks_like_repo_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~")) and not Path(text).exists()


def download(repo_id: str, quiet: bool = False) -> Path:
    """The local folder of `repo_id` (downloaded once, then from the cache; honours
    HF_HOME, HF_HUB_OFFLINE and HF_TOKEN)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    if quiet:
        disable_progress_bars()
    try:
        return Path(snapshot_download(repo_id, allow_patterns=IR_FILES))
    except LocalEntryNotFoundError:
        raise UsageError(
            f"cannot download {repo_id}: offline (HF_HUB_OFFLINE) or no network, and it is not in the Hugging Face "
            "cache; convert a model with `sdcli convert` and pass --model DIR"
        ) from None
    except (HfHubHTTPError, ValueError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"cannot download {repo_id}: {first}") from None
    finally:
        if quiet:
            enable_progress_bars()


def resolve_model(model: str | None, quiet: bool = False) -> Path:
    """--model, else $SDCLI_MODEL, else the only model under models/, else DEFAULT_REPO.
    A value that is not a folder but looks like `owner/name` is a Hub repo."""
    given = model or os.environ.get("SDCLI_MODEL")
    if given:
        return download(given, quiet) if looks_like_repo_id(given) else Path(given)
    models = Path("models")
    found = sorted(p.parent for p in models.glob("*/model_index.json")) if models.is_dir() else []
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise UsageError(f"several models under models/ ({', '.join(p.name for p in found)}): pick one with --model")
    if not quiet:
        print(f"sdcli: no --model given and none under models/: using {DEFAULT_REPO}", flush=True,
              file=__import__("sys").stderr)
    return download(DEFAULT_REPO, quiet)
