"""python -m plugbay.network.gateway ... -- PLUGIN_COMMAND [ARGS...]"""

import sys

from plugbay.network.gateway.cli import main

sys.exit(main(sys.argv[1:]))
