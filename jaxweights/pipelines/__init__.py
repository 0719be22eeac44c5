"""Pipelines: the functions the command line calls, each running the stages left of it in the data flow.

analyze.py   `analyze_workdir` / `report_workdir`: statistics, distances, claims, figures and the report of a run
study.py     `run_study`: datasets × model families, each zoo trained and analysed, one combined report
"""
