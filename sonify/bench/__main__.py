"""`python -m sonify.bench <name> [options]`; names: audio."""

import importlib
import sys

BENCHES = {"audio": "sonify.bench.audio", "evaluate": "sonify.bench.evaluate", "concepts": "sonify.bench.concepts",
           "retrieval": "sonify.bench.retrieval", "mix": "sonify.bench.mix", "shards": "sonify.bench.shards", "train": "sonify.bench.train",
           "growth": "sonify.bench.growth", "models": "sonify.bench.models", "plan": "sonify.bench.plan",
           "listing": "sonify.bench.listing", "scale": "sonify.bench.scale",
           "app": "sonify.bench.app", "frontends": "sonify.bench.frontends", "prefill": "sonify.bench.prefill"}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in BENCHES:
        print(f"usage: python -m sonify.bench {{{','.join(BENCHES)}}} [--help]", file=sys.stderr)
        sys.exit(2)
    importlib.import_module(BENCHES[sys.argv[1]]).main(sys.argv[2:])


if __name__ == "__main__":
    main()
