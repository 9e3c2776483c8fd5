"""Whole studies (`embrm run`): TOML configuration and its job grid, running jobs (local workers or Ray), the
result store, tidy tables, findings and the report.
"""

from embrm.studies._config import Study, load_study
from embrm.studies._findings import Finding, Replication
from embrm.studies._plan import DatasetPlan, FindingPlan, StudyPlan, plan_study
from embrm.studies._run import StudyResult, run_study
from embrm.studies._sequential import LookSummary, SequentialRun
from embrm.studies._store import JobResult, ResultStore, StudyTimings, TextFacts

__all__ = ["DatasetPlan", "Finding", "FindingPlan", "JobResult", "LookSummary", "Replication", "ResultStore",
           "SequentialRun", "Study", "StudyPlan", "StudyResult", "StudyTimings", "TextFacts", "load_study",
           "plan_study", "run_study"]
