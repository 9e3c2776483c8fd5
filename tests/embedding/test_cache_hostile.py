"""Hostile caches: a forged manifest (recomputed digest) naming files outside the cache, links, pipes and planted
files where the cache's own files belong, a read-only cache under --repair, a lost fingerprint.json, a manifest
restored from before a merge, imported caches, readers racing a merging writer, and shards that disagree on
their plan. Every refusal is one line, and nothing outside the cache (`victim_dir`) is ever opened, moved or made."""

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from badinput import Bad, assert_clean_failure, snapshot
from synthdata import pool_file_with_cache
from typer.testing import CliRunner

from embrm.cli import app
from embrm.core import EmbrmError
from embrm.data import load_dataset
from embrm.embedding import EmbeddingCache, embed_dataset, render, repair, verify
from embrm.embedding._cache import MANIFEST_FILE, canonical_json, text_keys
from embrm.embedding._embed import embed_shard
from embrm.embedding._shards import MAX_SHARDS, PLAN_FILE, Shard
from embrm.embedding.backends import EmbedBatch

ROOT_DIR = Path(__file__).resolve().parents[2]
SPEC = {"backend": "test", "model": "org/model-a", "dtype": "float32", "template": "{prompt}\n\n{response}"}
MANIFEST = r"manifest.json: corrupt or edited manifest \(.+\): run `embrm cache verify --repair"
LINK = r"part-.*: a link, device or pipe where a cache part belongs: run `embrm cache verify --repair"
FINGERPRINT = r"fingerprint.json: corrupt or edited fingerprint file: run `embrm cache verify --repair"
runner = CliRunner()


# ---------------------------------------------------------------------------------------------- forging


def the_dir(case: Path) -> Path:
    (cache_dir,) = [p for p in case.iterdir() if p.is_dir()]
    return cache_dir


def forge(cache_dir: Path, edit) -> None:
    """What an attacker who can write the cache does: edit the manifest's body and recompute its digest."""
    doc = json.loads((cache_dir / MANIFEST_FILE).read_text())
    body = {k: doc[k] for k in ("schema_version", "fingerprint", "dim", "parts")}
    edit(body)
    digest = hashlib.sha256(canonical_json(body).encode()).hexdigest()
    (cache_dir / MANIFEST_FILE).write_text(json.dumps({**body, "digest": digest}))


def named(value):
    """Forge the listed part's name; `value` may be a function of (real name, fixture root)."""
    def apply(d, root):
        def edit(body):
            name = body["parts"][0]["name"]
            body["parts"][0]["name"] = value(name, root) if callable(value) else value
        forge(d, edit)
    return apply


def field(key, value):
    return lambda d, root: forge(d, lambda body: body["parts"][0].__setitem__(key, value))


def body(key, value):
    return lambda d, root: forge(d, lambda b: b.__setitem__(key, value))


def relink(name, target):
    """Replace one of the cache's files by a link to `target(root)` (outside the cache)."""
    def apply(d, root):
        path = the_part(d) if name == "part" else d / name
        path.unlink()
        path.symlink_to(target(root))
    return apply


def pipe(name):
    def apply(d, root):
        path = the_part(d) if name == "part" else d / name
        path.unlink()
        os.mkfifo(path)
    return apply


def the_part(d: Path) -> Path:
    (part,) = d.glob("part-*.parquet")
    return part


def without_entry_field(key):
    return lambda d, root: forge(d, lambda b: b["parts"][0].pop(key))


def _manifest_dir(d, root):
    (d / MANIFEST_FILE).unlink()
    (d / MANIFEST_FILE).mkdir()


def _flip(d: Path) -> None:
    part = sorted(d.glob("part-*.parquet"))[0]
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0x5A
    part.write_bytes(bytes(data))


def _planted(name, make):
    """A corrupt part (so --repair has work) plus a planted `name` made by make(path, root)."""
    def apply(d, root):
        _flip(d)
        (d / name).unlink(missing_ok=True)
        make(d / name, root)
    return apply


VICTIM = lambda root: root / "victim_dir" / "victim.parquet"  # noqa: E731 - a byte copy of the real part

# Forged listings: the digest is recomputed, so only the content checks stand between them and a read.
NAMES = {
    "dotdot-victim": "../../victim_dir/victim.parquet",
    "absolute-victim": lambda n, root: str(VICTIM(root)),
    "etc-passwd": "/etc/passwd",
    "dotdot": "..",
    "dot": ".",
    "subdir": "a/b.parquet",
    "part-then-up": "part-x.parquet/../..",
    "real-then-up": lambda n, root: f"{n}/../../../victim_dir/victim.parquet",
    "backslashes": "..\\..\\victim_dir\\victim.parquet",
    "backslash-in-part": lambda n, root: n.replace("-", "\\", 1),
    "nul": lambda n, root: n + "\x00",
    "newline": lambda n, root: n + "\n",
    "trailing-space": lambda n, root: n + " ",
    "empty": "",
    "int": 7,
    "null": None,
    "list": lambda n, root: [n],
    "object": lambda n, root: {"name": n},
    "in-quarantine": lambda n, root: f"quarantine/{n}",
    "home": "~/victim.parquet",
    "url": "file:///etc/passwd",
    "fingerprint-file": "fingerprint.json",
    "lock-file": ".lock",
    "fullwidth-digit": lambda n, root: n.replace("0", "\uff10", 1),
    "uppercase-hex": lambda n, root: n[:-16] + "ABCDEF12" + n[-8:],
}
FIELDS = {
    "duplicate": lambda d, root: forge(d, lambda b: b.__setitem__("parts", b["parts"] * 2)),
    "negative-rows": field("rows", -1),
    "string-bytes": field("bytes", "2586"),
    "bool-crc": field("crc32", True),
    "huge-crc": field("crc32", 2**40),
    "bad-sha": field("sha256", "z" * 64),
    "extra-field": field("evil", 1),
    "missing-field": without_entry_field("sha256"),
    "entry-string": lambda d, root: forge(d, lambda b: b.__setitem__("parts", [b["parts"][0]["name"]])),
    "parts-object": lambda d, root: forge(d, lambda b: b.__setitem__("parts", {"a": b["parts"][0]})),
    "dim-negative": body("dim", -3),
    "dim-string": body("dim", "384"),
    "dim-bool": body("dim", True),
    "dim-null-with-parts": body("dim", None),
    "other-fingerprint": body("fingerprint", "0" * 32),
    "schema-99": body("schema_version", 99),
}
FILES = {  # id -> (damage, the error it must give)
    "nested-json": (lambda d, root: (d / MANIFEST_FILE).write_text("[" * 100_000 + "]" * 100_000), MANIFEST),
    "manifest-link": (relink(MANIFEST_FILE, lambda root: root / "victim_dir" / MANIFEST_FILE), MANIFEST),
    "manifest-dir": (_manifest_dir, MANIFEST),
    "manifest-pipe": (pipe(MANIFEST_FILE), MANIFEST),
    "part-link-to-victim": (relink("part", VICTIM), LINK),
    "part-dangling-link": (relink("part", lambda root: root / "victim_dir" / "nothing.parquet"), LINK),
    "part-pipe": (pipe("part"), LINK),
    "fingerprint-link": (relink("fingerprint.json", lambda root: root / "victim_dir" / "fingerprint.json"),
                         FINGERPRINT),
    "fingerprint-pipe": (pipe("fingerprint.json"), FINGERPRINT),
}
REPAIRS = {  # damage that --repair itself must refuse, touching nothing
    "lock-link": (_planted(".lock", lambda p, root: p.symlink_to(root / "victim_dir" / "made-by-lock")),
                  r"\.lock: a link where the cache's lock file belongs: remove it"),
    "quarantine-link": (_planted("quarantine", lambda p, root: p.symlink_to(root / "victim_dir")),
                        r"quarantine: not a directory of this cache \(a link or a file\): move it away"),
    "quarantine-file": (_planted("quarantine", lambda p, root: p.write_text("x")),
                        r"quarantine: not a directory of this cache"),
    "no-spec-anywhere": (lambda d, root: [(d / "fingerprint.json").unlink(), the_part(d).unlink()],
                         r"fingerprint.json: missing or corrupt, and no part holds the embedder spec"),
}
DAMAGE = {**{k: named(v) for k, v in NAMES.items()}, **FIELDS, **{k: v[0] for k, v in FILES.items()},
          **{f"repair-{k}": v[0] for k, v in REPAIRS.items()}}
SHARDS = {  # --shard text -> the error
    "1/18446744073709551616": "at most 10,000 shards",
    "99999999999999999999/99999999999999999999": "at most 10,000 shards",
    "1/99999999999999999999": "at most 10,000 shards",
    "1/10001": "at most 10,000 shards",
    "1/" + "9" * 5000: "at most 10,000 shards",
    "10001/10000": "numbered 1..N",
    "0/0": "numbered 1..N",
    "\u0661/\u0662": "write I/N",
    "1/2/3": "write I/N",
    "-1/2": "write I/N",
    "+1/2": "write I/N",
    "1.0/2": "write I/N",
}


def _cases():
    embed = ("embed", "{root}/pool.parquet", "--cache-dir")
    cases = [Bad(f"embed/{k}", (*embed, f"{{root}}/{k}"), MANIFEST, (k, "victim_dir")) for k in [*NAMES, *FIELDS]]
    cases += [Bad(f"embed/{k}", (*embed, f"{{root}}/{k}"), match, (k, "victim_dir")) for k, (_, match) in FILES.items()]
    fit = ("fit", "{root}/pool.parquet", "-k", "2", "--out", "{root}/out/f", "--cache-dir")
    cases += [Bad(f"fit/{k}", (*fit, f"{{root}}/{k}"), MANIFEST, (k, "victim_dir", "out"))
              for k in ("dotdot-victim", "absolute-victim")]
    cases += [Bad(f"repair/{k}", ("cache", "verify", f"{{root}}/repair-{k}", "--repair"), match,
                  (f"repair-{k}", "victim_dir")) for k, (_, match) in REPAIRS.items()]
    cases += [Bad(f"shard/{text[:24]}", (*embed, "{root}/cache", "--shard", text), rf"--shard .*{match}", ("cache",))
              for text, match in SHARDS.items()]
    return cases


CASES = _cases()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """The synthetic pool with its warm cache (`cache`), a victim directory beside it holding byte copies of the
    cache's part, manifest and fingerprint, and one damaged copy of the cache per DAMAGE."""
    root = tmp_path_factory.mktemp("hostile")
    pool_file_with_cache(root)
    clean = the_dir(root / "cache")
    (root / "victim_dir").mkdir()
    shutil.copy(the_part(clean), VICTIM(root))
    for name in (MANIFEST_FILE, "fingerprint.json"):
        shutil.copy(clean / name, root / "victim_dir" / name)
    for case, apply in DAMAGE.items():
        shutil.copytree(root / "cache", root / case)
        apply(the_dir(root / case), root)
    return root


@contextlib.contextmanager
def unblocked(root: Path, seconds: float = 10):
    """Fail instead of hanging when something opens a pipe planted under `root`: after `seconds`, a watchdog opens
    each pipe's other end and closes it, so a blocked reader sees an empty file (and the test its wrong error)."""
    pipes = [p for p in root.rglob("*") if stat.S_ISFIFO(p.lstat().st_mode)]
    opened = []

    def unblock():
        for fifo in pipes:
            with contextlib.suppress(OSError):  # ENXIO: nobody is reading it, as it should be
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                opened.append(fifo)
    watchdog = threading.Timer(seconds, unblock)
    watchdog.start()
    try:
        yield
    finally:
        watchdog.cancel()
    assert not opened, f"something opened the pipe(s) {opened}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_cache_fails_cleanly_and_nothing_outside_is_touched(case, hostile):
    with unblocked(hostile / case.watch[0]):  # the damaged copy
        assert_clean_failure(case, hostile)
    assert not (hostile / "victim_dir" / "made-by-lock").exists()


def test_repair_of_a_forged_listing_moves_nothing_outside_and_gives_back_the_real_part(hostile, tmp_path):
    clean = the_dir(hostile / "cache")
    keys = EmbeddingCache.open(clean).index()["key"].to_list()
    expected = EmbeddingCache.open(clean).lookup(keys)
    outside = snapshot([hostile / "victim_dir", hostile / "cache"])
    recovered = [*((k, named(v)) for k, v in NAMES.items()), *FIELDS.items(),
                 *((k, FILES[k][0]) for k in ("nested-json", "manifest-link", "manifest-dir", "manifest-pipe"))]
    lost = [(k, FILES[k][0]) for k in ("part-pipe", "part-link-to-victim", "part-dangling-link")]
    for case, apply in recovered + lost:
        shutil.copytree(hostile / "cache", tmp_path / case)
        d = the_dir(tmp_path / case)
        apply(d, hostile)
        with unblocked(d):
            report = repair(d)
        assert all(Path(q).parent == d for q in report.quarantined), (case, report)
        assert verify(d) == [], case
        if (case, apply) in lost:  # the link or pipe itself is set aside (never what it points to)
            assert [Path(q).name for q in report.quarantined] == [the_part(d / "quarantine").name], case
            assert report.vectors_dropped == 72, case
            assert EmbeddingCache.open(d).missing(keys) == keys, case
        else:
            np.testing.assert_array_equal(EmbeddingCache.open(d).lookup(keys), expected, err_msg=case)
    assert snapshot([hostile / "victim_dir", hostile / "cache"]) == outside


# ---------------------------------------------------------------------------------------------- repair


def two_part_cache(root: Path, n: int = 6, spec: dict = SPEC):
    cache = EmbeddingCache(root, spec)
    keys = text_keys([f"text {i}" for i in range(n)])
    X = np.random.default_rng(0).standard_normal((n, 8)).astype(np.float32)
    cache.write_part(keys[: n // 2], X[: n // 2])
    cache.write_part(keys[n // 2:], X[n // 2:])
    return cache, keys, X


def test_repair_of_a_cache_this_user_cannot_write_is_refused_and_changes_nothing(tmp_path):
    """The cache directory is read-only. Root writes anyway, so as root the command runs in a real process that
    holds no permission override (setpriv drops CAP_DAC_OVERRIDE: root is then bound by the mode bits)."""
    cache, _, _ = two_part_cache(tmp_path / "cache")
    _flip(cache.path)  # something to repair
    (cache.path / ".part-x.parquet.tmp").write_bytes(b"half")
    match = r"cannot repair: .* is not writable by this user .*nothing was changed"
    cache.path.chmod(0o555)
    try:
        if os.geteuid() != 0:
            assert_clean_failure(Bad("read-only", ("cache", "verify", str(cache.path), "--repair"), match,
                                     (str(cache.path),)), tmp_path)
            return
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: no way to drop the permission override")
        before = snapshot([cache.path])
        caps = "-dac_override,-dac_read_search,-fowner"
        res = subprocess.run(["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", sys.executable, "-m",
                              "embrm", "cache", "verify", str(cache.path), "--repair"],
                             capture_output=True, text=True, cwd=ROOT_DIR, timeout=120)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
        assert lines[0].startswith("error: ") and re.search(match, lines[0]), lines
        assert snapshot([cache.path]) == before and not (cache.path / "quarantine").exists()
    finally:
        cache.path.chmod(0o755)


def test_a_deleted_fingerprint_is_reported_by_verify_and_restored_by_repair(tmp_path):
    cache, keys, X = two_part_cache(tmp_path)
    fingerprint = (cache.path / "fingerprint.json").read_bytes()
    (cache.path / "fingerprint.json").unlink()
    for target in (cache.path, tmp_path):  # the cache directory itself, or the root holding it
        res = runner.invoke(app, ["cache", "verify", str(target)])
        assert res.exit_code == 1 and "fingerprint.json: missing: run `embrm cache verify --repair" in res.stderr
    res = runner.invoke(app, ["cache", "verify", str(tmp_path), "--repair"])
    assert res.exit_code == 0 and "restored fingerprint.json" in res.stdout, res.output
    assert (cache.path / "fingerprint.json").read_bytes() == fingerprint and verify(cache.path) == []
    np.testing.assert_array_equal(EmbeddingCache(tmp_path, SPEC).lookup(keys), X)
    (cache.path / "fingerprint.json").unlink()
    (cache.path / MANIFEST_FILE).unlink()  # both gone: the parts still carry everything
    assert runner.invoke(app, ["cache", "verify", str(tmp_path), "--repair"]).exit_code == 0
    assert verify(cache.path) == [] and (cache.path / "fingerprint.json").read_bytes() == fingerprint


@pytest.mark.parametrize("survivor", [False, True], ids=["old-parts-gone", "one-old-part-left"])
def test_a_manifest_from_before_a_merge_gets_the_merged_part_back(tmp_path, survivor):
    cache, keys, X = two_part_cache(tmp_path)
    old_manifest, old_part = (cache.path / MANIFEST_FILE).read_bytes(), cache.parts()[0]
    old_bytes = old_part.read_bytes()
    cache.settle()  # the merge: one new part listed, the old parts deleted
    (merged,) = cache.parts()
    (cache.path / MANIFEST_FILE).write_bytes(old_manifest)  # e.g. a backup restored
    if survivor:
        old_part.write_bytes(old_bytes)
    with pytest.raises(EmbrmError, match="listed in the manifest but missing"):
        EmbeddingCache(tmp_path, SPEC).lookup(keys)
    report = repair(cache.path)
    assert report.vectors_dropped == 0 and any(f"re-listed {merged}" in n for n in report.notes), report
    assert str(merged) not in report.quarantined and merged.exists()
    assert verify(cache.path) == [] and EmbeddingCache(tmp_path, SPEC).missing(keys) == []
    np.testing.assert_array_equal(EmbeddingCache(tmp_path, SPEC).lookup(keys), X)
    res = runner.invoke(app, ["cache", "verify", str(tmp_path)])
    assert res.exit_code == 0 and "note:" not in res.stdout  # nothing left over: the redundant part is set aside


def test_repair_relists_only_intact_parts_of_this_cache_that_add_texts(tmp_path):
    cache, keys, X = two_part_cache(tmp_path)
    first = cache.parts()[0]
    other = EmbeddingCache(tmp_path / "other", SPEC)
    other.write_part(text_keys(["new a", "new b"]), np.ones((2, 4), np.float32))  # same embedder, other dim
    wrong_dim = cache.path / other.parts()[0].name
    shutil.copy(other.parts()[0], wrong_dim)
    extra = EmbeddingCache(tmp_path / "extra", SPEC)
    extra.write_part(text_keys(["new c"]), np.ones((1, 8), np.float32))  # a killed run's last batch
    killed = cache.path / extra.parts()[0].name
    shutil.copy(extra.parts()[0], killed)
    first.unlink()
    report = repair(cache.path)
    assert any(f"re-listed {killed}" in n for n in report.notes) and str(wrong_dim) in report.quarantined
    assert str(first) in report.quarantined or not first.exists()
    fresh = EmbeddingCache(tmp_path, SPEC)
    assert fresh.missing(keys + text_keys(["new c"])) == keys[:3] and verify(cache.path) == []


def _imported_pool(tmp_path):
    pool, _ = pool_file_with_cache(tmp_path)
    vectors = np.random.default_rng(1).standard_normal((12, 6, 8)).astype(np.float32)
    np.save(tmp_path / "vecs.npy", vectors)
    args = ["import", str(pool), str(tmp_path / "vecs.npy"), "--model", "org/m", "--layer", "3", "--pooling", "last",
            "--cache-dir", str(tmp_path / "imported")]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return pool, args, the_dir(tmp_path / "imported")


def test_the_advice_after_dropping_vectors_fits_the_cache_origin(tmp_path):
    pool, import_args, imported = _imported_pool(tmp_path)
    embedded = the_dir(tmp_path / "cache")
    expected = {imported: "re-run `embrm import DATASET vecs.npy --model org/m --layer 3 --pooling last --cache-dir "
                          f"{imported.parent}`", embedded: "re-run `embrm embed`"}
    for d, advice in expected.items():
        part = the_part(d)
        part.write_bytes(part.read_bytes()[:500])
        with pytest.raises(EmbrmError) as read:
            EmbeddingCache.open(d).lookup(EmbeddingCache.open(d).index()["key"].to_list())
        assert f"then {advice}" in str(read.value)
        res = runner.invoke(app, ["cache", "verify", str(d), "--repair"])
        assert res.exit_code == 0 and f"72 vectors dropped from {d}: {advice}" in res.stdout, res.stdout
        assert ("embrm embed" in res.stdout) == (d == embedded)
    res = runner.invoke(app, import_args)  # the advice works: the import refills what repair set aside
    assert res.exit_code == 0 and "72 new" in res.stdout and verify(imported) == []


# ---------------------------------------------------------------------------------------------- readers vs merges


def test_a_reader_whose_manifest_a_merge_replaced_reads_the_merged_part(tmp_path):
    cache, keys, X = two_part_cache(tmp_path)
    reader = EmbeddingCache(tmp_path, SPEC)
    listed = reader.manifest()  # the reader has the old listing ...
    EmbeddingCache(tmp_path, SPEC).settle()  # ... when another process merges and deletes its parts
    assert not any((cache.path / p.name).exists() for p in listed.parts)
    np.testing.assert_array_equal(reader.lookup(keys), X)
    assert reader.missing(keys) == [] and len(reader.manifest().parts) == 1
    stale = EmbeddingCache(tmp_path, SPEC)
    stale.manifest()
    stale.parts()[0].unlink()  # truly gone, the manifest unchanged: damage, not a race
    with pytest.raises(EmbrmError, match="listed in the manifest but missing"):
        stale.lookup(keys)


WRITER = """
import sys, time
import numpy as np
from embrm.embedding._cache import EmbeddingCache, text_keys
spec, n, seconds = {spec!r}, {n}, {seconds}
keys = text_keys([f"text {{i}}" for i in range(n)])
X = np.random.default_rng(0).standard_normal((n, 8)).astype(np.float32)
print("ready", flush=True)
merges, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    cache = EmbeddingCache(sys.argv[1], spec)
    cache.write_part(keys[:2], X[:2])  # the same texts again: every merge gives the same vectors
    cache.settle()
    merges += 1
print(merges, flush=True)
"""


def test_readers_never_fail_while_another_process_merges(tmp_path):
    cache, keys, X = two_part_cache(tmp_path)
    writer = subprocess.Popen([sys.executable, "-c", WRITER.format(spec=SPEC, n=6, seconds=1.5), str(tmp_path)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT_DIR)
    assert writer.stdout.readline().strip() == "ready", writer.stderr.read()
    reads = 0
    while writer.poll() is None:
        np.testing.assert_array_equal(EmbeddingCache(tmp_path, SPEC).lookup(keys), X)
        reads += 1
    merges = int(writer.stdout.read().strip() or 0)
    assert writer.returncode == 0 and merges > 5 and reads > 10, (merges, reads, writer.stderr.read())
    assert verify(cache.path) == []


# ---------------------------------------------------------------------------------------------- shards


class HashEmbedder:
    """A deterministic embedder (each text's vector is a function of its bytes): the shard plan is under test."""

    def spec(self) -> dict:
        return {"backend": "test-hash", "model": "blake2b", "dim": 8}

    def embed(self, texts, response_starts=None) -> EmbedBatch:
        rows = [np.frombuffer(hashlib.blake2b(t.encode(), digest_size=8).digest(), np.uint8) for t in texts]
        return EmbedBatch.build(np.stack(rows).astype(np.float32), np.full(len(texts), -1), np.zeros(len(texts), bool))


def _responses(n=40):
    return pl.DataFrame({"prompt_id": [f"q{i % 5}" for i in range(n)], "prompt": [f"Q{i % 5}" for i in range(n)],
                         "response": ["word " * (i + 1) for i in range(n)]})


def test_shards_that_disagree_on_the_plan_are_refused_and_agreeing_ones_complete(tmp_path):
    df, emb = _responses(), HashEmbedder()
    first = embed_shard(df, emb, Shard(1, 2), cache_dir=tmp_path, batch_size=4, progress=False)
    assert first.result is None and first.n_missing > 0
    cache_dir = Path(first.cache_dir)
    before = snapshot([cache_dir])
    for shard, batch_size, message in [(Shard(2, 2), 3, r"--shard 2/2 --batch-size 3: .* run --shard I/2 "
                                                        r"--batch-size 4 \(recorded in shards.json\)"),
                                       (Shard(2, 3), 4, r"run --shard I/2 --batch-size 4"),
                                       (Shard(3, 3), 5, r"run --shard I/2 --batch-size 4")]:
        with pytest.raises(EmbrmError, match=message) as refused:
            embed_shard(df, emb, shard, cache_dir=tmp_path, batch_size=batch_size, progress=False)
        assert "\n" not in str(refused.value) and snapshot([cache_dir]) == before
    last = embed_shard(df, emb, Shard(2, 2), cache_dir=tmp_path, batch_size=4, progress=False)
    assert last.result is not None and last.n_missing == 0
    single = embed_dataset(df, emb, cache_dir=tmp_path / "single", batch_size=4, progress=False)
    np.testing.assert_array_equal(last.result.X, single.X)
    again = embed_shard(df, emb, Shard(1, 3), cache_dir=tmp_path, batch_size=7, progress=False)
    assert again.result is not None and again.n_embedded == 0  # complete: nothing to plan, nothing refused
    assert len(json.loads((cache_dir / PLAN_FILE).read_text())) == 1


def test_a_single_process_finishes_what_disagreeing_shards_left(tmp_path):
    df, emb = _responses(), HashEmbedder()
    embed_shard(df, emb, Shard(1, 3), cache_dir=tmp_path, batch_size=4, progress=False)
    whole = embed_dataset(df, emb, cache_dir=tmp_path, batch_size=9, progress=False)  # no --shard: all missing
    assert whole.n_texts == 40 and EmbeddingCache.open(whole.cache_dir).missing(whole.keys) == []


def test_shard_bounds_and_types():
    assert Shard.parse("10000/10000") == Shard(MAX_SHARDS, MAX_SHARDS) and Shard.parse(" 001 / 02 ") == Shard(1, 2)
    for args, message in [((1, 10**30), "at most 10,000 shards"), ((1, 10**5000), "at most 10,000 shards"),
                          (("1", 2), "whole numbers"), ((True, 2), "whole numbers"), ((1.0, 2), "whole numbers")]:
        with pytest.raises(EmbrmError, match=message) as refused:
            Shard(*args)
        assert len(str(refused.value)) < 200


def test_the_hostile_pool_renders_as_the_cache_was_filled(hostile):
    """The cases above fail on the cache, not on a cold path: the clean copy is warm for `embed`."""
    res = runner.invoke(app, ["embed", str(hostile / "pool.parquet"), "--cache-dir", str(hostile / "cache")])
    assert res.exit_code == 0 and "embedded 0 new texts" in res.stdout, res.output
    ds = load_dataset(hostile / "pool.parquet")
    assert len(set(text_keys(render(ds.responses)[0]))) == 72
