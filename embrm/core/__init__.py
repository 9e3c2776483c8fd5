"""Internal plumbing every package shares: one-line user errors, atomic files, CPU facts and the thread policy,
progress lines, value validation, text formatting and embedding rows read from disk in blocks. It imports
nothing else of embrm.
"""

from embrm.core._checks import (
    MAX_NESTING,
    NAME,
    RANDOM_STATE,
    SEED,
    Integer,
    Name,
    Number,
    OneOf,
    Sizes,
    available_memory,
    check_choice,
    check_embeddings,
    check_fitted,
    check_group_ids,
    check_name,
    check_nesting,
    check_out,
    check_pairs,
    check_params,
    check_size,
    check_value,
    is_int,
    shown,
)
from embrm.core._errors import EmbrmError
from embrm.core._files import (
    NO_SPACE,
    STATE_ENV,
    exclusive,
    file_stem,
    staged,
    stale_stages,
    state_dir,
    write_atomic,
)
from embrm.core._format import cell, fmt, md_table
from embrm.core._hardware import (
    THREADS_ENV,
    cpu_flags,
    cpuinfo,
    current_threads,
    fast_bf16,
    fast_int8,
    fit_threads,
    on_fit_threads,
    policy_threads,
    torch_threads,
)
from embrm.core._progress import Progress, Stages, format_duration, step_progress
from embrm.core._rows import Rows, map_rows, mapped, row_blocks, take_rows

__all__ = [
    "available_memory", "cell", "check_choice", "check_name", "check_nesting", "check_size", "MAX_NESTING", "Name",
    "NAME", "NO_SPACE", "check_embeddings", "check_fitted", "check_group_ids", "check_out", "check_pairs",
    "check_params", "check_value", "cpu_flags", "cpuinfo", "current_threads", "EmbrmError", "exclusive", "fast_bf16",
    "file_stem", "fast_int8", "fit_threads", "fmt", "format_duration", "Integer", "is_int", "md_table", "Number",
    "on_fit_threads", "OneOf", "policy_threads", "Progress", "RANDOM_STATE", "Rows", "map_rows", "mapped",
    "row_blocks", "take_rows", "SEED", "shown", "stale_stages", "staged", "STATE_ENV", "state_dir", "Sizes", "Stages",
    "step_progress", "THREADS_ENV", "torch_threads", "write_atomic"
]
