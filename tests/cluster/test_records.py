"""The journal's records: every record survives its encoding; a damaged one is refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tickertape.cluster.records import (
    CHECKSUM,
    COUNT,
    KIND,
    Batch,
    CorruptRecord,
    Fence,
    Record,
    Roll,
    decode,
    encode,
)

session_ids = st.from_regex(r"\A20[0-9]{8}\Z")
names = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20)
record_strategy: st.SearchStrategy[Record] = st.one_of(
    st.builds(
        Batch,
        session_ids,
        st.integers(1, 2**63),
        st.integers(1, 2**20),
        st.binary(max_size=300),
    ),
    st.builds(Roll, session_ids, session_ids),
    st.builds(Fence, names, names, st.integers(0, 2**63)),
)


@given(record_strategy)
def test_every_record_comes_back_as_it_went(record: Record) -> None:
    headers, payload = encode(record)
    assert decode(headers, payload) == record


def test_a_batch_whose_bytes_changed_is_refused() -> None:
    headers, payload = encode(Batch("2026120701", 1, 2, b"\x00\x02Sa\x00\x02Sb"))
    with pytest.raises(CorruptRecord, match="checksum"):
        decode(headers, payload[:-1] + b"c")


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({KIND: "nonsense"}, "not a tickertape record"),
        ({COUNT: "0"}, "of 0 messages"),
        ({COUNT: "-1"}, "not a number"),
        ({CHECKSUM: ""}, "without its Tickertape-Checksum"),
    ],
)
def test_a_malformed_record_is_refused_with_the_reason(change: dict[str, str], why: str) -> None:
    headers, payload = encode(Batch("2026120701", 1, 1, b"\x00\x02Sa"))
    with pytest.raises(CorruptRecord, match=why):
        decode(headers | change, payload)


def test_a_message_without_headers_is_not_a_record() -> None:
    with pytest.raises(CorruptRecord, match="not a tickertape record"):
        decode(None, b"payload")
