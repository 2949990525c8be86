"""An asyncio echo server on uvloop (libuv under Python's asyncio), unchanged from what a user
would write. Run as `uvloop_echo.py PORT`; prints `ready` once listening."""
import asyncio
import sys

import uvloop


async def echo(reader, writer):
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def main(port):
    server = await asyncio.start_server(echo, "0.0.0.0", port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.install()
    asyncio.run(main(int(sys.argv[1])))
