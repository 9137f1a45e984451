"""``python -m mindpet``: the ``mindpet`` command (see :mod:`mindpet.cli`)."""
import sys

from mindpet.cli import main

if __name__ == "__main__":
    sys.exit(main())
