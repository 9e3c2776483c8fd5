"""`embrm plan`: a study's design and standardised MDE before it runs, each finding's power after it ran, an older
findings.json read for what it holds, and bad input as one line."""

import json
import math

import pytest
from scipy import stats as st
from typer.testing import CliRunner

from embrm.cli import app
from embrm.evaluation import Components, Effect, power_of
from embrm.studies import load_study, plan_study

STUDY = """name = "plan-tiny"
seeds = [0, 1, 2]
human_pairs = []
methods = []
replicate = true
test_size = 0.25
[[datasets]]
generate = "overopt"
name = "ov"
params = { n_prompts = 40, n_candidates = 30, dim = 8, seed = 0 }
[[noise]]
name = "bt10"
beta = 10.0
[[learners]]
head = "linear"
[[learners]]
head = "mlp"
"""


def effect(estimate: float, se: float) -> Effect:
    c = Components(prompt=0.04, interaction=0.01, seed=0.0005, seeds=3, held_out=10.0, pool=40)
    z = estimate / se
    return Effect(estimate, estimate - 1.96 * se, estimate + 1.96 * se, 0.2, 3, 6, 30, "random effects", se=se,
                  p_value=float(2 * st.norm.sf(abs(z))), components=c)


@pytest.fixture(scope="session")
def plan_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("plan")
    (root / "s.toml").write_text(STUDY)
    return root


def invoke(*args):
    return CliRunner().invoke(app, ["plan", *map(str, args)])


def test_the_design_and_its_standardised_mde_before_any_run(plan_dir):
    result = invoke(plan_dir / "s.toml", "--out", plan_dir / "none", "--format", "json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["jobs"] == 3 * 2 and plan["replication_jobs"] == 2 * 6 and plan["findings"] is None
    (ov,) = plan["datasets"]
    assert (ov["prompts"], ov["held_out"], ov["jobs"], ov["replication_jobs"]) == (40, 10, 6, 12)
    d = (st.norm.ppf(0.975) + st.norm.ppf(0.8)) * math.sqrt((1 - 10 / 40) / (3 * 10) + 1 / 40)
    assert ov["mde"] == pytest.approx(d)
    assert "no findings yet" in plan["note"] and "embrm run" in plan["note"]
    text = invoke(plan_dir / "s.toml", "--out", plan_dir / "none")
    assert text.exit_code == 0 and "| `ov` | pool | 40 | 10 | 6 | 12 |" in text.stdout
    assert "all prompt variance" in text.stdout and "no findings yet" in text.stdout


def test_more_seeds_and_prompts_lower_the_mde(plan_dir):
    study = load_study(plan_dir / "s.toml")
    base = plan_study(study, plan_dir / "none").datasets[0].mde
    more_seeds = plan_study(study.__class__(**{**study.__dict__, "seeds": list(range(12))}), plan_dir / "none")
    assert more_seeds.datasets[0].mde < base and more_seeds.jobs == 12 * 2


def test_findings_of_a_run_get_their_power_stored_or_recomputed(plan_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".study").write_text(json.dumps({"study": "plan-tiny"}))
    strong, weak = effect(0.2, 0.05), effect(0.01, 0.05)
    rows = [{"key": "ov|bt10|a", "claim": "a", "verdict": "reproduced", "q_value": 0.001, "effect": strong.to_dict(),
             "power": power_of(strong).to_dict()},
            {"key": "ov|bt10|b", "claim": "b", "verdict": "not reproduced (inconclusive)", "q_value": 0.8,
             "effect": weak.to_dict()},  # no stored power: recomputed from the effect
            {"key": "ov|all|descriptive", "claim": "c", "verdict": "not measured", "effect": None}]
    (out / "findings.json").write_text(json.dumps(rows))
    result = invoke(plan_dir / "s.toml", "--out", out, "--format", "json")
    assert result.exit_code == 0, result.output
    found = {f["key"]: f for f in json.loads(result.stdout)["findings"]}
    assert set(found) == {"ov|bt10|a", "ov|bt10|b"}  # descriptive findings have no power
    b, expected = found["ov|bt10|b"], power_of(weak)
    assert b["mde"] == pytest.approx(expected.mde) and b["seeds_needed"] == expected.seeds_needed
    assert b["prompts_needed"] == expected.prompts_needed and b["q_value"] == 0.8
    assert found["ov|bt10|a"]["seeds_needed"] == power_of(strong).seeds_needed
    text = invoke(plan_dir / "s.toml", "--out", out).stdout
    assert "| ov · bt10 · b | +0.010 | not reproduced (inconclusive) | 0.800 |" in text


def test_an_older_findings_file_is_read_for_what_it_holds(plan_dir, tmp_path):
    (tmp_path / "study.json").write_text(json.dumps({"study": {"name": "plan-tiny"}}))  # an older run's marker
    (tmp_path / "findings.json").write_text(json.dumps([
        {"key": "ov|x", "claim": "x", "verdict": "reproduced", "effect": {
            "estimate": 0.1, "lo": 0.02, "hi": 0.18, "effect_size": 0.3, "n_seeds": 3, "n_units": 6,
            "n_prompts": 30, "method": "two-stage bootstrap", "level": 0.95}}]))
    result = invoke(plan_dir / "s.toml", "--out", tmp_path, "--format", "json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    (f,) = plan["findings"]
    se = 0.16 / (2 * st.norm.ppf(0.975))
    assert f["mde"] == pytest.approx((st.norm.ppf(0.975) + st.norm.ppf(0.8)) * se)
    assert f["q_value"] == pytest.approx(2 * st.norm.sf(0.1 / se)) and f["seeds_needed"] is None
    assert "earlier embrm" in plan["note"]


@pytest.mark.parametrize("content, message", [
    ("{not json", "not a findings.json of `embrm run`"),
    ('{"key": 1}', "not a findings.json of `embrm run`"),
    ('[{"key": "a", "effect": {"estimate": 1, "bogus": 2}}]', "not a findings.json of `embrm run`"),
])
def test_a_damaged_findings_file_is_one_line(plan_dir, tmp_path, content, message):
    (tmp_path / ".study").write_text(json.dumps({"study": "plan-tiny"}))
    (tmp_path / "findings.json").write_text(content)
    result = invoke(plan_dir / "s.toml", "--out", tmp_path)
    assert result.exit_code == 2 and message in result.output, result.output
    assert result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1


def test_bad_study_files_and_another_studys_results_are_one_line(plan_dir, tmp_path):
    missing = invoke(tmp_path / "nope.toml")
    assert missing.exit_code == 2 and "no such study file" in missing.output
    (tmp_path / ".study").write_text(json.dumps({"study": "other"}))
    other = invoke(plan_dir / "s.toml", "--out", tmp_path)
    assert other.exit_code == 2 and "holds the results of study 'other'" in other.output
    assert len(other.output.strip().splitlines()) == 1
