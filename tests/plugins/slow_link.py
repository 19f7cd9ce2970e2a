"""A TCP forward to HOST:PORT (argv[1]) whose way back is slow: RATE bytes/s (argv[2]), buffered without
bound, as a tunnel or a port-forward over a slow link does. Prints its port, serves until killed."""

from __future__ import annotations

import asyncio
import sys

STEP = 0.05  # seconds between the slow side's writes


async def _fast(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def _slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rate: int) -> None:
    queued = bytearray()
    ended = asyncio.Event()

    async def take() -> None:
        try:
            while data := await reader.read(65536):
                queued.extend(data)
        except OSError:
            pass
        ended.set()

    taker = asyncio.ensure_future(take())
    try:
        while queued or not ended.is_set():
            if queued:
                chunk = bytes(queued[:int(rate * STEP)])
                del queued[:len(chunk)]
                writer.write(chunk)
                await writer.drain()
            await asyncio.sleep(STEP)
    except OSError:
        pass
    finally:
        taker.cancel()
        writer.close()


async def main() -> None:
    host, _, port = sys.argv[1].rpartition(":")
    rate = int(sys.argv[2])

    async def forward(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(host, int(port))
        await asyncio.gather(_fast(client_r, server_w), _slow(server_r, client_w, rate))

    server = await asyncio.start_server(forward, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


asyncio.run(main())
