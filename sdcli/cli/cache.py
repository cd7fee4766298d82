"""`sdcli cache list` and `sdcli cache prune`: the compiled-model cache ($SDCLI_CACHE_DIR)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from sdcli.cli.app import OneLineUsageErrors, app, finite, use_cache_max_gb, user_errors
from sdcli.util.errors import UsageError

cache_app = typer.Typer(cls=OneLineUsageErrors, no_args_is_help=True, rich_markup_mode=None,
                        help="The compiled-model cache: list its blobs, or remove some.")
app.add_typer(cache_app, name="cache")


def _cache_dir() -> Path:
    from sdcli.runtime.core import default_cache_dir

    return default_cache_dir()


def _human(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size} B"


@cache_app.command("list")
def list_blobs(
    as_json: bool = typer.Option(False, "--json", help="One JSON object: the folder, the bound, and each blob."),
):
    """The cached compiled models, least recently used first: model folder, component, size
    key (the input shapes), bytes, last use."""
    with user_errors("interrupted"):
        from sdcli.runtime.blob_cache import entries, max_bytes

        cache = _cache_dir()
        found = entries(cache) if cache.is_dir() else []
        total = sum(e.bytes for e in found)
        if as_json:
            print(json.dumps({"cache_dir": str(cache), "max_bytes": max_bytes(cache), "bytes": total,
                              "blobs": [e.as_json() for e in found]}, indent=1))
            return
        print(f"{cache}: {len(found)} blobs, {_human(total)} of {_human(max_bytes(cache))}")
        if not found:
            return
        rows = [("MODEL", "COMPONENT", "SIZE KEY", "BYTES", "LAST USE")]
        for e in found:
            row = e.as_json()
            rows.append((row["model"] or "?", row["component"] or e.path.name, row["size_key"] or "?", str(e.bytes),
                         time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_use))))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for r in rows:
            print("  ".join([*(r[i].ljust(widths[i]) if i != 3 else r[i].rjust(widths[i]) for i in range(4)), r[4]]))


@cache_app.command("prune")
def prune(
    remove_all: bool = typer.Option(False, "--all", help="Remove every blob (and the marks of sizes compiled once)."),
    model: Optional[Path] = typer.Option(None, "--model", help="Remove the blobs of this converted model folder."),
    older_than: Optional[float] = typer.Option(None, "--older-than", min=0.0, callback=finite, metavar="DAYS", help="Remove the blobs last used more than DAYS ago."),
    cache_max_gb: Optional[float] = typer.Option(None, "--cache-max-gb", min=0.0, callback=finite, metavar="GB", help="Without --all, --model or --older-than: the bound to prune down to [default: $SDCLI_CACHE_MAX_GB, else the default bound]."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be removed; remove nothing."),
):
    """Remove blobs: all, a model's, those unused for DAYS, or (with none of these) the least
    recently used beyond the bound.  A blob another process is using is kept."""
    with user_errors("interrupted"):
        from sdcli.runtime import blob_cache

        if sum((remove_all, model is not None, older_than is not None)) > 1:
            raise UsageError("give one of --all, --model and --older-than")
        use_cache_max_gb(cache_max_gb)
        cache = _cache_dir()
        found = blob_cache.entries(cache) if cache.is_dir() else []
        if model is not None:
            folder = str(model.expanduser().resolve())
            chosen = [e for e in found if e.model == folder]
            if not chosen:
                raise UsageError(f"--model {model}: no blob in {cache} belongs to it (see 'sdcli cache list')")
        elif older_than is not None:
            chosen = [e for e in found if e.last_use < time.time() - older_than * 86400]
        elif remove_all:
            chosen = found
        else:
            limit, total, chosen = blob_cache.max_bytes(cache), sum(e.bytes for e in found), []
            for e in found:
                if total <= limit:
                    break
                chosen.append(e)
                total -= e.bytes
        removed = [e for e in chosen if dry_run or blob_cache.remove_blob(e.path)]
        kept = len(chosen) - len(removed)
        if not dry_run and cache.is_dir():
            blob_cache.remove_orphan_sidecars(cache)
            if remove_all:
                for mark in cache.glob("*.blob.seen"):
                    mark.unlink(missing_ok=True)
        verb = "would remove" if dry_run else "removed"
        for e in removed:
            print(f"{verb} {e.path.name} ({e.model or '?'}, {(e.meta or {}).get('component', '?')}, {e.bytes} bytes)")
        print(f"{verb} {len(removed)} blobs, {sum(e.bytes for e in removed)} bytes freed"
              + (f"; kept {kept} in use by another process" if kept else ""))
