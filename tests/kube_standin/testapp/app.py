"""A tiny pod workload for the stand-in tests: a go-plugin-style handshake and a line protocol.

APP_MODE=serve (default): logs to stderr, prints a handshake line for the
address in PLUGBAY_LISTEN on stdout, then answers lines on TCP: "sleep S"
replies "done" after S seconds, "exit N" ends the process with code N, anything
else is echoed back as "echo: <line>". APP_MODE=crash exits 3 before the
handshake; APP_MODE=oom allocates memory until the kernel kills it.
"""

import os
import signal
import socket
import sys
import threading
import time


def serve() -> None:
    listen = os.environ.get("PLUGBAY_LISTEN", "tcp:0.0.0.0:4000")
    host, port = listen.split(":", 1)[1].rsplit(":", 1)
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, int(port)))
    srv.listen(16)
    print('{"@level":"info","@message":"testapp starting","@module":"testapp"}', file=sys.stderr, flush=True)
    print("a plain log line before the handshake", flush=True)
    print(f"1|1|tcp|{host}:{port}|grpc", flush=True)
    print("testapp serving", file=sys.stderr, flush=True)

    def handle(conn: socket.socket) -> None:
        with conn, conn.makefile("rwb") as f:
            for raw in f:
                line = raw.decode().strip()
                if line.startswith("sleep "):
                    time.sleep(float(line.split()[1]))
                    f.write(b"done\n")
                elif line.startswith("exit "):
                    os._exit(int(line.split()[1]))
                else:
                    f.write(f"echo: {line}\n".encode())
                f.flush()

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    mode = os.environ.get("APP_MODE", "serve")
    if mode == "crash":
        print("fatal: testapp crashed on purpose", file=sys.stderr, flush=True)
        sys.exit(3)
    if mode == "oom":
        print("allocating until killed", file=sys.stderr, flush=True)
        hog = []
        while True:
            hog.append(bytearray(16 * 1024 * 1024))
            time.sleep(0.01)
    serve()


if __name__ == "__main__":
    main()
