"""embrm: embed (prompt, response) texts once, then do reward-model research on a CPU.

Python API (the CLI is a thin layer over it):
    load_dataset / load_pairs / load_pool   -> Dataset (responses table [+ human pairs])
    embed_dataset                           -> (n, d) float32 matrix aligned with dataset.responses
"""

__version__ = "0.1.0"
