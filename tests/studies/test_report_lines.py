"""The report's descriptive (untested) lines read the right way round: the over-optimisation line and table agree on
what a peak and a drop are (peak − n = N, positive when gold falls), the calibration table gives a temperature's
median and range (never a mean ± t-interval of a heavy-tailed quantity), and the timing table says that jobs found
done were loaded."""

import re
from types import SimpleNamespace

import polars as pl

from embrm.studies import StudyTimings
from embrm.studies._findings import _overoptimisation
from embrm.studies._report import _timing_section
from embrm.studies._tables import calibration_markdown, overoptimisation_markdown, peaks


def bon(rows: list[tuple[int, int, float, float]]) -> pl.DataFrame:
    """One bon_summary row per (seed, best_n, gold_at_best_n, gold) of the ensemble mean; random 0, oracle 2 (so
    gain = gold / 2), N = 20."""
    return pl.DataFrame([{"dataset": "d", "variant": "pool", "noise": "bt10", "learner": "linear", "seed": s,
                          "proxy": "mean", "best_n": b, "n_max": 20, "gold_at_best_n": at_b, "gold": g,
                          "gain": g / 2, "random": 0.0, "oracle": 2.0} for s, (_, b, at_b, g) in enumerate(rows)])


# seed 0: peaks at n = 5 and falls 0.6 -> 0.4; seed 1: its curve's best n < N averages fewer prompts and sits BELOW
# the whole-pool gold at n = N (no fall); seed 2: peaks at N (the curve at N, over full pools only, differs)
MIXED = [(0, 5, 0.6, 0.4), (1, 10, 0.30, 0.34), (2, 20, 0.52, 0.50)]


def test_a_drop_is_peak_minus_n_max_and_a_peak_below_the_gold_at_n_max_is_no_peak():
    p = peaks(bon(MIXED)).sort("seed")
    assert p["peak_n"].to_list() == [5, 20, 20]
    assert all(abs(a - b) < 1e-12 for a, b in zip(p["drop_gold"], [0.2, 0.0, 0.0]))
    assert (p["peak_gain"] >= p["gain"]).all() and abs(p["drop"][0] - 0.1) < 1e-12  # gain units: / (oracle − random)


def test_the_descriptive_line_counts_only_runs_whose_gold_falls_and_gives_a_positive_drop():
    line = _overoptimisation(bon(MIXED), "d").markdown()
    assert "in 1 of 3 runs" in line and "by +0.100 gain" in line and "−0.000" not in line and "-0." not in line
    assert "gain at the peak − gain at n = N" in line
    flat = _overoptimisation(bon([(0, 20, 0.5, 0.5), (1, 10, 0.3, 0.34)]), "d").markdown()
    assert "in 0 of 2 runs: it never falls past a peak" in flat


def test_the_table_never_shows_the_peak_below_n_max_and_agrees_with_the_line():
    table = overoptimisation_markdown(bon(MIXED), "d", ["bt10"])
    header, _, row = table.splitlines()[:3]
    assert "drop, peak − n = N (bt10)" in header
    cells = [c.strip() for c in row.strip("|").split("|")]
    peak_gain, gain, drop = (float(c.split(" ± ")[0]) for c in cells[2:5])
    assert peak_gain >= gain and drop >= 0 and abs(drop - (peak_gain - gain)) < 1e-3
    assert abs(drop - 0.1 / 3) < 1e-3  # the mean over seeds of the per-run drops (0.1, 0, 0)


def fits(temperatures: list[float]) -> pl.DataFrame:
    return pl.DataFrame([{"dataset": "d", "learner": "linear", "noise": "bt10", "seed": s, "ece": 0.05, "mce": 0.1,
                          "brier": 0.25, "calibrated_ece": 0.01, "temperature": t}
                         for s, t in enumerate(temperatures)])


def test_the_temperature_is_its_median_and_range_over_seeds_not_a_mean_and_t_interval():
    table = calibration_markdown(fits([0.5, 1.25, 1096.6]), "d")
    assert "temperature T, median [min, max] over seeds" in table.splitlines()[0]
    assert table.splitlines()[2].rstrip().endswith("| 1.25 [0.5, 1097] |")
    assert " ± " not in table.splitlines()[2].split("|")[-2]
    assert calibration_markdown(fits([0.8]), "d").splitlines()[2].rstrip().endswith("| 0.8 |")


def test_the_timing_table_says_where_the_time_went_and_that_jobs_already_done_were_loaded_not_run():
    t = StudyTimings(1.0, 0.1, 36, 0, 2, "local", {}, {}, methods={"laser": 0.05}, products=0.3, total=1.5)
    result = SimpleNamespace(timings=t, fits=pl.DataFrame({"learner": ["linear", "linear", "mlp"],
                                                          "seconds": [5.6, 2.4, 7.0]}))
    text = "\n".join(_timing_section(result))
    assert re.search(r"36 jobs \+ 0 replication jobs on 2 local workers, the methods beside them \(wall; jobs "
                     r"already done in this directory are loaded, not run again\) \| 0\.1", text)
    assert "| method: laser (within the wall above) | 0.1 |" in text
    assert "| tables, findings, plots and report | 0.3 |" in text
    assert "| linear | 4.0 | 8 |" in text and "| mlp | 7.0 | 7 |" in text  # mean and sum per learner
