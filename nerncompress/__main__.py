"""``python -m nerncompress``: the same as the ``nerncompress`` command."""

from .cli import main

if __name__ == "__main__":
    main()
