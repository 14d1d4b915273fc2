"""``python -m nerncompress`` and the ``nerncompress`` command: load the CLI, run it."""

import signal
import sys


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupt)  # as Ctrl-C, from the first moment (the CLI keeps it)
    try:
        from .cli import main as run  # imports torch: seconds that a Ctrl-C may fall into
    except KeyboardInterrupt:
        print("Error: interrupted", file=sys.stderr)
        sys.exit(130)
    run()


if __name__ == "__main__":
    main()
