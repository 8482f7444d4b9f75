"""A FIN from the client is taken as the client leaving, as nginx takes it (499): a client that half-closes
(shutdown(SHUT_WR), `printf ... | nc -N`) before its response gets none, and what it had in flight gives back its
connection at once. A half-close cannot be told from a client that is gone until a write fails, and abandoned
requests must not keep holding buffers and upstream work (ClientConnection.eof_received)."""

from __future__ import annotations

import socket

from stockade.testing import TestGateway, TestUpstream, read_responses
from tests.proxy.helpers import closed, wait_for


def test_a_half_close_after_the_response_just_closes(gateway: TestGateway, upstream: TestUpstream) -> None:
    with gateway.connect() as sock:
        sock.sendall(b"GET /api/one HTTP/1.1\r\nHost: a\r\n\r\n")
        responses = read_responses(sock, 1)
        sock.shutdown(socket.SHUT_WR)
        assert closed(sock)
    assert [(r[0], r[1].get("connection")) for r in responses] == [(200, None)]
    wait_for(lambda: not gateway.server.connections)


def test_a_half_close_before_the_response_abandons_the_request(gateway: TestGateway, upstream: TestUpstream) -> None:
    upstream.stall()  # the FIN arrives while the upstream still works on the request: no race
    with gateway.connect() as sock:
        sock.sendall(b"GET /api/x HTTP/1.1\r\nHost: a\r\n\r\n")
        wait_for(lambda: [r.target for r in upstream.received] == ["/api/x"])
        sock.shutdown(socket.SHUT_WR)
        wait_for(lambda: not gateway.server.connections)  # given up at the FIN, not when the upstream answers
        upstream.release()
        assert read_responses(sock, 1) == []
        assert closed(sock)


def test_a_half_close_in_the_middle_of_a_request_closes_at_once(gateway: TestGateway, upstream: TestUpstream) -> None:
    with gateway.connect() as sock:
        sock.sendall(b"GET /api/x HTTP/1.1\r\nHost: a\r\n")  # the head's blank line never comes
        sock.shutdown(socket.SHUT_WR)
        assert read_responses(sock, 1) == []
        assert closed(sock)
    assert upstream.received == []
