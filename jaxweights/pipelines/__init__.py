"""Pipelines: the functions the command line calls, each running the stages left of it in the data flow.

train.py            `train_and_evaluate`: a config's zoo trained into a run directory (train_chunk.py: one chunk)
analyze.py          `analyze_workdir` / `report_workdir`: statistics, distances, dynamics, claims, figures, the report
analyze_params.py   `analyze_params`: the same for weights trained elsewhere (files in a folder)
study.py            `run_study`: datasets × model families, each zoo trained and analysed, one combined report
prune.py            `prune_run`: layers whose modularity plateaus removed, the smaller zoo retrained and compared
"""
