"""A loopback HTTP forward proxy that sends every request to the emulator.

sunpy's JSOC client has no server option; it talks to ``http://jsoc.stanford.edu`` through drms
(urllib) and parfive (aiohttp), and both honour ``HTTP_PROXY``. Pointing that variable at this
proxy lets the unmodified sunpy reach the emulator, and nothing leaves 127.0.0.1.

Usage: ``python benchmarks/_proxy.py http://127.0.0.1:PORT``; prints its own URL on the first
stdout line, then serves until killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

import aiohttp
from aiohttp import web

HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade"}


async def main(target: str) -> None:
    """Serve forever, forwarding ``path?query`` of each request to ``target``."""
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=None),
        auto_decompress=False,
    )

    async def forward(request: web.Request) -> web.StreamResponse:
        """Relay one request and stream the answer back in 1 MiB pieces."""
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP | {"host"}}
        body = await request.read()
        url = target + request.rel_url.path_qs
        async with session.request(
            request.method, url, headers=headers, data=body or None, allow_redirects=False
        ) as up:
            resp = web.StreamResponse(status=up.status, reason=up.reason)
            for k, v in up.headers.items():
                if k.lower() not in HOP:
                    resp.headers.add(k, v)
            await resp.prepare(request)
            while True:
                block = await up.content.read(1 << 20)
                if not block:
                    break
                await resp.write(block)
            await resp.write_eof()
            return resp

    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"http://127.0.0.1:{port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await session.close()
        await runner.cleanup()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(sys.argv[1].rstrip("/")))
