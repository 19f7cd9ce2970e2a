"""The plugin's descriptor limit raised at its start, as Go's runtime raises every Go program's.

A go-plugin plugin written in Go runs with its soft RLIMIT_NOFILE at the hard limit (Go's
os/rlimit.go, since Go 1.19). A Python one kept the soft limit it was started with, often 1024,
and each stream of the multiplexed connection costs it two descriptors (the stream's bridge to
the plugin's own gRPC server, both ends in this process): one host's 512 streams took every
descriptor, and the plugin could open no file. serve() raises it before it listens.
"""

from __future__ import annotations

import resource

# Past this the soft limit is not raised (a higher one is kept): a plugin's own needs stay far
# below it, and the programs it starts inherit the limit (Go restores theirs, Python cannot),
# some of which size tables by it or walk every descriptor up to it.
SOFT_CAP = 65536


def raise_fd_limit() -> int | None:
    """Raise the soft RLIMIT_NOFILE to the hard limit (at most SOFT_CAP; never lowered); the
    new soft limit, or None when it was kept. A refusal is ignored, as Go ignores it."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = SOFT_CAP if hard == resource.RLIM_INFINITY else min(hard, SOFT_CAP)
        if soft == resource.RLIM_INFINITY or soft >= target:
            return None
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError):
        return None
    return target
