"""An error raised for another one, chained as ``raise error from original`` would chain it, without the
cycle that makes when the two are one error. Here, below the host, so transport's captured calls
(plugbay.core.transport.requestsource) and the host's channels (plugbay.core.host.channel, aiocall)
share one copy.
"""

from __future__ import annotations


def caused(error: BaseException, original: BaseException) -> BaseException:
    """``error``, to raise for ``original``: caused by it, as ``raise error from original`` would make it,
    unless it is ``original`` (an error left as it was). ``raise original from original`` makes an error
    its own cause: a reference cycle that holds the failed call, its frames and its channel (for
    grpc.aio, grpcio's process-wide poller thread and its socket pair) until a full garbage collection.
    Raise what this returns in one expression: an error held in a local of the raising frame is a cycle
    too (the error's traceback holds that frame)."""
    if error is not original:
        error.__cause__ = original  # also suppresses the context, as ``from`` does
    return error
