"""SoupBinTCP over TLS: ``tickertape serve --tls-cert --tls-key`` in a real subprocess on
127.0.0.1, with a CA and a certificate the test makes (trustme); its clients with
``--tls`` / ``ssl=``."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from tickertape.client.publisher import Publisher
from tickertape.client.soupbintcp import Subscription, TLSRefused
from tickertape.server.soupbintcp import ServerConfig
from tickertape.store.layout import LOG_FILE
from tickertape.tls import client_context, server_context
from tickertape.wire.framing import Framer
from tickertape.wire.soupbintcp import (
    Debug,
    LoginAccepted,
    LoginRequest,
    SequencedData,
    decode_server_packet,
)

from support import ServerProcess, running_server

TIMEOUT = 20.0
MESSAGES = 60_000
"""About 6 MB of log: several 1 MiB catch-up reads, past the 4 MiB write-buffer mark."""


@dataclass(frozen=True)
class Pki:
    """A CA, a server certificate it signed for 127.0.0.1 and localhost, as PEM files."""

    ca: Path
    cert: Path
    key: Path
    other_ca: Path
    """A CA that signed nothing of the server's."""
    other_key: Path
    """The key of a certificate that is not the server's."""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    pki = Pki(
        ca=root / "ca.pem",
        cert=root / "cert.pem",
        key=root / "key.pem",
        other_ca=root / "other-ca.pem",
        other_key=root / "other-key.pem",
    )
    ca.cert_pem.write_to_path(str(pki.ca))
    issued.private_key_pem.write_to_path(str(pki.key))
    for blob in issued.cert_chain_pems:
        blob.write_to_path(str(pki.cert), append=True)
    other = trustme.CA()
    other.cert_pem.write_to_path(str(pki.other_ca))
    other.issue_cert("127.0.0.1").private_key_pem.write_to_path(str(pki.other_key))
    return pki


@pytest.fixture
def server(tmp_path: Path, pki: Pki) -> Iterator[ServerProcess]:
    with ServerProcess(
        tmp_path / "data",
        "--durability",
        "none",
        "--tls-cert",
        str(pki.cert),
        "--tls-key",
        str(pki.key),
    ) as server:
        yield server


def tickertape(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tickertape", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def payloads(first: int, count: int) -> list[bytes]:
    """Distinct payloads of different lengths (9 to 120 bytes)."""
    return [b"%08d:" % n + b"x" * (n % 112) for n in range(first, first + count)]


async def publish(port: int, context: ssl.SSLContext, messages: list[bytes]) -> tuple[str, int]:
    """Publish over TLS; (session, last sequence number acknowledged)."""
    async with asyncio.timeout(TIMEOUT):
        async with await Publisher.connect("127.0.0.1", port, ssl=context) as publisher:
            for first in range(0, len(messages), 5000):
                await publisher.send_many(messages[first : first + 5000])
            ack = await publisher.flush()
    assert ack is not None and ack.count == len(messages)
    return ack.session, ack.seq


async def read_to_the_end(subscription: Subscription) -> None:
    async with subscription as messages:
        async for _ in messages:
            pass


async def raw_tls_stream(port: int, context: ssl.SSLContext, size: int) -> bytes:
    """Log in at 1 over TLS and read packets until ``size`` bytes of sequenced data came
    after Login Accepted: those packets as sent (heartbeats left out)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        writer.write(LoginRequest("", "", "", 1).encode())
        framer = Framer()
        stream = bytearray()
        accepted = False
        async with asyncio.timeout(TIMEOUT):
            while len(stream) < size:
                data = await reader.read(1 << 20)
                assert data, f"closed after {len(stream)} of {size} bytes"
                framer.feed(data)
                for frame in framer:
                    packet = decode_server_packet(frame)
                    if isinstance(packet, LoginAccepted):
                        assert not accepted and not stream
                        accepted = True
                    elif isinstance(packet, SequencedData):
                        stream += len(frame).to_bytes(2, "big") + frame
        assert accepted
        return bytes(stream)
    finally:
        writer.close()


def test_a_tls_subscriber_replays_from_1_byte_identical_then_live(
    server: ServerProcess, pki: Pki
) -> None:
    context = client_context(pki.ca)
    early, late = payloads(1, MESSAGES), payloads(MESSAGES + 1, 500)

    async def scenario() -> None:
        session, last = await publish(server.port, context, early)
        assert last == MESSAGES
        log_bytes = (server.data / session / LOG_FILE).read_bytes()
        # The raw stream is the log, byte for byte.
        assert await raw_tls_stream(server.port, context, len(log_bytes)) == log_bytes

        received: list[tuple[int, bytes]] = []
        async with asyncio.timeout(TIMEOUT):
            async with Subscription("127.0.0.1", server.port, seq=1, ssl=context) as messages:
                async for message in messages:
                    received.append((message.seq, message.payload))
                    if len(received) == MESSAGES:
                        assert message.session == session
                        await publish(server.port, context, late)  # now live
                    if len(received) == MESSAGES + len(late):
                        break
        assert received == list(enumerate(early + late, 1))

    asyncio.run(scenario())
    server.wait_for_log("caught up: replayed 60000 messages")


def test_tail_over_tls_prints_the_messages(server: ServerProcess, pki: Pki) -> None:
    asyncio.run(publish(server.port, client_context(pki.ca), [b"alpha", b"beta", b"gamma"]))
    done = tickertape(
        "tail", "--port", str(server.port), "--tls", "--ca", str(pki.ca), "--count", "3"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["1 alpha", "2 beta", "3 gamma"]


def test_publish_over_tls_gets_every_message_acknowledged(server: ServerProcess, pki: Pki) -> None:
    done = tickertape(
        "publish",
        "--port",
        str(server.port),
        "--tls",
        "--ca",
        str(pki.ca),
        stdin="one\ntwo\nthree\n",
    )
    assert done.returncode == 0, done.stderr
    assert "published 3 messages" in done.stderr

    async def read_back() -> list[bytes]:
        got: list[bytes] = []
        async with asyncio.timeout(TIMEOUT):
            async with Subscription(
                "127.0.0.1", server.port, seq=1, ssl=client_context(pki.ca)
            ) as messages:
                async for message in messages:
                    got.append(message.payload)
                    if len(got) == 3:
                        break
        return got

    assert asyncio.run(read_back()) == [b"one", b"two", b"three"]


def test_a_plain_client_on_the_tls_port_fails_and_the_server_keeps_serving(
    server: ServerProcess, pki: Pki
) -> None:
    async def plain_login() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(LoginRequest("", "", "", 1).encode())
        received = b""
        try:
            async with asyncio.timeout(TIMEOUT):
                while data := await reader.read(65536):  # until the server closes
                    received += data
        except ConnectionResetError:
            pass
        finally:
            writer.close()
        return received

    async def plain_subscription() -> None:
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(ConnectionError):
                await read_to_the_end(Subscription("127.0.0.1", server.port, reconnect=False))

    answer = asyncio.run(plain_login())
    # No Login Accepted: a Debug packet saying to use TLS, in plain text, then the close.
    assert (
        answer
        == Debug(b"this port speaks TLS: connect with TLS (tickertape tail/publish --tls)").encode()
    )
    server.wait_for_log("speaks plain text on this TLS port")
    asyncio.run(plain_subscription())
    # The server still serves TLS clients.
    asyncio.run(publish(server.port, client_context(pki.ca), [b"still here"]))
    done = tickertape(
        "tail", "--port", str(server.port), "--tls", "--ca", str(pki.ca), "--count", "1"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "1 still here\n"
    assert not any("Traceback" in line for line in server.lines), server.lines


def test_a_client_with_the_wrong_ca_is_refused(server: ServerProcess, pki: Pki) -> None:
    wrong = client_context(pki.other_ca)

    async def scenario() -> None:
        async with asyncio.timeout(TIMEOUT):
            # Even a subscription that reconnects gives up: the certificate will not change.
            with pytest.raises(TLSRefused, match="not trusted"):
                await read_to_the_end(Subscription("127.0.0.1", server.port, ssl=wrong))
            with pytest.raises(TLSRefused, match="not trusted"):
                await Publisher.connect("127.0.0.1", server.port, ssl=wrong)

    asyncio.run(scenario())
    for ca in (["--ca", str(pki.other_ca)], []):  # the system's trust store knows no test CA
        done = tickertape("tail", "--port", str(server.port), "--tls", *ca, "--count", "1")
        assert done.returncode == 1
        assert "certificate" in done.stderr and "not trusted" in done.stderr, done.stderr
        assert len(done.stderr.splitlines()) == 1, done.stderr
    done = tickertape("publish", "--port", str(server.port), "--tls", "--ca", str(pki.other_ca))
    assert done.returncode == 1
    assert "not trusted" in done.stderr and "Traceback" not in done.stderr, done.stderr
    # The server says so too, and goes on.
    assert "certificate" in server.wait_for_log("TLS handshake with 127.0.0.1:"), server.lines
    _, last = asyncio.run(publish(server.port, client_context(pki.ca), [b"x"]))
    assert last == 1


def test_plain_tail_on_the_tls_port_is_told_to_use_tls(server: ServerProcess) -> None:
    """Not a retry loop: one line saying to add --tls, exit 1; the server logs it."""
    for verb in ("tail", "publish"):
        done = tickertape(verb, "--port", str(server.port), stdin="x\n")
        assert done.returncode == 1, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert "connect with TLS" in lines[0] and "--tls" in lines[0], lines
    assert server.wait_for_log("speaks plain text on this TLS port")


def test_tail_with_tls_on_a_plain_port_is_told_to_drop_it(tmp_path: Path, pki: Pki) -> None:
    with ServerProcess(tmp_path / "plain") as plain:
        for verb in ("tail", "publish"):
            done = tickertape(verb, "--port", str(plain.port), "--tls", "--ca", str(pki.ca))
            assert done.returncode == 1, done.stderr
            lines = done.stderr.strip().splitlines()
            assert len(lines) == 1, done.stderr
            assert "TLS handshake" in lines[0] and "no --tls" in lines[0], lines
        line = plain.wait_for_log("began a TLS handshake on this plain-text port")
        assert "127.0.0.1:" in line, line


def test_the_server_log_says_tls(server: ServerProcess) -> None:
    line = server.wait_for_log("SoupBinTCP listening on")
    assert line.endswith(f"127.0.0.1:{server.port} (TLS)")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--tls-cert", "{cert}"], "--tls-cert and --tls-key go together"),
        (["--tls-key", "{key}"], "--tls-cert and --tls-key go together"),
        (["--tls-cert", "{missing}", "--tls-key", "{key}"], "cannot read the TLS certificate"),
        (["--tls-cert", "{cert}", "--tls-key", "{missing}"], "cannot read the TLS key"),
        (["--tls-cert", "{cert}", "--tls-key", "{other_key}"], "does not belong to"),
        (["--tls-cert", "{ca_dir}", "--tls-key", "{key}"], "cannot read the TLS certificate"),
        (["--tls-cert", "{junk}", "--tls-key", "{key}"], "expected PEM files"),
    ],
)
def test_serve_refuses_tls_files_it_cannot_use(
    tmp_path: Path, pki: Pki, args: list[str], says: str
) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    names = {
        "cert": pki.cert,
        "key": pki.key,
        "other_key": pki.other_key,
        "missing": tmp_path / "missing.pem",
        "ca_dir": tmp_path,
        "junk": junk,
    }
    filled = [arg.format(**names) for arg in args]
    done = tickertape("serve", "--data", str(tmp_path / "data"), "--port", "0", *filled)
    assert done.returncode == 2
    assert says in done.stderr, done.stderr
    if "go together" not in says:
        assert len(done.stderr.splitlines()) == 1, done.stderr
        assert done.stderr.startswith("tickertape: ")


def test_client_tls_options_are_checked(tmp_path: Path) -> None:
    done = tickertape("tail", "--ca", str(tmp_path / "ca.pem"))
    assert done.returncode == 2
    assert "--ca needs --tls" in done.stderr
    done = tickertape("publish", "--tls", "--ca", str(tmp_path / "missing.pem"))
    assert done.returncode == 2
    assert "cannot read the TLS CA file" in done.stderr
    assert len(done.stderr.splitlines()) == 1


def test_catch_up_over_tls_never_tries_sendfile(
    tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process: the log is read and written in ranges, with small ones here so that
    catching up takes many steps through the write buffer's flow control."""
    count = 20_000
    config = ServerConfig(
        port=0,
        ssl=server_context(pki.cert, pki.key),
        catch_up_chunk=16 << 10,
        write_buffer_high=64 << 10,
    )

    async def scenario() -> None:
        loop = asyncio.get_running_loop()

        async def no_sendfile(*args: object, **kwargs: object) -> int:
            raise AssertionError("sendfile over TLS")

        def no_os_sendfile(*args: object) -> int:
            raise AssertionError("sendfile over TLS")

        monkeypatch.setattr(loop, "sendfile", no_sendfile)
        monkeypatch.setattr(os, "sendfile", no_os_sendfile)
        async with running_server(tmp_path, config) as (engine, tls_server):
            sent = payloads(1, count)
            await engine.publish_many(sent)
            got: list[bytes] = []
            async with asyncio.timeout(TIMEOUT):
                async with Subscription(
                    "127.0.0.1", tls_server.port, seq=1, ssl=client_context(pki.ca)
                ) as messages:
                    async for batch in messages.batches():
                        got.extend(message.payload for message in batch)
                        if len(got) >= count:
                            break
            assert got == sent

    asyncio.run(scenario())
