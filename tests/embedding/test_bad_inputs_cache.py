"""Bad caches and cache paths across every command that reads vectors: one `error:` line naming the file and the
fix, exit 2, and the cache left exactly as it was (nothing reads a damaged cache, nothing "repairs" it unasked)."""

import json
import shutil

import pytest
from badinput import Bad, assert_clean_failure
from realdata import needs_data
from typer.testing import CliRunner

from embrm.cli import app

pytestmark = [needs_data, pytest.mark.slow]  # every case damages renamed_pool's MiniLM cache

POOL = "{root}/pool.toml"
EMBED = ("--dtype", "float32")


def _flip_byte(cache):
    (part,) = cache.glob("*/part-*.parquet")
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0x5A
    part.write_bytes(bytes(data))


def _edit_manifest(cache):
    (manifest,) = cache.glob("*/manifest.json")
    doc = json.loads(manifest.read_text())
    doc["dim"] = 128
    manifest.write_text(json.dumps(doc))


def _truncate_fingerprint(cache):
    (fp,) = cache.glob("*/fingerprint.json")
    fp.write_bytes(fp.read_bytes()[:30])


def _swap_part(cache):
    """Another cache's part (right embedder, right format) under the listed name: a forged part."""
    (part,) = cache.glob("*/part-*.parquet")
    (other,) = (cache.parent / "good" / part.parent.name).glob("part-*.parquet")
    from embrm.embedding._cache import EmbeddingCache

    source = EmbeddingCache.open(other.parent)
    keys = source.index()["key"].to_list()[:5]
    forged = EmbeddingCache(cache.parent / "forge", source.spec)
    forged.write_part(keys, source.lookup(keys) + 1)
    shutil.copy(forged.parts()[0], part)


DAMAGE = {
    "flipped-byte": _flip_byte,
    "no-manifest": lambda c: next(c.glob("*/manifest.json")).unlink(),
    "edited-manifest": _edit_manifest,
    "missing-part": lambda c: next(c.glob("*/part-*.parquet")).unlink(),
    "truncated-part": lambda c: (p := next(c.glob("*/part-*.parquet"))).write_bytes(p.read_bytes()[:1000]),
    "truncated-fingerprint": _truncate_fingerprint,
    "forged-part": _swap_part,
}
MESSAGE = {
    "flipped-byte": r"part-.*checksum mismatch.*verify --repair",
    "no-manifest": r"parts without a manifest.*verify --repair",
    "edited-manifest": r"manifest.json: corrupt or edited manifest.*verify --repair",
    "missing-part": r"part-.*listed in the manifest but missing.*verify --repair",
    "truncated-part": r"part-.*bytes where the manifest lists.*verify --repair",
    "truncated-fingerprint": r"fingerprint.json: corrupt or edited.*verify --repair",
    "forged-part": r"part-.*(bytes where the manifest lists|checksum mismatch).*verify --repair",
}


def _cases():
    cases = []
    for damage, message in MESSAGE.items():
        cache = f"{{root}}/{damage}"
        common = ("--cache-dir", cache)
        cases += [
            Bad(f"embed/{damage}", ("embed", POOL, *EMBED, *common), message, (damage,)),
            Bad(f"fit/{damage}", ("fit", POOL, *EMBED, *common, "-k", "2", "--out", "{root}/out/fit-" + damage),
                message, (damage, "out")),
            Bad(f"score/{damage}", ("score", "{root}/model", POOL, *common, "--out", f"{{root}}/out/{damage}.parquet"),
                message, (damage, "model", "out")),
            Bad(f"bon-sim/{damage}", ("bon-sim", POOL, "--model", "{root}/model", *common), message,
                (damage, "model")),
            Bad(f"laser/{damage}", ("laser", POOL, *EMBED, *common, "--arms", "bt,length"), message, (damage,)),
        ]
    as_file = ("--cache-dir", "{root}/pool.toml")
    cases += [
        Bad("embed/cache-dir-is-a-file", ("embed", POOL, *EMBED, *as_file), r"pool.toml: is a file.*--cache-dir",
            ("pool.toml",)),
        Bad("fit/cache-dir-is-a-file", ("fit", POOL, *EMBED, *as_file, "--out", "{root}/out/f"),
            r"pool.toml: is a file.*--cache-dir", ("pool.toml",)),
        Bad("score/cache-dir-is-a-file", ("score", "{root}/model", POOL, *as_file, "--out", "{root}/out/s.parquet"),
            r"is a file.*--cache-dir",
            ("pool.toml", "model")),
        Bad("bon-sim/cache-dir-is-a-file", ("bon-sim", POOL, "--model", "{root}/model", *as_file),
            r"is a file.*--cache-dir", ("pool.toml",)),
        Bad("cache-info/file", ("cache", "info", "{root}/pool.toml"), r"pool.toml: a file, not an embrm cache",
            ("pool.toml",)),
        Bad("cache-verify/file", ("cache", "verify", "{root}/pool.toml"), r"pool.toml: a file, not an embrm cache",
            ("pool.toml",)),
        Bad("cache-verify/part-file", ("cache", "verify", "{root}/good/x/part.parquet"), r"no such cache directory"),
        Bad("cache-info/missing", ("cache", "info", "{root}/nowhere"), r"nowhere: no such cache directory"),
        Bad("cache-verify/missing", ("cache", "verify", "{root}/nowhere"), r"nowhere: no such cache directory"),
        Bad("cache-verify/empty-dir", ("cache", "verify", "{root}/empty"), r"empty: holds no embrm cache"),
        Bad("cache-info/empty-dir", ("cache", "info", "{root}/empty"), r"empty: holds no embrm cache"),
        Bad("cache-verify/repair-empty-dir", ("cache", "verify", "{root}/empty", "--repair"),
            r"empty: holds no embrm cache"),
    ]
    return cases


CASES = _cases()


@pytest.fixture(scope="session")
def damaged(renamed_pool, tmp_path_factory):
    """The fixture pool with one copy of its real cache per kind of damage, and a model fitted on the intact one."""
    root = tmp_path_factory.mktemp("damaged")
    for name in ("pool.parquet", "pool.toml"):
        shutil.copy(renamed_pool / name, root / name)
    shutil.copytree(renamed_pool / "cache", root / "good")
    for damage, apply in DAMAGE.items():
        shutil.copytree(renamed_pool / "cache", root / damage)
        apply(root / damage)
    (root / "empty").mkdir()
    res = CliRunner().invoke(app, ["fit", str(root / "pool.toml"), *EMBED, "--cache-dir", str(root / "good"), "-k",
                                   "2", "--out", str(root / "model")])
    assert res.exit_code == 0, res.output
    return root


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_cache_fails_cleanly_and_is_left_untouched(case, damaged):
    assert_clean_failure(case, damaged)


def test_every_damage_is_found_by_verify_and_repair_leaves_a_usable_cache(damaged, tmp_path):
    runner = CliRunner()
    for damage in DAMAGE:
        cache = tmp_path / damage
        shutil.copytree(damaged / damage, cache)
        assert runner.invoke(app, ["cache", "verify", str(cache)]).exit_code == 1, damage
        repaired = runner.invoke(app, ["cache", "verify", str(cache), "--repair"])
        assert repaired.exit_code == 0, repaired.output
        assert runner.invoke(app, ["cache", "verify", str(cache)]).exit_code == 0, damage
        embed = runner.invoke(app, ["embed", str(damaged / "pool.toml"), *EMBED, "--cache-dir", str(cache)])
        assert embed.exit_code == 0, (damage, embed.output)
