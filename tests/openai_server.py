"""A local server that speaks the OpenAI chat-completions protocol (the one Groq serves under /openai/v1).

By default it answers with the embedded model, so a remote backend is tested end to end against a real model;
a script of canned answers (429s, 5xx, slow answers) comes first when given.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Canned:
    """One scripted answer: status, JSON body (or `raw` bytes instead), headers, and a delay before answering;
    `reset` closes the connection without answering."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    raw: bytes | None = None
    reset: bool = False


def completion_body(text: str, model: str = 'fake-model') -> dict[str, Any]:
    return {
        'id': 'chatcmpl-local',
        'object': 'chat.completion',
        'created': int(time.time()),
        'model': model,
        'choices': [{'index': 0, 'message': {'role': 'assistant', 'content': text}, 'finish_reason': 'stop'}],
        'usage': {'prompt_tokens': 11, 'completion_tokens': 2, 'total_tokens': 13},
    }


def embedded_model_answer(request: dict[str, Any]) -> Canned:
    """Answer a chat request with the embedded model, completing the last user message."""
    from workspace.storage.backends import get_backend

    prompt = request['messages'][-1]['content']
    out = get_backend('local').complete(
        {'prompt': prompt, 'params': {'max_tokens': request.get('max_tokens', 16), 'stop': request.get('stop')}}
    )
    return Canned(200, completion_body(out['text'], request.get('model', 'fake-model')))


class OpenAICompatibleServer:
    """Serve /v1/chat/completions and /openai/v1/chat/completions on 127.0.0.1 in a thread."""

    def __init__(self, answer: Callable[[dict[str, Any]], Canned] = embedded_model_answer) -> None:
        self.answer = answer
        self.script: list[Canned] = []
        self.received: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get('content-length', 0))
                body = json.loads(self.rfile.read(length) or b'{}')
                server.received.append({'path': self.path, 'headers': dict(self.headers), 'body': body})
                if not self.path.endswith('/chat/completions'):
                    canned = Canned(404, {'error': {'message': f'no route {self.path}'}})
                elif server.script:
                    canned = server.script.pop(0)
                else:
                    canned = server.answer(body)
                time.sleep(canned.delay)
                if canned.reset:  # a dropped connection: RST instead of an answer
                    import socket
                    import struct

                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
                    self.connection.close()
                    return
                data = canned.raw if canned.raw is not None else json.dumps(canned.body).encode()
                try:
                    self.send_response(canned.status)
                    self.send_header('content-type', 'application/json')
                    self.send_header('content-length', str(len(data)))
                    for key, value in canned.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f'http://{host}:{port}'

    def __enter__(self) -> OpenAICompatibleServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
