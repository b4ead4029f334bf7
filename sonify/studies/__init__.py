"""The paper's studies, one module per experiment, run by `python -m sonify.experiments <name>`.

Each module has `NAME`, `add_arguments(parser)` and `run(args, run_dir) -> folder`; its heavy imports
happen inside `run`, so `--help` stays fast.
"""

from __future__ import annotations

import importlib

# experiment name -> module, in the order the paper shows them
EXPERIMENTS = {
    "mixing": "mixing",                    # Section 4.5, Fig. 4
    "loudness": "loudness",                # Section 4.5, Fig. 5
    "sequence": "sequence",                # Section 4.5, Fig. 6
    "memorisation": "memorisation",        # A.6, Fig. 14
    "loudness-retention": "loudness_retention",   # A.8, Fig. 15
    "projector-pretraining": "projector_pretraining",   # A.11, Fig. 16
}


def experiment(name: str):
    return importlib.import_module(f"sonify.studies.{EXPERIMENTS[name]}")
