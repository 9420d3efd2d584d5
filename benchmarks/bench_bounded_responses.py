"""Peak memory and time to fail for a 256 MiB answer from a loopback server (issue 11 item 18): a JSON
body and an endless SSE stream, with the default ``max_response_bytes`` (32 MiB) and with the limit
raised to 1 GiB (what reading it all costs). Each case runs in its own process so peak RSS is its own.

    python benchmarks/bench_bounded_responses.py
"""

from __future__ import annotations

import asyncio
import resource
import subprocess
import sys
import time

SIZE = 256 * 1024 * 1024
CASES = [("body", 32 * 1024 * 1024), ("body", 1024 ** 3), ("stream", 32 * 1024 * 1024), ("stream", 1024 ** 3)]


async def _case(kind: str, limit: int) -> str:
    from llmkit import LLMError, ProviderConfig
    from llmkit._types import Request
    from llmkit.providers import create_provider

    pad = b": keep-alive " + b"x" * 65000 + b"\n\n" if kind == "stream" else b" " * 65536
    ctype = "text/event-stream" if kind == "stream" else "application/json"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(f"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-type: {ctype}\r\n\r\n".encode())
        try:
            for _ in range(SIZE // len(pad)):
                writer.write(pad)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    provider = create_provider(ProviderConfig(name="flood", adapter="openai", base_url=url, api_key="sk-bench",
                                              max_response_bytes=limit, timeout=120))
    request = Request(model="gpt-4o", messages=({"role": "user", "content": "hi"},))
    start = time.perf_counter()
    outcome = "ok"
    try:
        if kind == "stream":
            async for _ in provider.stream(request):
                pass
        else:
            await provider.complete(request)
    except LLMError as exc:
        outcome = type(exc).__name__ + (" (too large)" if "max_response_bytes" in str(exc) else "")
    elapsed = time.perf_counter() - start
    await provider.aclose()
    server.close()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return f"{kind:6} limit {limit // 2**20:5d} MiB  {outcome:28} {elapsed:5.2f}s  peak RSS {rss:6.0f} MiB"


def main() -> None:
    if len(sys.argv) == 3:
        print(asyncio.run(_case(sys.argv[1], int(sys.argv[2]))))
        return
    print(f"a {SIZE // 2**20} MiB answer from 127.0.0.1:")
    for kind, limit in CASES:
        out = subprocess.run([sys.executable, __file__, kind, str(limit)], capture_output=True, text=True)
        print(out.stdout.strip() or out.stderr.strip()[-300:])


if __name__ == "__main__":
    main()
