"""``python -m mfcpl ...`` is the ``mfcpl`` command."""

import sys

from mfcpl.cli import main

sys.exit(main())
