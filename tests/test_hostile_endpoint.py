"""The CPU stand-in's OpenAI endpoint answers every bad request with an OpenAI error JSON and the right status, reads no
server path or remote URL as an image, and holds 200 clients at once (answers or 429, never a reset) (#31)."""
from __future__ import annotations

import base64
import http.client
import io
import json
import threading
import time
from dataclasses import dataclass

import pytest
from PIL import Image


from labsupport.serve import lmdeploy_cpu, openai_cpu
from test_bad_inputs import header_only_png


@dataclass
class Reply:
    text: str
    finish_reason: str = "stop"


class FakePipe:
    """A pipeline that answers after DELAY seconds and records the image paths it was handed."""

    def __init__(self, delay: float = 0.0):
        self.delay, self.seen = delay, []

    def __call__(self, messages, gen_config=None):
        time.sleep(self.delay)
        for m in messages:
            for part in m["content"] if isinstance(m["content"], list) else []:
                if part["type"] == "image_url":
                    with Image.open(part["image_url"]["url"]) as im:  # the file must exist while the model reads it
                        self.seen.append(im.size)
        return Reply("red")


@pytest.fixture()
def server():
    pipe = FakePipe()
    srv = lmdeploy_cpu.serve_openai(pipe, 0)
    srv.pipe = pipe
    yield srv
    srv.shutdown()
    srv.server_close()


def post(srv, body, content_type="application/json", path="/v1/chat/completions", headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=30)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": content_type, **(headers or {})})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def with_image(url: str) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Colour?"}]}]}).encode()


def small_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), "red").save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("body, content_type, status, code", [
    (b'{"messages": [', "application/json", 400, "invalid_json"),
    (b'{"model": "m"}', "application/json", 400, "missing_messages"),
    (b'{"messages": []}', "application/json", 400, "missing_messages"),
    (b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', "application/json", 400, "invalid_encoding"),
    (b'[1, 2]', "application/json", 400, "invalid_json"),
    (b'{"messages": [{"role": "user", "content": "hi"}]}', "text/plain", 415, "unsupported_media_type"),
    (json.dumps({"messages": [{"role": "user", "content": "x" * 1_000_000}]}).encode(), "application/json", 400,
     "context_length_exceeded"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": "many"}', "application/json", 400,
     "invalid_parameter"),
    (with_image("/etc/passwd"), "application/json", 400, "local_image_refused"),
    (with_image("file:///etc/hostname"), "application/json", 400, "local_image_refused"),
    (with_image("http://127.0.0.1:9/plate.png"), "application/json", 400, "remote_image_refused"),
    (with_image(data_url(header_only_png(30000, 30000))), "application/json", 400, "invalid_image"),
    (with_image(data_url(b"<html>not an image</html>")), "application/json", 400, "invalid_image"),
    (with_image("data:image/png;base64,@@@notbase64"), "application/json", 400, "invalid_image"),
])
def test_bad_requests_get_openai_errors(server, body, content_type, status, code):
    got, payload = post(server, body, content_type)
    assert got == status and payload["error"]["code"] == code, payload
    assert payload["error"]["message"] and payload["error"]["type"] == "invalid_request_error"
    assert server.pipe.seen == [], "the model must not be asked"
    assert post(server, json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode())[0] == 200, "server died"


def test_a_body_over_the_limit_is_413_and_a_good_image_is_served(server, monkeypatch):
    monkeypatch.setattr(openai_cpu, "MAX_BODY_BYTES", 10_000)
    got, payload = post(server, b'{"messages": "' + b"x" * 50_000 + b'"}')
    assert got == 413 and payload["error"]["code"] == "request_too_large"
    got, payload = post(server, with_image(data_url(small_png())))
    assert got == 200 and payload["choices"][0]["message"]["content"] == "red" and server.pipe.seen == [(64, 48)]


def test_200_concurrent_clients_get_an_answer_or_429_never_a_reset():
    pipe = FakePipe(delay=0.01)
    srv = lmdeploy_cpu.serve_openai(pipe, 0, max_waiting=16)
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
    results, start = [], threading.Barrier(200)

    def client():
        start.wait(30)
        try:
            results.append(post(srv, body)[0])
        except OSError as exc:  # a reset or a refused connection: the defect
            results.append(type(exc).__name__)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(200)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        srv.shutdown()
        srv.server_close()
    assert len(results) == 200 and set(results) <= {200, 429}, sorted(map(str, set(results)))
    assert results.count(200) >= 17, "at least the running request and the queue must be answered"
