"""Bad data files, declarations, options, model dirs and --out targets across `embed`, `fit`, `score`, `bon-sim`,
the methods and dataset loading: each fails with exit 2 and one `error:` line naming the file (and row/line) or the
option and the fix, and leaves the cache, the model dirs and earlier results exactly as they were.

Every malformed input is built once (session fixture `bad`) beside a link to the real-data fixture `renamed_pool`
(`real/`: a small real pool, pairs and a cache where both are embedded), so nothing here embeds."""

import gzip
import json
import os
import re
import shutil

import numpy as np
import pytest
from badinput import Bad, assert_clean_failure
from realdata import needs_data
from typer.testing import CliRunner

from embrm.cli import app
from embrm.rewards._persist import manifest_digest

pytestmark = needs_data

POOL, PAIRS, CACHE = "{root}/real/pool.toml", "{root}/real/hh.jsonl", "{root}/real/cache"
EMBED = ("--dtype", "float32", "--cache-dir", CACHE)  # the fixture cache's embedder: everything is cached
F = "{root}/files/"
PAIR = '{"prompt": "p%d", "chosen": "yes", "rejected": "no"}\n'
POOL_CSV = "prompt,response,gold\np,a,1\np,b,2\nq,a,1\nq,b,3\n"
DECLARED = ('[dataset]\npath = "../real/pool.parquet"\n[dataset.columns]\nprompt_id = "qid"\nprompt = "question"\n'
            'response = "answer"\ngold = "score"\nresponse_key = "system"\n')

# name -> content (str is written as UTF-8; bytes as they are)
FILES = {
    # JSON lines
    "empty.jsonl": "",
    "blank.jsonl": "\n\n   \n",
    "latin1.jsonl": (PAIR % 1 + '{"prompt": "caf\xe9", "chosen": "c", "rejected": "r"}\n').encode("latin-1"),
    "object-prompt.jsonl": PAIR % 1 + '{"prompt": {"a": 1}, "chosen": "c", "rejected": "r"}\n',
    "list-chosen.jsonl": PAIR % 1 + '{"prompt": "x", "chosen": [1, 2], "rejected": "r"}\n',
    "number-rejected.jsonl": PAIR % 1 + '{"prompt": "x", "chosen": "c", "rejected": 3}\n',
    "bool-prompt.jsonl": PAIR % 1 + '{"prompt": true, "chosen": "c", "rejected": "r"}\n',
    "only-objects.jsonl": '{"prompt": {"a": 1}, "chosen": "c", "rejected": "r"}\n',
    "array-line.jsonl": PAIR % 1 + "[1, 2]\n",
    "scalar-line.jsonl": PAIR % 1 + "42\n",
    "null-line.jsonl": PAIR % 1 + "null\n",
    "blank-line.jsonl": PAIR % 1 + "\n" + PAIR % 2,
    "one-pair.jsonl": PAIR % 1,
    "cut-line.jsonl": PAIR % 1 + '{"prompt": "x", "chos\n',
    "duplicate-key.jsonl": PAIR % 1 + '{"prompt": "x", "chosen": "a", "chosen": "b", "rejected": "r"}\n',
    "crlf-null.jsonl": (PAIR % 1).replace("\n", "\r\n") + '{"prompt": "x", "chosen": null, "rejected": "r"}\r\n',
    "bom-empty-prompt.jsonl": "\ufeff" + PAIR % 1 + '{"prompt": " ", "chosen": "c", "rejected": "r"}\n',
    "no-dialogue.jsonl": '{"chosen": "Human: hi", "rejected": "Human: ho"}\n',
    "pool-inf-gold.jsonl": '{"prompt": "p", "response": "a", "gold": 1.0}\n{"prompt": "p", "response": "b", '
                           '"gold": Infinity}\n',
    "pool-nan-gold.jsonl": '{"prompt": "p", "response": "a", "gold": 1.0}\n{"prompt": "p", "response": "b", '
                           '"gold": NaN}\n',
    "pool-bool-gold.jsonl": '{"prompt": "p", "response": "a", "gold": true}\n',
    "pool-object-response.jsonl": '{"prompt": "p", "response": "a", "gold": 1}\n{"prompt": "p", "response": '
                                  '{"t": "b"}, "gold": 2}\n',
    "pool-null-id.jsonl": '{"prompt_id": "1", "prompt": "p", "response": "a"}\n{"prompt_id": null, "prompt": "p", '
                          '"response": "b"}\n',
    "pool-object-id.jsonl": '{"prompt_id": {"a": 1}, "prompt": "p", "response": "a"}\n',
    "not-gzip.jsonl.gz": b"plain text\n",
    "cut.jsonl.gz": gzip.compress((PAIR % 1 * 50).encode())[:30],
    # JSON documents
    "scalar.json": "42",
    "string.json": '"hello"',
    "null.json": "null",
    "empty-list.json": "[]",
    "list-of-lists.json": "[[1, 2], [3, 4]]",
    "mixed.json": json.dumps([{"prompt": "a", "chosen": "b", "rejected": "c"},
                              {"prompt": {"x": 1}, "chosen": "b", "rejected": "c"}]),
    "number-prompt.json": json.dumps([{"prompt": "a", "chosen": "b", "rejected": "c"},
                                      {"prompt": 5, "chosen": "b", "rejected": "c"}]),
    "ragged-columns.json": json.dumps({"prompt": ["a", "b"], "chosen": ["c"], "rejected": ["d", "e"]}),
    "columns-mixed.json": json.dumps({"prompt": ["a", 5], "chosen": ["b", "b"], "rejected": ["c", "c"]}),
    "broken.json": '[{"prompt": "a",]',
    "duplicate-key.json": '[{"prompt": "a", "prompt": "b", "chosen": "c", "rejected": "d"}]',
    # CSV
    "header-only.csv": "prompt,response,gold\n",
    "ragged.csv": "prompt,response,gold\np,a,1\np,b,2,3,4\n",
    "duplicate-column.csv": "prompt,chosen,rejected,chosen\np,a,b,c\n",
    "not-utf8.csv": b"prompt,response,gold\np,caf\xe9,1\n",
    "neg-inf-gold.csv": "prompt,response,gold\np,a,1\np,b,-inf\n",
    "crlf-inf-gold.csv": POOL_CSV.replace("q,b,3", "q,b,inf").replace("\n", "\r\n"),
    "text-gold.csv": "prompt,response,gold\np,a,1\np,b,high\n",
    "empty-prompt.csv": 'prompt,response,gold\np,a,1\n"",b,2\n',
    "duplicate-id.csv": "prompt_id,prompt,response,gold,m\n1,p,a,1,x\n1,p,b,2,x\n",
    "no-response.csv": "prompt,answer,gold\np,a,1\n",
    "no-gold.csv": "prompt,response\np,a\np,b\nq,a\nq,b\n",
    "one-prompt.csv": "prompt,response,gold\np,a,1\np,b,2\np,c,3\n",
    "pool.csv": POOL_CSV,
    "gzip-named.csv": gzip.compress(POOL_CSV.encode()),
    # Parquet (and files that are not what their names say)
    "garbage.parquet": b"\x00\x01garbage" * 10,
    "text.parquet": POOL_CSV,
    "notes.txt": "hello",
    # dataset declarations
    "unknown-key.toml": DECLARED + '[dataset.extra]\nx = 1\n',
    "no-path.toml": '[dataset]\nname = "x"\n',
    "empty-path.toml": '[dataset]\npath = ""\n',
    "number-path.toml": '[dataset]\npath = 5\n',
    "missing-file.toml": DECLARED.replace("../real/pool.parquet", "nope.parquet"),
    "escaping-path.toml": DECLARED.replace("../real/pool.parquet", "../../../../../../etc/passwd"),
    "directory-path.toml": DECLARED.replace("../real/pool.parquet", ".."),
    "self-path.toml": DECLARED.replace("../real/pool.parquet", "self-path.toml"),
    "bad-regex.toml": DECLARED + '[dataset.exclude]\ncolumn = "system"\npattern = "(unclosed"\n',
    "look-behind.toml": DECLARED + '[dataset.exclude]\ncolumn = "system"\npattern = "(?<=a)b"\n',
    "exclude-unknown-column.toml": DECLARED + '[dataset.exclude]\ncolumn = "nosuch"\npattern = "x"\n',
    "exclude-both.toml": DECLARED + '[dataset.exclude]\ncolumn = "system"\npattern = "x"\nvalues = ["a"]\n',
    "exclude-no-values.toml": DECLARED + '[dataset.exclude]\ncolumn = "system"\nvalues = []\n',
    "exclude-values-string.toml": DECLARED + '[dataset.exclude]\ncolumn = "system"\nvalues = "NullModel"\n',
    "exclude-everything.toml": DECLARED + '[dataset.exclude]\ncolumn = "system"\npattern = "."\n',
    "key-twice.toml": '[dataset]\npath = "../real/pool.parquet"\n[dataset.columns]\nprompt = "question"\n'
                      'prompt = "answer"\n',
    "column-twice.toml": DECLARED.replace('response = "answer"', 'response = "question"'),
    "unknown-role.toml": '[dataset]\npath = "../real/pool.parquet"\n[dataset.columns]\nquestion = "question"\n',
    "number-column.toml": '[dataset]\npath = "../real/pool.parquet"\n[dataset.columns]\nprompt = 3\n',
    "misspelt-column.toml": DECLARED.replace('prompt = "question"', 'prompt = "questoin"'),
    "number-name.toml": DECLARED.replace("[dataset]\n", "[dataset]\nname = 7\n"),
    "not-toml.toml": "[dataset\npath = 'x'\n",
    "two-tables.toml": DECLARED + "[other]\nx = 1\n",
    "empty.toml": "",
    "named-with-columns.toml": '[dataset]\npath = "alpaca-eval-models"\n[dataset.columns]\nprompt = "x"\n',
    "latin1.toml": '[dataset]\npath = "pool.csv"\nname = "caf\xe9"\n'.encode("latin-1"),
}
UNREADABLE = "unreadable.jsonl"  # chmod 000: only meaningful when not running as root


def _embed(case_id, name, match, *extra):
    """`embed` of one bad file: fails while loading, before the cache is touched."""
    return Bad(f"embed/{case_id}", ("embed", F + name, *EMBED, *extra), match, ("real/cache",))


def _embed_with(case_id, args, match, watch=("real/cache",), env=None):
    """`embed` with bad options (or a bad data dir) on a good source."""
    return Bad(f"embed/{case_id}", ("embed", *args, *EMBED), match, watch, env or {})


def _file_cases():
    return [
        _embed("missing-file", "nope.jsonl", r"nope.jsonl: file not found"),
        _embed("directory", "dir.jsonl", r"dir.jsonl: is a directory"),
        _embed("unreadable", UNREADABLE, r"unreadable.jsonl: cannot read the file .*permissions"),
        _embed("unknown-extension", "notes.txt", r"notes.txt: unknown format '.txt'"),
        _embed("jsonl-empty", "empty.jsonl", r"empty.jsonl: the file is empty"),
        _embed("jsonl-blank-lines", "blank.jsonl", r"blank.jsonl: the file is empty"),
        _embed("jsonl-latin1", "latin1.jsonl", r"latin1.jsonl: line 2 is not UTF-8.*re-save"),
        _embed("jsonl-object-prompt", "object-prompt.jsonl", r"object-prompt.jsonl: line 2: 'prompt' is an object"),
        _embed("jsonl-list-chosen", "list-chosen.jsonl", r"list-chosen.jsonl: line 2: 'chosen' is a list"),
        _embed("jsonl-number-rejected", "number-rejected.jsonl", r"line 2: 'rejected' is a number, not text"),
        _embed("jsonl-bool-prompt", "bool-prompt.jsonl", r"bool-prompt.jsonl: line 2: 'prompt' is a boolean"),
        _embed("jsonl-objects-only", "only-objects.jsonl", r"only-objects.jsonl: column 'prompt' holds Struct.*text"),
        _embed("jsonl-array-line", "array-line.jsonl", r"array-line.jsonl: line 2 is a list, not a JSON object"),
        _embed("jsonl-scalar-line", "scalar-line.jsonl", r"scalar-line.jsonl: line 2 is a number, not a JSON obj"),
        _embed("jsonl-null-line", "null-line.jsonl", r"null-line.jsonl: line 2: null 'chosen'"),
        _embed("jsonl-blank-line", "blank-line.jsonl", r"blank-line.jsonl: line 2 is blank"),
        _embed("jsonl-cut-line", "cut-line.jsonl", r"cut-line.jsonl: line 2: invalid JSON .*fix or remove"),
        _embed("jsonl-duplicate-key", "duplicate-key.jsonl", r"duplicate-key.jsonl: line 2: key 'chosen' appears tw"),
        _embed("jsonl-crlf-null", "crlf-null.jsonl", r"crlf-null.jsonl: line 2: null 'chosen'"),
        _embed("jsonl-bom-blank-prompt", "bom-empty-prompt.jsonl", r"line 2: empty or null 'prompt'"),
        _embed("jsonl-no-dialogue-turn", "no-dialogue.jsonl", r"no-dialogue.jsonl: line 1: the 'chosen' dialogue"),
        _embed("jsonl-inf-gold", "pool-inf-gold.jsonl", r"pool-inf-gold.jsonl: line 2: gold 'gold' is inf"),
        _embed("jsonl-nan-gold", "pool-nan-gold.jsonl", r"pool-nan-gold.jsonl: line 2: gold 'gold' is nan"),
        _embed("jsonl-bool-gold", "pool-bool-gold.jsonl", r"pool-bool-gold.jsonl: gold column 'gold' holds Boolean"),
        _embed("jsonl-object-response", "pool-object-response.jsonl", r"line 2: 'response' is an object"),
        _embed("jsonl-null-prompt-id", "pool-null-id.jsonl", r"pool-null-id.jsonl: line 2: null 'prompt_id'"),
        _embed("jsonl-object-prompt-id", "pool-object-id.jsonl", r"column 'prompt_id' holds Struct.*not ids"),
        _embed("gz-not-gzip", "not-gzip.jsonl.gz", r"not-gzip.jsonl.gz: not gzip-compressed.*drop .gz"),
        _embed("gz-truncated", "cut.jsonl.gz", r"cut.jsonl.gz: gzip data is truncated or corrupt"),
        _embed("json-top-level-number", "scalar.json", r"scalar.json: the top level is a number"),
        _embed("json-top-level-string", "string.json", r"string.json: the top level is text"),
        _embed("json-top-level-null", "null.json", r"null.json: the top level is null"),
        _embed("json-empty-list", "empty-list.json", r"empty-list.json: holds no rows"),
        _embed("json-rows-are-lists", "list-of-lists.json", r"list-of-lists.json: row 1 is a list, not a JSON"),
        _embed("json-object-prompt", "mixed.json", r"mixed.json: row 2: 'prompt' is an object"),
        _embed("json-number-prompt", "number-prompt.json", r"number-prompt.json: row 2: 'prompt' is a number"),
        _embed("json-ragged-columns", "ragged-columns.json", r"ragged-columns.json: its columns have different len"),
        _embed("json-columns-mixed", "columns-mixed.json", r"columns-mixed.json: row 2: 'prompt' is a number"),
        _embed("json-invalid", "broken.json", r"broken.json: invalid JSON at line 1 column"),
        _embed("json-duplicate-key", "duplicate-key.json", r"duplicate-key.json: key 'prompt' appears twice"),
        _embed("csv-header-only", "header-only.csv", r"header-only.csv: holds no rows"),
        _embed("csv-ragged-row", "ragged.csv", r"ragged.csv: line 3 has another number of fields"),
        _embed("csv-duplicate-column", "duplicate-column.csv", r"duplicate-column.csv: column 'chosen' appears twice"),
        _embed("csv-not-utf8", "not-utf8.csv", r"not-utf8.csv: line 2 is not UTF-8"),
        _embed("csv-neg-inf-gold", "neg-inf-gold.csv", r"neg-inf-gold.csv: row 2: gold 'gold' is -inf"),
        _embed("csv-crlf-inf-gold", "crlf-inf-gold.csv", r"crlf-inf-gold.csv: row 4: gold 'gold' is inf"),
        _embed("csv-text-gold", "text-gold.csv", r"text-gold.csv: gold column 'gold' holds String, not numbers"),
        _embed("csv-empty-prompt", "empty-prompt.csv", r"empty-prompt.csv: row 2: empty or null 'prompt'"),
        _embed("csv-missing-column", "no-response.csv", r"no-response.csv: no column 'response'.*--response-col"),
        _embed("csv-duplicate-response-id", "duplicate-id.csv", r"duplicate-id.csv: row 2: duplicate response id",
               "--response-key", "m"),
        _embed("csv-gzip-content", "gzip-named.csv", r"gzip-named.csv: this file is gzip-compressed"),
        _embed("parquet-garbage", "garbage.parquet", r"garbage.parquet: cannot read as .parquet"),
        _embed("parquet-truncated", "truncated.parquet", r"truncated.parquet: cannot read as .parquet"),
        _embed("parquet-is-text", "text.parquet", r"text.parquet: cannot read as .parquet"),
        _embed("csv-is-parquet", "parquet-named.csv", r"parquet-named.csv: this is a Parquet file: name it .parq"),
        _embed("parquet-text-prompt-is-number", "renamed.parquet", r"renamed.parquet: column 'score' holds Float64,"
               r" not text", "--prompt-col", "score", "--response-col", "answer"),
        _embed("parquet-gold-is-text", "renamed.parquet", r"gold column 'system' holds String",
               "--prompt-col", "question", "--response-col", "answer", "--gold-col", "system"),
    ]


def _declaration_cases():
    return [
        _embed("toml-unknown-key", "unknown-key.toml", r"unknown-key.toml \[dataset\]: unknown key 'extra'"),
        _embed("toml-no-path", "no-path.toml", r"no-path.toml \[dataset\]: needs path"),
        _embed("toml-empty-path", "empty-path.toml", r"empty-path.toml \[dataset\]: needs path"),
        _embed("toml-number-path", "number-path.toml", r"number-path.toml \[dataset\]: needs path"),
        _embed("toml-missing-file", "missing-file.toml", r"missing-file.toml \[dataset\] path: .*nope.parquet is"
               r" not a file"),
        _embed("toml-escaping-path", "escaping-path.toml", r"etc/passwd(: unknown format| is not a file)"),
        _embed("toml-directory-path", "directory-path.toml", r"directory-path.toml \[dataset\] path: .* is not a f"),
        _embed("toml-self-path", "self-path.toml", r"self-path.toml: unknown format '.toml'"),
        _embed("toml-bad-regex", "bad-regex.toml", r"bad-regex.toml \[dataset\] exclude: pattern '\(unclosed' is not"),
        _embed("toml-look-behind", "look-behind.toml", r"look-behind.toml \[dataset\] exclude: .*look-around"),
        _embed("toml-exclude-column", "exclude-unknown-column.toml", r"exclusion column 'nosuch' is not in the data"),
        _embed("toml-exclude-both", "exclude-both.toml", r"exclude-both.toml \[dataset\] exclude: give column"),
        _embed("toml-exclude-empty-values", "exclude-no-values.toml", r"exclude: values must be a non-empty list"),
        _embed("toml-exclude-values-string", "exclude-values-string.toml", r"exclude: values must be a non-empty"),
        _embed("toml-key-twice", "key-twice.toml", r"key-twice.toml: not valid TOML"),
        _embed("toml-column-twice", "column-twice.toml", r"pool.parquet: column 'question' is given as both prompt"
               r" and response"),
        _embed("toml-unknown-role", "unknown-role.toml", r"unknown-role.toml \[dataset\] columns: map roles"),
        _embed("toml-number-column", "number-column.toml", r"number-column.toml \[dataset\] columns: map roles"),
        _embed("toml-misspelt-column", "misspelt-column.toml", r"pool.parquet: no column 'questoin'.*--prompt-col"),
        _embed("toml-number-name", "number-name.toml", r"number-name.toml \[dataset\]: name must be a string"),
        _embed("toml-invalid", "not-toml.toml", r"not-toml.toml: not valid TOML"),
        _embed("toml-two-tables", "two-tables.toml", r"two-tables.toml: a dataset declaration holds one \[dataset"),
        _embed("toml-empty", "empty.toml", r"empty.toml: a dataset declaration holds one \[dataset\]"),
        _embed("toml-named-with-columns", "named-with-columns.toml", r"alpaca-eval-models is a named dataset that "
               r"knows its columns"),
        _embed("toml-latin1", "latin1.toml", r"latin1.toml: not valid TOML"),
        _embed("toml-directory", "dir.toml", r"dir.toml: no such dataset declaration file \(it is a directory\)"),
    ]


def _option_cases():
    parquet = F + "renamed.parquet"
    cols = ("--prompt-col", "question", "--response-col", "answer")
    embed = _embed_with
    return [
        embed("role-twice", (parquet, "--prompt-col", "question", "--response-col", "question"),
              r"renamed.parquet: column 'question' is given as both prompt and response"),
        embed("missing-gold-col", (parquet, *cols, "--gold-col", "nosuch"), r"no column 'nosuch'.*--gold-col"),
        embed("missing-response-key", (parquet, *cols, "--response-key", "nosuch"), r"no column 'nosuch'.*--respon"),
        embed("missing-prompt-id-col", (parquet, *cols, "--prompt-id-col", "nosuch"), r"no column 'nosuch'.*--promp"),
        embed("response-key-not-unique", (parquet, *cols, "--prompt-id-col", "qid", "--response-key", "subset"),
              r"renamed.parquet: row 2: duplicate response id '0:koala'"),
        embed("chosen-col-on-pool", (parquet, *cols, "--chosen-col", "answer"),
              r"renamed.parquet: --response-col is for pools.*drop --response-col"),
        embed("gold-col-on-pairs", (PAIRS, "--gold-col", "x"), r"hh.jsonl: --gold-col is for pools.*drop --gold-col"),
        embed("response-key-on-pairs", (PAIRS, "--response-key", "x"), r"hh.jsonl: --response-key is for pools"),
        embed("chosen-is-rejected", (PAIRS, "--chosen-col", "rejected"), r"hh.jsonl: column 'rejected' is given as "
              r"both chosen and rejected"),
        embed("exclude-no-equals", (POOL, "--exclude", "nosep"), r"--exclude 'nosep': give COLUMN=REGEX"),
        embed("exclude-no-column", (POOL, "--exclude", "=x"), r"--exclude '=x': give COLUMN=REGEX"),
        embed("exclude-no-pattern", (POOL, "--exclude", "system="), r"--exclude 'system=': give COLUMN=REGEX"),
        embed("exclude-bad-regex", (POOL, "--exclude", "system=["), r"--exclude: pattern '\[' is not a regular"),
        embed("exclude-look-ahead", (POOL, "--exclude", "system=(?=a)"), r"--exclude: pattern .* look-around"),
        embed("exclude-unknown-column", (POOL, "--exclude", "nosuch=x"), r"exclusion column 'nosuch'"),
        embed("named-dataset-columns", ("alpaca-eval-models", "--prompt-col", "x"), r"knows its columns"),
        embed("unknown-dataset-name", ("no-such-dataset",), r"unknown dataset 'no-such-dataset'"),
        embed("data-dir-missing", ("hh-rlhf-harmless-test", "--data-dir", "{root}/no-data-dir"),
              r"data dir .*no-data-dir does not exist \(from --data-dir", ("real/cache", "no-data-dir")),
        embed("data-dir-is-a-file", ("alpaca-eval-models", "--data-dir", F + "pool.csv"),
              r"data dir .*pool.csv is not a directory"),
        embed("data-dir-env-missing", ("alpaca-eval-bon16",), r"data dir /nonexistent/embrm-data does not exist.*"
              r"EMBRM_DATA_DIR", env={"EMBRM_DATA_DIR": "/nonexistent/embrm-data"}),
        embed("batch-size-zero", (POOL, "--batch-size", "0"), r"--batch-size"),
        embed("template-without-response", (POOL, "--template", "{prompt}"),
              r"template .* must hold \{response\} once"),
        Bad("datasets/data-dir-missing", ("datasets", "--data-dir", "{root}/no-data-dir"),
            r"data dir .*no-data-dir does not exist", ("no-data-dir",)),
    ]


def _fit(case_id, args, match, out="{root}/out/fit", watch=("real/cache", "out")):
    return Bad(f"fit/{case_id}", ("fit", "-k", "2", *EMBED, *args, "--out", out), match, watch)  # args' options win


def _fit_cases():
    return [
        _fit("out-under-a-file", (POOL,), r"--out .*pool.csv/m: .*pool.csv is a file, not a directory",
             F + "pool.csv/m", ("real/cache", "files")),
        _fit("out-holds-a-model", (POOL,), r"--out .*models/linear already exists and holds results: pass "
             r"--overwrite", "{root}/models/linear", ("real/cache", "models/linear")),
        _fit("out-holds-results", (POOL,), r"--out .*results/bon already exists.*--overwrite", "{root}/results/bon",
             ("real/cache", "results")),
        _fit("overwrite-a-directory-of-other-files", (POOL, "--overwrite"), r"results/bon is a directory that is "
             r"not an embrm model dir: refusing to replace it", "{root}/results/bon", ("real/cache", "results")),
        _fit("out-is-a-file", (POOL,), r"--out .*pool.csv is a file, not a directory: choose another --out",
             F + "pool.csv", ("real/cache", "files")),
        _fit("pairs-with-simulated-labels", (PAIRS, "--labels", "simulated"), r"hh.jsonl: a pairs file \(chosen/"
             r"rejected\), but fitting on simulated labels needs a pool"),
        _fit("pairs-on-one-prompt", (F + "one-pair.jsonl",), r"one-pair.jsonl: the pairs are on only 1 prompt"),
        _fit("human-labels-on-a-pool", (POOL, "--labels", "human"), r"pool.parquet: --labels human needs a pair"),
        _fit("unknown-labels", (POOL, "--labels", "crowd"), r"--labels.*'?crowd'?"),
        _fit("everything-excluded", (F + "exclude-everything.toml",), r"pool.parquet: only 0 prompt\(s\) with scored "
             r"responses that the exclusion rule keeps: fitting"),
        _fit("one-prompt", (F + "one-prompt.csv",), r"one-prompt.csv: only 1 prompt\(s\) with scored responses"),
        _fit("no-gold", (F + "no-gold.csv",), r"no-gold.csv: no gold scores: fitting on simulated labels needs"),
        _fit("inf-gold", (F + "pool-inf-gold.jsonl",), r"pool-inf-gold.jsonl: line 2: gold 'gold' is inf"),
        _fit("inf-gold-csv", (F + "crlf-inf-gold.csv",), r"crlf-inf-gold.csv: row 4: gold 'gold' is inf"),
        _fit("hidden-empty-list", (POOL, "--head", "mlp", "--hidden", ","), r"--hidden ',': give comma-separated"),
        _fit("hidden-not-numbers", (POOL, "--head", "mlp", "--hidden", "a,b"), r"--hidden"),
        _fit("hidden-zero", (POOL, "--head", "mlp", "--hidden", "0"), r"hidden"),
        _fit("head-unknown", (POOL, "--head", "forest"), r"head 'forest'|head.*forest"),
        _fit("mode-unknown", (POOL, "--mode", "magic"), r"mode.*magic"),
        _fit("mode-needs-mlp", (POOL, "--mode", "shared_trunk"), r"shared_trunk needs head = mlp"),
        _fit("fraction-needs-features", (POOL, "--feature-fraction", "0.25"), r"--feature-fraction: .*set mode = features"),
        _fit("fraction-above-one", (POOL, "--mode", "features", "--feature-fraction", "1.5"),
             r"--feature-fraction: feature_fraction must be a number in \(0, 1\]"),
        _fit("objective-unknown", (POOL, "--head", "mlp", "--objective", "rank"), r"objective"),
        _fit("epochs-zero", (POOL, "--head", "mlp", "--epochs", "0"), r"epochs"),
        _fit("seed-negative", (POOL, "--seed", "-1"), r"seed"),
        _fit("flip-one", (POOL, "--flip", "1.0"), r"flip"),
        _fit("flip-negative", (POOL, "--flip", "-0.1"), r"flip"),
        _fit("ensemble-huge", (POOL, "--ensemble", "1000000"), r"k \(ensemble size\)|ensemble"),
        _fit("ensemble-zero", (POOL, "--ensemble", "0"), r"k \(ensemble size\)|k = 0"),
        _fit("test-size-zero", (POOL, "--test-size", "0"), r"test_size"),
        _fit("test-size-above-one", (POOL, "--test-size", "1.5"), r"test_size"),
        _fit("n-pairs-zero", (POOL, "--n-pairs", "0"), r"n_pairs"),
        _fit("beta-negative", (POOL, "--beta", "-1"), r"beta"),
        _fit("beta-nan", (POOL, "--beta", "nan"), r"beta"),
        _fit("backend-unknown", (POOL, "--backend", "magic"), r"backend 'magic'"),
        _fit("dtype-unknown", (POOL, "--dtype", "float16"), r"dtype"),
    ]


MODEL_DAMAGE = {  # model dir -> what the error names
    "nan-coef": r"weights.npz: coef holds NaN or infinite weights",
    "inf-coef": r"weights.npz: coef holds NaN or infinite weights",
    "short-coef": r"coef has shape \(2, 100\), expected \(2, 384\)",
    "coef-of-one-member": r"coef has shape \(1, 384\), expected \(2, 384\)",
    "int-coef": r"coef holds int32, not floating-point weights",
    "text-coef": r"coef holds <U1, not floating-point weights",
    "negative-split": r"split_0_train is not a list of pair positions",
    "missing-split": r"weights.npz lacks the pair splits",
    "no-weights": r"weights.npz unreadable",
    "truncated-weights": r"weights.npz unreadable",
    "no-manifest": r"is not an embrm model dir \(no manifest.json\)",
    "manifest-not-json": r"corrupt \(manifest.json unreadable",
    "manifest-empty": r"corrupt \(manifest.json unreadable",
    "manifest-a-list": r"manifest.json is not an embrm reward-ensemble manifest",
    "manifest-other-format": r"manifest.json is not an embrm reward-ensemble manifest",
    "manifest-future-version": r"manifest.json has format version 99",
    "manifest-k-larger": r"expected K = 5 integers",
    "manifest-k-zero": r"k = 0, dim = 384: expected positive integers",
    "manifest-k-text": r"k = 'three'",
    "manifest-head-unknown": r"head 'forest'",
    "manifest-mode-unknown": r"mode 'magic'",
    "manifest-seeds-short": r"as seeds: expected K = 2 integers",
    "manifest-dim-wrong": r"coef has shape \(2, 384\), expected \(2, 100\)",
    "manifest-weights-outside": r"names the file '../linear/weights.npz', not a file inside the model dir",
    "manifest-no-protocol": r"manifest.json: written by an older embrm \(no protocol\)",
    "manifest-protocol-damaged": r"manifest.json: .*protocol.*damaged|manifest.json: .*labels",
    "manifest-protocol-k": r"manifest.json: the protocol says K = 7 but the ensemble holds 2",
    "manifest-protocol-aggregation": r"manifest.json: .*aggregation.*foo",
    "manifest-protocol-num-leaves": r"manifest.json: .*num_leaves",
    "manifest-split-not-a-table": r"manifest.json: protocol or split is malformed",
    "manifest-no-embedder": r"manifest.json: no embedder spec",
    "mlp-nan": r"weights.npz: mlp_2 holds NaN or infinite weights",
    "mlp-shape": r"mlp_0 \(2, 384, 8\) and mlp_1 \(2, 4\) do not make a layer",
    "mlp-warm-nan": r"warm_0 holds NaN or infinite weights",
    "mlp-missing-layer": r"holds 3 mlp arrays: expected weight/bias pairs",
    "mlp-members-not-objects": r"manifest.json members: expected K = 2 objects",
    "lgbm-missing-member": r"lgbm_member_1.txt missing",
    "lgbm-truncated": r"lgbm_member_0.txt is truncated",
    "lgbm-nan-leaf": r"lgbm_member_0.txt holds NaN, infinite or unreadable leaf values",
    "lgbm-member-list-short": r"as LightGBM members, manifest says K=2",
    "lgbm-member-outside": r"names the file '/etc/passwd'",
    "lgbm-num-leaves-zero": r"manifest.json ensemble: num_leaves",
}


def _model_cases():
    cases = []
    for damage, match in MODEL_DAMAGE.items():
        model = f"models/{damage}"
        cases.append(Bad(f"score/model-{damage}", ("score", "{root}/" + model, POOL, "--cache-dir", CACHE, "--out",
                                                   "{root}/out/s.parquet"), match, (model, "real/cache", "out")))
    for damage in ("nan-coef", "manifest-k-larger", "mlp-shape", "lgbm-nan-leaf"):
        model = f"models/{damage}"
        cases.append(Bad(f"bon-sim/model-{damage}", ("bon-sim", POOL, "--model", "{root}/" + model, "--cache-dir",
                                                     CACHE), MODEL_DAMAGE[damage], (model, "real/cache")))
    model = ("--cache-dir", CACHE, "--out", "{root}/out/s.parquet")
    cases += [
        Bad("score/model-missing", ("score", "{root}/models/nope", POOL, *model), r"model dir .*nope does not exist",
            ("out",)),
        Bad("score/model-is-a-file", ("score", F + "pool.csv", POOL, *model), r"pool.csv is a file, not a model dir",
            ("out", "files")),
        Bad("score/out-is-a-directory", ("score", "{root}/models/linear", POOL, "--cache-dir", CACHE, "--out",
                                        "{root}/results"), r"--out .*results is a directory, not a file: --out takes a file",
            ("results", "models/linear")),
        Bad("score/out-exists", ("score", "{root}/models/linear", POOL, "--cache-dir", CACHE, "--out",
                                 "{root}/results/scores.parquet"), r"results/scores.parquet already exists.*--overwr",
            ("results", "models/linear")),
        Bad("score/out-under-a-file", ("score", "{root}/models/linear", POOL, "--cache-dir", CACHE, "--out",
                                       F + "pool.csv/s.parquet"), r"pool.csv is a file, not a directory",
            ("files", "models/linear")),
        Bad("score/texts-not-cached", ("score", "{root}/models/linear", F + "pool.csv", *model),
            r"not in .*embrm embed", ("out", "real/cache", "models/linear")),
        Bad("score/inf-gold", ("score", "{root}/models/linear", F + "neg-inf-gold.csv", *model),
            r"neg-inf-gold.csv: row 2: gold 'gold' is -inf", ("out", "models/linear")),
    ]
    return cases


def _bon(case_id, args, match, watch=("real/cache", "models/linear", "out"), model="{root}/models/linear"):
    return Bad(f"bon-sim/{case_id}", ("bon-sim", *args, "--model", model, "--cache-dir", CACHE), match, watch)


def _bon_cases():
    return [
        _bon("member-negative", (POOL, "--member", "-1"), r"member must be an integer in \[0, 1\], got -1"),
        _bon("member-is-k", (POOL, "--member", "2"), r"member must be an integer in \[0, 1\], got 2"),
        _bon("n-max-zero", (POOL, "--n-max", "0"), r"n_max"),
        _bon("n-grid-word", (POOL, "--n-grid", "dense"), r"--n-grid dense: give all or log or comma-separated integers n >= 1"),
        _bon("n-grid-zero", (POOL, "--n-grid", "1,0"), r"--n-grid 1,0: n_grid value must be an integer in \[1, 1000000\]"),
        _bon("n-grid-beyond-pool", (POOL, "--n-grid", "1,2,500"), r"500"),
        _bon("temperature-zero", (POOL, "--agg", "softmin", "--temperature", "0"), r"temperature"),
        _bon("lam-nan", (POOL, "--lam", "nan"), r"lam"),
        _bon("lcb-beta-inf", (POOL, "--lcb-beta", "inf"), r"lcb_beta"),
        _bon("aggregation-unknown", (POOL, "--agg", "mean,foo"), r"aggregation.*foo"),
        _bon("aggregation-empty-list", (POOL, "--agg", ","), r"aggregations must be a non-empty list"),
        _bon("aggregation-twice", (POOL, "--agg", "mean,mean"), r"name one twice"),
        _bon("prompts-unknown", (POOL, "--prompts", "some"), r"--prompts.*'some' is not one of 'test', 'all'"),
        _bon("out-is-a-file", (POOL, "--out", F + "pool.csv"), r"--out .*pool.csv is a file, not a directory",
             ("files", "models/linear")),
        _bon("out-holds-results", (POOL, "--out", "{root}/results/bon"), r"results/bon already exists and holds "
             r"results: pass --overwrite", ("results", "models/linear")),
        _bon("out-under-a-file", (POOL, "--out", F + "pool.csv/bon"), r"pool.csv is a file, not a directory",
             ("files", "models/linear")),
        _bon("pairs-file", (PAIRS,), r"hh.jsonl: a pairs file \(chosen/rejected\), but Best-of-n simulation needs a "
             r"pool"),
        _bon("no-gold", (F + "no-gold.csv",), r"no-gold.csv: no gold scores: Best-of-n simulation needs"),
        _bon("one-prompt", (F + "one-prompt.csv",), r"one-prompt.csv: only 1 prompt\(s\)"),
        _bon("everything-excluded", (POOL, "--exclude", "system=."), r"only 0 prompt\(s\) with scored responses"),
        _bon("inf-gold", (F + "pool-inf-gold.jsonl",), r"pool-inf-gold.jsonl: line 2: gold 'gold' is inf"),
        _bon("model-missing", (POOL,), r"model dir .*nope does not exist", ("real/cache",), "{root}/models/nope"),
    ]


def _method(name, case_id, args, match, watch=("real/cache", "out")):
    """A method's option error: most are only checked once its vectors are read and its first rewards trained
    (few pairs: quick); in text mode, so that a progress line printed before the error would fail the case."""
    return Bad(f"{name}/{case_id}", (name, *EMBED, "--n-pairs", "40", *args), match, watch)


def _method_cases():
    cases = [
        _method(name, "pairs-file", (PAIRS,), rf"hh.jsonl: a pairs file \(chosen/rejected\), but {name} needs a pool")
        for name in ("laser", "moe", "composite", "policy")
    ] + [
        _method(name, "out-holds-results", (POOL, "--out", "{root}/results/bon"), r"results/bon already exists and "
                r"holds results: pass --overwrite", ("real/cache", "results")) for name in ("laser", "policy")
    ]
    return cases + [
        _method("moe", "out-is-a-file", (POOL, "--out", F + "pool.csv"), r"pool.csv is a file, not a directory",
                ("real/cache", "files")),
        _method("composite", "no-gold", (F + "no-gold.csv",), r"no-gold.csv: no gold scores: composite needs"),
        _method("laser", "alpha-negative", (POOL, "--alpha", "-1"), r"alpha"),
        _method("laser", "n-zero", (POOL, "--n", "0"), r"\bn\b.*>= 1"),
        _method("laser", "dim-negative", (POOL, "--dim", "-1"), r"--dim -1: give a PCA dimension"),
        _method("laser", "warmup-negative", (POOL, "--warmup", "-1"), r"warmup"),
        _method("laser", "test-size-above-one", (POOL, "--test-size", "1.5"), r"test_size"),
        _method("laser", "arms-empty-list", (POOL, "--arms", ","), r"--arms: give a comma-separated list"),
        _method("laser", "arm-unknown", (POOL, "--arms", "bt,foo"), r"unknown arm 'foo'"),
        _method("moe", "clusters-zero", (POOL, "--n-clusters", "0"), r"n_clusters"),
        _method("moe", "categories-unknown", (POOL, "--categories", "nosuch"), r"no column 'nosuch'.*--categories"),
        _method("moe", "routing-unknown", (POOL, "--routing", "fuzzy"), r"routing"),
        _method("moe", "shrink-negative", (POOL, "--shrink", "-1"), r"shrink"),
        _method("composite", "component-unknown", (POOL, "--components", "foo"), r"unknown component foo"),
        _method("composite", "components-empty-list", (POOL, "--components", ","), r"--components: give a comma"),
        _method("composite", "n-max-zero", (POOL, "--n-max", "0"), r"n_max"),
        _method("composite", "ensemble-zero", (POOL, "-k", "0"), r"k \(ensemble size\)|k = 0"),
        _method("policy", "betas-not-numbers", (POOL, "--betas", "a,b"), r"--betas: expected comma-separated floats"),
        _method("policy", "betas-empty-list", (POOL, "--betas", ","), r"--betas: give a comma-separated list"),
        _method("policy", "betas-negative", (POOL, "--betas", "-1"), r"betas must be finite numbers > 0"),
        _method("policy", "epochs-zero", (POOL, "--epochs", "0"), r"epochs >= 1"),
        _method("policy", "dpo-beta-zero", (POOL, "--dpo-beta", "0"), r"beta > 0"),
        _method("policy", "n-pairs-too-few", (POOL, "--n-pairs", "5"), r"n_pairs"),
    ]


CASES = _file_cases() + _declaration_cases() + _option_cases() + _fit_cases() + _model_cases() + _bon_cases() + \
    _method_cases()
MARKS = {
    "embed/unreadable": pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 file"),
}


# ----------------------------------------------------------------------------- the fixture

def _models(root, real):
    """Three small models fitted once on the fixture pool (everything cached), then damaged copies of them."""
    runner = CliRunner()
    for head, extra in (("linear", ()), ("mlp", ("--hidden", "8", "--epochs", "2")), ("lgbm", ())):
        res = runner.invoke(app, ["fit", str(real / "pool.toml"), "--dtype", "float32", "--cache-dir",
                                  str(real / "cache"), "-k", "2", "--head", head, *extra, "--n-pairs", "300",
                                  "--out", str(root / "models" / head)])
        assert res.exit_code == 0, res.output
    for damage in MODEL_DAMAGE:
        source = damage.split("-")[0] if damage.split("-")[0] in ("mlp", "lgbm") else "linear"
        shutil.copytree(root / "models" / source, root / "models" / damage)
        DAMAGERS[damage](root / "models" / damage)


def _manifest(edit):
    """An edit whose digest is recomputed (a consistent forgery): the checks behind the digest still refuse it.
    A stale digest is refused first (tests/cli/test_hostile_outputs.py)."""
    def apply(model):
        doc = json.loads((model / "manifest.json").read_text())
        edit(doc)
        if isinstance(doc, dict):
            doc["digest"] = manifest_digest(doc)
        (model / "manifest.json").write_text(json.dumps(doc))
    return apply


def _weights(edit):
    def apply(model):
        with np.load(model / "weights.npz") as z:
            arrays = {k: z[k] for k in z.files}
        edit(arrays)
        np.savez(model / "weights.npz", **arrays)
    return apply


def _text(name, edit):
    return lambda model: (model / name).write_text(edit((model / name).read_text()))


DAMAGERS = {
    "nan-coef": _weights(lambda a: a["coef"].__setitem__((0, 0), np.nan)),
    "inf-coef": _weights(lambda a: a["coef"].__setitem__((1, 3), np.inf)),
    "short-coef": _weights(lambda a: a.update(coef=a["coef"][:, :100])),
    "coef-of-one-member": _weights(lambda a: a.update(coef=a["coef"][:1])),
    "int-coef": _weights(lambda a: a.update(coef=a["coef"].astype(np.int32))),
    "text-coef": _weights(lambda a: a.update(coef=np.array(["a", "b"]))),
    "negative-split": _weights(lambda a: a["split_0_train"].__setitem__(0, -5)),
    "missing-split": _weights(lambda a: a.pop("split_1_val")),
    "no-weights": lambda m: (m / "weights.npz").unlink(),
    "truncated-weights": lambda m: (m / "weights.npz").write_bytes((m / "weights.npz").read_bytes()[:500]),
    "no-manifest": lambda m: (m / "manifest.json").unlink(),
    "manifest-not-json": lambda m: (m / "manifest.json").write_text("{oops"),
    "manifest-empty": lambda m: (m / "manifest.json").write_text(""),
    "manifest-a-list": lambda m: (m / "manifest.json").write_text("[1, 2]"),
    "manifest-other-format": _manifest(lambda d: d.update(format="something-else")),
    "manifest-future-version": _manifest(lambda d: d.update(format_version=99)),
    "manifest-k-larger": _manifest(lambda d: d["ensemble"].update(k=5)),
    "manifest-k-zero": _manifest(lambda d: d["ensemble"].update(k=0)),
    "manifest-k-text": _manifest(lambda d: d["ensemble"].update(k="three")),
    "manifest-head-unknown": _manifest(lambda d: d["ensemble"].update(head="forest")),
    "manifest-mode-unknown": _manifest(lambda d: d["ensemble"].update(mode="magic")),
    "manifest-seeds-short": _manifest(lambda d: d["ensemble"].update(seeds=[1])),
    "manifest-dim-wrong": _manifest(lambda d: d.update(dim=100)),
    "manifest-weights-outside": _manifest(lambda d: d["files"].update(weights="../linear/weights.npz")),
    "manifest-no-protocol": _manifest(lambda d: d.pop("protocol")),
    "manifest-protocol-damaged": _manifest(lambda d: d["protocol"].pop("labels")),
    "manifest-protocol-k": _manifest(lambda d: d["protocol"].update(k=7)),
    "manifest-protocol-aggregation": _manifest(lambda d: d["protocol"].update(aggregations=["foo"])),
    "manifest-protocol-num-leaves": _manifest(lambda d: d["protocol"].update(
        learner={"head": "lgbm", "mode": "independent", "num_leaves": 0})),
    "manifest-split-not-a-table": _manifest(lambda d: d.update(split="oops")),
    "manifest-no-embedder": _manifest(lambda d: d.pop("embedder")),
    "mlp-nan": _weights(lambda a: a["mlp_2"].__setitem__((0, 0, 0), np.nan)),
    "mlp-shape": _weights(lambda a: a.update(mlp_1=a["mlp_1"][:, :4])),
    "mlp-warm-nan": _weights(lambda a: a["warm_0"].__setitem__((0, 0), np.nan)),
    "mlp-missing-layer": _weights(lambda a: a.pop("mlp_3")),
    "mlp-members-not-objects": _manifest(lambda d: d.update(members=["x", "y"])),
    "lgbm-missing-member": lambda m: (m / "lgbm_member_1.txt").unlink(),
    "lgbm-truncated": _text("lgbm_member_0.txt", lambda t: t[: len(t) // 3]),
    "lgbm-nan-leaf": _text("lgbm_member_0.txt", lambda t: re.sub(r"^leaf_value=\S+", "leaf_value=nan", t, count=1,
                                                                  flags=re.MULTILINE)),
    "lgbm-member-list-short": _manifest(lambda d: d["files"].update(lgbm=["lgbm_member_0.txt"])),
    "lgbm-member-outside": _manifest(lambda d: d["files"].update(lgbm=["/etc/passwd", "lgbm_member_1.txt"])),
    "lgbm-num-leaves-zero": _manifest(lambda d: d["ensemble"]["head_params"].update(num_leaves=0)),
}


@pytest.fixture(scope="session")
def bad(renamed_pool, tmp_path_factory):
    """The suite's root: `real/` (a link to renamed_pool), `files/` (every malformed file), `models/` (fitted and
    damaged model dirs), `results/` (earlier results that must survive)."""
    root = tmp_path_factory.mktemp("bad-data")
    (root / "real").symlink_to(renamed_pool, target_is_directory=True)
    files = root / "files"
    files.mkdir()
    for name, content in FILES.items():
        (files / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    (files / "dir.jsonl").mkdir()
    (files / "dir.toml").mkdir()
    shutil.copy(renamed_pool / "pool.parquet", files / "renamed.parquet")
    shutil.copy(renamed_pool / "pool.parquet", files / "parquet-named.csv")
    (files / "truncated.parquet").write_bytes((renamed_pool / "pool.parquet").read_bytes()[:300])
    (files / UNREADABLE).write_text(PAIR % 1)
    (files / UNREADABLE).chmod(0)
    results = root / "results"
    (results / "bon").mkdir(parents=True)
    (results / "bon" / "summary.json").write_text('{"earlier": "results"}\n')
    (results / "scores.parquet").write_bytes(b"earlier scores")
    _models(root, renamed_pool)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=MARKS.get(c.id, ())) for c in CASES])
def test_bad_input_fails_in_one_line_and_damages_nothing(case, bad):
    assert_clean_failure(case, bad)


def test_the_table_covers_every_command_with_distinct_cases():
    assert len(CASES) >= 100 and len({c.id for c in CASES}) == len(CASES)
    assert len({(c.args, tuple(sorted(c.env.items()))) for c in CASES}) == len(CASES)
    commands = {c.args[0] for c in CASES}
    assert {"embed", "fit", "score", "bon-sim", "laser", "moe", "composite", "policy", "datasets"} <= commands
    assert set(MODEL_DAMAGE) == set(DAMAGERS)


@pytest.mark.slow
def test_overwrite_replaces_earlier_results_only_when_asked(bad, tmp_path):
    """--overwrite is the way past the refusal: the same commands then succeed and replace what was there."""
    runner = CliRunner()
    out = tmp_path / "bon"
    args = ["bon-sim", str(bad / "real" / "pool.toml"), "--model", str(bad / "models" / "linear"), "--cache-dir",
            str(bad / "real" / "cache"), "--agg", "mean", "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    first = (out / "summary.json").read_text()
    assert runner.invoke(app, args).exit_code == 2 and (out / "summary.json").read_text() == first
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0
    model = tmp_path / "model"
    shutil.copytree(bad / "models" / "linear", model)
    fit = ["fit", str(bad / "real" / "pool.toml"), "--dtype", "float32", "--cache-dir", str(bad / "real" / "cache"),
           "-k", "3", "--n-pairs", "300", "--out", str(model)]
    assert runner.invoke(app, fit).exit_code == 2
    res = runner.invoke(app, [*fit, "--overwrite"])
    assert res.exit_code == 0, res.output
    assert json.loads((model / "manifest.json").read_text())["ensemble"]["k"] == 3
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
