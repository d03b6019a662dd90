"""The chat page people open after a deploy, and the same-origin proxy to the deployment's API.

`llamafactory-cli api` listens on 127.0.0.1:<port>; people get `http(s)://<host>:<web port>/chat/N/`.
The page (web/chat.html) talks only to this app, which forwards `GET v1/models` and
`POST v1/chat/completions` to deployment N with the browser's Authorization header. The key never
passes through here otherwise: the page reads it from the URL fragment, which browsers do not send.
"""

from __future__ import annotations

import contextlib
import html
import json
import logging
import re
import secrets
import socket
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

log = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("web") / "chat.html"
# A chat request is a conversation, not an upload.
MAX_BODY_BYTES = 1 << 20
_SLOT = re.compile(r"\{\{(TITLE|NONCE|CONFIG)\}\}")
# Headers of the deployment's answer passed back to the browser.
_PASSED_HEADERS = ("content-type", "cache-control")


@dataclass(frozen=True)
class ChatTarget:
    """Where deployment N answers, and what the page calls it."""

    api_base: str  # e.g. "http://127.0.0.1:8123/v1"
    model_name: str  # the `model` of API requests (API_MODEL_NAME)
    title: str
    # The settings panel's starting values: system, temperature, top_p, max_tokens (deploy.chat_defaults).
    defaults: dict[str, Any] | None = None


def _security_headers(nonce: str | None = None) -> dict[str, str]:
    script = f"'nonce-{nonce}'" if nonce else "'none'"
    return {
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        # Nothing but this origin: no CDN, no third party sees the page or the key.
        "Content-Security-Policy": (
            f"default-src 'none'; script-src {script}; style-src {script}; connect-src 'self'; "
            "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        ),
    }


def _not_serving_page(job_id: int) -> HTMLResponse:
    body = (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Not serving</title></head>"
        f"<body><h1>Deployment #{job_id} is not serving</h1>"
        "<p>It may have been stopped, timed out after being idle, or not started yet. "
        "Ask tunebot for its status, or deploy again.</p></body></html>"
    )
    return HTMLResponse(body, status_code=404, headers=_security_headers())


def render_page(job_id: int, target: ChatTarget, nonce: str) -> str:
    """chat.html with the deployment's name and title filled in."""
    defaults = target.defaults or {}
    config = json.dumps(
        {"jobId": job_id, "model": target.model_name, "title": target.title, "defaults": defaults}
    )
    # Inside <script>, "</" or "<!--" could end the element early: no markup characters at all.
    config = config.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    values = {"TITLE": html.escape(target.title), "NONCE": nonce, "CONFIG": config}
    # One pass, so a title containing "{{NONCE}}" stays text.
    return _SLOT.sub(lambda m: values[m.group(1)], PAGE.read_text(encoding="utf-8"))


def _error(status: int, message: str) -> JSONResponse:
    # FastAPI's shape ({"detail": ...}), the same as llamafactory's own errors.
    return JSONResponse({"detail": message}, status_code=status, headers={"Cache-Control": "no-store"})


def create_chat_app(
    resolve: Callable[[int], ChatTarget | None],
    *,
    on_activity: Callable[[int], None] | None = None,
    timeout: float = 300.0,
    connect_timeout: float = 5.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Starlette:
    """The chat pages of all deployments: `resolve(job_id)` says where one answers (None: not serving).

    `on_activity(job_id)` is called on each request the deployment accepted (the idle timeout's clock);
    `timeout` bounds the wait for the deployment's answer to start (a 504 after it).
    """
    limits = httpx.Timeout(timeout, connect=connect_timeout)
    state: dict[str, httpx.AsyncClient] = {}

    def client() -> httpx.AsyncClient:
        if "client" not in state:
            state["client"] = httpx.AsyncClient(timeout=limits, transport=transport, trust_env=False)
        return state["client"]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        if "client" in state:
            await state.pop("client").aclose()

    # Both may wait on the job store (a locked SQLite file, a remote PostgreSQL): off the event loop.
    async def lookup(job_id: int) -> ChatTarget | None:
        return await run_in_threadpool(resolve, job_id)

    async def touch(job_id: int) -> None:
        if on_activity is None:
            return
        try:
            await run_in_threadpool(on_activity, job_id)
        except Exception:  # the chat matters more than the idle clock
            log.exception("on_activity(%s) failed", job_id)

    async def page(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        target = await lookup(job_id)
        if target is None:
            return _not_serving_page(job_id)
        nonce = secrets.token_urlsafe(16)
        return HTMLResponse(render_page(job_id, target, nonce), headers=_security_headers(nonce))

    async def to_page(request: Request) -> Response:
        # Relative API paths in the page need the trailing slash; the fragment survives redirects.
        return RedirectResponse(f"/chat/{request.path_params['job_id']}/", status_code=308)

    async def proxy(request: Request, path: str) -> Response:
        job_id = request.path_params["job_id"]
        target = await lookup(job_id)
        if target is None:
            return _error(404, f"Deployment #{job_id} is not serving.")
        headers = {"Accept": request.headers.get("accept", "application/json")}
        if "authorization" in request.headers:
            headers["Authorization"] = request.headers["authorization"]
        body = None
        if request.method == "POST":
            body = await request.body()
            if len(body) > MAX_BODY_BYTES:
                return _error(413, "The conversation is too long to send; start a new one.")
            headers["Content-Type"] = "application/json"
        upstream = client().build_request(request.method, f"{target.api_base.rstrip('/')}/{path}",
                                          headers=headers, content=body)
        try:
            answer = await client().send(upstream, stream=True)
        except httpx.TimeoutException:
            return _error(504, f"Deployment #{job_id} did not answer within {timeout:g} s.")
        except httpx.HTTPError as exc:
            log.info("deployment #%s unreachable at %s: %s", job_id, target.api_base, exc)
            reason = "it may be starting, stopping or stopped"
            return _error(502, f"Deployment #{job_id} is not answering: {reason}.")
        if answer.status_code < 300:
            await touch(job_id)  # only use with the deployment's key keeps it from idling out
        passed = {name: answer.headers[name] for name in _PASSED_HEADERS if name in answer.headers}
        passed.setdefault("cache-control", "no-store")
        return StreamingResponse(
            _relay(answer, job_id), status_code=answer.status_code, headers=passed,
            background=BackgroundTask(answer.aclose),
        )

    async def models(request: Request) -> Response:
        return await proxy(request, "models")

    async def completions(request: Request) -> Response:
        return await proxy(request, "chat/completions")

    routes = [
        Route("/chat/{job_id:int}", to_page, methods=["GET"]),
        Route("/chat/{job_id:int}/", page, methods=["GET"]),
        Route("/chat/{job_id:int}/v1/models", models, methods=["GET"]),
        Route("/chat/{job_id:int}/v1/chat/completions", completions, methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


async def _relay(answer: httpx.Response, job_id: int) -> AsyncIterator[bytes]:
    # Streamed answers (stream: true) pass through as they come; a timeout mid-way just ends them.
    # Decoded bytes: Content-Encoding is not passed on.
    try:
        async for chunk in answer.aiter_bytes():
            yield chunk
    except httpx.HTTPError as exc:
        log.info("deployment #%s answer cut short: %s", job_id, exc)
    finally:
        await answer.aclose()  # also when the browser went away mid-answer


class ChatServer:
    """uvicorn serving an app from a daemon thread; `stop()` shuts it down."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, sock: socket.socket):
        self.server = server
        self.thread = thread
        self._socket = sock

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(timeout)
        self._socket.close()


def serve_in_thread(app: Any, host: str = "127.0.0.1", port: int = 0) -> tuple[ChatServer, int]:
    """Serve `app` on host:port (0 = any free port) in a daemon thread; returns it and the port.

    The socket is bound here, so a taken port raises OSError in the caller, not in the thread.
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    actual_port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False,
                            timeout_graceful_shutdown=3)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"chat-web:{actual_port}",
                              daemon=True)
    thread.start()
    handle = ChatServer(server, thread, sock)
    for _ in range(200):
        if server.started:
            return handle, actual_port
        if not thread.is_alive():
            break
        thread.join(0.05)
    handle.stop()
    raise RuntimeError(f"the chat-page server on {host}:{actual_port} did not start")
