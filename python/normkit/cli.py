"""``normkit`` command line: ``python -m normkit info | compare | bench``."""

from __future__ import annotations

import argparse
import json
import sys


def _info(args: argparse.Namespace) -> int:
    from . import info

    facts = info()
    if args.json:
        print(json.dumps(facts))
    else:
        width = max(len(k) for k in facts)
        for key, value in facts.items():
            if isinstance(value, list):
                value = ", ".join(value)
            print(f"{key:<{width}}  {value}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="normkit",
        description="Fast Batch and Layer Normalization for NumPy: facts about this install, "
        "a training comparison, and benchmarks.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("info", help="show version, active ISA, threads")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=_info)
    p = commands.add_parser(
        "compare", help="train small networks with BatchNorm, LayerNorm and neither; plot them"
    )
    from . import compare

    compare.add_arguments(p)
    p.set_defaults(run=compare.main)
    p = commands.add_parser("bench", help="normkit vs NumPy vs PyTorch: table, JSON, chart")
    from . import bench

    bench.add_arguments(p)
    p.set_defaults(run=bench.main)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
