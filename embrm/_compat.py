"""Old import paths (embrm.bon, embrm.heads.mlp, ...) for one release: each resolves to the module's new home in
the package layout, with a DeprecationWarning naming it. Removed in the release after 0.2."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "embrm.errors": "embrm.core._errors",
    "embrm.files": "embrm.core._files",
    "embrm.hardware": "embrm.core._hardware",
    "embrm.progress": "embrm.core._progress",
    "embrm.heads.checks": "embrm.core._checks",
    "embrm.datasets": "embrm.data._registry",
    "embrm.labels": "embrm.data._labels",
    "embrm.overopt": "embrm.data._overopt",
    "embrm.synthetic": "embrm.data._synthetic",
    "embrm.augment": "embrm.data._augment",
    "embrm.embed": "embrm.embedding._embed",
    "embrm.cache": "embrm.embedding._cache",
    "embrm.cache_check": "embrm.embedding._verify",
    "embrm.shards": "embrm.embedding._shards",
    "embrm.distributed": "embrm.embedding._ray",
    "embrm.imports": "embrm.embedding._importer",
    "embrm.chat": "embrm.embedding._chat",
    "embrm.embedders.base": "embrm.embedding.backends._base",
    "embrm.embedders.hf": "embrm.embedding.backends._hf",
    "embrm.embedders.st": "embrm.embedding.backends._st",
    "embrm.embedders.openai": "embrm.embedding.backends._openai",
    "embrm.embedders.imported": "embrm.embedding.backends._imported",
    "embrm.embedders": "embrm.embedding.backends",
    "embrm.heads.linear": "embrm.rewards.heads._linear",
    "embrm.heads.mlp": "embrm.rewards.heads._mlp",
    "embrm.heads.odin": "embrm.rewards.heads._odin",
    "embrm.heads.lgbm": "embrm.rewards.heads._lgbm",
    "embrm.heads.laplace": "embrm.rewards.heads._laplace",
    "embrm.heads": "embrm.rewards.heads",
    "embrm.ensemble": "embrm.rewards._ensemble",
    "embrm.length": "embrm.rewards._length",
    "embrm.persist": "embrm.rewards._persist",
    "embrm.aggregate": "embrm.evaluation._aggregate",
    "embrm.bon": "embrm.evaluation._bon",
    "embrm.metrics": "embrm.evaluation._metrics",
    "embrm.calibration": "embrm.evaluation._calibration",
    "embrm.conformal": "embrm.evaluation._conformal",
    "embrm.pools": "embrm.evaluation._pools",
    "embrm.stats": "embrm.evaluation._stats",
    "embrm.plots": "embrm.evaluation._plots",
    "embrm.protocol": "embrm.pipeline._protocol",
    "embrm.study": "embrm.studies._config",
    "embrm.jobs": "embrm.studies._jobs",
    "embrm.report": "embrm.studies._tables",
    "embrm.findings": "embrm.studies._findings",
    "embrm.study_report": "embrm.studies._report",
    "embrm.experiment": "embrm.studies._run",
    "embrm.methods.laser": "embrm.methods._laser",
    "embrm.methods.moe": "embrm.methods._moe",
    "embrm.methods.composite": "embrm.methods._composite",
    "embrm.methods.policy": "embrm.methods._policy",
    "embrm.methods.sections": "embrm.methods._sections",
    "embrm.active.campaign": "embrm.active._campaign",
    "embrm.active.strategies": "embrm.active._strategies",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        new = MOVED[module.__name__]
        warnings.warn(f"{module.__name__} moved to {new}; the old path goes in the next release",
                      DeprecationWarning, stacklevel=2)
        sys.modules[module.__name__] = importlib.import_module(new)  # the import statement returns this module


def install() -> None:
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
