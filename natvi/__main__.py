"""``python -m natvi`` is the ``natvi`` command."""

import sys

from natvi.cli import main

sys.exit(main())
