"""The "imported" backend: vectors registered by `embrm import`, served from the cache; nothing is ever embedded.

    make_embedder("imported", "cache/gemma-2-2b-0123456789abcdef")   # the directory `embrm import` printed
    make_embedder("imported", "0123456789abcdef")                     # or its fingerprint (prefix) under ./cache

spec() is the import's stored spec minus its template (cache_spec adds the template back), so embed_dataset finds
every imported text warm; embed() is only reached for texts that were not imported, and says so.
"""

from __future__ import annotations

import functools
from pathlib import Path

from embrm.core import EmbrmError
from embrm.embedding._cache import FINGERPRINT_FILE, read_identity
from embrm.embedding.backends._base import EmbedBatch, Embedder

DEFAULT_ROOT = Path("cache")  # embrm.embedding.DEFAULT_CACHE_DIR (not imported: _embed imports this package)


class ImportedEmbedder(Embedder):
    backend = "imported"

    def __init__(self, model: str | None = None, dtype: str = "auto", max_length: int | None = None,
                 device: str = "auto"):
        if not model:
            raise EmbrmError("--backend imported needs --model: the cache directory `embrm import` printed")
        # the shared local-embedder options: vectors are stored as float32, were cut (or not) where they were made,
        # and no device computes anything here (so any --device is fine)
        if dtype not in ("auto", "float32"):
            raise EmbrmError(f"--dtype {dtype} does not apply to --backend imported (stored float32 vectors): drop it")
        if max_length is not None:
            raise EmbrmError("--max-length does not apply to --backend imported (the vectors were made elsewhere): "
                             "drop it")
        self.model = str(model)
        _ = self.stored  # checked now: a dataset that carries its own vectors never asks for them

    @functools.cached_property
    def path(self) -> Path:
        """The imported cache directory: `model` itself, or a directory under ./cache named or fingerprinted so."""
        given = Path(self.model).expanduser()
        if (given / FINGERPRINT_FILE).is_file():
            return given
        found = [d.parent for d in sorted(DEFAULT_ROOT.glob(f"*/{FINGERPRINT_FILE}"))
                 if d.parent.name == self.model or (len(self.model) >= 8 and _fingerprint(d.parent).startswith(self.model))]
        if len(found) != 1:
            what = "no imported cache" if not found else f"{len(found)} caches ({', '.join(map(str, found))})"
            raise EmbrmError(f"--model {self.model}: {what} matches it: pass the cache directory `embrm import` "
                             f"printed")
        return found[0]

    @functools.cached_property
    def stored(self) -> dict:
        spec, _ = read_identity(self.path)
        if spec.get("backend") != "imported":
            raise EmbrmError(f"{self.path}: holds vectors of backend {spec.get('backend')!r}, not an `embrm import`: "
                             f"use --backend {spec.get('backend')} --model {spec.get('model')}")
        return spec

    def spec(self) -> dict:
        return {k: v for k, v in self.stored.items() if k != "template"}

    @property
    def dim(self) -> int:
        return int(self.stored["dim"])

    def embed(self, texts: list[str], response_starts: list[int] | None = None) -> EmbedBatch:
        raise EmbrmError(f"{len(texts)} text(s) were never imported into {self.path}: use the dataset it was imported "
                         f"for, with --template {self.stored['template']!r} and --cache-dir {self.path.parent}")


def _fingerprint(path: Path) -> str:
    try:
        return read_identity(path)[1]
    except EmbrmError:  # a damaged cache beside the one asked for does not block the lookup
        return ""
