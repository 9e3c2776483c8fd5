"""Named real datasets: where each lives, its checksum, how to read it; download when online, else a local dir.

The local data directory is `--data-dir`, else $EMBRM_DATA_DIR, else ~/.cache/embrm/data. A file found there is
checked against its sha256. A missing file is downloaded from $EMBRM_DATA_MIRROR (a base URL holding the same
relative paths, e.g. a lab's mirror) or, where one exists, the upstream file itself; offline, the error says where
to put it.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from embrm.data import Dataset, load_pairs, load_pool
from embrm.errors import EmbrmError


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    path: str  # relative to the data dir
    sha256: str
    kind: str  # "pool" | "pairs"
    source: str  # where the data comes from (human-readable, with licence)
    url: str | None = None  # a direct upstream download of exactly this file, when one exists
    columns: dict = field(default_factory=dict)  # loader options
    description: str = ""


REGISTRY: dict[str, DatasetInfo] = {
    info.name: info
    for info in [
        DatasetInfo(
            "alpaca-eval-bon16", "alpaca_eval_bon16/responses.parquet",
            "fbc7c367faaebcfb8ddad0649b4f4aa5d040553ef94ee5c00599beb15c6c4e2f", "pool",
            "allenai/reward-bench bon_eval/alpaca_eval_n=16 @4319b31 (AlpacaEval prompts CC BY-NC 4.0; "
            "Tulu-2-DPO-13B samples; research use only)",
            columns=dict(prompt_col="instruction", response_col="output", gold_col="gold_pref_vs_gpt35",
                         response_key="sample_idx"),
            description="805 prompts x 16 samples of one policy; gold = GPT-4-turbo win prob vs gpt-3.5 "
                        "(samples 0..10 scored)"),
        DatasetInfo(
            "alpaca-eval-models", "alpaca_eval_models/responses.parquet",
            "ce1f38be2dbaf397d83c35fbb703f955d63a9c577721282e18d29d2edc1ed4e4", "pool",
            "tatsu-lab/alpaca_eval results/*/model_outputs.json + weighted_alpaca_eval_gpt4_turbo "
            "annotations @cd543a1 (CC BY-NC 4.0; research use only)",
            columns=dict(prompt_col="instruction", response_col="output", gold_col="gold_winprob_vs_gpt4turbo",
                         response_key="model"),
            description="400 prompts x 58 models' answers; gold = GPT-4-turbo win prob vs gpt4_1106_preview; "
                        "includes reward-hacking probes (NullModel, gpt4_gamed, *_verbose)"),
        DatasetInfo(
            "hh-rlhf-harmless-test", "hh_rlhf_harmless_base_test.jsonl.gz",
            "ebfaaed21162a4de120ae85366075b34425e2a6303fac59b99555002f7016f03", "pairs",
            "anthropics/hh-rlhf harmless-base/test.jsonl.gz (MIT)",
            url="https://raw.githubusercontent.com/anthropics/hh-rlhf/master/harmless-base/test.jsonl.gz",
            columns=dict(prompt_col=None),
            description="2,312 human preference pairs (whole dialogues, split at the last Assistant turn)"),
    ]
}

# The published reward models' picks on the Best-of-16 pool (used by bon-sim beside embrm's ensembles).
PUBLISHED_PICKS = DatasetInfo(
    "alpaca-eval-bon16-published-picks", "alpaca_eval_bon16/published_rm_picks.parquet",
    "7ffeb66f395d0aec184f8a9e2282c2aaf2b565ff7db01cbb594e52a7996906e2", "table",
    "allenai/reward-bench bon_eval @4319b31: six published reward models' best-of-16 picks")


def data_dir(explicit: str | Path | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("EMBRM_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "embrm" / "data"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download(info: DatasetInfo, target: Path) -> str | None:
    """Try the mirror then the upstream URL; return None on success, else why it failed."""
    urls = []
    if mirror := os.environ.get("EMBRM_DATA_MIRROR"):
        urls.append(mirror.rstrip("/") + "/" + info.path)
    if info.url:
        urls.append(info.url)
    if not urls:
        return "no public direct download (set EMBRM_DATA_MIRROR to a mirror of the data dir)"
    reasons = []
    target.parent.mkdir(parents=True, exist_ok=True)
    for url in urls:
        tmp = target.with_name(target.name + ".part")
        try:
            with urllib.request.urlopen(url, timeout=30) as r, open(tmp, "wb") as f:
                f.write(r.read())
            if _sha256(tmp) != info.sha256:
                reasons.append(f"{url}: checksum mismatch")
                tmp.unlink()
                continue
            tmp.replace(target)
            return None
        except OSError as e:
            tmp.unlink(missing_ok=True)
            reasons.append(f"{url}: {getattr(e, 'reason', e)}")
    return "; ".join(reasons)


def fetch(info: DatasetInfo, root: str | Path | None = None) -> Path:
    """Path of the dataset's file in the data dir, downloading it when absent and possible."""
    root = data_dir(root)
    path = root / info.path
    if not path.exists():
        why = _download(info, path)
        if why is not None:
            raise EmbrmError(
                f"dataset {info.name!r} not found at {path} and not downloadable ({why}): put {info.path} under "
                f"{root} (source: {info.source}), or point --data-dir / EMBRM_DATA_DIR at a directory holding it")
    digest = _sha256(path)
    if digest != info.sha256:
        raise EmbrmError(f"{path}: checksum {digest[:12]}... does not match {info.name!r} ({info.sha256[:12]}...): "
                         f"the file is altered or truncated; delete it so it is fetched again")
    return path


def load_dataset(name_or_path: str | Path, data_dir: str | Path | None = None, **options) -> Dataset:
    """Load a named dataset (see REGISTRY) or a file (pairs if it has chosen/rejected columns, else a pool)."""
    from embrm.data import load_file

    key = str(name_or_path)
    if key in REGISTRY:
        info = REGISTRY[key]
        path = fetch(info, data_dir)
        loader = load_pool if info.kind == "pool" else load_pairs
        return loader(path, name=info.name, **info.columns)
    path = Path(key)
    if not path.exists() and not path.suffix:
        raise EmbrmError(f"unknown dataset {key!r}: use one of {', '.join(REGISTRY)} or a file path")
    return load_file(path, **options)
