"""The ``portctl`` console script.

It imports the CLI inside a guard, so Ctrl-C at any moment - during start-up too - ends with
exit 130 and one line, never a traceback.
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main() -> None:
    try:
        if sys.argv[1:] == ["--version"]:  # the one answer that needs nothing else loaded
            from portctl._version import __version__

            try:
                print(f"portctl {__version__}", flush=True)
                code = 0
            except BrokenPipeError:
                from portctl._streams import reader_gone

                code = reader_gone()
        else:
            from portctl.cli import run

            code = run(sys.argv[1:])
    except KeyboardInterrupt:
        print("portctl: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)
