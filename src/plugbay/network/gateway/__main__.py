"""python -m plugbay.network.gateway ... -- PLUGIN_COMMAND [ARGS...]"""

import sys

from plugbay.runners.hostbound import import_grpc_without_fork_handlers

import_grpc_without_fork_handlers()  # before anything imports grpc: its children start with die_with_host

from plugbay.network.gateway.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
