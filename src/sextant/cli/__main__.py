"""``python -m sextant.cli``: the command line."""

import sys

from sextant.cli.app import main

sys.exit(main())
