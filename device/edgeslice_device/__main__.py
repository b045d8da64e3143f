"""``python -m edgeslice_device``: the ``edgeslice-device`` command."""

import sys

from .cli import main

sys.exit(main())
