"""A "plugin" whose announced address is answered by an HTTP/1 server, not gRPC: argv[1] is unix or tcp.

It listens in the host's socket folder (or on 127.0.0.1), prints a well-formed handshake line naming that
listener, and answers every connection with an HTTP/1.1 400, as a web server or an engine's API would
when a plugin names its socket. Its pid goes to argv[2], so a test can see it ended; argv[3], when given, is
the AutoMTLS certificate field its line carries (the host then starts a TLS handshake, answered in HTTP/1).
"""

from __future__ import annotations

import os
import socket
import sys
import threading


def _answer(conn: socket.socket) -> None:
    with conn:
        try:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        except OSError:
            pass


def main() -> None:
    network = sys.argv[1]
    with open(sys.argv[2], "w") as f:
        f.write(str(os.getpid()))
    if network == "unix":
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address = os.path.join(os.environ["PLUGIN_UNIX_SOCKET_DIR"], "http1.sock")
        listener.bind(address)
    else:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{listener.getsockname()[1]}"
    listener.listen(16)
    cert = sys.argv[3] if len(sys.argv) > 3 else ""
    sys.stdout.write(f"1|1|{network}|{address}|grpc|{cert}\n")
    sys.stdout.flush()
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_answer, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
