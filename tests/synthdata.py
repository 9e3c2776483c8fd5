"""Synthetic data with a known gold, shared by several test modules: preference pairs over a linear gold, and a
small pool file with a warm cache."""

import numpy as np
import polars as pl

from embrm.data._registry import load_dataset
from embrm.embedding._cache import EmbeddingCache, text_keys
from embrm.embedding._embed import DEFAULT_TEMPLATE, cache_spec, render
from embrm.embedding.backends import make_embedder


def synthetic_pairs(n=1000, d=16, n_pairs=2000, seed=0, prompt_size=10):
    """(X (n, d) float32, noiseless pairs (m, 2) preferred first, per-pair prompt ids of uneven group sizes)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    gold = X @ rng.standard_normal(d)
    a, b = rng.integers(0, n, n_pairs), rng.integers(0, n, n_pairs)
    a, b = a[a != b], b[a != b]
    pairs = np.where((gold[a] > gold[b])[:, None], np.stack([a, b], 1), np.stack([b, a], 1)).astype(np.int64)
    return X, pairs, (np.minimum(a, b) // prompt_size).astype(str)


def pool_file_with_cache(tmp_path):
    """A 12-prompt x 6-response Parquet pool, and a cache dir already holding (synthetic) vectors for its texts
    under the default embedder's fingerprint, so the CLI takes the warm path (no model load)."""
    rng = np.random.default_rng(0)
    rows = [{"prompt_id": f"q{p}", "prompt": f"Question {p}: how do I cook dish number {p}?",
             "response": "Step. " * (1 + r) + f"Use ingredient {r}.", "gold": float(r + rng.normal())}
            for p in range(12) for r in range(6)]
    path = tmp_path / "pool.parquet"
    pl.DataFrame(rows).write_parquet(path)
    ds = load_dataset(path)
    keys = text_keys(render(ds.responses)[0])
    X = rng.standard_normal((len(keys), 384)).astype(np.float32)
    X[:, 0] += ds.responses["gold"].to_numpy()  # a learnable direction
    EmbeddingCache(tmp_path / "cache", cache_spec(make_embedder("st"), DEFAULT_TEMPLATE)).write_part(keys, X)
    return path, tmp_path / "cache"


def tiny_llama(out, corpus: list[str], vocab_size: int, max_positions: int):
    """A 2-layer Llama and a byte-level BPE tokenizer trained on `corpus` (no special tokens added; `<eos>` and
    `<pad>` defined), saved to `out` like a hub checkpoint: the offline causal LM of the hf backend's tests."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<pad>")
    tok.save_pretrained(out)
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=64, vocab_size=tk.get_vocab_size(), max_position_embeddings=max_positions,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaModel(config).save_pretrained(out)
    return out
