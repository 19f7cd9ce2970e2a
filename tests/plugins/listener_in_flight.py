"""A plugin whose server is gone right after its handshake line, then exits 3 (argv[1] seconds later, 0.3 by default).

It listens on a unix socket, prints the go-plugin handshake line for it, then leaves the listening socket held by
no process: its only descriptor is sent in a unix message nobody receives and closed here. That is, made to last,
the moment a dying server's listener outlives its file table (the kernel still lists it listening; no process
holds it), which a host proving the address met at random when a plugin exited right after its handshake.
"""

from __future__ import annotations

import array
import os
import socket
import sys
import tempfile
import time

folder = tempfile.mkdtemp(prefix="plugbay-test-inflight-")
path = os.path.join(folder, "plugin.sock")
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(path)
listener.listen()
sender, receiver = socket.socketpair()
sender.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [listener.fileno()]))])
listener.close()
sender.close()  # the message waits in ``receiver``'s queue: the listener is in flight, in no file table
# only now the line: a host looking before the listener left this process would find it held here, proven
sys.stdout.write(f"1|1|unix|{path}|grpc|\n")
sys.stdout.flush()
time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 0.3)
receiver.close()
os.unlink(path)
os.rmdir(folder)
os._exit(3)
