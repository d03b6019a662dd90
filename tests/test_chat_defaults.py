"""The thread chat takes the deployment's chat settings (system prompt, temperature, top-p, length)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

from runners import deploy
from runners.job import Job


def test_defaults_are_the_deployments_own_arguments_over_the_webuis() -> None:
    plain = Job(kind="deploy", args={})
    assert deploy.chat_defaults(plain) == deploy.CHAT_DEFAULTS
    tuned = Job(kind="deploy", args={"temperature": 0.3, "default_system": "Be brief.", "max_new_tokens": 64})
    assert deploy.chat_defaults(tuned) == {"system": "Be brief.", "temperature": 0.3, "top_p": 0.7,
                                           "max_tokens": 64}


def test_a_chat_turn_sends_the_deployments_settings() -> None:
    seen: list[dict] = []

    class Api(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            seen.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            body = json.dumps({"choices": [{"message": {"content": "ok"}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        job = Job(id=4, kind="deploy", state="serving", port=server.server_address[1], model="m",
                  args={"default_system": "Be brief.", "top_p": 0.5})
        assert deploy.chat(job, [{"role": "user", "content": "hi"}], bind_host="127.0.0.1") == "ok"
        assert deploy.chat(job, [{"role": "user", "content": "hi"}], bind_host="127.0.0.1",
                           max_tokens=8, system="") == "ok"
    finally:
        server.shutdown()
    first, second = seen
    assert first["messages"][0] == {"role": "system", "content": "Be brief."}
    assert (first["top_p"], first["temperature"], first["max_tokens"]) == (0.5, 0.95, 512)
    assert [m["role"] for m in second["messages"]] == ["user"] and second["max_tokens"] == 8
