"""Preference labels: prompt splits, simulated annotators over gold scores, and ids -> row indices.

    train_ids, test_ids = split_prompts(responses["prompt_id"], test_size=0.2, seed=0)
    pairs = simulate_pairs(responses, 10_000, beta=1.0, prompt_ids=train_ids, seed=0)   # a polars DataFrame
    idx = pair_indices(pairs, responses)                                                # (m, 2) int64 rows

Simulated annotators (all seeded, all vectorised):
    beta=b      Bradley-Terry sampling: P(a preferred to b) = sigmoid(b * (g_a - g_b) / s), s = population std
                (ddof=0) of gold over the scored responses that can enter a pair (Sun et al.; beta=10 gives < 5 %
                label errors, beta=0.1 ~40 %).
    flip=f      the better-gold response is chosen, then the label is flipped with probability f (Coste et al.).
    neither     noiseless: the better-gold response is chosen.
Pair drawing: within_prompt=True draws a prompt uniformly among prompts with >= 2 eligible responses, then two
distinct responses uniformly within it (pairs_per_prompt=k: Sun et al.'s annotator, ceil(n_pairs / k) random
prompts with k pairs each); within_prompt=False draws two distinct responses uniformly from all
eligible responses (Sun et al.'s default), and `prompt_id` is then the CHOSEN response's prompt. Unscored (null
gold) responses never enter. Pairs are drawn with replacement (the same pair can be annotated twice).
Ties in gold: ties="skip" (default) redraws tied pairs; ties="random" keeps them with a fair coin as the label
and label_correct = null.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from embrm.core import EmbrmError

MIN_PAIRS_FOR_SPLIT = 20


# ----------------------------------------------------------------------------- splits

def split_prompts(prompt_ids, test_size: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split the distinct prompt ids into (train_ids, test_ids), disjoint, each sorted, as str arrays.
    The test side gets round(test_size * n_prompts) prompts; a size that leaves either side empty is refused."""
    if not 0 < test_size < 1:
        raise EmbrmError(f"test_size must be between 0 and 1 (exclusive), got {test_size}")
    ids = np.asarray(pl.Series(prompt_ids).cast(pl.Utf8).drop_nulls().unique().sort().to_numpy()).astype(str)
    if len(ids) < 2:
        raise EmbrmError(f"only {len(ids)} distinct prompt(s): a prompt split needs at least 2 prompts")
    n_test = int(round(test_size * len(ids)))
    if not 1 <= n_test <= len(ids) - 1:  # a test (or train) side of no prompt: the size says nothing of the split
        side = "test" if n_test < 1 else "training"
        raise EmbrmError(f"test_size {test_size:g} of {len(ids)} prompts leaves the {side} side empty: use a test_size "
                         f"between {0.5 / len(ids):.3g} and {1 - 0.5 / len(ids):.3g}", field="test_size")
    perm = np.random.default_rng(seed).permutation(len(ids))
    return np.sort(ids[perm[n_test:]]), np.sort(ids[perm[:n_test]])


def split_pairs(n_pairs: int, val_fraction: float = 0.2, *, seed: int = 0, prompt_ids=None,
                where: str = "the training prompts") -> tuple[np.ndarray, np.ndarray]:
    """Hold out about val_fraction of n_pairs pairs: (train_idx, val_idx) int64 position arrays, sorted.
    With prompt_ids (one per pair) whole prompts go to one side (round(val_fraction * n_prompts) prompts).
    val_fraction = 0 gives all pairs to train."""
    if not 0 <= val_fraction < 1:
        raise EmbrmError(f"val_fraction must be in [0, 1), got {val_fraction}")
    allpos = np.arange(n_pairs, dtype=np.int64)
    if val_fraction == 0:
        return allpos, np.zeros(0, np.int64)
    if n_pairs < MIN_PAIRS_FOR_SPLIT:
        pct = int(round(100 * (1 - val_fraction)))
        raise EmbrmError(f"only {n_pairs} labelled pairs on {where}: need at least {MIN_PAIRS_FOR_SPLIT} for an "
                         f"{pct}/{100 - pct} split (label more pairs, or set val_fraction=0)")
    rng = np.random.default_rng(seed)
    if prompt_ids is None:
        perm = rng.permutation(n_pairs)
        n_val = max(int(round(val_fraction * n_pairs)), 1)
        return np.sort(perm[n_val:]), np.sort(perm[:n_val])
    uniq, inv = np.unique(np.asarray(prompt_ids).astype(str), return_inverse=True)
    if len(uniq) < 2:
        raise EmbrmError(f"all {n_pairs} pairs on {where} come from one prompt: a split by prompt needs at least "
                         f"2 prompts (or set val_fraction=0)")
    n_val = min(max(int(round(val_fraction * len(uniq))), 1), len(uniq) - 1)
    is_val = np.zeros(len(uniq), bool)
    is_val[rng.permutation(len(uniq))[:n_val]] = True
    v = is_val[inv]
    return allpos[~v], allpos[v]


# ----------------------------------------------------------------------------- simulated annotators

def _scored(responses: pl.DataFrame, prompt_ids, name: str) -> pl.DataFrame:
    missing = [c for c in ("prompt_id", "response_id", "gold") if c not in responses.columns]
    if missing:
        raise EmbrmError(f"responses table of {name} lacks column(s) {', '.join(missing)}: load it with "
                         f"embrm.data._dataset (simulated labels need a gold column, --gold-col)")
    if "excluded" in responses.columns:  # a dataset's excluded responses (e.g. hacking probes) never label
        responses = responses.filter(~pl.col("excluded"))
    df = responses.select(pl.col("prompt_id").cast(pl.Utf8), pl.col("response_id").cast(pl.Utf8),
                          pl.col("gold").cast(pl.Float64))
    if prompt_ids is not None:
        keep = pl.Series(np.asarray(prompt_ids).astype(str)).cast(pl.Utf8)
        df = df.filter(pl.col("prompt_id").is_in(keep.implode()))
        if len(df) == 0:
            raise EmbrmError(f"none of the {len(keep)} given prompt ids occurs in {name}: pass ids from its "
                             f"prompt_id column")
    if df["gold"].is_null().all() or not df["gold"].fill_nan(None).is_not_null().any():
        raise EmbrmError(f"all gold scores are null in {name}: simulated labels need a gold column (--gold-col)")
    return df.filter(pl.col("gold").is_not_null() & pl.col("gold").is_finite())


def simulate_pairs(responses: pl.DataFrame, n_pairs: int, *, beta: float | None = None, flip: float | None = None,
                   within_prompt: bool = True, seed: int = 0, prompt_ids=None, ties: str = "skip",
                   name: str = "the responses table", pairs_per_prompt: int | None = None) -> pl.DataFrame:
    """Draw n_pairs labelled pairs from the scored responses (see the module doc for the annotator models).

    Returns a polars DataFrame: prompt_id, chosen_id, rejected_id, gold_chosen, gold_rejected, label_correct
    (True where the chosen response has the higher gold; null for ties kept with ties="random")."""
    from scipy.special import expit

    if beta is not None and flip is not None:
        raise EmbrmError("pass either beta (Bradley-Terry annotator) or flip (flip-rate annotator), not both")
    if beta is not None and not (np.isfinite(beta) and beta >= 0):
        raise EmbrmError(f"beta must be a finite number >= 0, got {beta}")
    if flip is not None and not 0 <= flip <= 1:
        raise EmbrmError(f"flip must be a probability in [0, 1], got {flip}")
    if ties not in ("skip", "random"):
        raise EmbrmError(f"ties must be 'skip' or 'random', got {ties!r}")
    if int(n_pairs) != n_pairs or n_pairs < 1:
        raise EmbrmError(f"n_pairs must be a positive integer, got {n_pairs}")
    n_pairs = int(n_pairs)
    df = _scored(responses, prompt_ids, name)
    rng = np.random.default_rng(seed)

    if within_prompt:
        df = df.sort("prompt_id", maintain_order=True)
        sizes = df.group_by("prompt_id", maintain_order=True).len()
        eligible = sizes.filter(pl.col("len") >= 2)
        if len(eligible) == 0:
            raise EmbrmError(f"no prompt in {name} has 2 scored responses: within-prompt pairs need at least 2 "
                             f"per prompt (or use within_prompt=False)")
        df = df.filter(pl.col("prompt_id").is_in(eligible["prompt_id"].implode()))
        counts = eligible["len"].to_numpy().astype(np.int64)
        starts = np.cumsum(counts) - counts
        chosen_prompts = _prompt_draw(len(counts), n_pairs, pairs_per_prompt, rng, name)
    elif pairs_per_prompt is not None:
        raise EmbrmError("pairs_per_prompt draws pairs within prompts: use within_prompt=True")
    elif len(df) < 2:
        raise EmbrmError(f"only {len(df)} scored response in {name}: pairs need at least 2")
    gold = df["gold"].to_numpy()
    s = float(np.std(gold))
    if s == 0:
        raise EmbrmError(f"all {len(gold)} scored responses in {name} have the same gold score: no preference "
                         f"can be simulated")

    a_all, b_all, kept = [], [], 0
    for _ in range(100):  # redraw rounds for tied pairs; each round is vectorised
        want = n_pairs - kept
        m = int(want * 1.25) + 16
        if within_prompt:
            p = chosen_prompts(m, first=not a_all)
            i = (rng.random(m) * counts[p]).astype(np.int64)
            j = (rng.random(m) * (counts[p] - 1)).astype(np.int64)
        else:
            p = None
            i = rng.integers(0, len(gold), m)
            j = rng.integers(0, len(gold) - 1, m)
        j = j + (j >= i)
        if within_prompt:
            i, j = i + starts[p], j + starts[p]
        if ties == "skip":
            ok = gold[i] != gold[j]
            i, j = i[ok], j[ok]
        i, j = i[:want], j[:want]
        a_all.append(i)
        b_all.append(j)
        kept += len(i)
        if kept >= n_pairs:
            break
    else:
        raise EmbrmError(f"could not draw {n_pairs} untied pairs from {name}: almost all candidate pairs tie in "
                         f"gold (use ties='random')")
    a, b = np.concatenate(a_all), np.concatenate(b_all)
    diff = gold[a] - gold[b]
    better_a = diff > 0
    tie = diff == 0
    u = rng.random(n_pairs)
    if beta is not None:
        a_wins = u < expit(beta * diff / s)
    else:
        a_wins = np.where(tie, u < 0.5, better_a)
        if flip is not None:
            a_wins = a_wins ^ (rng.random(n_pairs) < flip)
    chosen, rejected = np.where(a_wins, a, b), np.where(a_wins, b, a)
    correct = pl.Series("label_correct", gold[chosen] > gold[rejected])
    if tie.any():
        correct = correct.set(pl.Series(tie), None)
    return pl.DataFrame({
        "prompt_id": df["prompt_id"].gather(chosen),
        "chosen_id": df["response_id"].gather(chosen),
        "rejected_id": df["response_id"].gather(rejected),
        "gold_chosen": gold[chosen],
        "gold_rejected": gold[rejected],
        "label_correct": correct,
    })


def _prompt_draw(n_prompts: int, n_pairs: int, pairs_per_prompt: int | None, rng, name: str):
    """Which prompt each drawn pair comes from: uniform over prompts, or (Sun et al.'s annotator) ceil(n_pairs /
    pairs_per_prompt) distinct random prompts with pairs_per_prompt pairs each (tied pairs are redrawn among them)."""
    if pairs_per_prompt is None:
        return lambda m, first: rng.integers(0, n_prompts, m)
    needed = -(-n_pairs // int(pairs_per_prompt))
    if needed > n_prompts:
        raise EmbrmError(f"{n_pairs} pairs at {pairs_per_prompt} per prompt need {needed} prompts but {name} has "
                         f"{n_prompts} with 2 scored responses: lower n_pairs or raise pairs_per_prompt")
    sel = rng.permutation(n_prompts)[:needed]

    def draw(m: int, first: bool) -> np.ndarray:
        extra = sel[rng.integers(0, needed, m)]
        if not first:
            return extra
        exact = np.repeat(sel, pairs_per_prompt)[:n_pairs]
        return np.concatenate([exact, extra[:max(m - len(exact), 0)]])
    return draw


def label_given_pairs(pairs: np.ndarray, gold: np.ndarray, u: np.ndarray, *, beta: float | None = None,
                      flip: float | None = None, scale: float = 1.0) -> np.ndarray:
    """The simulated annotator on GIVEN pairs of rows (m, 2), oriented preferred first, from one uniform draw u (m,)
    per pair: a wins iff u < P(a wins), P = sigmoid(beta (g_a - g_b) / scale) (Bradley-Terry; scale: the gold's
    std), or 1 - flip / flip / 0.5 when a is better / worse / tied (flip rate; flip wins when both are given), or
    1 / 0 / 0.5 (neither: noiseless). simulate_pairs' annotators with a single draw per pair, so that a pair's label
    never depends on who asks (active labelling's common random numbers)."""
    from scipy.special import expit

    diff = gold[pairs[:, 0]] - gold[pairs[:, 1]]
    if flip is not None:
        p = np.where(diff > 0, 1.0 - flip, np.where(diff < 0, flip, 0.5))
    elif beta is not None:
        p = expit(beta * diff / scale)
    else:
        p = np.where(diff > 0, 1.0, np.where(diff < 0, 0.0, 0.5))
    return np.where((u < p)[:, None], pairs, pairs[:, ::-1])


# ----------------------------------------------------------------------------- ids -> rows

def pair_indices(pairs: pl.DataFrame, responses: pl.DataFrame, name: str = "pairs") -> np.ndarray:
    """Map a pairs table (chosen_id, rejected_id: response ids) to (m, 2) int64 row indices into `responses`
    (and so into its aligned embedding matrix). Works for human and simulated pairs alike."""
    for col in ("chosen_id", "rejected_id"):
        if col not in pairs.columns:
            raise EmbrmError(f"{name} table lacks column {col!r}: a pairs table needs prompt_id, chosen_id, "
                             f"rejected_id (response ids)")
    if "response_id" not in responses.columns:
        raise EmbrmError("responses table lacks column 'response_id': load it with embrm.data._dataset")
    lookup = responses.select(pl.col("response_id").cast(pl.Utf8)).with_row_index("row")
    if lookup["response_id"].is_duplicated().any():
        dup = lookup.filter(pl.col("response_id").is_duplicated())["response_id"][0]
        raise EmbrmError(f"response_id {dup!r} occurs more than once in the responses table: ids must be unique")
    out = []
    for col in ("chosen_id", "rejected_id"):
        ids = pairs.select(pl.col(col).cast(pl.Utf8).alias("response_id")).with_row_index("pair")
        joined = ids.join(lookup, on="response_id", how="left").sort("pair")
        missing = joined["row"].is_null()
        if missing.any():
            k = int(missing.arg_true()[0])
            raise EmbrmError(f"{name} row {k}: {col} {joined['response_id'][k]!r} is not in the responses table "
                             f"({int(missing.sum())} unknown ids): pairs and responses come from different datasets")
        out.append(joined["row"].to_numpy().astype(np.int64))
    return np.stack(out, axis=1) if out[0].size else np.zeros((0, 2), np.int64)
