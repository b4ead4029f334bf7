"""Run one of the paper's studies: `python -m sonify.experiments <name> run=runs/<pipeline> [options]`.

Each writes its data (Parquet), its figure (PNG) and a summary.md into `<run>/experiments/<name>/`
(or `--out`); it is seeded, and a rerun with the same options reuses the images already made.
`python -m sonify.report` shows the experiments a run holds.
"""

from __future__ import annotations

import argparse
import sys

from sonify.engine.cli import command, command_parser, parse_command, report_errors, run_of, split_settings
from sonify.studies import EXPERIMENTS, experiment


def parser() -> argparse.ArgumentParser:
    from sonify.studies.common import add_generation_arguments

    p = command_parser("experiments", __doc__)
    sub = p.add_subparsers(dest="name", metavar="{" + ",".join(EXPERIMENTS) + "}", required=True)
    for name in EXPERIMENTS:
        mod = experiment(name)
        s = sub.add_parser(name, help=mod.__doc__.splitlines()[0], description=mod.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(s)
        if getattr(mod, "GENERATES", True):
            add_generation_arguments(s, getattr(mod, "CHECKPOINT", True))
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--out", help=f"the experiment's folder (default <run>/experiments/{name})")
    return p


@command
def main(argv: list[str] | None = None) -> int:
    from sonify.engine.errors import SonifyError
    from sonify.studies.common import StudyError

    p = parser()
    words = [x for x in split_settings(sys.argv[1:] if argv is None else argv)[1] if not x.startswith("-")][:1]
    if words and words[0] not in EXPERIMENTS:      # argparse's invalid-choice line lists them quoted: this one reads better
        p.error(f"unknown experiment {words[0]!r}; valid choices: {', '.join(EXPERIMENTS)}")
    a, settings = parse_command(p, argv)
    run_dir = run_of(p, settings, default=None)    # a study without run= says so itself, in its own words
    # a missing model or table, a bad setting: one line
    return report_errors(f"experiments {a.name}", lambda: print(f"{a.name}: {experiment(a.name).run(a, run_dir)}/summary.md"),
                         (StudyError, SonifyError, OSError))


if __name__ == "__main__":
    sys.exit(main())
