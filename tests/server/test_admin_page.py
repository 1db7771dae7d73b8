"""The status page's files (GET /, GET /static/...: tickertape.server.admin_page), over real
HTTP on 127.0.0.1 against an engine and SoupBinTCP server in this event loop. The page
itself, in a browser: tests/server/test_status_page_browser.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from tickertape.server.admin import AdminConfig, AdminServer

from support import running_server


def test_the_page_and_its_files_are_served_with_a_strict_policy(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_server(tmp_path) as (engine, server):
            admin = AdminServer(engine, server, AdminConfig())
            await admin.start()
            base = f"http://127.0.0.1:{admin.port}"
            try:
                async with aiohttp.ClientSession() as http:
                    for path, kind, text in [
                        ("/", "text/html", '<canvas id="rate-chart"'),
                        ("/static/status.js", "text/javascript", "/status/live"),
                        ("/static/status.css", "text/css", "body"),
                    ]:
                        async with http.get(base + path) as response:
                            assert response.status == 200
                            assert response.content_type == kind
                            assert text in await response.text()
                            policy = response.headers["Content-Security-Policy"]
                            assert "default-src 'none'" in policy
                            assert "frame-ancestors 'none'" in policy
                    for path in ["/static/other.js", "/static/..%2Fadmin.py"]:
                        async with http.get(base + path) as response:
                            assert response.status == 404
                            assert "no such file" in (await response.json())["error"]
            finally:
                await admin.close()

    asyncio.run(asyncio.wait_for(main(), 60))
