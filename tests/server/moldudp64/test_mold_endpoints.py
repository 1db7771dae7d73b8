"""Both MoldUDP64 endpoints together with their receivers: a late subscriber filling
its gap by re-request then following live, and a real server multicasting to two
receivers joined to a real group, in a network namespace of its own."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

from mold_support import (
    TIMEOUT,
    payloads,
    synchronous,
)
from tickertape.client.moldudp64 import MoldSubscription
from tickertape.server.engine import Engine
from tickertape.server.moldudp64.publisher import MoldPublisher
from tickertape.server.moldudp64.rerequest import MoldRequestServer
from tickertape.server.moldudp64.settings import PublisherConfig
from tickertape.store.catalogue import Catalogue
from tickertape.store.log import Durability

from support import network_namespace


@synchronous
async def test_a_late_subscriber_fills_its_gap_by_re_request_then_follows_live(
    tmp_path: Path,
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        group_port = probe.getsockname()[1]  # free, for the subscriber to bind
    engine = Engine(Catalogue(tmp_path, Durability.NONE))
    await engine.start(roll_on_schedule=False)
    await engine.publish_many(payloads(2000))  # before the publisher: by re-request only
    publisher = MoldPublisher(engine, PublisherConfig("127.0.0.1", group_port))
    requests = MoldRequestServer(engine)
    await requests.start()
    got: list[tuple[str, int, bytes]] = []
    subscription = MoldSubscription("127.0.0.1", group_port, ("127.0.0.1", requests.port))

    async def follow() -> None:
        async for message in subscription:
            got.append((message.session, message.seq, message.payload))

    try:
        following = asyncio.create_task(follow())
        await asyncio.sleep(0.1)  # its socket is bound
        publisher.start()
        session = engine.session_id
        for start in range(2001, 3001, 100):
            await engine.publish_many(payloads(100, start=start))
            await asyncio.sleep(0.01)
        await engine.roll()
        await asyncio.wait_for(following, TIMEOUT)
    finally:
        await subscription.close()
        await requests.close()
        await engine.close()
        await publisher.close()
    assert [seq for _, seq, _ in got] == list(range(1, 3001))
    assert [payload for _, _, payload in got] == payloads(3000)
    assert {name for name, _, _ in got} == {session}
    assert requests.stats.messages >= 2000


# ---------------------------------------------------------------------------- real multicast

GROUP = "239.1.1.1"
MOLD_PORT = 30001
REQUEST_PORT = 30002
RECEIVER = r"""
import json, socket, struct, sys
from tickertape.wire.moldudp64 import Downstream, Request

group, port, request_port, ask = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
sock.bind((group, port))
membership = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton("127.0.0.1"))
sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
sock.settimeout(30)
print("ready", flush=True)
session, messages, end = None, [], None
while end is None:
    packet = Downstream.decode(sock.recv(65536))
    session = session or packet.session
    if packet.session != session:
        continue
    if packet.end_of_session:
        end = packet.sequence
    for i, message in enumerate(packet.messages):
        messages.append((packet.sequence + i, message.decode().split(" ")[0]))
answer = None
if ask == "yes":
    asker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    asker.settimeout(10)
    asker.sendto(Request(session, 1, 5).encode(), ("127.0.0.1", request_port))
    reply = Downstream.decode(asker.recv(65536))
    answer = [reply.sequence, [m.decode().split(" ")[0] for m in reply.messages]]
print(json.dumps({"session": session, "messages": messages, "end": end, "answer": answer}))
"""


def test_real_multicast_reaches_two_receivers(tmp_path: Path) -> None:
    count = 3000
    with network_namespace("mold") as name:
        inside = ["ip", "netns", "exec", name, sys.executable]
        receivers = [
            subprocess.Popen(
                [*inside, "-c", RECEIVER, GROUP, str(MOLD_PORT), str(REQUEST_PORT), ask],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for ask in ("yes", "no")
        ]
        server: subprocess.Popen[str] | None = None
        try:
            for receiver in receivers:
                assert receiver.stdout is not None
                assert receiver.stdout.readline().strip() == "ready"
            server = subprocess.Popen(
                [
                    *inside,
                    "-m",
                    "tickertape",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--data",
                    str(tmp_path / "data"),
                    "--mold",
                    f"{GROUP}:{MOLD_PORT}",
                    "--mold-iface",
                    "127.0.0.1",
                    "--mold-request",
                    str(REQUEST_PORT),
                    "--mold-eos-seconds",
                    "3",
                    "--demo",
                    "3000",
                    "--demo-count",
                    str(count),
                    "--demo-end",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            results = []
            for receiver in receivers:
                out, err = receiver.communicate(timeout=60)
                assert receiver.returncode == 0, err
                results.append(json.loads(out))
        finally:
            for process in [*receivers, server]:
                if process is not None and process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                    try:
                        process.wait(15)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait(5)
        assert server is not None
        _, log = server.communicate()
        assert server.returncode == 0, log
    for result in results:
        assert result["end"] == count + 1
        assert [seq for seq, _ in result["messages"]] == list(range(1, count + 1))
        assert all(text == str(seq) for seq, text in result["messages"])  # demo payloads
    assert results[0]["session"] == results[1]["session"]
    assert results[0]["answer"] == [1, ["1", "2", "3", "4", "5"]]
