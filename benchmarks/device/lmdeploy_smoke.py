"""LMDeploy 0.18 serving the course's tiny InternVL2 on a CUDA GPU: pipeline, chat, batch, api_server.

    python benchmarks/device/lmdeploy_smoke.py MODEL_DIR OUT_JSON

Run on the lent GPU machine by benchmarks/device/run_gpu.sh (the wheels it needs travel in .whl/).
Prints each step and writes what ran, with times, to OUT_JSON.
"""
from __future__ import annotations

import base64
import io
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def plate_image():
    """A red-square plate image from the course task generator (same drawing code as the dataset)."""
    from labsupport.datasets.plates import draw_plate

    return draw_plate("red", "square", 2, (448, 448), seed=1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(model: str, out_json: str) -> int:
    from lmdeploy import ChatTemplateConfig, GenerationConfig, PytorchEngineConfig, pipeline

    results: dict = {"model": model}
    image = plate_image()
    gen = GenerationConfig(max_new_tokens=16, do_sample=False)
    t = time.time()
    pipe = pipeline(model, backend_config=PytorchEngineConfig(tp=1, session_len=4096),
                    chat_template_config=ChatTemplateConfig(model_name="hf", model_path=model), trust_remote_code=True, log_level="ERROR")
    results["load_s"] = round(time.time() - t, 2)

    t = time.time()
    single = pipe(("What colour are the objects on the plate?", image), gen_config=gen)
    results["single"] = {"text": single.text, "generated_tokens": single.generate_token_len,
                         "input_tokens": single.input_token_len, "s": round(time.time() - t, 3)}
    print("single:", results["single"], flush=True)

    t = time.time()
    session = pipe.chat(("What colour are the objects on the plate?", image), gen_config=gen)
    first_len = session.history[-1][0] if session.history else None
    session = pipe.chat("And what shape are they?", session=session, gen_config=gen)
    results["chat"] = {"turns": len(session.history), "last": session.response.text, "s": round(time.time() - t, 3)}
    print("chat:", results["chat"], flush=True)

    t = time.time()
    batch = pipe([("How many objects are on the plate?", image)] * 32, gen_config=gen)
    results["batch"] = {"n": len(batch), "all_answered": all(r.generate_token_len > 0 for r in batch),
                        "s": round(time.time() - t, 3)}
    print("batch:", results["batch"], flush=True)
    pipe.close() if hasattr(pipe, "close") else None
    del pipe

    port = free_port()
    cmd = [sys.executable, "-m", "lmdeploy", "serve", "api_server", model, "--server-name", "127.0.0.1",
           "--server-port", str(port), "--backend", "pytorch", "--trust-remote-code", "--chat-template", "hf", "--log-level", "ERROR"]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t = time.time()
    try:
        while time.time() - t < 240:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
                break
            except OSError:
                if server.poll() is not None:
                    raise RuntimeError("api_server exited:\n" + server.stdout.read()[-3000:])
                time.sleep(1)
        results["api_server_ready_s"] = round(time.time() - t, 1)
        from openai import OpenAI

        buf = io.BytesIO()
        image.save(buf, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        name = client.models.list().data[0].id
        reply = client.chat.completions.create(model=name, max_tokens=16, temperature=0, messages=[{"role": "user", "content": [
            {"type": "text", "text": "What colour are the objects on the plate?"},
            {"type": "image_url", "image_url": {"url": url}}]}])
        results["api_server"] = {"model": name, "text": reply.choices[0].message.content,
                                 "completion_tokens": reply.usage.completion_tokens}
        print("api_server:", results["api_server"], flush=True)
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    Path(out_json).write_text(json.dumps(results, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":  # LMDeploy starts worker processes: scripts need this guard
    sys.exit(main(sys.argv[1], sys.argv[2]))
