"""`python -m sonify.bench <name> [options]`: one benchmark (names below); `<name> --help` lists its options."""

import importlib
import sys

BENCHES = {"audio": "sonify.bench.audio", "evaluate": "sonify.bench.evaluate", "concepts": "sonify.bench.concepts",
           "retrieval": "sonify.bench.retrieval", "mix": "sonify.bench.mix", "shards": "sonify.bench.shards", "train": "sonify.bench.train",
           "growth": "sonify.bench.growth", "models": "sonify.bench.models", "plan": "sonify.bench.plan",
           "listing": "sonify.bench.listing", "scale": "sonify.bench.scale",
           "app": "sonify.bench.app", "frontends": "sonify.bench.frontends", "prefill": "sonify.bench.prefill"}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    usage = f"usage: python -m sonify.bench {{{','.join(BENCHES)}}} [--help]\n{__doc__}"
    if argv[:1] in (["-h"], ["--help"]):
        print(usage)
        return
    if not argv or argv[0] not in BENCHES:   # one line, as every command's bad argument (docs/cli.md)
        print(f"sonify.bench: {'unknown benchmark ' + repr(argv[0]) if argv else 'name a benchmark'}; "
              f"valid choices: {', '.join(BENCHES)}", file=sys.stderr)
        sys.exit(2)
    importlib.import_module(BENCHES[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    main()
