"""The small HTTP server, spoken to over raw sockets on 127.0.0.1: routing, status codes and hostile input."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Callable

import pytest

from monitor.web.server import HttpServer, Request, Response
from tests.tools import tool

seen: list[Request] = []


async def hello(request: Request) -> Response:
    seen.append(request)
    return Response.text("hello\n")


async def echo(request: Request) -> Response:
    seen.append(request)
    return Response(body=request.body, content_type="application/octet-stream", headers={"X-Echo": "yes"})


async def broken(request: Request) -> Response:
    raise RuntimeError("handler bug")


@pytest.fixture
async def server() -> AsyncIterator[HttpServer]:
    seen.clear()
    http = HttpServer({("GET", "/hello"): hello, ("POST", "/echo"): echo, ("GET", "/broken"): broken})
    await http.start("127.0.0.1", 0)
    yield http
    await http.stop()


async def exchange(port: int, raw: bytes) -> bytes:
    """Send `raw`, then read until the server closes; a reset counts as the end of what was sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    except (ConnectionResetError, BrokenPipeError):
        return b""
    finally:
        writer.close()


def parse(response: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-cased names) and body of one HTTP/1.1 response."""
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    version, status, _reason = lines[0].split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status), headers, body


async def test_get_route_returns_200_and_body(server: HttpServer) -> None:
    """A GET on a known path gets the handler's response, with length, type and Connection: close."""
    status, headers, body = parse(await exchange(server.port, b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert status == 200
    assert body == b"hello\n"
    assert headers["content-length"] == "6"
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert headers["connection"] == "close"


async def test_query_and_headers_reach_the_handler(server: HttpServer) -> None:
    """The handler sees the path without the query, the parsed query and lower-cased header names."""
    await exchange(server.port, b"GET /hello?target=mx1&target=mx2&x= HTTP/1.1\r\nX-Thing:  v \r\n\r\n")
    [request] = seen
    assert (request.method, request.path) == ("GET", "/hello")
    assert request.query == {"target": ["mx1", "mx2"]}
    assert request.headers == {"x-thing": "v"}


async def test_post_body_reaches_the_handler(server: HttpServer) -> None:
    """A POST body of Content-Length bytes is read and passed on; handler headers are sent."""
    raw = b"POST /echo HTTP/1.1\r\nContent-Length: 5\r\n\r\nabcde"
    status, headers, body = parse(await exchange(server.port, raw))
    assert (status, body) == (200, b"abcde")
    assert headers["x-echo"] == "yes"
    assert headers["content-type"] == "application/octet-stream"


async def test_head_sends_headers_without_body(server: HttpServer) -> None:
    """HEAD is served by the GET handler, with the GET length but no body."""
    status, headers, body = parse(await exchange(server.port, b"HEAD /hello HTTP/1.1\r\n\r\n"))
    assert (status, headers["content-length"], body) == (200, "6", b"")


async def test_unknown_path_is_404(server: HttpServer) -> None:
    """A path no route serves gets 404."""
    status, _, body = parse(await exchange(server.port, b"GET /nope HTTP/1.1\r\n\r\n"))
    assert (status, body) == (404, b"not found\n")
    assert seen == []


async def test_wrong_method_is_405_with_allow(server: HttpServer) -> None:
    """A known path with a method it does not serve gets 405 and the Allow header."""
    status, headers, _ = parse(await exchange(server.port, b"DELETE /hello HTTP/1.1\r\n\r\n"))
    assert status == 405
    assert headers["allow"] == "GET"
    status, headers, _ = parse(await exchange(server.port, b"GET /echo HTTP/1.1\r\n\r\n"))
    assert (status, headers["allow"]) == (405, "POST")


@pytest.mark.parametrize("raw", [
    b"GARBAGE\r\n\r\n",
    b"GET /hello\r\n\r\n",
    b"GET /hello HTTP/1.1 extra\r\n\r\n",
    b"GET /hello FTP/1.0\r\n\r\n",
    b"GET /hello HTTP/1.1\r\nno colon here\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nContent-Length: many\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nContent-Length: 70000\r\n\r\n",
], ids=["no-spaces", "no-version", "four-parts", "not-http", "header-without-colon", "length-not-a-number",
        "negative-length", "body-too-large"])
async def test_malformed_request_is_400(server: HttpServer, raw: bytes) -> None:
    """A request the server cannot parse or will not accept gets 400 and reaches no handler."""
    status, _, body = parse(await exchange(server.port, raw))
    assert (status, body) == (400, b"bad request\n")
    assert seen == []


async def test_oversized_head_is_refused_and_server_survives(server: HttpServer) -> None:
    """A request head beyond the limit gets 400 or a closed connection, and the next request is served."""
    raw = b"GET /hello HTTP/1.1\r\nX-Big: " + b"a" * (64 * 1024) + b"\r\n\r\n"
    response = await exchange(server.port, raw)
    if response:
        assert parse(response)[0] == 400
    assert seen == []
    status, _, body = parse(await exchange(server.port, b"GET /hello HTTP/1.1\r\n\r\n"))
    assert (status, body) == (200, b"hello\n")


async def test_handler_error_is_500_and_server_survives(server: HttpServer) -> None:
    """A handler that raises gives 500; the server keeps serving."""
    status, _, body = parse(await exchange(server.port, b"GET /broken HTTP/1.1\r\n\r\n"))
    assert (status, body) == (500, b"internal error\n")
    status, _, _ = parse(await exchange(server.port, b"GET /hello HTTP/1.1\r\n\r\n"))
    assert status == 200


async def test_client_leaving_mid_request_does_not_hurt(server: HttpServer) -> None:
    """A client that sends half a request and disconnects gets nothing, and later clients are served."""
    _, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"POST /echo HTTP/1.1\r\nContent-Length: 100\r\n\r\nonly part")
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    status, _, _ = parse(await exchange(server.port, b"GET /hello HTTP/1.1\r\n\r\n"))
    assert status == 200
    assert [r.path for r in seen] == ["/hello"]


async def test_slow_client_gets_400_after_the_read_timeout(server: HttpServer) -> None:
    """A client that never finishes its request head is answered 400 once the read timeout passes."""
    server.head_timeout = 0.1
    status, _, _ = parse(await exchange(server.port, b"GET /hello HTTP/1.1\r\nHost: x\r\n"))
    assert status == 400
    assert seen == []


async def test_concurrent_clients_are_all_served(server: HttpServer) -> None:
    """Many clients at once each get their own complete response."""
    responses = await asyncio.gather(*(exchange(server.port, b"GET /hello HTTP/1.1\r\n\r\n") for _ in range(50)))
    assert [(parse(r)[0], parse(r)[2]) for r in responses] == [(200, b"hello\n")] * 50


async def test_stop_closes_the_listening_socket() -> None:
    """After stop() the port no longer accepts connections."""
    http = HttpServer({("GET", "/hello"): hello})
    await http.start("127.0.0.1", 0)
    port = http.port
    await http.stop()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_connections_over_the_cap_are_closed_at_once_and_counted() -> None:
    """With the cap taken by idle half-requests, a further client is closed without an answer and counted."""
    rejected: list[int] = []
    http = HttpServer({("GET", "/hello"): hello}, max_connections=3, on_rejected=lambda: rejected.append(1))
    await http.start("127.0.0.1", 0)
    idle = [await asyncio.open_connection("127.0.0.1", http.port) for _ in range(3)]
    try:
        for _, writer in idle:
            writer.write(b"GET /hello HTTP/1.1\r\n")
        await asyncio.sleep(0.2)
        assert http.active == 3
        assert await exchange(http.port, b"GET /hello HTTP/1.1\r\n\r\n") == b""
        assert rejected == [1]
    finally:
        for _, writer in idle:
            writer.close()
        await http.stop()


async def test_connections_arriving_together_are_held_to_the_cap() -> None:
    """Connections the loop accepts in one batch count each other: the cap holds before any of them is served."""
    rejected: list[int] = []
    http = HttpServer({("GET", "/hello"): hello}, max_connections=3, on_rejected=lambda: rejected.append(1))
    await http.start("127.0.0.1", 0)
    # Connected by the kernel (blocking, the loop not running meanwhile): all ten wait in the backlog together.
    burst = [socket.create_connection(("127.0.0.1", http.port)) for _ in range(10)]
    try:
        for sock in burst:
            sock.sendall(b"GET /hello HTTP/1.1\r\n")
        for _ in range(50):
            if len(rejected) == 7:
                break
            await asyncio.sleep(0.02)
        assert (http.active, len(rejected)) == (3, 7)
    finally:
        for sock in burst:
            sock.close()
        await http.stop()


async def test_a_freed_slot_serves_the_next_client() -> None:
    """Once the idle clients go away, the next request is served again."""
    http = HttpServer({("GET", "/hello"): hello}, max_connections=2)
    await http.start("127.0.0.1", 0)
    idle = [await asyncio.open_connection("127.0.0.1", http.port) for _ in range(2)]
    for _, writer in idle:
        writer.close()
    for _ in range(50):  # the server notices the closes on its next reads
        if http.active == 0:
            break
        await asyncio.sleep(0.02)
    try:
        status, _, body = parse(await exchange(http.port, b"GET /hello HTTP/1.1\r\n\r\n"))
        assert (status, body) == (200, b"hello\n")
    finally:
        await http.stop()


async def test_a_reader_slower_than_the_write_deadline_is_cut_off() -> None:
    """A client that never reads a large response is disconnected at the write deadline, freeing its slot."""
    big = b"x" * (8 * 1024 * 1024)  # far more than the socket buffers hold

    async def large(request: Request) -> Response:
        return Response(body=big)

    http = HttpServer({("GET", "/big"): large}, write_timeout=0.3)
    await http.start("127.0.0.1", 0)
    _reader, writer = await asyncio.open_connection("127.0.0.1", http.port, limit=1024)
    try:
        writer.write(b"GET /big HTTP/1.1\r\n\r\n")
        await asyncio.sleep(0.2)
        assert http.active == 1
        await asyncio.sleep(0.5)
        assert http.active == 0
    finally:
        writer.close()
        await http.stop()


async def test_a_handler_slower_than_its_deadline_gets_503() -> None:
    """A request whose handler does not answer in time is told 503 with Retry-After, and its slot is freed."""
    async def stuck(request: Request) -> Response:
        await asyncio.sleep(60)
        return Response.text("late\n")

    http = HttpServer({("GET", "/stuck"): stuck}, handler_timeout=0.2)
    await http.start("127.0.0.1", 0)
    try:
        status, headers, _ = parse(await exchange(http.port, b"GET /stuck HTTP/1.1\r\n\r\n"))
        assert (status, headers.get("retry-after")) == (503, "5")
        assert http.active == 0
    finally:
        await http.stop()


# ------------------------------------------------------------------------------------ the cap and TLS handshakes

@pytest.fixture(scope="module")
def tls_context(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    """A server context with a fresh self-signed certificate for 127.0.0.1."""
    tmp = tmp_path_factory.mktemp("tlscap")
    subprocess.run([tool("openssl", package="the Debian package openssl"), "req", "-x509", "-newkey", "rsa:2048",
                    "-nodes", "-days", "2", "-subj", "/CN=mailmon", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(tmp / "k.pem"), "-out", str(tmp / "c.pem")], check=True, capture_output=True,
                   timeout=60)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp / "c.pem", tmp / "k.pem")
    return context


def _loops() -> list[Callable[[], asyncio.AbstractEventLoop]]:
    import uvloop  # the `uvloop` extra, which `mailmon run` and the image use; installed for the tests
    return [asyncio.new_event_loop, uvloop.new_event_loop]


@pytest.mark.parametrize("loop_factory", _loops(), ids=["asyncio", "uvloop"])
def test_connections_in_their_tls_handshake_count_toward_the_cap(
        tls_context: ssl.SSLContext, loop_factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    """Clients that connect and never send a ClientHello hold the cap; the next connection is closed before any
    handshake (no ServerHello, no certificate: a refusal costs no TLS work) and counted; the handshake deadline
    frees the held slots."""

    async def scenario() -> None:
        rejected: list[int] = []
        http = HttpServer({("GET", "/hello"): hello}, max_connections=2, head_timeout=0.5,
                          on_rejected=lambda: rejected.append(1))
        await http.start("127.0.0.1", 0, tls=tls_context)
        silent = [socket.create_connection(("127.0.0.1", http.port)) for _ in range(2)]
        try:
            for _ in range(50):
                if http.active == 2:
                    break
                await asyncio.sleep(0.01)
            assert http.active == 2
            # A real ClientHello from the third client: it gets no handshake, just the end of the connection.
            with pytest.raises((ConnectionError, ssl.SSLError)):
                await asyncio.wait_for(asyncio.open_connection("127.0.0.1", http.port, ssl=_client()), 5)
            assert rejected == [1]
            for _ in range(200):  # the handshake deadline (0.5 s) ends the silent ones
                if http.active == 0:
                    break
                await asyncio.sleep(0.01)
            assert http.active == 0
            reader, writer = await asyncio.open_connection("127.0.0.1", http.port, ssl=_client())
            writer.write(b"GET /hello HTTP/1.1\r\n\r\n")
            status, _, body = parse(await asyncio.wait_for(reader.read(), 5))
            writer.close()
            assert (status, body) == (200, b"hello\n")
        finally:
            for sock in silent:
                sock.close()
            await http.stop()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(scenario())


def _client() -> ssl.SSLContext:
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE  # the certificate is not what this test is about
    return client


async def test_out_of_descriptors_pauses_accepting_instead_of_spinning() -> None:
    """With no descriptor left, `accept` fails with EMFILE and the waiting connection keeps the listening socket
    readable: the server must pause accepting (not call accept again and again, a busy loop that would starve the
    probes), and serve the connection once descriptors are free again."""
    http = HttpServer({("GET", "/hello"): hello})
    calls: list[float] = []
    accept = http._accept

    def counted(listener: socket.socket) -> None:
        calls.append(time.monotonic())
        accept(listener)

    http._accept = counted  # type: ignore[method-assign]
    await http.start("127.0.0.1", 0)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    client = socket.socket()
    client.setblocking(False)
    hoard: list[int] = []
    try:
        client.connect_ex(("127.0.0.1", http.port))  # completes in the kernel's backlog, loop or not
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard))
        with contextlib.suppress(OSError):
            while True:
                hoard.append(os.dup(0))
        client.sendall(b"GET /hello HTTP/1.1\r\n\r\n")
        await asyncio.sleep(0.5)
        assert 1 <= len(calls) <= 2  # one failed accept, then a pause (a spinning loop makes thousands)
        for descriptor in hoard:
            os.close(descriptor)
        hoard.clear()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        loop = asyncio.get_running_loop()
        answer = b""
        deadline = time.monotonic() + 5
        while not answer.endswith(b"hello\n") and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                answer += await asyncio.wait_for(loop.sock_recv(client, 4096), 0.2)
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"hello\n")
    finally:
        for descriptor in hoard:
            os.close(descriptor)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        client.close()
        await http.stop()
