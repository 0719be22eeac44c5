"""Pipelines: the functions the command line calls, each running the stages left of it in the data flow.

train.py            `train_and_evaluate`: a config's zoo trained into a run directory (train_chunk.py: one chunk)
resume.py           resuming a chunk from its newest intact checkpoint; a finished one checked, not redone
analyze.py          `analyze_workdir` / `report_workdir`: statistics, distances, dynamics, claims, figures, the report
params.py           `analyze_params` / `analyze_files`: the same for stacked parameters or files trained elsewhere
study.py            `run_study`: datasets × model families, each zoo trained and analysed, one combined report
prune.py            `prune_run`: layers whose modularity plateaus removed, the smaller zoo retrained and compared
"""

from jaxweights.pipelines.analyze import analyze_workdir, report_workdir, zoo_summary
from jaxweights.pipelines.errors import AnalysisError
from jaxweights.pipelines.params import analyze_files, analyze_params
from jaxweights.pipelines.prune import PruneError, prune_run
from jaxweights.pipelines.study import run_study
from jaxweights.pipelines.train import RunError, train_and_evaluate, train_group

__all__ = [
    "AnalysisError",
    "PruneError",
    "RunError",
    "analyze_files",
    "analyze_params",
    "analyze_workdir",
    "prune_run",
    "report_workdir",
    "run_study",
    "train_and_evaluate",
    "train_group",
    "zoo_summary",
]
