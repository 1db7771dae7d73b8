"""The status page in a real browser: headless Chromium (Debian's chromium and
chromium-driver, installed by bench/install-browser) driven by Selenium, against a real
``tickertape serve --demo 1000 --admin-port P`` with subscribers and a publisher
connected. The page must show the session, a message count that rises, the connected
subscriber and a drawn chart, and keep updating without a reload.

A screenshot is saved to ``tmp_path``; with ``TICKERTAPE_SCREENSHOT=1`` in the
environment, to docs/status-page.png (the README shows it)."""

from __future__ import annotations

import asyncio
import json
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tickertape.server.admin import AdminConfig, AdminServer
from tickertape.server.moldudp64.rerequest import MoldRequestServer
from tickertape.server.moldudp64.settings import RequestServerConfig
from tickertape.server.writer import PublishFailed

from support import FullDisk, ServerProcess, free_port, running_server, until_sync

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
TIMEOUT = 30.0
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "status-page.png"
T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | None], timeout: float = TIMEOUT) -> T:
    """``check()``'s first true answer, polled until ``timeout``."""
    return until_sync(check, f"the page showing {what}", timeout, 0.1)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), (
        "the status page's test needs Debian's chromium and chromium-driver: run "
        "sh bench/install-browser"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,1400",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ]:
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()


def tickertape(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tickertape", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


class RawPublisher(threading.Thread):
    """A publisher written from the SoupBinTCP 4.1 spec and tickertape's publishing
    convention: Login Request (``L``) asking for sequence 99999999999999999999 (no
    stream), then Unsequenced Data (``U``) packets, 5 every 10 ms, until stopped (at
    most 10 minutes). What the server sends back is read and dropped."""

    def __init__(self, port: int, user: str) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        login = b"L" + user.encode().ljust(6) + b" " * 10 + b" " * 10 + b"9" * 20
        self.sock.sendall(struct.pack(">H", len(login)) + login)
        self.stopped = threading.Event()
        self.sent = 0

    def run(self) -> None:
        deadline = time.monotonic() + 600
        while not self.stopped.wait(0.01) and time.monotonic() < deadline:
            packets = [b"U" + b"published %d" % (self.sent + n) for n in range(1, 6)]
            self.sock.sendall(b"".join(struct.pack(">H", len(p)) + p for p in packets))
            self.sent += len(packets)
            while select.select([self.sock], [], [], 0)[0] and self.sock.recv(65536):
                pass
        self.sock.close()

    def stop(self) -> None:
        self.stopped.set()
        self.join(10)


def text(driver: WebDriver, element_id: str) -> str:
    # In one step in the page: an element the page replaces cannot go stale between
    # finding it and reading it.
    shown: Any = driver.execute_script(
        "return document.getElementById(arguments[0]).innerText", element_id
    )
    return str(shown)


def count(driver: WebDriver, element_id: str) -> int | None:
    shown = text(driver, element_id).replace(",", "")
    return int(shown) if shown.isdigit() else None


def table_rows(driver: WebDriver, table: str) -> list[list[str]]:
    """The text of each cell of each row of a table's body, read in one go in the page
    (the page replaces the body at each poll: elements found one by one go stale)."""
    rows: Any = driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0] + ' tbody tr'))"
        ".map((tr) => Array.from(tr.cells).map((td) => td.textContent))",
        "#" + table,
    )
    return [[str(cell) for cell in row] for row in rows]


def client_rows(driver: WebDriver) -> list[list[str]]:
    return table_rows(driver, "clients")


def chart_points(driver: WebDriver) -> int:
    """How many samples the chart says it drew."""
    return int(driver.find_element(By.ID, "rate-chart").get_attribute("data-points") or 0)


def chart_pixels(driver: WebDriver) -> int:
    """How many pixels of the chart's canvas are the line's colour (#4fb3ff)."""
    drawn: Any = driver.execute_script(
        """
        const canvas = document.getElementById("rate-chart");
        const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
        let n = 0;
        for (let i = 0; i < data.length; i += 4)
          if (data[i] === 0x4f && data[i + 1] === 0xb3 && data[i + 2] === 0xff
              && data[i + 3] === 255) n++;
        return n;
        """
    )
    return int(drawn)


def test_the_status_page_shows_the_server_live(tmp_path: Path, browser: WebDriver) -> None:
    admin_port = free_port()
    with ServerProcess(tmp_path / "data", "--demo", "1000", "--admin-port", str(admin_port)) as (
        server
    ):
        server.wait_for_log("admin API listening")
        base = f"http://127.0.0.1:{admin_port}"
        subscribers = [
            tickertape("tail", "--port", str(server.port), "--from", str(start))
            for start in (0, 1, 1)
        ]
        publisher = RawPublisher(server.port, "feed")
        publisher.start()
        try:

            def live() -> dict[str, Any]:
                with urllib.request.urlopen(base + "/status/live", timeout=TIMEOUT) as answer:
                    return dict(json.load(answer))

            session = live()["session"]
            wait_for("three subscribers", lambda: len(live()["clients"]) == 3)

            browser.get(base + "/")
            assert browser.title == "tickertape status"
            wait_for("the session", lambda: text(browser, "session") == session)
            first = wait_for("a message count", lambda: count(browser, "messages"))
            # The page polls by itself: the count rises with no reload.
            second = wait_for(
                "a rising message count",
                lambda: (n := count(browser, "messages")) is not None and n > first and n,
            )
            assert second > first

            def three_rows() -> list[list[str]] | None:
                rows = client_rows(browser)
                return rows if len(rows) == 3 else None

            rows = wait_for("the three subscribers", three_rows)
            for row in rows:
                address, user, shown_session, position, lag, state, transport, since = row
                assert address.startswith("127.0.0.1:")
                assert user == "(anonymous)"
                assert shown_session == session
                assert int(position.replace(",", "")) >= 1
                assert int(lag.replace(",", "")) >= 0
                assert state in {"live", "catching up", "blocked"}
                assert transport == "plain"
                assert since.endswith("ago")
            # The chart: the rate sampled each second, drawn as a line, and redrawn with
            # more samples as time passes (no reload).
            drawn = wait_for("the chart's data", lambda: (n := chart_points(browser)) >= 2 and n)
            assert wait_for("the chart's line", lambda: chart_pixels(browser) > 20)
            wait_for("the chart growing", lambda: chart_points(browser) > drawn)

            def publisher_row() -> list[str] | None:
                rows = table_rows(browser, "publishers")
                if len(rows) != 1:
                    return None
                cells = rows[0]
                rate = cells[3].replace(",", "") if len(cells) == 5 else ""
                return cells if len(rows) == 1 and rate.isdigit() and int(rate) > 0 else None

            address, user, published, _, since = wait_for("the publisher's rate", publisher_row)
            assert address.startswith("127.0.0.1:")
            assert (user, since[-3:]) == ("feed", "ago")
            assert 0 < int(published.replace(",", "")) <= publisher.sent
            wait_for("the sessions on disk", lambda: session in text(browser, "sessions"))
            assert browser.find_element(By.ID, "error").is_displayed() is False
            # For the README: long enough under load for the chart to show a minute of it.
            if os.environ.get("TICKERTAPE_SCREENSHOT"):
                wait_for("a minute of the chart", lambda: chart_points(browser) >= 60, timeout=90)
            shot = (
                SCREENSHOT if os.environ.get("TICKERTAPE_SCREENSHOT") else tmp_path / "status.png"
            )
            # The page's content, without the empty window below it.
            assert browser.find_element(By.TAG_NAME, "body").screenshot(str(shot))
            assert shot.stat().st_size > 10_000
        finally:
            publisher.stop()
            for process in subscribers:
                process.terminate()
                process.wait(10)


def test_the_page_shows_a_publishing_error_in_red_and_the_mold_counters(
    tmp_path: Path, browser: WebDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In this process: a full disk (os.write failing for the batch holding b"fail") and
    # a MoldUDP64 re-request server that was sent one malformed request. The browser is
    # driven from a thread while the server runs on the event loop.
    def check_page(base: str, reason: str) -> None:
        browser.get(base + "/")
        error = browser.find_element(By.ID, "error")
        wait_for("the publishing error", error.is_displayed)
        assert error.text == "Publishing is paused: " + reason
        assert error.value_of_css_property("color") == "rgba(255, 92, 92, 1)"

        def counters() -> dict[str, str] | None:
            shown: Any = browser.execute_script(
                "return Array.from(document.querySelectorAll('#mold [data-counter]'))"
                ".map((item) => [item.dataset.counter, item.querySelector('.count').textContent])"
            )
            found = {str(name): str(count) for name, count in shown}
            return found if found.get("requests.malformed") == "1" else None

        shown = wait_for("the MoldUDP64 counters", counters)
        assert shown["requests.requests"] == "1"
        assert shown["requests.answered"] == "0"
        assert "Re-request server" in text(browser, "mold")
        assert browser.find_element(By.ID, "mold-section").is_displayed()
        assert browser.save_screenshot(str(tmp_path / "status-error.png"))

    async def main() -> None:
        async with running_server(tmp_path) as (engine, server):
            requests = MoldRequestServer(engine, RequestServerConfig())
            await requests.start()
            admin = AdminServer(engine, server, AdminConfig())
            admin.mold_requests = requests
            await admin.start()
            try:
                FullDisk(monkeypatch)
                with pytest.raises(PublishFailed):
                    await engine.publish(b"fail")
                reason = engine.publishing_error
                assert reason is not None and "no space left" in reason
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.sendto(b"too short", ("127.0.0.1", requests.port))
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(
                    None, check_page, f"http://127.0.0.1:{admin.port}", reason
                )
            finally:
                await admin.close()
                await requests.close()

    asyncio.run(asyncio.wait_for(main(), 120))
