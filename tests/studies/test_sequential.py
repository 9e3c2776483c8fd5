"""`embrm run --until-decided --max-seeds N`: looks add seeds in batches up to max_seeds, the stop reason is stated
and recorded, findings carry their last Look, the report explains it; and the group-sequential test keeps the false
decision rate of repeated looks at alpha where naive looks do not."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from embrm.cli import app
from embrm.evaluation import Design, Look, SequentialTest, paired_effect, simulate_units
from embrm.studies._sequential import more_seeds, stop_reason

# a generated pool (no embedding) whose weak labels leave one finding undecided until max_seeds (checked below)
STUDY = """name = "seq-tiny"
seeds = [0, 1]
human_pairs = []
methods = []
replicate = false
k = 3
aggregations = ["mean", "min"]
[[datasets]]
generate = "overopt"
name = "ov"
params = { n_prompts = 40, n_candidates = 30, dim = 8, seed = 0 }
[labels]
n_pairs = 60
[[noise]]
name = "bt3"
beta = 3.0
[[learners]]
head = "linear"
"""


@pytest.fixture(scope="session")
def sequential_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("seq")
    (root / "s.toml").write_text(STUDY)
    result = CliRunner().invoke(app, ["run", str(root / "s.toml"), "--out", str(root / "out"), "--cache-dir",
                                      str(root / "cache"), "-j", "1", "--until-decided", "--max-seeds", "5",
                                      "--format", "json"])
    assert result.exit_code == 0, result.output
    return root / "out", json.loads(result.stdout)


def test_looks_add_batches_of_seeds_up_to_max_seeds_and_state_why_they_stopped(sequential_run):
    out, summary = sequential_run
    seq = summary["sequential"]
    looks = seq["looks"]
    assert seq["batch"] == 2 and [k["seeds"] for k in looks] == [2, 4, 5]  # the last batch lands on max_seeds
    assert all(k["continuing"] >= 1 for k in looks[:-1]) and looks[-1]["continuing"] == 0
    assert seq["reason"].startswith("max_seeds reached (5 seeds, look 3): 1 of 4 findings still undecided")
    seeds = {int(p.stem.rsplit("seed", 1)[1].split("-")[0]) for p in (out / "jobs").glob("*.json")}
    assert seeds == {0, 1, 2, 3, 4}  # new seeds continue after the largest, and no more than max_seeds ran
    assert json.loads((out / "study.json").read_text())["sequential"] == seq
    assert json.loads((out / "study.json").read_text())["study"]["seeds"] == [0, 1, 2, 3, 4]


def test_findings_carry_their_deciding_look_and_the_report_explains_it(sequential_run):
    out, summary = sequential_run
    tested = [f for f in summary["findings"] if f["effect"]]
    assert tested and all(f["sequential"] for f in tested)
    for f in tested:
        look = f["sequential"]
        assert f["effect"]["n_seeds"] == 5 and look["seeds"] <= 5
        assert f["verdict"] == (look["status"] if look["status"] in ("reproduced", "reversed") else
                                "not reproduced (inconclusive)")
        assert look["lo"] < look["hi"] and (abs(look["z"]) >= look["bound"]) == (look["status"] in ("reproduced",
                                                                                                  "reversed"))
        if look["status"] == "futile":  # a decided finding stopped at an earlier look and kept it
            assert look["seeds"] < 5
    undecided = [f for f in tested if f["sequential"]["status"] == "not reproduced (inconclusive)"]
    assert len(undecided) == 1 and undecided[0]["sequential"]["seeds"] == 5
    assert json.loads((out / "findings.json").read_text()) == summary["findings"]
    report = (out / "report.md").read_text()
    section = report.split("## Sequential design", 1)[1].split("\n## ", 1)[0]
    assert report.index("## Findings") < report.index("## Sequential design")
    assert "| 1 | 2 |" in section and "| 3 | 5 |" in section and "max_seeds reached" in section
    assert "estimate ± bound·se" in section and "group-sequential boundary" in section


def test_the_stop_reason_and_the_batches():
    def look(key, status, seeds=4):
        return Look(key, seeds, 0.5, 1.0, 2.5, status, -1.0, 1.0, 0.5)

    assert more_seeds([0, 1, 2], 3, 12) == [3, 4, 5] and more_seeds([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 3, 12) == [10, 11]
    assert more_seeds([5, 9, 7], 3, 4) == [10]
    assert stop_reason({"a": look("a", "reproduced"), "b": look("b", "futile")}, 2, 6, 12).startswith(
        "every finding decided (crossed a boundary or futile) at look 2")
    assert stop_reason({"a": look("a", "reproduced"), "b": look("b", "continue")}, 2, 6, 12) is None
    assert stop_reason({"a": look("a", "not reproduced (inconclusive)")}, 4, 12, 12) == (
        "max_seeds reached (12 seeds, look 4): 1 of 1 findings still undecided")


@pytest.mark.parametrize("args, message", [
    (["--max-seeds", "6"], "--until-decided and --max-seeds go together"),
    (["--until-decided"], "--until-decided and --max-seeds go together"),
    (["--until-decided", "--max-seeds", "2"], "--max-seeds 2: the study already has 2 seeds: give more than 2"),
    (["--until-decided", "--max-seeds", "20000"], "at most 10000 in one study: give --max-seeds <= 10000"),
])
def test_bad_max_seeds_is_one_line_and_exit_2(tmp_path, args, message):
    (tmp_path / "s.toml").write_text(STUDY)
    result = CliRunner().invoke(app, ["run", str(tmp_path / "s.toml"), "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_sequential_looks_keep_the_false_decision_rate_where_naive_looks_exceed_it():
    """Simulated studies under no effect, seeds 3, 6, 9, 12 (the first k seeds of one 12-seed study at each look):
    one SequentialTest per study stops at its first decision; naive looks stop at the first plain 95 % interval
    that excludes 0."""
    design = Design(pool=400, held_out=0.2, seeds=12, units=2, prompt_sd=0.3, interaction_sd=0.3, seed_sd=0.02)
    rng = np.random.default_rng(8)
    studies = 150  # each look's boundary is a 200k-path Monte Carlo (~30 ms): 150 studies take ~5 s
    sequential = naive = 0
    for i in range(studies):
        units = simulate_units(design, rng)
        test = SequentialTest(max_seeds=12)
        seq_done = naive_done = False
        for seeds in (3, 6, 9, 12):
            effect = paired_effect([u for u in units if u.seed < seeds], pool=design.pool)
            if not seq_done and (status := test.look("f", effect).status) != "continue":
                sequential += status in ("reproduced", "reversed")
                seq_done = True
            if not naive_done and (effect.lo > 0 or effect.hi < 0):
                naive += 1
                naive_done = True
    rate, naive_rate = sequential / studies, naive / studies
    se = np.sqrt(0.05 * 0.95 / studies)
    assert rate <= 0.05 + 2 * se, (rate, naive_rate)
    assert naive_rate > rate, (rate, naive_rate)
