"""The CPU stand-in's OpenAI-compatible endpoint (in place of `lmdeploy serve api_server`), with the demo's limits.

Every bad request gets an OpenAI-style error JSON ({"error": {"message", "type", "param", "code"}}) and its status:
400 malformed JSON, non-UTF-8 bytes, no `messages`, a prompt over demo_app.MAX_PROMPT_CHARS, an image the demo
would refuse (a bomb, not an image), a server path or a remote URL as an image (unless allowed); 411 no length;
413 a body over MAX_BODY_BYTES; 415 not application/json; 429 when MAX_WAITING requests already wait for the model.
A real listen backlog (256) and a bounded queue let 200 clients at once get an answer or a 429, never a reset.
"""
from __future__ import annotations

import base64
import binascii
import json
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from labsupport.serve.demo_app import MAX_PROMPT_CHARS, prepare_image
from labsupport.serve.deploy import GenSettings

MAX_BODY_BYTES = 16 * 1024 * 1024   # a request body above this is refused (413) unread: base64 images fit well below
MAX_IMAGE_BYTES = 8 * 1024 * 1024   # one decoded image
MAX_WAITING = 32                    # requests that may wait for the model; more get 429 at once
MAX_NEW_TOKENS = 512                # max_tokens above this is cut to it: one request must not hold the queue for long
BACKLOG = 256                       # the listen queue (socketserver's default of 5 resets a burst of clients)


class RequestError(Exception):
    """A request this endpoint refuses: STATUS, an OpenAI error TYPE and CODE, and a message saying what to change."""

    def __init__(self, status: int, message: str, code: str = "invalid_request", param: str | None = None):
        super().__init__(message)
        self.status, self.code, self.param = status, code, param


def error_body(status: int, message: str, code: str, param: str | None = None) -> dict:
    """An OpenAI-style error object."""
    kind = {429: "rate_limit_error", 500: "server_error", 503: "server_error"}.get(status, "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _save_bytes(data: bytes, folder: Path, name: str) -> str:
    if len(data) > MAX_IMAGE_BYTES:
        raise RequestError(413, f"an image of {len(data) / 2**20:.1f} MiB; this endpoint takes images up to "
                                f"{MAX_IMAGE_BYTES / 2**20:.0f} MiB", "image_too_large", "messages")
    path = folder / name
    path.write_bytes(data)
    return str(path)


def _checked_image(url: Any, folder: Path, n: int, allow_local: bool, allow_remote: bool) -> str:
    """A path the model may read for one image_url, after the demo's image checks; raises RequestError."""
    if not isinstance(url, str) or not url:
        raise RequestError(400, "image_url.url must be a non-empty string (a data: URL)", "invalid_image", "messages")
    if url.startswith("data:"):
        head, _, payload = url.partition(",")
        try:
            data = base64.b64decode(payload, validate=True) if ";base64" in head else payload.encode("utf-8")
        except (binascii.Error, ValueError):
            raise RequestError(400, "the image's data: URL is not valid base64", "invalid_image", "messages") from None
        path = _save_bytes(data, folder, f"image-{n}")
    elif url.startswith(("http://", "https://")):
        if not allow_remote:
            raise RequestError(400, "remote image URLs are not fetched by this endpoint (the server would download "
                                    "whatever a client names): send the image as a data: URL (base64)",
                               "remote_image_refused", "messages")
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                data = resp.read(MAX_IMAGE_BYTES + 1)
        except OSError as exc:
            raise RequestError(400, f"the image URL could not be fetched ({type(exc).__name__})", "invalid_image",
                               "messages") from None
        path = _save_bytes(data, folder, f"image-{n}")
    else:
        if not allow_local:
            raise RequestError(400, "image paths on the server's disk are not read by this endpoint (a client could read "
                                    "any file): send the image as a data: URL (base64)", "local_image_refused", "messages")
        path = url.removeprefix("file://")
    usable, message = prepare_image(path, folder)  # the demo's rules: bombs, huge scans, non-images refused
    if usable is None:
        raise RequestError(400, message.replace(f"\u201c{Path(path).name}\u201d", "the image"), "invalid_image", "messages")
    return usable


def parse_request(body: bytes, content_type: str, folder: Path, allow_local: bool = False,
                  allow_remote: bool = False) -> tuple[list, GenSettings]:
    """(messages with checked image paths, generation settings) from a chat-completions body; raises RequestError."""
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise RequestError(415, f"Content-Type {content_type or '(none)'!r}: send application/json", "unsupported_media_type")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(400, f"the body is not UTF-8 (byte {exc.start})", "invalid_encoding") from None
    try:
        req = json.loads(text)
    except ValueError as exc:
        raise RequestError(400, f"the body is not valid JSON ({exc})", "invalid_json") from None
    if not isinstance(req, dict):
        raise RequestError(400, "the body must be a JSON object with 'messages'", "invalid_json")
    messages = req.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise RequestError(400, "'messages' is required: a non-empty list of {role, content} objects", "missing_messages",
                           "messages")
    out, chars, n = [], 0, 0
    for m in messages:
        content = m.get("content")
        if m.get("role") not in ("system", "user", "assistant"):
            raise RequestError(400, f"role {m.get('role')!r}: use system, user or assistant", "invalid_role", "messages")
        if isinstance(content, str):
            chars += len(content)
            out.append({"role": m["role"], "content": content})
            continue
        if not isinstance(content, list) or not all(isinstance(c, dict) for c in content):
            raise RequestError(400, "a message's content is a string or a list of {type: text|image_url} parts",
                               "invalid_content", "messages")
        parts = []
        for c in content:
            if c.get("type") == "text" and isinstance(c.get("text"), str):
                chars += len(c["text"])
                parts.append({"type": "text", "text": c["text"]})
            elif c.get("type") == "image_url":
                spec = c.get("image_url")
                url = spec.get("url") if isinstance(spec, dict) else spec
                item = {"url": _checked_image(url, folder, n, allow_local, allow_remote)}
                n += 1
                if isinstance(spec, dict) and isinstance(spec.get("max_dynamic_patch"), int):
                    item["max_dynamic_patch"] = max(1, min(12, spec["max_dynamic_patch"]))
                parts.append({"type": "image_url", "image_url": item})
            else:
                raise RequestError(400, f"content part of type {c.get('type')!r}: use text or image_url", "invalid_content",
                                   "messages")
        out.append({"role": m["role"], "content": parts})
    if chars > MAX_PROMPT_CHARS:
        raise RequestError(400, f"the messages hold {chars:,} characters; this endpoint answers prompts up to "
                                f"{MAX_PROMPT_CHARS:,} (as the demo does)", "context_length_exceeded", "messages")
    try:
        gen = GenSettings(max_new_tokens=max(1, min(MAX_NEW_TOKENS, int(req.get("max_tokens") or 64))),
                          temperature=float(req.get("temperature") or 0.0), top_p=float(req.get("top_p") or 1.0))
    except (TypeError, ValueError):
        raise RequestError(400, "max_tokens, temperature and top_p must be numbers", "invalid_parameter") from None
    return out, gen


class CourseHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server with a real listen backlog; its threads never keep the kernel alive."""

    request_queue_size = BACKLOG
    daemon_threads = True


def serve_openai(pipe: Any, port: int, model_name: str = "internvl2", allow_local_images: bool = False,
                 allow_remote_images: bool = False, max_waiting: int = MAX_WAITING) -> CourseHTTPServer:
    """Serve PIPE as OpenAI chat completions (GET /v1/models, /health; POST /v1/chat/completions) on 127.0.0.1:PORT."""
    model_lock = threading.Lock()
    slots = threading.BoundedSemaphore(max_waiting + 1)  # the one running plus those waiting

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep the notebook quiet (and never echo a body into a log)
            return

        def _send(self, code: int, payload: dict, close: bool = False) -> None:
            body = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if code == 429:
                self.send_header("Retry-After", "1")
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(body)

        def _error(self, exc: RequestError, close: bool = False) -> None:
            self._send(exc.status, error_body(exc.status, str(exc), exc.code, exc.param), close)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path.rstrip("/") == "/health":
                return self._send(200, {"status": "ok"})
            if self.path.rstrip("/") == "/v1/models":
                return self._send(200, {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "course"}]})
            self._error(RequestError(404, f"no route {self.path}", "not_found"))

        def do_POST(self) -> None:  # noqa: N802
            length = self.headers.get("Content-Length")
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self._error(RequestError(404, f"no route {self.path}", "not_found"), close=True)
            if length is None or not length.strip().isdigit():
                return self._error(RequestError(411, "send a Content-Length header", "length_required"), close=True)
            if int(length) > MAX_BODY_BYTES:  # refused unparsed; the connection closes after the answer
                left = int(length)
                while 0 < left <= 4 * MAX_BODY_BYTES:  # drained, so the client reads the 413 instead of a reset
                    chunk = self.rfile.read(min(left, 1 << 20))
                    if not chunk:
                        break
                    left -= len(chunk)
                return self._error(RequestError(413, f"a body of {int(length):,} bytes; this endpoint takes up to "
                                                     f"{MAX_BODY_BYTES:,}", "request_too_large"), close=True)
            body = self.rfile.read(int(length))
            if not slots.acquire(blocking=False):
                return self._error(RequestError(429, f"{max_waiting} requests are already waiting for the model: "
                                                     "retry in a moment", "busy"))
            try:
                with tempfile.TemporaryDirectory(prefix="openai-cpu-") as tmp:
                    try:
                        messages, gen = parse_request(body, self.headers.get("Content-Type", ""), Path(tmp),
                                                      allow_local_images, allow_remote_images)
                    except RequestError as exc:
                        return self._error(exc)
                    with model_lock:
                        try:
                            reply = pipe(messages, gen_config=gen)
                        except Exception as exc:  # noqa: BLE001 - the client gets a 500 with the cause, the server lives
                            return self._send(500, error_body(500, f"the model failed: {type(exc).__name__}: "
                                                                   f"{str(exc)[:200]}", "model_error"))
            finally:
                slots.release()
            self._send(200, {"id": f"chatcmpl-{int(time.time() * 1000)}", "object": "chat.completion",
                             "created": int(time.time()), "model": model_name,
                             "choices": [{"index": 0, "finish_reason": reply.finish_reason or "stop",
                                          "message": {"role": "assistant", "content": reply.text}}]})

    server = CourseHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server

