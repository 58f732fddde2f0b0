#!/usr/bin/env python3
"""WebSocket checks for scripts/test-image, against running gateways.

  roundtrip URL_A URL_B     a message sent on gateway A reaches a member on
                            gateway B, and one sent on B reaches A
  drain URL -- CMD...       connect, run CMD (e.g. send SIGTERM to the gateway),
                            expect the server to close with 1001 (going away)
  traffic URL_A URL_B       what the dashboard panels show: messages across
                            gateways for a few seconds, a burst over the
                            per-connection rate limit, and a client that stops
                            reading while a room floods it (a slow consumer,
                            on URL_A; start that gateway with a small
                            OUTBOUND_QUEUE / WRITE_TIMEOUT_MS)

Needs the `websockets` package (scripts/test-image installs it into a venv).
Every wait has a deadline; exits non-zero with a reason on failure.
"""

import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

DEADLINE_S = 10.0


def fail(msg):
    print(f"ws-check: FAIL {msg}", file=sys.stderr)
    sys.exit(1)


async def recv_until(ws, pred, what, timeout=DEADLINE_S):
    """The first frame matching `pred`, skipping others; fails after `timeout`."""
    end = time.monotonic() + timeout
    while True:
        left = end - time.monotonic()
        if left <= 0:
            fail(f"no {what} within {timeout} s")
        try:
            raw = await asyncio.wait_for(ws.recv(), left)
        except asyncio.TimeoutError:
            fail(f"no {what} within {timeout} s")
        frame = json.loads(raw)
        if pred(frame):
            return frame


def url(base, room, user):
    return f"{base}?room={room}&username={user}"


async def join(base, room, user):
    ws = await connect(url(base, room, user), open_timeout=DEADLINE_S, max_size=2**22)
    await recv_until(ws, lambda f: f["type"] == "history", f"history frame on join ({user})")
    return ws


async def send_message(ws, room, text, client_id):
    frame = {"type": "message", "data": {"room": room, "message": text, "client_id": client_id}}
    await ws.send(json.dumps(frame))


async def one_way(sender, receiver, room, tag):
    nonce = f"{tag}-{time.time_ns()}"
    await send_message(sender, room, f"hello {tag}", nonce)
    ack = await recv_until(
        sender,
        lambda f: f["type"] == "ack" and f["data"].get("client_id") == nonce
        or f["type"] == "error" and f["data"].get("client_id") == nonce,
        f"ack ({tag})",
    )
    if ack["type"] != "ack":
        fail(f"message refused ({tag}): {ack['data']}")
    msg = await recv_until(
        receiver,
        lambda f: f["type"] == "message" and f["data"].get("id") == ack["data"]["id"],
        f"delivery on the other gateway ({tag})",
    )
    return msg["data"]["seq"]


async def roundtrip(url_a, url_b):
    room = f"rt-{os.getpid()}"
    a = await join(url_a, room, "ana")
    b = await join(url_b, room, "bo")
    t0 = time.monotonic()
    s1 = await one_way(a, b, room, "a-to-b")
    s2 = await one_way(b, a, room, "b-to-a")
    ms = (time.monotonic() - t0) * 1000
    if s2 != s1 + 1:
        fail(f"seq {s1} then {s2}")
    await a.close()
    await b.close()
    print(f"ws-check: round trip across gateways OK (seq {s1}, {s2}; {ms:.0f} ms for both)")


async def drain(base, cmd):
    ws = await join(base, f"drain-{os.getpid()}", "dora")
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    t0 = time.monotonic()
    try:
        while True:
            await asyncio.wait_for(ws.recv(), 15)
    except ConnectionClosed:
        pass
    except asyncio.TimeoutError:
        fail("the gateway did not close the connection within 15 s of SIGTERM")
    code = ws.close_code
    if code != 1001:
        fail(f"close code {code} ({ws.close_reason!r}), expected 1001")
    print(f"ws-check: drain OK (close 1001 {time.monotonic() - t0:.2f} s after SIGTERM)")


def raw_nonreader(base, room):
    """A WebSocket handshake on a plain socket with a small receive buffer,
    after which nothing is ever read: the gateway's writes stall."""
    u = urllib.parse.urlsplit(url(base, room, "sloth"))
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(DEADLINE_S)
    s.connect((u.hostname, u.port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            f"GET {u.path}?{u.query} HTTP/1.1\r\nHost: {u.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = s.recv(1024)
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        fail(f"slow-consumer handshake refused: {head[:80]!r}")
    return s


async def traffic(url_a, url_b):
    room = f"load-{os.getpid()}"
    a = await join(url_a, room, "ana")
    b = await join(url_b, room, "bo")

    # Messages across both gateways: deliveries and latency histograms.
    for i in range(30):
        sender = a if i % 2 else b
        await send_message(sender, room, f"load {i}", f"load-{i}")
        await asyncio.sleep(0.1)
    await recv_until(a, lambda f: f["type"] == "message" and f["data"]["message"] == "load 29", "last load message on A")
    await recv_until(b, lambda f: f["type"] == "message" and f["data"]["message"] == "load 29", "last load message on B")

    # A burst over the per-connection rate limit (RATE_LIMIT_BURST, default 40).
    burst = await join(url_b, f"burst-{os.getpid()}", "burst")
    for i in range(80):
        await send_message(burst, f"burst-{os.getpid()}", "x", f"burst-{i}")
    await recv_until(
        burst,
        lambda f: f["type"] == "error" and f["data"].get("code") == "rate_limited",
        "rate_limited error in a burst of 80 frames",
    )
    await burst.close()

    # A slow consumer on gateway A: it never reads while B floods the room.
    flood_room = f"flood-{os.getpid()}"
    sloth = raw_nonreader(url_a, flood_room)
    flooder = await join(url_b, flood_room, "flood")
    pad = "y" * 4000
    for i in range(40):
        await send_message(flooder, flood_room, f"{i} {pad}", f"flood-{i}")
    acks = 0
    for _ in range(40):
        f = await recv_until(flooder, lambda f: f["type"] in ("ack", "error"), "a reply to each flood message")
        acks += f["type"] == "ack"
    await flooder.close()
    await a.close()
    await b.close()
    print(f"ws-check: traffic sent (30 messages across gateways, a rate-limit burst, {acks} flood messages to a non-reader)")
    # The non-reader stays open until the gateway cuts it; the caller checks
    # the slow-consumer counter, then this process exits and closes it.
    return sloth


async def main(argv):
    if len(argv) == 3 and argv[0] == "roundtrip":
        await roundtrip(argv[1], argv[2])
    elif len(argv) >= 4 and argv[0] == "drain" and argv[2] == "--":
        await drain(argv[1], argv[3:])
    elif len(argv) == 3 and argv[0] == "traffic":
        sloth = await traffic(argv[1], argv[2])
        # Hold the stalled socket until the gateway gives up on it.
        await asyncio.sleep(float(os.environ.get("WS_CHECK_HOLD_S", "4")))
        sloth.close()
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(64)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
