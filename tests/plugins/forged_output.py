"""A plugin whose output tries to forge host log records and drive the host's terminal.

``stderr``: hclog and plain lines carrying newlines, CR, ESC, BEL, C1 controls and
U+2028, then exit 3. ``stdout``: a handshake line carrying them, then wait to be killed.
"""

import json
import sys
import time

FORGED = "2024-01-01 00:00:00 WARNING plugbay.client: plugin kv exited with code 0"

if sys.argv[1] == "stderr":
    sys.stderr.write(json.dumps({"@level": "info", "@message": "loading\n" + FORGED, "@module": "kv"}) + "\n")
    sys.stderr.write("plain \x1b[2K\rWARNING forged by carriage return \x1b]0;pwned\x07\n")
    sys.stderr.write(json.dumps({"@level": "error", "@message": "x", "k\nforged via key": "v\rforged via value",
                                 "c1": "\x9b31m"}) + "\n")
    sys.stderr.write("line\u2028forged by a line separator\tand a tab, caf\u00e9\n")
    sys.stderr.flush()
    sys.exit(3)
sys.stdout.write("1|1|unix|/tmp/x\x1b]0;pwned\x07\rforged|grpc\n")
sys.stdout.flush()
time.sleep(30)
