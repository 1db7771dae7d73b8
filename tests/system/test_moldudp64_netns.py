"""``tickertape tail --mold`` and :class:`MoldSubscription` against a real ``tickertape
serve --mold`` on a real multicast group, in a network namespace made for each test.

Every process runs inside the namespace (``ip netns exec``), where multicast is routed
over the loopback; the namespace is deleted afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tickertape.cli.main import main

from support import network_namespace

GROUP = "239.1.2.3"
MOLD_PORT = 31001
REQUEST_PORT = 31002
TCP_PORT = 31003  # the namespace has ports of its own: fixed ones are free


class Server:
    """``tickertape serve --mold`` in the namespace; its log collected in :attr:`lines`."""

    def __init__(
        self,
        name: str,
        data: Path,
        rate: int,
        count: int | None,
        *options: str,
        iface: bool = True,
    ) -> None:
        self.lines: list[str] = []
        self._seen = threading.Condition()
        self.process = subprocess.Popen(
            [
                *inside(name),
                "-m",
                "tickertape",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(TCP_PORT),
                "--data",
                str(data),
                "--durability",
                "none",
                "--mold",
                f"{GROUP}:{MOLD_PORT}",
                *(["--mold-iface", "127.0.0.1"] if iface else []),
                "--mold-request",
                str(REQUEST_PORT),
                "--mold-request-rate",
                "1000000",
                "--mold-eos-seconds",
                "30",
                "--demo",
                str(rate),
                *([] if count is None else ["--demo-count", str(count), "--demo-end"]),
                *options,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._seen:
                self.lines.append(line.rstrip())
                self._seen.notify_all()

    def wait_for_log(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        with self._seen:
            while not any(text in line for line in self.lines):
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None:
                    raise AssertionError(f"no {text!r} in the server's log:\n" + self.log())
                self._seen.wait(min(left, 0.2))

    def log(self) -> str:
        with self._seen:
            return "\n".join(self.lines)

    def stop(self) -> int:
        stop(self.process)
        self._reader.join(5)
        return self.process.returncode


def inside(name: str) -> list[str]:
    return ["ip", "netns", "exec", name, sys.executable]


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def tail(name: str, *options: str, iface: str | None = "127.0.0.1") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *inside(name),
            "-m",
            "tickertape",
            "tail",
            "--mold",
            f"{GROUP}:{MOLD_PORT}",
            "--request",
            f"127.0.0.1:{REQUEST_PORT}",
            *([] if iface is None else ["--iface", iface]),
            *options,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def messages_on_disk(data: Path) -> tuple[int, float]:
    """Messages in the active session of ``data``, read offline while the server writes,
    and about when (the middle of the read)."""
    before = time.monotonic()
    answer = subprocess.run(
        [sys.executable, "-m", "tickertape", "sessions", "list", "--data", str(data), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = json.loads(answer.stdout)
    messages = sum(row["messages"] for row in rows if row["state"] == "active")
    return messages, (before + time.monotonic()) / 2


def check_lines(out: str, count: int) -> None:
    """``SEQ PAYLOAD`` lines for 1..count, each once, in order, the payload starting with SEQ."""
    lines = out.splitlines()
    seqs = [int(line.split(" ", 1)[0]) for line in lines]
    assert seqs == list(range(1, count + 1))
    assert all(line.split(" ")[1] == line.split(" ")[0] for line in lines)


def test_tail_mold_two_at_once_and_a_late_joiner_get_the_whole_session(tmp_path: Path) -> None:
    count, rate = 20_000, 4000
    with network_namespace("tail") as name:
        tails: list[subprocess.Popen[str]] = []
        server = Server(name, tmp_path / "data", rate, count)
        try:
            server.wait_for_log("MoldUDP64 re-requests on")
            tails += [tail(name), tail(name)]  # at once, as publishing starts
            time.sleep(count / rate / 2)  # about half the session out: the third is late
            published, _ = messages_on_disk(tmp_path / "data")
            assert 0 < published < count
            tails.append(tail(name, "--from", "1"))
            outputs = []
            for process in tails:
                out, err = process.communicate(timeout=90)
                assert process.returncode == 0, err
                outputs.append(out)
        finally:
            for process in tails:
                stop(process)
            server.stop()
    print(f"the late tail joined with {published} messages published")
    for out in outputs:
        check_lines(out, count)
    assert outputs[0] == outputs[1] == outputs[2]


SUBSCRIBER = r"""
import asyncio, json, sys, time
from tickertape.client.moldudp64 import MoldSubscription

group, port = sys.argv[1], int(sys.argv[2])
request_port, tcp_port = int(sys.argv[3]), int(sys.argv[4])

async def main():
    expected, bad_payload, out_of_order, session = 1, 0, 0, None
    started = time.monotonic()
    subscription = MoldSubscription(
        group, port, ("127.0.0.1", request_port), iface="127.0.0.1",
        tcp=("127.0.0.1", tcp_port), tcp_threshold=10_000,
    )
    async with subscription as messages:
        async for message in messages:
            session = message.session
            if message.seq != expected:
                out_of_order += 1
            if message.payload.split(b" ", 1)[0] != str(message.seq).encode():
                bad_payload += 1
            expected = message.seq + 1
    print(json.dumps({
        "session": session, "last": expected - 1,
        "out_of_order": out_of_order, "bad_payload": bad_payload,
        "caught_up_by_tcp": subscription.caught_up_by_tcp,
        "seconds": time.monotonic() - started,
    }))

asyncio.run(main())
"""


@pytest.mark.timeout(300)
def test_a_late_joiner_catches_up_over_soupbintcp_under_live_load(tmp_path: Path) -> None:
    count, rate, join_after = 500_000, 55_000, 100_000
    data = tmp_path / "data"
    with network_namespace("tail") as name:
        server = Server(name, data, rate, count)
        subscriber: subprocess.Popen[str] | None = None
        try:
            server.wait_for_log("MoldUDP64 re-requests on")
            started = time.monotonic()
            while True:
                published, when = messages_on_disk(data)
                if published >= join_after:
                    break
                assert time.monotonic() - started < 60, f"only {published} published"
                time.sleep(0.05)
            subscriber = subprocess.Popen(
                [
                    *inside(name),
                    "-c",
                    SUBSCRIBER,
                    GROUP,
                    str(MOLD_PORT),
                    str(REQUEST_PORT),
                    str(TCP_PORT),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            time.sleep(1.0)
            later, then = messages_on_disk(data)
            load = (later - published) / (then - when)  # publishing while it catches up
            out, err = subscriber.communicate(timeout=240)
            assert subscriber.returncode == 0, err
        finally:
            if subscriber is not None:
                stop(subscriber)
            server.stop()
    result = json.loads(out)
    print(
        f"joined with {published} messages published; live load {load:,.0f} messages/s; "
        f"caught_up_by_tcp={result['caught_up_by_tcp']}; received 1..{result['last']} in "
        f"{result['seconds']:.1f} s"
    )
    assert result["last"] == count
    assert result["out_of_order"] == 0
    assert result["bad_payload"] == 0
    assert result["caught_up_by_tcp"] > 0
    assert result["caught_up_by_tcp"] < count  # then it followed the group
    assert load >= 50_000


RAW_RECEIVER = r"""
# A MoldUDP64 receiver written from the notes (moldudp64-notes.md), like some third-party
# ones: it takes the session from every packet, so an End of Session after the new
# session's first packet would read as the end of the new session.
import json, socket, struct, sys, time

group, port, new_session, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
HEADER = struct.Struct(">10sQH")  # Session, Sequence Number, Message Count
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("", port))
membership = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton("127.0.0.1"))
sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
sock.settimeout(0.2)
packets, first_new, ends_after, ends_before, messages, misnumbered = 0, None, [], [], 0, 0
stop = time.monotonic() + 30.0
while time.monotonic() < stop:
    try:
        data = sock.recv(2048)
    except TimeoutError:
        continue
    session_bytes, seq, count = HEADER.unpack_from(data)
    session = session_bytes.decode().rstrip(" ")
    if count == 0xFFFF:  # End of Session: for the session the packet names
        (ends_after if first_new is not None else ends_before).append([session, seq])
    elif session == new_session:
        if first_new is None:
            first_new = packets
            stop = time.monotonic() + seconds
        position = HEADER.size
        for number in range(seq, seq + count):  # message blocks: u16 length, data
            (length,) = struct.unpack_from(">H", data, position)
            payload = data[position + 2 : position + 2 + length]
            position += 2 + length
            messages += 1
            misnumbered += payload.split(b" ", 1)[0] != str(number).encode()
    packets += 1
print(json.dumps({
    "packets": packets, "first_new": first_new, "ends_before": ends_before,
    "ends_after": ends_after, "messages": messages, "misnumbered": misnumbered,
}))
"""


def run_inside(name: str, *command: str, timeout: float = 30) -> str:
    done = subprocess.run(
        [*inside(name), *command], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.timeout(180)
def test_after_a_roll_a_late_joiner_follows_the_new_session_and_never_sees_it_end(
    tmp_path: Path,
) -> None:
    """A session ends while the demo keeps publishing; receivers join right after: a
    raw one (written from the notes, taking the session from every packet) and ``tail
    --mold``. Neither sees an End of Session once the new session has sent a packet."""
    data = tmp_path / "data"
    admin = ("--admin-port", "31004", "--admin-token", "secret")
    with network_namespace("roll") as name:
        server = Server(name, data, 2000, None, *admin)
        raw: subprocess.Popen[str] | None = None
        follower: subprocess.Popen[str] | None = None
        try:
            server.wait_for_log("MoldUDP64 re-requests on")
            started = time.monotonic()
            while messages_on_disk(data)[0] < 1000:
                assert time.monotonic() - started < 60, "the demo does not publish"
                time.sleep(0.05)
            said = run_inside(name, "-m", "tickertape", "sessions", "roll", *admin)
            words = said.split()  # session X ended; session Y is active
            ended, following = words[1], words[4]
            raw = subprocess.Popen(
                [*inside(name), "-c", RAW_RECEIVER, GROUP, str(MOLD_PORT), following, "3.5"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            follower = tail(name, "--count", "5000")
            out, err = raw.communicate(timeout=60)
            assert raw.returncode == 0, err
            tail_out, tail_err = follower.communicate(timeout=60)
            assert follower.returncode == 0, tail_err
        finally:
            for process in (raw, follower):
                if process is not None:
                    stop(process)
            server.stop()
    result = json.loads(out)
    print(f"ended {ended}, then {following}: {result}")
    assert result["first_new"] is not None, "no packet of the new session"
    assert result["ends_after"] == [], "End of Session after the new session's first packet"
    assert all(session == ended for session, _ in result["ends_before"])
    assert result["messages"] > 1000
    assert result["misnumbered"] == 0
    check_lines(tail_out, 5000)  # the new session's 1..5000, not the ended one's


class Lines:
    """The stderr of a process, read as it comes."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self._lines: list[str] = []
        self._seen = threading.Condition()
        self._process = process
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._process.stderr is not None
        for line in self._process.stderr:
            with self._seen:
                self._lines.append(line)
                self._seen.notify_all()

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._seen:
            while not any(text in line for line in self._lines):
                left = deadline - time.monotonic()
                assert left > 0, f"no {text!r} within {timeout} s in:\n" + "".join(self._lines)
                self._seen.wait(left)

    def text(self) -> str:
        with self._seen:
            return "".join(self._lines)


def veth_namespace(tag: str) -> contextlib.AbstractContextManager[str]:
    """A namespace like a machine with no multicast route: the loopback, and a veth
    interface (10.77.0.1) that is up but leads nowhere."""

    @contextlib.contextmanager
    def make() -> Iterator[str]:
        name = f"tickertape-{tag}-{os.getpid()}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        try:
            for command in (
                ["ip", "link", "set", "lo", "up"],
                ["ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1"],
                ["ip", "addr", "add", "10.77.0.1/24", "dev", "v0"],
                ["ip", "link", "set", "v0", "up"],
                ["ip", "link", "set", "v1", "up"],
            ):
                subprocess.run(["ip", "netns", "exec", name, *command], check=True)
            yield name
        finally:
            subprocess.run(["ip", "netns", "delete", name], check=False)

    return make()


@pytest.mark.timeout(120)
def test_on_one_machine_serve_and_tail_mold_need_no_interface(tmp_path: Path) -> None:
    """``serve --mold`` and ``tail --mold`` with no ``--mold-iface`` or ``--iface`` find
    each other on one machine (the loopback); ``tail --mold`` joined elsewhere says what
    it waits for, and ``--from 0`` follows live only."""
    count = 4000
    with veth_namespace("oneplace") as name:
        server = Server(name, tmp_path / "data", 1000, count, iface=False)
        processes: list[subprocess.Popen[str]] = []
        try:
            server.wait_for_log("MoldUDP64 re-requests on")
            processes.append(tail(name, iface=None))
            processes.append(tail(name, "--from", "0", "--count", "50", iface=None))
            outputs = []
            for process in processes:
                out, err = process.communicate(timeout=60)
                assert process.returncode == 0, err
                outputs.append(out)
            # The server goes on sending (End of Session, then heartbeats) on the loopback.
            elsewhere = tail(name, "--count", "1", "-v", iface="10.77.0.1")
            processes.append(elsewhere)
            said = Lines(elsewhere)
            said.wait_for("joined", 30.0)  # started (a loaded machine starts slowly)
            said.wait_for("waiting for", 5.0)
            stop(elsewhere)
            warned = said.text()
        finally:
            for process in processes:
                stop(process)
            server.stop()
    assert "MoldUDP64 publishing to 239.1.2.3:31001 on the interface of 127.0.0.1" in server.log()
    check_lines(outputs[0], count)
    live = [int(line.split(" ", 1)[0]) for line in outputs[1].splitlines()]
    assert len(live) == 50
    assert live == list(range(live[0], live[0] + 50))
    assert "no MoldUDP64 packet from group" in warned
    assert "10.77.0.1" in warned
    assert "--mold-iface" in warned


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (["--mold", "239.1.1.1"], "GROUP:PORT"),
        (["--mold", "nowhere:1", "--request", "127.0.0.1:1"], "not an IPv4 address"),
        (["--mold", "239.1.1.1:1"], "--mold needs --request"),
        (["--mold", "239.1.1.1:1", "--request", "127.0.0.1"], "HOST:PORT"),
        (["--mold", "239.1.1.1:1", "--request", "localhost:1"], "not an IPv4 address"),
        (
            ["--mold", "239.1.1.1:1", "--request", "127.0.0.1:0"],
            "0 is not a port to connect to (1 to 65535)",
        ),
        (["--mold", "239.1.1.1:1", "--request", "127.0.0.1:x"], "'x' is not a whole number"),
        (["--mold", "239.1.1.1:1", "--request", "127.0.0.1:1", "--iface", "lo"], "IPv4"),
        (["--mold", "239.1.1.1:1", "--request", "127.0.0.1:1", "--tcp", ":1"], "HOST:PORT"),
        (["--mold", "239.1.1.1:1", "--request", "127.0.0.1:1", "--from", "-1"], "--from"),
        (["--mold", "239.1.1.1:1", "--request", "127.0.0.1:1", "--user", "u"], "--user"),
        (["--request", "127.0.0.1:1"], "need --mold"),
        (["--tcp", "127.0.0.1:1"], "need --mold"),
    ],
)
def test_tail_mold_refuses_bad_options(
    options: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["tail", *options])
    assert exited.value.code == 2
    assert says in capsys.readouterr().err
