"""The simulator's threading HTTP server and its request handler."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

from reconciler.simulator_api import (
    ADMIN_PREFIX,
    Api,
    Request,
    Response,
    admin_response,
)
from reconciler.simulator_store import Tally

logger = logging.getLogger(__name__)


class Server(ThreadingHTTPServer):
    """A threading HTTP server that can close its open keep-alive connections."""

    # With the default backlog of 5, a burst of 20 clients waited about a second
    # for SYN retransmissions on Linux.
    request_queue_size = 128

    def __init__(self, port: int, api: Api, tally: Tally) -> None:
        super().__init__(("127.0.0.1", port), _RequestHandler)
        self.api = api
        self.tally = tally
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        """Shut down open connections so idle keep-alive threads end at once."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The default handler prints a traceback to stderr for each failure,
        # including clients that hang up, which would clutter the demo's output.
        logger.debug("Request from %s failed", client_address, exc_info=True)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ods-simulator"
    # Seconds an idle keep-alive connection waits for its next request.
    timeout = 30
    # Headers and body go out in separate writes, which Nagle's algorithm and
    # delayed ACKs would hold back about 40 ms on a kept-alive connection.
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        self._server().track(self.connection)

    def finish(self) -> None:
        self._server().untrack(self.connection)
        super().finish()

    def do_GET(self) -> None:
        self._dispatch()

    do_PUT = do_POST = do_DELETE = do_PATCH = do_HEAD = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def _server(self) -> Server:
        return cast(Server, self.server)

    def _dispatch(self) -> None:
        self._discard_body()
        url = urlsplit(self.path)
        server = self._server()
        if url.path.startswith(ADMIN_PREFIX + "/"):
            response = admin_response(self.command, url.path, server.tally)
        else:
            authorization = self.headers.get("Authorization")
            request = Request(
                self.command, url.path, parse_qs(url.query), authorization
            )
            response = server.api.handle(request)
        if response.drop:
            logger.debug("Closed the connection without a response to %s", self.path)
            self.close_connection = True
            return
        self._send(response)

    def _discard_body(self) -> None:
        # Reading the whole body keeps the next request on this connection aligned.
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
            self.close_connection = True
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
        elif length > 0:
            self.rfile.read(length)

    def _send(self, response: Response) -> None:
        payload = json.dumps(response.body).encode()
        self.send_response(response.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in response.headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
