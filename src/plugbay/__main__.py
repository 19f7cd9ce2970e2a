"""``python -m plugbay``: the plugbay command (see plugbay.cli)."""

import sys

from plugbay.cli import main

sys.exit(main())
