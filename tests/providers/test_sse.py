"""The SSE decoder: event/data fields, comments, CRLF (even split across chunks), flush at EOF."""

from __future__ import annotations

import pytest

from llmkit.providers._http import SSEDecoder, SSEEvent, parse_sse

ANTHROPIC_LIKE = (
    b'event: message_start\ndata: {"type":"message_start"}\n\n'
    b': keep-alive comment\n\n'
    b'event: ping\ndata: {"type": "ping"}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"text":"h\xc3\xa9llo"}}   \n\n'
    b'event: message_stop\ndata: {"type":"message_stop"       }'
)


def test_event_and_data_fields() -> None:
    events = parse_sse(b"event: ping\ndata: {}\n\ndata: second\n\n")
    assert events == [SSEEvent("{}", "ping"), SSEEvent("second", None)]


def test_data_without_space_after_colon_and_id_field() -> None:
    assert parse_sse(b"id: 7\ndata:x\n\n") == [SSEEvent("x", None, "7")]


def test_comments_are_ignored() -> None:
    assert parse_sse(b": comment\ndata: a\n: another\n\n:only a comment\n\n") == [SSEEvent("a")]


def test_multi_line_data_is_joined_with_newlines() -> None:
    assert parse_sse(b"data: one\ndata: two\ndata:\n\n")[0].data == "one\ntwo\n"


def test_event_without_data_is_not_dispatched() -> None:
    assert parse_sse(b"event: ping\n\ndata: a\n\n") == [SSEEvent("a")]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_line_endings(eol: bytes) -> None:
    payload = eol.join([b"event: e", b"data: 1", b"", b"data: 2", b"", b""])
    assert parse_sse(payload) == [SSEEvent("1", "e"), SSEEvent("2")]


def test_crlf_split_across_chunks_is_one_line_break() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n\r") == []
    assert decoder.feed(b"\n") == [SSEEvent("a")]
    assert decoder.flush() == []


def test_final_event_without_blank_line_is_flushed_at_eof() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"type":"message_stop"}') == []
    assert decoder.flush() == [SSEEvent('{"type":"message_stop"}')]


def test_final_event_with_single_newline_is_flushed_at_eof() -> None:
    assert parse_sse(b"data: last\n") == [SSEEvent("last")]


def test_byte_by_byte_feed_matches_whole_feed() -> None:
    whole = parse_sse(ANTHROPIC_LIKE)
    decoder = SSEDecoder()
    pieces = [ev for i in range(len(ANTHROPIC_LIKE)) for ev in decoder.feed(ANTHROPIC_LIKE[i:i + 1])]
    assert pieces + decoder.flush() == whole
    assert [e.event for e in whole] == ["message_start", "ping", "content_block_delta", "message_stop"]
    assert "héllo" in whole[2].data  # a UTF-8 character split across chunks survives
    assert whole[3].json() == {"type": "message_stop"}


def test_data_may_contain_unicode_line_separators() -> None:
    # JSON may hold a raw U+2028; str.splitlines() would break the line there, the decoder must not
    assert parse_sse('data: {"t":"a\u2028b"}\n\n'.encode()) == [SSEEvent('{"t":"a\u2028b"}')]


def test_openai_done_marker_is_plain_data() -> None:
    assert parse_sse(b"data: {}\n\ndata: [DONE]\n\n")[-1].data == "[DONE]"
