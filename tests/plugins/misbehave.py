"""A Python program that fails the go-plugin handshake on purpose (argv[1] picks how).

exit       write two stderr lines and exit 3 before any handshake
silent     print nothing on stdout; sleep (up to 120 s, so nothing outlives a run)
line       print argv[2] as the handshake line, then sleep
line-exit  print argv[2] as the handshake line, one stderr line, then exit 6
line-trap  print argv[2] as the handshake line; on SIGTERM write the file argv[3] and exit; sleep meanwhile
grandchild exit 4 while a background child keeps stdout open (EOF never comes)
close-out  close stdout without a handshake line and keep running (up to 120 s)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time


def main() -> None:
    mode = sys.argv[1]
    if mode == "exit":
        sys.stderr.write("misbehave: loading config\nmisbehave: fatal: no database configured\n")
        sys.stderr.flush()
        sys.exit(3)
    if mode == "silent":
        time.sleep(120)
    elif mode == "line":
        sys.stdout.write(sys.argv[2] + "\n")
        sys.stdout.flush()
        time.sleep(120)
    elif mode == "line-trap":
        import signal

        def noted(signum: int, frame: object) -> None:
            with open(sys.argv[3], "w") as marker:
                marker.write("SIGTERM\n")
            sys.exit(0)

        signal.signal(signal.SIGTERM, noted)
        sys.stdout.write(sys.argv[2] + "\n")
        sys.stdout.flush()
        time.sleep(120)
    elif mode == "line-exit":
        sys.stdout.write(sys.argv[2] + "\n")
        sys.stdout.flush()
        sys.stderr.write("misbehave: served nothing, bye\n")
        sys.stderr.flush()
        sys.exit(6)
    elif mode == "grandchild":
        subprocess.Popen(["sleep", "120"], stdout=sys.stdout)
        sys.stderr.write("misbehave: leaving a child behind\n")
        sys.exit(4)
    elif mode == "close-out":
        os.close(1)
        time.sleep(120)
    else:
        sys.exit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
