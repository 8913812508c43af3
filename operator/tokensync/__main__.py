"""``python -m tokensync``: the same as the ``tokensync`` command."""

import sys

from tokensync.cli import main

sys.exit(main())
