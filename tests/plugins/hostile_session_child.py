"""The gateway's child for its brokering-session tests: the shared child is tests/plugins/gateway_child.py;
a session's own child (PLUGIN_MULTIPLEX_GRPC=true) misbehaves as argv[1] says, then sleeps:

  long-label    prints a handshake whose tcp host passes the character check but has a 64-byte DNS label
  slow-mux      ignores SIGTERM, announces multiplexing and holds the gateway's connection without a word
                (a session that ends when its host leaves, and whose close waits out the kill's grace)
  no-mux-later  announces no multiplexing (as after the plugin's file was replaced by a go-plugin 1.0.x one)
  foreign       announces argv[2], a socket another process (the test) listens on, multiplexed
  slow-start    takes argv[2] seconds to start (a Python plugin's imports and serve()), then holds its
                connection as slow-mux does, SIGTERM ending it

The first child asked to multiplex is the gateway's start check: it announces multiplexing and marks the
cwd (file "checked"); only the later ones, the sessions' children, misbehave. Each such child appends a
line to the file "launches" in the cwd.
"""
from __future__ import annotations

import os
import runpy
import signal
import socket
import sys
import time
from pathlib import Path

if os.environ.get("PLUGIN_MULTIPLEX_GRPC") != "true":
    runpy.run_path(str(Path(__file__).with_name("gateway_child.py")), run_name="__main__")
    sys.exit(0)
with open("launches", "a") as launches:
    launches.write("launched\n")
if not Path("checked").exists():
    Path("checked").touch()
    print("1|1|unix|/nonexistent/none.sock|grpc||true", flush=True)
elif sys.argv[1] == "no-mux-later":
    print("1|1|unix|/nonexistent/none.sock|grpc|", flush=True)
elif sys.argv[1] == "foreign":
    print(f"1|1|unix|{sys.argv[2]}|grpc||true", flush=True)
elif sys.argv[1] == "long-label":
    print("1|1|tcp|" + "a" * 64 + ":1234|grpc||true", flush=True)
elif sys.argv[1] in ("slow-mux", "slow-start"):
    if sys.argv[1] == "slow-mux":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        time.sleep(float(sys.argv[2]))
    path = os.path.join(os.environ["PLUGIN_UNIX_SOCKET_DIR"], "child.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    print(f"1|1|unix|{path}|grpc||true", flush=True)
    held = [listener.accept()[0]]  # the gateway dials once
time.sleep(120)
