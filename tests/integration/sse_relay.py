"""A TCP relay on 127.0.0.1 that can hold a server-sent-event stream after its first token.

Test double for the network between the node and a real vLLM server, nothing else: the bytes
pass unchanged. Why it exists: "the server dies mid-stream" is a race with a real server. On a
fast machine vLLM generates all 64 tokens into the node's socket buffer within milliseconds of the
first one, so a SIGKILL sent when the client sees its first token arrives after a complete answer
(CI saw exactly that). Armed with `hold_after_first_content()`, the relay forwards a response up
to and including its first SSE event with non-empty `text` or `content` and drops everything after it
(other responses pass: only the stream under test carries content while armed); when
the server then dies, the relay closes the node's side, so the node sees the stream cut after one
token however fast the server was.
"""

from __future__ import annotations

import re
import socket
import threading

# a chat delta, or a completion choice (the gateway uses /v1/completions), with at least one character
_CONTENT = re.compile(rb'"(?:content|text)":\s*"[^"]')
_EVENT_END = b"\n\n"


class SseRelay:
    def __init__(self, upstream_port: int):
        self.upstream = ("127.0.0.1", upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._armed = threading.Event()
        self.held = threading.Event()
        """Set once a response was cut after its first content event."""
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="sse-relay").start()

    def hold_after_first_content(self) -> None:
        self.held.clear()
        self._armed.set()

    def release(self) -> None:
        """Forward everything again (connections opened from now on)."""
        self._armed.clear()

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                down, _ = self._listener.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(self.upstream, timeout=5)
            except OSError:  # the server is down: the node sees the connection closed
                down.close()
                continue
            up.settimeout(None)
            threading.Thread(target=self._pipe, args=(down, up, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(up, down, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, from_server: bool) -> None:
        pending, holding = b"", False
        try:
            while data := src.recv(65536):
                if holding:
                    continue  # dropped: the node never gets past the first token
                if not (from_server and self._armed.is_set()):
                    dst.sendall(pending + data)
                    pending = b""
                    continue
                pending += data
                hit = _CONTENT.search(pending)
                if hit is None:  # (a marker split over two reads is missed: the hold comes one event later)
                    dst.sendall(pending)
                    pending = b""
                    continue
                end = pending.find(_EVENT_END, hit.end())
                if end < 0:  # forward up to the content event, wait for its end
                    dst.sendall(pending[: hit.start()])
                    pending = pending[hit.start() :]
                    continue
                dst.sendall(pending[: end + len(_EVENT_END)])
                pending, holding = b"", True
                self.held.set()
            if pending and not holding:
                dst.sendall(pending)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
