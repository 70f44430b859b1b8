"""Experiments that reproduce a paper's claim end to end: closed forms, training, tables, figures.

Each module has a typed config and `run(config, out_dir, quick) -> dict`, which writes its tables
and figures under `out_dir` and returns their rows and paths; `tfmeta experiment NAME` calls it.
"""
