"""``python -m dla_core``: see :mod:`dla_core.cli`."""

import sys

from .cli import main

sys.exit(main())
