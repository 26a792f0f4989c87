"""The reusable parts of the benchmark scripts in ``benchmarks/``: the offline-RL benchmark (runs through the
train pipeline, run files, summaries and curves), its d3rlpy peer and the critic probe. The scripts are thin
command-line wrappers, so what the tests check is package code."""
