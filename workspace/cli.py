"""The `prompt-workspace` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .errors import WorkspaceError

__all__ = ['main']


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    report = run_demo(args.data, model=args.model, progress=not args.quiet)
    print(report)
    return 0 if all(step.within_contract for step in report.steps) else 1


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import run_checks

    ok = True
    for name, passed, detail in run_checks():
        ok &= passed
        print(f'{"ok  " if passed else "FAIL"} {name}: {detail}')
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='prompt-workspace',
        description='Evaluate, compare, optimize and schedule prompts; data lives in Pixeltable.',
    )
    parser.add_argument('-v', '--verbose', action='store_true', help='log what the workspace does')
    commands = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

    demo = commands.add_parser(
        'demo',
        help='run the main job on the bundled tickets and the embedded model',
        description='Import the bundled support tickets, evaluate a baseline prompt, edit it, evaluate again '
        'incrementally, and print the summary and the model calls each change made.',
        epilog='example: prompt-workspace demo',
    )
    demo.add_argument('--data', help='tickets CSV (default: datasets/support_tickets.csv)')
    demo.add_argument('--model', default='local', help="model spec (default: 'local', the embedded model)")
    demo.add_argument('-q', '--quiet', action='store_true', help='no progress bars')
    demo.set_defaults(func=_demo)

    doctor = commands.add_parser(
        'doctor',
        help='check the installation: Pixeltable, llama.cpp, the embedded model',
        description='Check that Pixeltable starts, llama-cpp-python loads and the embedded model decodes.',
        epilog='example: prompt-workspace doctor',
    )
    doctor.set_defaults(func=_doctor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format='%(levelname)s %(message)s')
    try:
        return int(args.func(args))
    except WorkspaceError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
