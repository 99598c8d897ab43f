"""The demo's input limits: bombs and huge images refused from their header, big ones downscaled, long prompts refused."""
from __future__ import annotations

import tracemalloc

from PIL import Image

from labsupport.serve import demo_app
from test_bad_inputs import header_only_png


class NoModel:
    """Fails the test if the model is asked anything."""

    def get(self, name):
        raise AssertionError("the model must not be called for a refused input")


def test_bomb_and_huge_images_are_refused_without_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(header_only_png(30000, 30000))
    huge = tmp_path / "huge.png"
    huge.write_bytes(header_only_png(12247, 12247))
    tracemalloc.start()
    for path, words in ((bomb, "decompression bomb"), (huge, "150 megapixels")):
        usable, message = demo_app.prepare_image(path)
        assert usable is None and words in message and path.name in message
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20 * 2**20, f"{peak / 2**20:.0f} MiB traced: the pixels were decoded"
    history, state = demo_app.respond({"text": "what?", "files": [str(bomb)]}, [], "base", {}, NoModel(), None)
    assert "decompression bomb" in history[-1]["content"] and "image" not in state


def test_large_images_are_downscaled_upright_before_the_model_sees_them(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    Image.new("RGB", (5000, 3000), (200, 10, 10)).save(tmp_path / "big.jpg", exif=exif)
    usable, message = demo_app.prepare_image(tmp_path / "big.jpg", tmp_path / "small")
    assert message is None and usable.startswith(str(tmp_path / "small"))
    with Image.open(usable) as img:
        assert max(img.size) == demo_app.MAX_SIDE and img.size[1] > img.size[0], "downscaled and upright"
    assert (tmp_path / "big.jpg").stat().st_size > 0 and demo_app.prepare_image(tmp_path / "big.jpg")[1] is None
    Image.new("RGB", (640, 480)).save(tmp_path / "normal.png")
    assert demo_app.prepare_image(tmp_path / "normal.png") == (str(tmp_path / "normal.png"), None)


def test_a_very_long_prompt_is_refused_before_the_queue(tmp_path):
    text = "why " * 100_000
    history, state = demo_app.respond({"text": text, "files": []}, [], "base", {}, NoModel(), None)
    assert "399,999 characters" in history[-1]["content"] and len(history[-2]["content"]) < 300
    assert demo_app.check_prompt("What colour?") is None
