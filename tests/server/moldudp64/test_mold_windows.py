"""The re-request server's windows: an answer is the messages from a number that fit one
packet, cut from a window as one slice; the most recently used windows are kept."""

from __future__ import annotations

from tickertape.server.moldudp64.windows import Window, Windows
from tickertape.wire.moldudp64 import HEADER, MAX_DATAGRAM, blocks_from_soupbintcp
from tickertape.wire.soupbintcp import encode_sequenced_many

SESSION = "2026120701"


def window(first: int, count: int, size: int = 100, session: str = SESSION) -> Window:
    """Messages ``first`` .. ``first + count - 1``, each ``size`` bytes, as a log holds them."""
    soup = encode_sequenced_many([b"%0*d" % (size, n) for n in range(first, first + count)])
    offsets = list(range(0, len(soup) + 1, size + 3))
    blocks, block_offsets = blocks_from_soupbintcp(soup, offsets, count)
    return Window(session, first, blocks, block_offsets)


def windows(max_windows: int = 64) -> Windows:
    return Windows(MAX_DATAGRAM, 16 << 10, 8, max_windows)


def test_an_answer_holds_what_fits_a_packet_up_to_the_count() -> None:
    held = window(5, 30)  # blocks of 102 bytes: 14 fit the 1452 bytes after the header
    assert held.next_seq == 35
    answer, short = windows().fill(held, 5, 100)
    assert (answer.count, short) == (14, False)
    assert HEADER.size + answer.end - answer.start <= MAX_DATAGRAM
    assert answer.blocks[answer.start : answer.start + 2] == (100).to_bytes(2, "big")
    assert answer.blocks[answer.start + 2 : answer.start + 102] == b"%0100d" % 5
    answer, short = windows().fill(held, 7, 3)
    assert (answer.count, short) == (3, False)
    assert answer.blocks[answer.start + 2 : answer.start + 102] == b"%0100d" % 7
    answer, short = windows().fill(held, 30, 100)  # the window runs out first
    assert (answer.count, short) == (5, True)
    assert answer.end == len(held.blocks)


def test_the_most_recently_used_windows_are_kept() -> None:
    kept = windows(max_windows=2)
    first, second, third = window(1, 10), window(11, 10), window(21, 10)
    kept.keep(first)
    kept.keep(second)
    assert kept.find(SESSION, 5) is first  # now the most recently used
    kept.keep(third)
    assert kept.find(SESSION, 15) is None
    assert kept.find(SESSION, 1) is first and kept.find(SESSION, 30) is third
    assert kept.find("2026120702", 5) is None
    kept.forget(SESSION)
    assert kept.find(SESSION, 5) is None and kept.find(SESSION, 25) is None


def test_a_read_that_goes_on_where_a_window_ends_reads_ahead() -> None:
    kept = windows()
    assert kept.size_to_read(SESSION, 11, ahead=False) == 16 << 10  # scattered: a window
    kept.keep(window(1, 10))
    assert kept.size_to_read(SESSION, 11, ahead=False) == 8 * (16 << 10)  # in order
    assert kept.size_to_read(SESSION, 50, ahead=False) == 16 << 10
    assert kept.size_to_read(SESSION, 50, ahead=True) == 8 * (16 << 10)
