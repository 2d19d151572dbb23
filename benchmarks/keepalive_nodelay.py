"""Why `resnets serve` sets TCP_NODELAY on the socket it binds: one kept-alive connection's request time with and
without it, under uvicorn on a socket passed in (as `resnets serve` passes its own).

    python benchmarks/keepalive_nodelay.py    # prints ms per GET /health for each setting

Without it an answer on a kept-alive connection waits for the client's delayed ACK (about 40 ms on Linux).
"""
from __future__ import annotations

import socket
import threading
import time

import uvicorn
from fastapi import FastAPI

app = FastAPI()


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


def ms_per_request(nodelay: bool, requests: int = 10) -> float:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if nodelay:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    client = socket.create_connection(sock.getsockname())

    def get() -> None:
        client.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while not data.endswith(b'{"status":"ok"}'):
            data += client.recv(4096)

    get()
    start = time.perf_counter()
    for _ in range(requests):
        get()
    elapsed = (time.perf_counter() - start) / requests * 1000
    client.close()
    server.should_exit = True
    return elapsed


if __name__ == "__main__":
    for nodelay in (False, True):
        print(f"TCP_NODELAY {'on ' if nodelay else 'off'}: {ms_per_request(nodelay):.2f} ms per request")
