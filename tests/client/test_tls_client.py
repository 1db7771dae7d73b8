"""The clients' TLS options against an in-process server over TLS on 127.0.0.1, with a CA
and certificates the test makes (trustme)."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
import trustme

from tickertape.client.publisher import Publisher
from tickertape.client.soupbintcp import Message, Subscription, TLSRefused, active_session
from tickertape.embedded import Tickertape
from tickertape.errors import ConfigError
from tickertape.server.soupbintcp import ServerConfig
from tickertape.tls import client_context, server_context

from support import CuttingProxy, running_server

TIMEOUT = 20.0


@pytest.fixture(scope="module")
def ca_and_certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """PEM files: ``ca``; ``cert``/``key`` for 127.0.0.1; ``named``/``named_key`` for
    the name tickertape.test only."""
    root = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    files = {name: root / f"{name}.pem" for name in ("ca", "cert", "key", "named", "named_key")}
    ca.cert_pem.write_to_path(str(files["ca"]))
    for names, cert, key in (
        ("127.0.0.1", "cert", "key"),
        ("tickertape.test", "named", "named_key"),
    ):
        issued = ca.issue_cert(names)
        issued.private_key_pem.write_to_path(str(files[key]))
        for blob in issued.cert_chain_pems:
            blob.write_to_path(str(files[cert]), append=True)
    return files


async def first_message(subscription: Subscription) -> Message:
    async with subscription as messages:
        return await anext(aiter(messages))


def test_a_tls_subscription_reconnects_with_no_gap(
    tmp_path: Path, ca_and_certs: dict[str, Path]
) -> None:
    total = 20_000
    config = ServerConfig(port=0, ssl=server_context(ca_and_certs["cert"], ca_and_certs["key"]))

    async def scenario() -> tuple[list[int], int]:
        async with running_server(tmp_path, config) as (engine, server):

            async def publish(first: int, end: int) -> None:
                await engine.publish_many([b"%d" % seq for seq in range(first, end)])

            await publish(1, 5_001)
            proxy = CuttingProxy(server.port)
            await proxy.start()
            seqs: list[int] = []
            subscription = Subscription(
                "127.0.0.1",
                proxy.port,
                seq=1,
                reconnect_delay=0.01,
                ssl=client_context(ca_and_certs["ca"]),
            )
            async with subscription as messages:
                async for message in messages:
                    assert message.payload == b"%d" % message.seq
                    seqs.append(message.seq)
                    if len(seqs) in (5_000, 12_000):
                        # What comes next is published after the cut: only a new
                        # connection can bring it.
                        proxy.cut()
                        await publish(len(seqs) + 1, 12_001 if len(seqs) == 5_000 else total + 1)
                    if len(seqs) == total:
                        break
            await proxy.close()
            return seqs, subscription.logins

    seqs, logins = asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))
    assert seqs == list(range(1, total + 1))
    assert logins == 3


def test_server_hostname_names_the_certificate_to_expect(
    tmp_path: Path, ca_and_certs: dict[str, Path]
) -> None:
    """A certificate for tickertape.test, reached at 127.0.0.1: refused unless the client
    is told the name."""
    context = server_context(ca_and_certs["named"], ca_and_certs["named_key"])
    trust = client_context(ca_and_certs["ca"])

    async def scenario() -> None:
        async with running_server(tmp_path, ServerConfig(port=0, ssl=context)) as (engine, server):
            await engine.publish(b"hello")
            with pytest.raises(TLSRefused, match="not trusted"):
                await active_session("127.0.0.1", server.port, ssl=trust)
            session = await active_session(
                "127.0.0.1", server.port, ssl=trust, server_hostname="tickertape.test"
            )
            assert session == engine.session_id
            publisher = await Publisher.connect(
                "127.0.0.1", server.port, ssl=trust, server_hostname="tickertape.test"
            )
            async with publisher:
                await publisher.send_many([b"world"])
                ack = await publisher.flush()
            assert ack is not None and ack.seq == 2
            subscription = Subscription(
                "127.0.0.1", server.port, seq=1, ssl=trust, server_hostname="tickertape.test"
            )
            got: list[bytes] = []
            async with subscription as messages:
                async for message in messages:
                    got.append(message.payload)
                    if len(got) == 2:
                        break
            assert got == [b"hello", b"world"]

    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))


def test_a_tls_client_against_a_plain_server_fails(
    tmp_path: Path, ca_and_certs: dict[str, Path]
) -> None:
    async def scenario() -> None:
        async with running_server(tmp_path) as (_, server):
            subscription = Subscription(
                "127.0.0.1", server.port, ssl=client_context(ca_and_certs["ca"]), reconnect=False
            )
            with pytest.raises(ConnectionError):
                await first_message(subscription)

    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))


def test_the_embedded_server_serves_tls(tmp_path: Path, ca_and_certs: dict[str, Path]) -> None:
    async def scenario() -> None:
        tls = server_context(ca_and_certs["cert"], ca_and_certs["key"])
        async with Tickertape(tmp_path, port=0, durability="none", ssl=tls) as server:
            await server.publish(b"embedded")
            subscription = Subscription(
                "127.0.0.1", server.port, seq=1, ssl=client_context(ca_and_certs["ca"])
            )
            assert (await first_message(subscription)).payload == b"embedded"

    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))


def test_contexts_say_which_file_they_cannot_use(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="cannot read the TLS CA file"):
        client_context(tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match="no PEM certificates"):
        client_context(junk)
    with pytest.raises(ConfigError, match="cannot read the TLS key"):
        server_context(junk, tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match="expected PEM files"):
        server_context(junk, junk)


def test_client_contexts_check_certificates_and_names_with_tls_1_2_or_later(
    ca_and_certs: dict[str, Path],
) -> None:
    for context in (client_context(), client_context(ca_and_certs["ca"])):
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.check_hostname
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    server = server_context(ca_and_certs["cert"], ca_and_certs["key"])
    assert server.minimum_version == ssl.TLSVersion.TLSv1_2
