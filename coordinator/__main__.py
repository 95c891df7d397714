"""``python -m coordinator ...`` is the ``mfcpl`` command."""

import sys

from coordinator.cli import main

sys.exit(main())
