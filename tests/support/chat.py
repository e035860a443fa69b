"""A tiny OpenAI-compatible chat server: `POST /v1/chat/completions` answers a summary.

It records each request, and can hold requests until a test releases them
(to kill a worker while it waits) or answer with an error status.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SUMMARY_PREFIX = "Chat summary of"


class ChatServer:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.hold = threading.Event()
        self.hold.set()  # set: answer at once
        self.arrived = threading.Event()
        self.status = 200
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                server.headers.append(dict(self.headers))
                server.arrived.set()
                server.hold.wait(60)
                if self.path != "/v1/chat/completions":
                    self._answer(404, {"error": {"message": "no such route"}})
                elif server.status != 200:
                    self._answer(server.status, {"error": {"message": "refused on purpose"}})
                else:
                    words = len(body["messages"][-1]["content"].split())
                    content = f"{SUMMARY_PREFIX} {words} words by {body['model']}."
                    self._answer(200, {"choices": [{"message": {"content": content}}]})

            def _answer(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client (a killed worker) is gone

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> "ChatServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.hold.set()
        self._server.shutdown()
        self._server.server_close()
