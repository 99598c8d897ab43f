"""The tiny model's pre-trained ViT: the shipped file, its record, the builder using it, and what it can see."""
import json

import pytest
import torch
from safetensors.torch import load_file

from labsupport.model import tinymodel, towers, vit_pretrain


def test_the_record_describes_the_shipped_weights():
    record = json.loads(towers.RECORD.read_text())
    assert record["sha256"] == towers.weights_digest()  # the record is of this very file
    assert record["recipe"]["steps"] == record["log"][-1]["step"]
    assert min(record["log"][-1]["val_accuracy"].values()) >= 0.9


def test_the_builder_writes_the_pretrained_vit_and_a_random_rest(tmp_path):
    shipped = towers.pretrained_weights()
    warm = load_file(str(tinymodel.build_tiny_model(tmp_path / "warm") / "model.safetensors"))
    cold = load_file(str(tinymodel.build_tiny_model(tmp_path / "cold", pretrained_vision=False) / "model.safetensors"))
    assert set(shipped) == {k for k in warm if k.startswith("vision_model.")}
    for name, value in shipped.items():
        assert torch.equal(warm[name], value)
    assert not torch.equal(warm["vision_model.embeddings.patch_embedding.weight"],
                           cold["vision_model.embeddings.patch_embedding.weight"])
    for name in warm:  # projector and LLM: the same seeded random values either way
        if not name.startswith("vision_model."):
            assert torch.equal(warm[name], cold[name]), name


def test_weights_of_the_wrong_shape_are_refused(tmp_path):
    config = tinymodel.tiny_config(3000)
    bad = {"vision_model.embeddings.patch_embedding.weight": torch.zeros(3, 3)}
    with pytest.raises(ValueError, match="patch_embedding.*expects"):
        tinymodel._write_weights(config, tmp_path, seed=0, replace=bad)


def test_a_missing_weights_file_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="vit_pretrain --device cuda"):
        towers.pretrained_weights(tmp_path / "nothing.safetensors")


def _features(model_dir, images):
    from transformers import AutoModel

    vit = AutoModel.from_pretrained(model_dir, trust_remote_code=True, torch_dtype=torch.float32).vision_model.eval()
    with torch.no_grad():
        return torch.cat([vit_pretrain.mean_patch_feature(vit, vit_pretrain.normalise(images[i:i + 32]))
                          for i in range(0, len(images), 32)])


def test_the_pretrained_vit_sees_shape_and_count_where_a_random_one_does_not(tmp_path):
    # plates the tower never saw (its training used indices below 12,512), fitted and scored by a linear probe
    images, labels = vit_pretrain.pretrain_set(240, start=1_000_000)
    warm = vit_pretrain.probe_accuracy(_features(tinymodel.build_tiny_model(tmp_path / "w"), images), labels, n_fit=160)
    cold = vit_pretrain.probe_accuracy(
        _features(tinymodel.build_tiny_model(tmp_path / "c", pretrained_vision=False), images), labels, n_fit=160)
    assert warm["shape"] >= 0.85 and warm["count"] >= 0.85 and warm["colour"] >= 0.9, warm
    assert cold["shape"] < warm["shape"] - 0.2 and cold["count"] < warm["count"] - 0.2, (cold, warm)


def test_train_tower_changes_the_tower_and_logs(tmp_path):
    from transformers import AutoModel

    model_dir = tinymodel.build_tiny_model(tmp_path / "c", pretrained_vision=False)
    vit = AutoModel.from_pretrained(model_dir, trust_remote_code=True, torch_dtype=torch.float32).vision_model
    before = vit.embeddings.patch_embedding.weight.detach().clone()
    images, labels = vit_pretrain.pretrain_set(6, start=2_000_000)
    log = vit_pretrain.train_tower(vit, images[:4], labels[:4], steps=4, batch=2, lr=1e-3, weight_decay=0.0,
                                   warmup=0.5, seed=0, val=(images[4:], labels[4:]), log_every=1)
    assert [row["step"] for row in log] == [1, 2, 3, 4]
    assert set(log[-1]["val_accuracy"]) == set(towers.ATTRIBUTES)
    assert not torch.equal(before, vit.embeddings.patch_embedding.weight)
