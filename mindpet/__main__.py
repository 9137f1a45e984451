"""``python -m mindpet``: the ``mindpet`` command (see :mod:`mindpet.cli`)."""
import sys

from mindpet.cli import main

sys.exit(main())
