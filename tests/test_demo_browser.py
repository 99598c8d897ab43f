"""The gradio demo in a real browser: headless Chromium opens it, uploads an image, asks, and gets an answer.

Checks: the page loads, an uploaded image and a question get an answer, a non-image upload gets a clear
message, and a file over the upload limit is refused. Needs Debian's `chromium` and `chromium-driver`, the Python `selenium` package in the course env, and the
deploy env's python (LABSUPPORT_DEPLOY_PYTHON, default .venvs/internvl-deploy/bin/python), which runs the app.
Screenshots go to ARTIFACTS/demo/; the result to ARTIFACTS/demo/browser-check.json (notebook 06 reads it).
"""
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from labsupport.serve import endpoint
from labsupport.core.checkpoints import write_json_atomic
from labsupport.serve.demo_app import course_examples, free_port
from labsupport.core.paths import repo_root

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,1000"]


def _deploy_python() -> Path:
    """The deploy env's python (LABSUPPORT_DEPLOY_PYTHON); skips the test when it is missing."""
    python = Path(os.environ.get("LABSUPPORT_DEPLOY_PYTHON", repo_root() / ".venvs/internvl-deploy/bin/python"))
    if not python.exists():
        pytest.skip(f"deploy env python {python} not found (set LABSUPPORT_DEPLOY_PYTHON)")
    return python


def _serve(module: str, args: list[str], log: Path):
    """Run `python -m MODULE --port P ARGS` in the deploy env; yield its 127.0.0.1 URL once healthy, stop it afterwards."""
    port = free_port()
    cmd = [str(_deploy_python()), "-m", module, "--port", str(port), *args]
    env = dict(os.environ, PYTHONPATH=str(repo_root()), GRADIO_ANALYTICS_ENABLED="False")
    proc = endpoint.start_server(cmd, log, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        endpoint.wait_until_healthy(url, proc, timeout=300, log_path=log, path="/")
        assert f"Running on local URL:  {url}" in log.read_text(), log.read_text()[-2000:]  # bound to loopback
        yield url
    finally:
        endpoint.stop_server(proc, timeout=10)


@pytest.fixture(scope="module")
def demo_url(artifacts, tmp_path_factory):
    """Start `python -m labsupport.serve.demo_app` in the deploy env on a free 127.0.0.1 port; stop it afterwards."""
    yield from _serve("labsupport.serve.demo_app", ["--backend", "transformers", "--max-new-tokens", "6", "--max-tiles", "1",
                                              "--max-file-size", "1mb", "--artifacts", str(artifacts)],
                      tmp_path_factory.mktemp("demo") / "demo.log")


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through chromedriver (skips when either is missing)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs the selenium package in the course env")
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_bin = shutil.which("chromedriver")
    if not (chromium and driver_bin):
        pytest.skip("needs Chromium and its driver: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(driver_bin))
    yield driver
    driver.quit()


def _bot_messages(driver):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, "#chat [data-testid='bot']")


def _send(driver, question: str, upload: Path | None, wait_for: int, timeout: float = 240) -> str:
    """Attach UPLOAD (if any), type QUESTION, submit, and wait until there are WAIT_FOR bot messages; return the last."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    if upload is not None:
        driver.find_element(By.CSS_SELECTOR, "#ask input[type='file']").send_keys(str(upload))
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#ask img, #ask .thumbnail-item"))
    box = driver.find_element(By.CSS_SELECTOR, "#ask textarea")
    box.send_keys(question)
    driver.find_element(By.CSS_SELECTOR, "#ask [data-testid='submit-button']").click()
    WebDriverWait(driver, timeout).until(lambda d: len(_bot_messages(d)) >= wait_for)
    time.sleep(0.5)  # let the last message finish rendering before reading it
    return _bot_messages(driver)[-1].text


@pytest.mark.deploy
@pytest.mark.browser
def test_demo_answers_in_the_browser(demo_url, browser, artifacts, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    out = artifacts / "demo"
    out.mkdir(parents=True, exist_ok=True)
    record = {"passed": False, "when": time.strftime("%Y-%m-%d %H:%M:%S"), "url": demo_url,
              "screenshot": str(out / "browser-test.png")}
    write_json_atomic(out / "browser-check.json", record)  # a failed run must not leave an old "passed" behind
    image, question = course_examples(artifacts, n=1)[0]

    browser.get(demo_url)
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#ask textarea"))
    assert "InternVL2 course demo" in browser.page_source
    assert browser.find_elements(By.CSS_SELECTOR, "#model-switch input[type='radio']")

    answer = _send(browser, question, Path(image), wait_for=1)
    browser.save_screenshot(record["screenshot"])
    user_texts = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#chat [data-testid='user']")]
    assert question in user_texts and answer.strip(), (user_texts, answer)
    assert browser.find_elements(By.CSS_SELECTOR, "#chat [data-testid='user'] img")  # the uploaded image is shown

    notes = tmp_path / "notes.txt"
    notes.write_text("this is not a picture")
    refusal = _send(browser, "What is in this file?", notes, wait_for=2)
    browser.save_screenshot(str(out / "browser-test-non-image.png"))
    assert "not an image" in refusal and "notes.txt" in refusal, refusal

    big = tmp_path / "big.png"  # over the app's 1 MB upload limit: gradio refuses it in the page
    big.write_bytes(os.urandom(1_500_000))
    browser.find_element(By.CSS_SELECTOR, "#ask input[type='file']").send_keys(str(big))
    toast = "[data-testid='toast-body'], .toast-body"
    WebDriverWait(browser, 30).until(lambda d: any("exceed" in e.text for e in d.find_elements(By.CSS_SELECTOR, toast)))
    assert len(_bot_messages(browser)) == 2  # nothing reached the model

    record.update(passed=True, question=question, image=image, answer=answer, refusal=refusal)
    write_json_atomic(out / "browser-check.json", record)


@pytest.fixture(scope="module")
def selfcog_demo_url(tmp_path_factory):
    """Start notebook 08's demo (`python -m labsupport.sidetracks.selfcog_demo`) in the deploy env over the tiny chat model."""
    from labsupport.model.tinymodel import build_tiny_internlm2_chat

    _deploy_python()  # skip before building a model nobody will serve
    model = build_tiny_internlm2_chat(tmp_path_factory.mktemp("chat") / "internlm2-chat-tiny")
    yield from _serve("labsupport.sidetracks.selfcog_demo", ["--base", str(model), "--model", str(model), "--max-new-tokens", "8"],
                      tmp_path_factory.mktemp("selfcog-demo") / "demo.log")


@pytest.mark.deploy
@pytest.mark.browser
def test_self_cognition_demo_answers_in_the_browser(selfcog_demo_url, browser, artifacts, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from labsupport.sidetracks.selfcog_demo import TEXT_ONLY, TITLE

    browser.get(selfcog_demo_url)
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#ask textarea"))
    assert TITLE in browser.page_source
    answer = _send(browser, "你是谁？", None, wait_for=1)
    out = artifacts / "demo"
    out.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(out / "selfcog-browser-test.png"))
    assert answer.strip(), answer

    picture = tmp_path / "plate.png"  # a real image: this model reads text only, and says so
    from PIL import Image
    Image.new("RGB", (32, 32), "red").save(picture)
    refusal = _send(browser, "What is this?", picture, wait_for=2)
    assert TEXT_ONLY.split(":")[0] in refusal, refusal
