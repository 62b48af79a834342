"""Command line: ``python -m qlib report --out DIR [--only NAME ...]`` and ``python -m qlib list``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from .data import DATASETS
    from .models import MODELS

    parser = argparse.ArgumentParser(prog="python -m qlib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("report", help="evaluate the baseline and the recipes into DIR")
    rep.add_argument("--out", required=True, help="output folder (created if missing)")
    rep.add_argument("--only", nargs="+", metavar="NAME", help="run only these recipes")
    rep.add_argument("--dataset", default="embedded", choices=DATASETS,
                     help="data for the baseline and recipes (default: the offline MNIST "
                          "sample; the others download through torchvision when online)")
    rep.add_argument("--model", default="course", choices=sorted(MODELS),
                     help="the baseline architecture (default: course)")
    rep.add_argument("--no-progress", action="store_true", help="hide progress bars")
    sub.add_parser("list", help="list the registered recipes")
    args = parser.parse_args(argv)

    from .recipes import load_recipes

    if args.command == "list":
        for r in load_recipes().values():
            print(f"{r.name:20s} {r.technique:14s} {r.description}")
        return 0

    from .data import DownloadError
    from .report import build_report, markdown_table, write_report

    try:
        report = build_report(args.only, dataset=args.dataset, model=args.model,
                              progress=not args.no_progress)
    except (ValueError, DownloadError) as err:
        parser.error(str(err))
    paths = write_report(report, args.out)
    print(markdown_table(report["variants"], report["baseline"]))
    print("wrote " + ", ".join(str(p) for p in paths))
    for f in report["failed"]:
        print(f"FAILED {f['name']}: {f['error']}", file=sys.stderr)
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
