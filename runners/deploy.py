"""Deployments: an OpenAI-compatible `llamafactory-cli api` per deployed model, and how to talk to it."""

from __future__ import annotations

import json
import secrets
import socket
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from .errors import UserError
from .job import Job, JobState


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host if host not in ("0.0.0.0", "") else "127.0.0.1", port)) == 0


def new_api_key() -> str:
    return "tb-" + secrets.token_urlsafe(24)


def model_name(job: Job) -> str:
    """The name the deployment answers to (`model` in API requests)."""
    return f"tunebot-{job.parent_id or job.id}"


def public_base(public_url: str | None, bind_host: str) -> tuple[str, str]:
    """(scheme, host) people use to reach this runner's ports."""
    if public_url:
        parts = urlsplit(public_url if "://" in public_url else f"http://{public_url}")
        return parts.scheme or "http", parts.hostname or bind_host
    host = bind_host if bind_host not in ("0.0.0.0", "::", "") else socket.gethostname()
    return "http", host


def web_url(public_url: str | None, bind_host: str, port: int) -> str:
    scheme, host = public_base(public_url, bind_host)
    return f"{scheme}://{host}:{port}"


def api_url(public_url: str | None, bind_host: str, port: int) -> str:
    return web_url(public_url, bind_host, port) + "/v1"


def internal_api_base(bind_host: str, port: int) -> str:
    host = "127.0.0.1" if bind_host in ("0.0.0.0", "::", "") else bind_host
    return f"http://{host}:{port}/v1"


def _request(url: str, *, key: str | None, body: dict[str, Any] | None = None, timeout: float = 5.0) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if body is not None else "GET")
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - our own deployment
        return json.loads(resp.read().decode("utf-8"))


def is_ready(base: str, key: str | None, timeout: float = 2.0) -> bool:
    """LLaMA-Factory's API has no health route: `GET /v1/models` answers once the model is loaded."""
    try:
        _request(f"{base}/models", key=key, timeout=timeout)
        return True
    except (urllib.error.URLError, OSError, ValueError):
        return False


def chat(
    job: Job,
    messages: list[dict[str, str]],
    *,
    bind_host: str,
    api_base: str | None = None,
    max_tokens: int = 256,
    temperature: float | None = None,
    timeout: float = 300.0,
) -> str:
    """Send a conversation to a serving deployment; returns the model's answer."""
    if job.state != JobState.SERVING.value or not job.port:
        raise UserError(
            f"Deployment #{job.id} is not serving (it is {job.state}).",
            field="job",
            fix=f"`deploy {job.parent_id or job.id}` to start it again",
        )
    if not messages or messages[-1].get("role") != "user":
        raise UserError("A chat turn must end with the user's message.")
    body: dict[str, Any] = {"model": model_name(job), "messages": messages, "max_tokens": max_tokens}
    if temperature is not None:
        body["temperature"] = temperature
    try:
        reply = _request(
            f"{api_base or internal_api_base(bind_host, job.port)}/chat/completions",
            key=job.api_key,
            body=body,
            timeout=timeout,
        )
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")[:300]
        raise UserError(f"Deployment #{job.id} answered HTTP {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise UserError(f"Deployment #{job.id} did not answer: {getattr(exc, 'reason', exc)}.") from None
    try:
        return str(reply["choices"][0]["message"]["content"])
    except (KeyError, IndexError, TypeError):
        raise UserError(f"Deployment #{job.id} sent an answer tunebot could not read.") from None
