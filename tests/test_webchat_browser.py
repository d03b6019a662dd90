"""The chat page and its proxy: fast checks of the proxy, then a real browser against a real deployment.

The browser test drives Debian's Chromium (`apt-get install -y chromium`) with Playwright against
`llamafactory-cli api` serving the tiny model; it is skipped only where /usr/bin/chromium is absent.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from runners.webchat import ChatTarget, create_chat_app, serve_in_thread

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync",
]
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's Chromium is not installed: apt-get install -y chromium"
)
MODEL_NAME = "tunebot-7"
TARGET = ChatTarget(api_base="http://deployment.test/v1", model_name=MODEL_NAME, title="tunebot #7: <tiny>")


@contextmanager
def _fake_app(handler, activity: list[int] | None = None, **kwargs) -> Iterator[httpx.Client]:
    """The chat app, served for real, in front of a stand-in deployment (`handler`)."""
    app = create_chat_app(
        lambda job_id: TARGET if job_id == 7 else None,
        on_activity=None if activity is None else activity.append,
        transport=httpx.MockTransport(handler),
        **kwargs,
    )
    server, port = serve_in_thread(app, "127.0.0.1", 0)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield client
    finally:
        server.stop()


# --- the proxy, against a stand-in deployment ------------------------------------------------


def test_page_names_the_model_and_escapes_the_title() -> None:
    with _fake_app(lambda request: httpx.Response(500)) as client:
        page = client.get("/chat/7/")
    assert page.status_code == 200
    assert "tunebot #7: &lt;tiny&gt;" in page.text and "<tiny>" not in page.text
    assert '"model": "tunebot-7"' in page.text
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    # No external assets: the machine may have no network.
    assert "http://" not in page.text and "https://" not in page.text


def test_page_without_trailing_slash_redirects() -> None:
    with _fake_app(lambda request: httpx.Response(500)) as client:
        answer = client.get("/chat/7", follow_redirects=False)
    assert answer.status_code == 308 and answer.headers["location"] == "/chat/7/"


def test_unknown_deployment_is_not_serving() -> None:
    with _fake_app(lambda request: httpx.Response(500)) as client:
        page = client.get("/chat/99/")
        api = client.post("/chat/99/v1/chat/completions", json={"messages": []})
    assert page.status_code == 404 and "Deployment #99 is not serving" in page.text
    assert api.status_code == 404 and api.json() == {"detail": "Deployment #99 is not serving."}


def test_chat_request_is_forwarded_with_the_key_and_counts_as_activity() -> None:
    seen: list[httpx.Request] = []

    def deployment(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"choices": [{"message": {"role": "assistant", "content": "3"}}]})

    activity: list[int] = []
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "1+2?"}]}
    with _fake_app(deployment, activity) as client:
        answer = client.post("/chat/7/v1/chat/completions", json=body,
                             headers={"Authorization": "Bearer k1", "Cookie": "session=x"})
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == "3"
    (request,) = seen
    assert str(request.url) == "http://deployment.test/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer k1"
    assert "cookie" not in request.headers
    assert json.loads(request.content) == body
    assert activity == [7]


def test_deployment_errors_pass_through() -> None:
    def deployment(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"detail": "Invalid API key."})

    activity: list[int] = []
    with _fake_app(deployment, activity) as client:
        answer = client.get("/chat/7/v1/models", headers={"Authorization": "Bearer wrong"})
    assert answer.status_code == 401 and answer.json() == {"detail": "Invalid API key."}
    assert activity == []  # without the key nobody keeps a deployment from idling out


def test_slow_deployment_gives_504_and_dead_one_502() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    def dead(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with _fake_app(slow, timeout=2) as client:
        answer = client.post("/chat/7/v1/chat/completions", json={})
    assert answer.status_code == 504 and "did not answer within 2 s" in answer.json()["detail"]
    with _fake_app(dead) as client:
        answer = client.get("/chat/7/v1/models")
    assert answer.status_code == 502 and "not answering" in answer.json()["detail"]


def test_oversized_conversation_is_refused() -> None:
    with _fake_app(lambda request: httpx.Response(200, json={})) as client:
        answer = client.post("/chat/7/v1/chat/completions", content=b"x" * (2 << 20))
    assert answer.status_code == 413


def test_serve_in_thread_picks_a_port_and_stops() -> None:
    server, port = serve_in_thread(create_chat_app(lambda job_id: None), "127.0.0.1", 0)
    try:
        assert port > 0
        assert httpx.get(f"http://127.0.0.1:{port}/chat/1/").status_code == 404
        with pytest.raises(OSError):
            serve_in_thread(create_chat_app(lambda job_id: None), "127.0.0.1", port)
    finally:
        server.stop()
    assert not server.thread.is_alive()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/chat/1/", timeout=2)


# --- a real browser, a real deployment --------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """`llamafactory-cli api` on the tiny model: (api_base, key)."""
    from runners.demo.tinymodel import ensure_tiny_model

    root = tmp_path_factory.mktemp("deploy")
    model = ensure_tiny_model(root / "models")
    config = root / "api.yaml"
    # Greedy and short: the same few tokens every run, quickly.
    config.write_text(
        f"model_name_or_path: {model}\ntemplate: llama3\ninfer_backend: huggingface\n"
        "do_sample: false\nmax_new_tokens: 16\n"
    )
    port, key = _free_port(), secrets.token_urlsafe(16)
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ)
    env.update({
        "API_HOST": "127.0.0.1", "API_PORT": str(port), "API_KEY": key, "API_MODEL_NAME": MODEL_NAME,
        "HF_HUB_OFFLINE": "1", "HF_HOME": str(root / "hf"), "MPLCONFIGDIR": str(root / "mpl"),
        "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
    })
    log_path = root / "api.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(bin_dir / "llamafactory-cli"), "api", str(config)], env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llamafactory-cli api exited {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                ready = httpx.get(f"{base}/models", headers={"Authorization": f"Bearer {key}"}, timeout=2)
                if ready.is_success:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llamafactory-cli api not ready in 90 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        yield base, key
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@needs_chromium
def test_chat_page_in_a_browser_talks_to_a_real_deployment(deployment: tuple[str, str]) -> None:
    from playwright.sync_api import Request, expect, sync_playwright

    api_base, key = deployment
    target = ChatTarget(api_base=api_base, model_name=MODEL_NAME, title="tunebot #7: tiny-llama3")
    activity: list[int] = []
    app = create_chat_app(lambda job_id: target if job_id == 7 else None, on_activity=activity.append)
    server, port = serve_in_thread(app, "127.0.0.1", 0)
    origin = f"http://127.0.0.1:{port}"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_context().new_page()
                sent: list[Request] = []
                page.on("request", lambda request: sent.append(request))
                page.goto(f"{origin}/chat/7/#key={key}")
                expect(page.locator("#model")).to_have_text(MODEL_NAME)
                expect(page.locator("#status")).to_have_text("connected")
                assert key not in page.url  # taken out of the address bar

                replies = page.locator(".msg.assistant:not(.pending)")
                for turn, text in enumerate(["What is 1 plus 2?", "法国的首都是哪里？"], start=1):
                    page.fill("#input", text)
                    page.click("#send")
                    expect(replies).to_have_count(turn, timeout=30_000)
                    assert replies.nth(turn - 1).inner_text().strip()
                assert page.locator(".msg.error").count() == 0

                # Only same-origin requests; the key only in the Authorization header.
                assert all(r.url.startswith(origin + "/") and key not in r.url for r in sent)
                chats = [r for r in sent if r.url.endswith("/v1/chat/completions")]
                assert [r.headers.get("authorization") for r in chats] == [f"Bearer {key}"] * 2
                # The whole conversation goes each turn.
                second = json.loads(chats[1].post_data or "{}")
                assert second["model"] == MODEL_NAME
                assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user"]
                assert second["messages"][1]["content"] == replies.nth(0).inner_text()
                assert activity.count(7) >= 3  # models + two chat turns

                # A wrong key: the deployment's 401, in plain words, on load and on send.
                wrong = browser.new_context().new_page()
                wrong.goto(f"{origin}/chat/7/#key=not-the-key")
                expect(wrong.locator(".msg.error")).to_contain_text("API key was not accepted (401)")
                expect(wrong.locator("#keybar")).to_be_visible()
                wrong.fill("#input", "hello")
                wrong.click("#send")
                expect(wrong.locator(".msg.error")).to_have_count(2)
                expect(wrong.locator(".msg.assistant")).to_have_count(0)

                # A deployment that is gone.
                gone = browser.new_context().new_page()
                response = gone.goto(f"{origin}/chat/8/")
                assert response is not None and response.status == 404
                expect(gone.locator("h1")).to_have_text("Deployment #8 is not serving")
            finally:
                browser.close()
    finally:
        server.stop()
