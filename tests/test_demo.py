"""`tunebot demo` (what `make demo` runs) on a fresh data dir: the whole workflow, exit code 0."""

from __future__ import annotations

import io
import re
from pathlib import Path

from runners.settings import Settings


def test_demo_runs_the_seed_workflow_on_cpu_and_reports_every_result(tmp_path, shared_models):
    from bot.cli.demo import run_demo

    data = tmp_path / "data"
    data.mkdir()
    (data / "models").symlink_to(shared_models, target_is_directory=True)
    out = io.StringIO()
    code = run_demo(Settings(data_dir=data, web_port=0, poll_interval=0.3), out=out)
    text = out.getvalue()
    assert code == 0, text
    for command in (
        "/tune train tiny",
        "/tune eval 1",
        "/tune export 1",
        "/tune deploy 3",
        "/tune undeploy 4",
    ):
        assert command in text
    plot = Path(re.search(r"loss plot \(PNG\):\s+(\S+)", text).group(1))
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert re.search(r"ROUGE-1 \d+\.\d\d, ROUGE-2 \d+\.\d\d, ROUGE-L \d+\.\d\d, BLEU-4 \d+\.\d\d", text)
    exported = Path(re.search(r"exported model:\s+(\S+)", text).group(1))
    assert (exported / "config.json").exists()
    assert re.search(r"chat page:\s+http://127\.0\.0\.1:\d+/chat/4/\s+\(answered\)", text)
    assert "[file] " in text and "is serving" in text and "stopped" in text


def test_a_chat_page_that_does_not_answer_is_reported_not_a_traceback():
    import socket
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from bot.cli.demo import _chat_page_answers
    from runners.job import Job

    class Broken(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            self.send_error(502, "the model is gone")

        def log_message(self, *args):
            pass

    said: list[str] = []
    server = HTTPServer(("127.0.0.1", 0), Broken)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/chat/4/"
        assert _chat_page_answers(Job(kind="deploy", model="m", chat_url=url), said.append) is False
    finally:
        server.shutdown()
        server.server_close()
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}/chat/4/"
    assert _chat_page_answers(Job(kind="deploy", model="m", chat_url=closed), said.append) is False
    assert len(said) == 2 and all("did not answer" in line for line in said)
    assert "the model is gone" in said[0] or "502" in said[0]
