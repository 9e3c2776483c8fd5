"""What the methods' commands share: a pool with gold and its cached embeddings in, summary + table files out."""

import json
import sys
from pathlib import Path
from typing import Optional


def pool_embeddings(dataset: str, data_dir, cache_dir, dtype: str = "auto", progress: bool = True):
    """Load a named dataset or pool file and its packaged-MiniLM embeddings (embedding only what the cache lacks;
    dtype is part of the cache fingerprint: auto resolves to bf16 where the CPU multiplies it fast)."""
    from embrm.datasets import load_dataset
    from embrm.embed import embed_dataset
    from embrm.embedders import make_embedder
    from embrm.errors import EmbrmError

    ds = load_dataset(dataset, data_dir)
    if not ds.has_gold:
        raise EmbrmError(f"{ds.source}: no gold scores: this command needs a pool with a gold column (--gold-col)")
    emb = embed_dataset(ds, make_embedder("st", dtype=dtype), cache_dir=cache_dir, progress=None if progress else False)
    return ds, emb.X


def write_outputs(out_dir: Optional[Path], summary: dict, frame, name: str, plot=None) -> None:
    """summary.json (with the command line), <name>.parquet and, given ``plot(path)``, gold_vs_kl.png."""
    if out_dir is None:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    summary["command"] = " ".join(["embrm", *sys.argv[1:]])
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    frame.write_parquet(out_dir / f"{name}.parquet")
    if plot is not None:
        plot(out_dir / "gold_vs_kl.png")
