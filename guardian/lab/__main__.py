"""``python -m guardian.lab check|cleanup``: can this machine run the lab; remove the
leftovers of crashed labs."""

from __future__ import annotations

import argparse
import sys

from ._registry import DEFAULT_ROOT, ID_PATTERN, cleanup_stale
from ._requirements import missing_requirements


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m guardian.lab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="print what is missing to run the lab (exit 1 if any)")
    clean = sub.add_parser("cleanup", help="remove leftovers of labs whose creator is gone")
    clean.add_argument("--pattern", default=ID_PATTERN, help="lab id regex (%(default)s)")
    args = parser.parse_args(argv)
    if args.command == "check":
        missing = missing_requirements()
        for line in missing:
            print(line)
        if not missing:
            print("the lab can run here")
        return 1 if missing else 0
    report = cleanup_stale(args.pattern, root=DEFAULT_ROOT)
    print(f"removed: {' '.join(report.removed) or '-'}")
    print(f"live (left alone): {' '.join(report.live) or '-'}")
    print(f"unowned namespaces (left alone): {' '.join(report.unowned) or '-'}")
    for err in report.errors:
        print(f"error: {err}", file=sys.stderr)
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
