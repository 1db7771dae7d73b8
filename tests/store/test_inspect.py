"""Sessions on disk read without a server (:mod:`tickertape.store.inspect`): described,
verified, exported and archived, from a data directory a real server wrote."""

from __future__ import annotations

import asyncio
import io
import os
from pathlib import Path

import pytest

from tickertape.embedded import Tickertape
from tickertape.errors import SessionNotFound, StoreError
from tickertape.store.inspect import (
    STATE_ACTIVE,
    STATE_ARCHIVED,
    STATE_ENDED,
    archive_offline,
    data_directory_in_use,
    export,
    export_range,
    find_session,
    list_sessions,
    show_session,
    state_of,
    verify_session,
)
from tickertape.store.opening import open_session_log


class Recorder:
    """An ExportProgress that keeps what it was told."""

    def __init__(self) -> None:
        self.updates: list[int] = []
        self.finished: int | None = None

    def update(self, done: int) -> None:
        self.updates.append(done)

    def finish(self, done: int) -> None:
        self.finished = done


def served(data: Path) -> tuple[str, str]:
    """A data directory with an ended session of three messages, then an active one
    with none; their ids."""

    async def scenario() -> tuple[str, str]:
        async with Tickertape(data, port=0) as server:
            ended = server.session_id
            await server.publish_many([b"a", b"b  ", b"c"])
            active = await server.end_session()
        return ended, active

    return asyncio.run(scenario())


def exported(data: Path, session: str, form: str, first: int | None = None) -> bytes:
    out = io.BytesIO()
    with open_session_log(find_session(data, session)) as session_log:
        start, stop = export_range(session_log, first, None)
        export(session_log, start, stop, form, out)
    return out.getvalue()


def test_list_and_show_describe_each_session(tmp_path: Path) -> None:
    ended, active = served(tmp_path)
    rows = [summary.brief() for summary in list_sessions(tmp_path)]
    assert [(r["id"], r["state"], r["messages"], r["problems"]) for r in rows] == [
        (ended, STATE_ENDED, 3, 0),
        (active, STATE_ACTIVE, 0, 0),
    ]
    detail = show_session(tmp_path, ended).detail()
    assert detail["path"] == str(tmp_path / ended)
    assert detail["problems"] == [] and detail["tail"] is None
    assert detail["ended_at"] is not None and detail["format"] == 1


def test_an_unknown_session_names_those_there(tmp_path: Path) -> None:
    ended, active = served(tmp_path)
    with pytest.raises(SessionNotFound) as missing:
        find_session(tmp_path, "2020010101")
    assert f"{ended} (ended), {active} (active)" in str(missing.value)


def test_export_writes_each_form(tmp_path: Path) -> None:
    ended, _ = served(tmp_path)
    assert exported(tmp_path, ended, "text") == b"1 a\n2 b\n3 c\n"
    assert exported(tmp_path, ended, "hex") == b"1 61\n2 622020\n3 63\n"
    assert exported(tmp_path, ended, "raw") == b"\x00\x01a\x00\x03b  \x00\x01c"
    soupbin = exported(tmp_path, ended, "soupbin", first=3)
    assert soupbin == b"\x00\x02Sc"


def test_export_tells_its_progress_and_refuses_a_start_past_the_end(tmp_path: Path) -> None:
    ended, _ = served(tmp_path)
    progress = Recorder()
    with open_session_log(find_session(tmp_path, ended)) as session_log:
        count = export(session_log, 1, 3, "text", io.BytesIO(), progress, chunk=1)
        assert count == 3
        assert progress.finished == 3 and progress.updates[-1] == 3
        with pytest.raises(StoreError, match=f"--from 4: session {ended} holds messages 1..3"):
            export_range(session_log, 4, None)


def test_verify_and_export_read_an_archive_as_a_log(tmp_path: Path) -> None:
    ended, _ = served(tmp_path)
    before = verify_session(tmp_path, ended)
    assert before.clean and before.messages == 3
    result = archive_offline(tmp_path, ended)
    assert result.messages == 3
    assert state_of(tmp_path / ended) == STATE_ARCHIVED
    after = verify_session(tmp_path, ended)
    assert after.clean and after.messages == 3 and after.checked == ("archive log.zst",)
    assert exported(tmp_path, ended, "text") == b"1 a\n2 b\n3 c\n"


def test_a_running_server_holds_the_directory_against_an_offline_archive(tmp_path: Path) -> None:
    ended, _ = served(tmp_path)
    assert data_directory_in_use(tmp_path) is None

    async def scenario() -> None:
        async with Tickertape(tmp_path, port=0):
            assert data_directory_in_use(tmp_path) == str(os.getpid())
            with pytest.raises(StoreError, match=f"in use by tickertape process {os.getpid()}"):
                archive_offline(tmp_path, ended)

    asyncio.run(scenario())
    assert state_of(tmp_path / ended) == STATE_ENDED
