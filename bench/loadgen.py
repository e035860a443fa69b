"""A small HTTP/1.1 keep-alive load generator, for machines without `wrk`.

`python -m bench.loadgen URL METHOD CONNECTIONS DURATION_S HEADERS_JSON BODY`
prints one JSON line: requests, duration_us, p50_us, p99_us, errors, non2xx
(the same figures bench.http reads from wrk). One process, uvloop, raw
sockets: lighter than any HTTP client library, but still heavier than wrk,
so the bench says which one ran.
"""

import asyncio
import json
import sys
import time
from urllib.parse import urlsplit

import uvloop


async def connection(
    host: str, port: int, request: bytes, until: float, latencies_us: list[int], counts: list[int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < until:
            started = time.perf_counter()
            writer.write(request)
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            latencies_us.append(int((time.perf_counter() - started) * 1_000_000))
            status = int(status_line.split()[1])
            counts[0 if 200 <= status < 400 else 1] += 1
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
        counts[2] += 1
    finally:
        writer.close()


async def run(
    url: str, method: str, connections: int, duration_s: float, headers: dict[str, str], body: str
) -> dict[str, int]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = [f"{method} {parts.path or '/'} HTTP/1.1", f"Host: {host}:{port}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    if body:
        head.append(f"Content-Length: {len(body.encode())}")
    request = ("\r\n".join(head) + "\r\n\r\n" + body).encode()
    latencies_us: list[int] = []
    counts = [0, 0, 0]  # ok, non-2xx/3xx, errors
    started = time.perf_counter()
    until = started + duration_s
    await asyncio.gather(
        *(connection(host, port, request, until, latencies_us, counts) for _ in range(connections))
    )
    ordered = sorted(latencies_us) or [0]
    return {
        "requests": len(latencies_us),
        "duration_us": int((time.perf_counter() - started) * 1_000_000),
        "p50_us": ordered[len(ordered) // 2],
        "p99_us": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "errors": counts[2],
        "non2xx": counts[1],
    }


def main() -> None:
    url, method, connections, duration_s, headers, body = sys.argv[1:7]
    result = uvloop.run(
        run(url, method, int(connections), float(duration_s), json.loads(headers), body)
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
