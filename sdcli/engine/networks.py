"""LoRAs and textual-inversion embeddings named in a prompt, A1111's way.

`<lora:NAME>`, `<lora:NAME:WEIGHT>` or `<lora:NAME:TE:UNET>` (also `te=`, `unet=`, `dyn=`)
anywhere in the prompt picks the LoRA file NAME (searched by file name, subfolders
included) and is removed from the text before it is encoded; the PNG keeps the prompt as
written.  An embedding is used where its file name appears in a prompt or negative prompt
(matched on the tokens, as A1111 does).

Folders: --lora-dir, else $SDCLI_LORA_DIR, else models/Lora; --embeddings-dir, else
$SDCLI_EMBEDDINGS_DIR, else models/embeddings (A1111's names).  A default folder that does
not exist is no error; one you named is.

The hashes written to the PNG are A1111's: `Lora hashes` the first 12 hex digits of the
sha256 of a .safetensors file's data after its header (kohya's "addnet" hash; a file's own
`sshs_model_hash` metadata when it has one; of the whole file for other types), `TI hashes`
those of the sha256 of the whole file.
"""
from __future__ import annotations

import hashlib
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from sdcli.engine.lora import COMPONENTS, LoraFile, LoraUse, check_matches, ir_component, weight_patch
from sdcli.model.embedding_file import SUFFIXES as EMBEDDING_SUFFIXES
from sdcli.model.embedding_file import Embedding, read_embedding
from sdcli.model.folder import ModelFolder
from sdcli.model.tensor_files import PICKLE_SUFFIXES, safetensors_header
from sdcli.runtime.lora import WeightPatch
from sdcli.util.errors import UsageError
from sdcli.util.lru import LRUCache

LORA_ENV, EMBEDDINGS_ENV = "SDCLI_LORA_DIR", "SDCLI_EMBEDDINGS_DIR"
DEFAULT_LORA_DIR, DEFAULT_EMBEDDINGS_DIR = Path("models/Lora"), Path("models/embeddings")
LORA_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
TAG = re.compile(r"<(\w+):([^>]+)>")  # A1111's extra-network syntax
TIDY_TAG = re.compile(r"\s*" + TAG.pattern)  # with the whitespace before it (parse_tags' tidy)
LORA_TYPES = ("lora", "lyco")  # <lyco:...>: the LyCORIS extension's name for the same
DENOISERS = ("unet", "transformer")  # IRs whose LoRAs do not change an encoded prompt


@dataclass(frozen=True)
class LoraTag:
    name: str
    te: float = 1.0
    unet: float = 1.0
    dyn: int | None = None


def _number(text: str, what: str, tag: str, kind=float):
    try:
        return kind(text)
    except ValueError:
        raise UsageError(f"{tag}: the {what} must be a number, got {text!r}") from None


def parse_tags(prompt: str, tidy: bool = False) -> tuple[str, list[LoraTag], list[str]]:
    """(the prompt without its `<type:...>` tags, the LoRA tags, notes on tags of other types).
    A1111 leaves the whitespace around a tag, which a CLIP tokenizer ignores; `tidy` (for text
    encoders whose tokens include whitespace: Qwen3's) removes a tag with the whitespace before
    it, and with the whitespace after it where it begins the prompt, so that `a cat <lora:x:1>`
    is encoded as `a cat`."""
    tags: list[LoraTag] = []
    notes: list[str] = []

    def found(match: re.Match) -> str:
        kind, text = match.group(1), match.group(0).strip()
        if kind.lower() not in LORA_TYPES:
            notes.append(f"{text}: sdcli reads <lora:...> tags only; this one is left out of the prompt and ignored")
            return ""
        items = match.group(2).split(":")
        named = dict(item.split("=", 1) for item in items[1:] if "=" in item)
        positional = [items[0], *(item for item in items[1:] if "=" not in item)]
        te = _number(positional[1], "weight", text) if len(positional) > 1 else 1.0
        te = _number(named["te"], "te weight", text) if "te" in named else te
        unet = _number(positional[2], "UNet weight", text) if len(positional) > 2 else te
        unet = _number(named["unet"], "UNet weight", text) if "unet" in named else unet
        dyn = _number(positional[3], "dyn", text, int) if len(positional) > 3 else None
        dyn = _number(named["dyn"], "dyn", text, int) if "dyn" in named else dyn
        tags.append(LoraTag(positional[0].strip(), te, unet, dyn))
        return ""

    if not tidy:
        return TAG.sub(found, prompt), tags, notes
    text = TIDY_TAG.sub(found, prompt)
    return (text.lstrip() if TAG.match(prompt.lstrip()) else text), tags, notes


@dataclass(frozen=True)
class NetworkFolders:
    """Where LoRAs and embeddings are looked for (None: the environment, else A1111's default)."""

    lora_dir: Path | None = None
    embeddings_dir: Path | None = None
    allow_pickle: bool = False

    @staticmethod
    def _folder(given: Path | None, env: str, default: Path, flag: str) -> Path | None:
        if given is None and os.environ.get(env):
            given, flag = Path(os.environ[env]), f"${env}"
        if given is None:
            return default if default.is_dir() else None
        given = Path(given).expanduser()
        if not given.is_dir():
            raise UsageError(f"{flag}: folder not found: {given}")
        return given

    def lora_folder(self) -> Path | None:
        return self._folder(self.lora_dir, LORA_ENV, DEFAULT_LORA_DIR, "--lora-dir")

    def embeddings_folder(self) -> Path | None:
        return self._folder(self.embeddings_dir, EMBEDDINGS_ENV, DEFAULT_EMBEDDINGS_DIR, "--embeddings-dir")

    def check(self) -> None:
        """UsageError for a folder named (flag or environment) that does not exist."""
        self.lora_folder()
        self.embeddings_folder()

    def searched(self, kind: str) -> str:
        folder = self.lora_folder() if kind == "lora" else self.embeddings_folder()
        if folder is not None:
            return str(folder)
        default = DEFAULT_LORA_DIR if kind == "lora" else DEFAULT_EMBEDDINGS_DIR
        flag, env = ("--lora-dir", LORA_ENV) if kind == "lora" else ("--embeddings-dir", EMBEDDINGS_ENV)
        return f"{default} (which does not exist; pass {flag} or set ${env})"


def _files(folder: Path | None, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """{name: file} under `folder`, by file name without extension and by path relative to
    `folder` (first found wins; sorted, so the same files give the same answer)."""
    found: dict[str, Path] = {}
    if folder is None:
        return found
    for root, dirs, names in os.walk(folder, followlinks=True):
        dirs.sort()
        for name in sorted(names):
            path = Path(root) / name
            if path.suffix.lower() in suffixes:
                found.setdefault(path.stem, path)
                found.setdefault(path.relative_to(folder).with_suffix("").as_posix(), path)
    return found


def lora_hash(path: Path, metadata: dict[str, str]) -> str:
    """A1111's short hash of a LoRA file (see the module's docstring)."""
    if metadata.get("sshs_model_hash"):
        return metadata["sshs_model_hash"][:12]
    offset = safetensors_header(path)[1] if path.suffix.lower() == ".safetensors" else 0
    return file_sha256(path, offset)[:12]


def file_sha256(path: Path, offset: int = 0) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_name(name: str) -> str:
    """A name as A1111 writes it in `Lora hashes` / `TI hashes` (no ':' or ',')."""
    return name.replace(":", "").replace(",", "")


@dataclass
class ActiveNetworks:
    """What a request's prompt asked for, resolved: set on the request by Networks.activate."""

    loras: tuple[LoraUse, ...] = ()
    patches: dict[str, WeightPatch] = field(default_factory=dict)  # by the IR they change ("unet", "transformer", ...)
    embeddings: tuple[Embedding, ...] = ()
    embedding_hashes: dict[str, str] = field(default_factory=dict)
    lora_hashes: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()

    def patch(self, component: str) -> WeightPatch | None:
        return self.patches.get(component)

    def text_key(self) -> tuple:
        """What an encoded prompt depends on besides the text: the text encoders' LoRAs and the
        embeddings; and the LoRA files, whose notes come with an encoding."""
        return (tuple((c, p.tag) for c, p in sorted(self.patches.items()) if c not in DENOISERS), self.lora_hashes,
                tuple((e.name, self.embedding_hashes.get(e.name)) for e in self.embeddings))


class Networks:
    """The LoRAs and embeddings one engine's model takes from prompts (files read once, kept
    while they are unchanged)."""

    def __init__(self, folders: NetworkFolders, folder: ModelFolder, family):
        """`family`: the folder's ModelFamily (where a LoRA's layers are in its IRs)."""
        self.folders = folders
        self.folder = folder
        self.family = family
        self._files = LRUCache(8)  # (kind, path, size, mtime) -> what was read from the file
        self._lock = threading.Lock()

    def _cached(self, kind: str, path: Path, read):
        st = path.stat()
        key = (kind, str(path.resolve()), st.st_size, st.st_mtime_ns)
        with self._lock:
            return self._files.get_or(key, read)

    def _lora(self, tag: LoraTag, files: dict[str, Path]) -> tuple[LoraUse, dict, str | None, str]:
        path = files.get(tag.name) or next((p for n, p in files.items() if n.lower() == tag.name.lower()), None)
        if path is None:
            raise UsageError(f"LoRA {tag.name!r} not found in {self.folders.searched('lora')} (searched by file "
                             "name, subfolders included)")

        def read():
            lora = LoraFile.read(path, self.folders.allow_pickle)
            matched, note = check_matches(lora, self.folder, self.family)
            return lora, matched, note, lora_hash(path, lora.metadata)

        lora, matched, note, short = self._cached("lora", path, read)
        return LoraUse(tag.name, lora, tag.te, tag.unet, tag.dyn), matched, note, short

    def _embeddings(self, texts: list[str]) -> tuple[tuple[Embedding, ...], dict[str, str]]:
        """The embeddings whose names appear in `texts` as words (the tokens then decide where they
        are used), read: a pickle whose name is only part of a word is not even opened."""
        text = " ".join(texts)
        found, hashes = [], {}
        candidates = _files(self.folders.embeddings_folder(), EMBEDDING_SUFFIXES) if text.strip() else {}
        for name, path in candidates.items():
            if "/" in name or not re.search(rf"(?<!\w){re.escape(name)}(?!\w)", text, re.IGNORECASE):
                continue
            embedding, short = self._cached("embedding", path, lambda path=path: (
                read_embedding(path, self.folders.allow_pickle), file_sha256(path)[:12]))
            found.append(embedding)
            hashes[embedding.name] = short
        return tuple(found), hashes

    def activate(self, request):
        """`request` with its prompt's LoRA tags removed and `networks` set to what they and its
        embeddings resolve to; UsageError for a LoRA not found or not fitting this model."""
        if request.networks is not None:
            return request
        prompt, tags, notes = parse_tags(request.prompt, self.family.whitespace_tokens)
        files = _files(self.folders.lora_folder(), LORA_SUFFIXES) if tags else {}
        uses, matches, hashes = [], [], []
        for tag in tags:
            use, matched, note, short = self._lora(tag, files)
            uses.append(use)
            matches.append(matched)
            hashes.append((hash_name(tag.name), short))
            if note:
                notes.append(note)
        patches = {ir_component(self.folder, c): p for c in COMPONENTS
                   if (p := weight_patch(uses, matches, c)) is not None}
        embeddings, embedding_hashes = self._embeddings([prompt, request.negative_prompt])
        active = ActiveNetworks(tuple(uses), patches, embeddings, embedding_hashes, tuple(hashes), tuple(notes))
        return request.replace(prompt=prompt, networks=active)
