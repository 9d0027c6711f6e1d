"""`python -m studio.evaluate <what>`: one subcommand per evaluation, each defined in its own module here.

Exit status: 0 done, 2 bad input (a prompt file, a dataset folder, a flag), 1 anything the input cannot fix
(weights missing, cancelled).
"""

from __future__ import annotations

import argparse
import sys

from studio.evaluate import identity, safety, segmentation, timelapse
from studio.evaluate.common import DataError

EVALUATIONS = (identity, timelapse, safety, segmentation)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studio.evaluate",
                                     description="Evaluations of the studio's methods: " + "; ".join(
                                         e.__doc__.splitlines()[0].split(": ", 1)[-1] for e in EVALUATIONS))
    commands = parser.add_subparsers(dest="command", required=True)
    for evaluation in EVALUATIONS:
        evaluation.add_parser(commands)
    args = parser.parse_args(argv)

    from pipelines.core.errors import InputError, StudioError

    try:
        return args.handler(args)
    except (DataError, InputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except StudioError as error:   # weights missing, cancelled: nothing the prompt file can fix
        print(f"error: {error}", file=sys.stderr)
        return 1
