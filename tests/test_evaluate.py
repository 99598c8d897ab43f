"""Tests of labsupport.evaluate: scoring, and evaluate() driving a model's batch_chat/chat."""
import json

import pytest
import torch
from PIL import Image

from labsupport.evaluate import scoring as E


def records(tmp_path, n=4):
    recs = []
    answers = ["red", "blue", "2", "circle"]
    kinds = ["colour", "colour", "count", "shape"]
    for i in range(n):
        Image.new("RGB", (64, 48), (200, 10, 10)).save(tmp_path / f"{i}.jpg")
        recs.append({"id": f"r{i}", "image": f"{i}.jpg",
                     "conversations": [{"from": "human", "value": f"<image>\nq{i}"}, {"from": "gpt", "value": answers[i]}],
                     "meta": {"kind": kinds[i], "value": answers[i], "answer": answers[i], "lang": "en"}})
    (tmp_path / "heldout.json").write_text(json.dumps(recs))
    return recs


class Stub(torch.nn.Module):
    """A model with InternVL's chat API that answers from a fixed table, recording what it was asked."""

    def __init__(self, replies, batch=True):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.replies, self.asked, self.shapes = dict(replies), [], []
        if not batch:
            self.batch_chat = None

    def chat(self, tokenizer, pixel_values, question, generation_config):
        self.asked.append(question)
        self.shapes.append(tuple(pixel_values.shape))
        return self.replies[question]

    def batch_chat(self, tokenizer, pixel_values, questions, generation_config, num_patches_list=None):
        assert sum(num_patches_list) == pixel_values.shape[0]
        return [self.chat(tokenizer, pixel_values[:1], q, generation_config) for q in questions]


def test_score_counts_per_kind_and_class(tmp_path):
    recs = records(tmp_path)
    r = E.score(recs, ["red", "green", "2", "circle."], match=lambda p, m: p.strip(". ") == m["answer"])
    assert r["accuracy"] == 0.75 and r["n"] == 4
    assert r["per_kind"] == {"colour": 0.5, "count": 1.0, "shape": 1.0}
    assert r["per_class"]["colour/blue"] == 0.0 and r["per_class"]["colour/red"] == 1.0
    with pytest.raises(ValueError):
        E.score(recs, ["red"])


@pytest.mark.parametrize("batch", [True, False])
def test_evaluate_asks_each_question_with_its_image(tmp_path, batch):
    recs = records(tmp_path)
    stub = Stub({f"<image>\nq{i}": a for i, a in enumerate(["red", "red", "3", "circle"])}, batch=batch)
    stub.batch_chat = stub.batch_chat if batch else None
    r = E.evaluate(stub, None, tmp_path / "heldout.json", batch_size=3, progress=False, load_image=E.simple_load_image,
                   match=lambda p, m: p == m["answer"])
    assert sorted(stub.asked) == [f"<image>\nq{i}" for i in range(4)]
    assert all(s == (1, 3, 448, 448) for s in stub.shapes)
    assert r["accuracy"] == 0.5 and r["per_kind"]["colour"] == 0.5


def test_missing_evaluation_set_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="build_course_task"):
        E.evaluate(Stub({}), None, tmp_path / "nope.json", progress=False)


def test_simple_load_image_normalises_like_imagenet(tmp_path):
    Image.new("RGB", (30, 20), (124, 116, 104)).save(tmp_path / "grey.png")
    x = E.simple_load_image(tmp_path / "grey.png")
    assert x.shape == (1, 3, 448, 448)
    assert x.abs().max() < 0.02  # (124,116,104)/255 is ImageNet's mean


def test_evaluate_asks_with_the_given_system_prompt():
    class Model:  # records what chat() would build its prompt from
        system_message = "conversation.py's own"

        def parameters(self):
            import torch
            yield torch.zeros(1)

        def chat(self, tokenizer, pixels, question, gen):
            return self.system_message

    from labsupport.datasets import plates

    recs = plates.plates_records(2, "heldout", kinds=("colour",))
    folder = plates.build_course_task(n_train=8, n_heldout=2, progress=False)["image_folder"]
    got = E.evaluate(Model(), None, recs, folder, batch_size=1, progress=False, system="XTuner's")
    assert {r["reply"] for r in got["rows"]} == {"XTuner's"}
