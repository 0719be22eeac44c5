"""The pipelines the CLI runs, each a function from a config or run directory to files.

train           train_and_evaluate, train_group (config -> run directory)
analyze_params  analyze_params, analyze_files (parameter files from elsewhere -> statistics)
"""
