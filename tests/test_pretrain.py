"""The pre-trained GlyphNet (`pretrained: glyphs`): its classes are disjoint from every glyphs
train and test class, it is deterministic and cached with its provenance, and a run starts from it
with frozen BatchNorm."""

from __future__ import annotations

import dataclasses
import json
import unicodedata

import numpy as np
import pytest
import torch

from dncml.trainers.backbones import build_backbone
from dncml.trainers.data.base import DatasetError
from dncml.trainers.data.glyphs import GlyphConfig, glyph_code_points, select_classes
from dncml.trainers.data.pretraining_glyphs import PretrainingSet, check_disjoint, pretraining_classes
from dncml.trainers.pretrain import PretrainConfig, pretrained_glyphnet, resolve_weights
from dncml.trainers.spec import SpecError, from_dict


def test_pretraining_classes_are_disjoint_from_train_and_test():
    pretraining = {cp for cp, _ in pretraining_classes()}
    assert len(pretraining) > 3000
    for config in (GlyphConfig(), GlyphConfig(num_classes=800), GlyphConfig(num_classes=96, seed=3)):
        code_points, _, split = select_classes(config)
        train, test = set(code_points[split == 0].tolist()), set(code_points[split == 1].tolist())
        assert train and test and not (pretraining & train) and not (pretraining & test)
    # ... nor a compatibility twin (superscript, full-width, ...) of any glyphs class.
    glyph_forms = {unicodedata.normalize("NFKC", chr(cp)) for cp in glyph_code_points()}
    assert not {unicodedata.normalize("NFKC", chr(cp)) for cp in pretraining} & glyph_forms
    assert all(len(faces) >= 4 for _, faces in pretraining_classes())  # style variation within a class


def test_an_overlap_is_refused():
    letter_a = ord("A")
    assert letter_a in glyph_code_points()
    with pytest.raises(DatasetError, match="U\\+0041.*would have seen evaluation classes"):
        check_disjoint([0x2190 + 1000, letter_a])
    superscript_two = 0x00B2  # NFKC: "2", a glyphs class
    with pytest.raises(DatasetError, match="overlap"):
        check_disjoint([superscript_two])


def test_pretraining_is_deterministic_cached_and_used_by_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("DNCML_CACHE", str(tmp_path / "cache"))
    config = PretrainConfig(epochs=1, max_classes=40, batch_size=64)
    first = pretrained_glyphnet(config, progress=False)
    provenance = json.loads((first.parent / "provenance.json").read_text())
    assert provenance["classes"] == 40 and provenance["config"]["epochs"] == 1
    assert 0.0 <= provenance["held_out_accuracy"] <= 1.0
    weights = torch.load(first, weights_only=True)
    assert pretrained_glyphnet(config, progress=False) == first  # cached: not trained again
    other = PretrainConfig(epochs=1, max_classes=40, batch_size=64, seed=0, lr=config.lr)
    (tmp_path / "again").mkdir()
    again = torch.load(pretrained_glyphnet(other, cache_dir=tmp_path / "again", progress=False), weights_only=True)
    assert weights.keys() == again.keys() and all(torch.equal(weights[k], again[k]) for k in weights)

    # A run with `pretrained: <that file>` loads exactly those weights, with frozen BatchNorm.
    spec = from_dict({"pretrained": str(first), "glyph_classes": 48})
    assert resolve_weights(spec) == first
    backbone = build_backbone(spec.backbone, 1, resolve_weights(spec))
    assert all(torch.equal(backbone.state_dict()[k], weights[k]) for k in weights)
    assert spec.resolved_freeze_bn == "all"
    with pytest.raises(SpecError, match="'cache' is for backbone resnet18, resnet50"):
        from_dict({"pretrained": "cache"})
    with pytest.raises(SpecError, match="'glyphs' is for backbone glyphnet"):
        from_dict({"pretrained": "glyphs", "backbone": "resnet18"})
    assert PretrainingSet(max_classes=40).classes()[0] == pretraining_classes()[0]
    assert len(np.unique([cp for cp, _ in PretrainingSet(max_classes=40).classes()])) == 40


def test_building_a_model_never_looks_for_weights_and_the_resolver_names_the_file(tmp_path, monkeypatch):
    from dncml.trainers.model import DivideAndConquerNet

    monkeypatch.setenv("DNCML_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    glyphs = from_dict({"pretrained": "glyphs", "glyph_classes": 48})
    DivideAndConquerNet(glyphs, 1, 8)  # the architecture alone: nothing pre-trained, nothing looked up
    assert not (tmp_path / "cache").exists()
    assert resolve_weights(from_dict({"glyph_classes": 48})) is None
    imagenet = from_dict({"backbone": "resnet18", "pretrained": "cache", "image_size": 32, "glyph_classes": 48})
    with pytest.raises(FileNotFoundError, match="never downloads"):
        resolve_weights(imagenet)
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "resnet18-f37072fd.pth").write_bytes(b"")
    (hub / "resnet50-0676ba61.pth").write_bytes(b"")
    assert resolve_weights(imagenet) == hub / "resnet18-f37072fd.pth"


def test_the_default_pretraining_ships_checked_and_is_cached_without_training(tmp_path, monkeypatch):
    """`pretrained: glyphs` at its default config starts from the weights shipped with dncml: the
    bytes its provenance names, trained on today's pre-training classes, copied into the cache
    without a training step; a shipped file that does not match its sha256 is refused."""
    import hashlib

    from dncml.trainers import pretrain

    config = PretrainConfig()
    source, provenance = pretrain.shipped_weights(config)
    assert hashlib.sha256(source.read_bytes()).hexdigest() == provenance["sha256"]
    assert provenance["config"] == json.loads(json.dumps(dataclasses.asdict(config)))
    classes = np.array([cp for cp, _ in config.data.classes()], dtype=np.int64)
    assert provenance["code_points_sha256"] == hashlib.sha256(classes.tobytes()).hexdigest()  # the classes of today's code
    assert pretrain.shipped_weights(PretrainConfig(epochs=1)) is None  # only the default ships

    def no_training(*args, **kwargs):
        raise AssertionError("trained although the weights ship")

    monkeypatch.setattr(pretrain, "train_classifier", no_training)
    cached = pretrained_glyphnet(config, cache_dir=tmp_path / "cache", progress=False)
    assert cached.read_bytes() == source.read_bytes()
    assert json.loads((cached.parent / pretrain.PROVENANCE).read_text())["source"].startswith("shipped with dncml")
    build_backbone("glyphnet", 1, cached)  # strict load into today's GlyphNet

    tampered = tmp_path / "shipped"
    tampered.mkdir()
    original = source.read_bytes()
    (tampered / source.name).write_bytes(original[:100] + bytes([original[100] ^ 1]) + original[101:])
    (tampered / source.with_suffix(".json").name).write_text(json.dumps(provenance))
    monkeypatch.setattr(pretrain, "SHIPPED_DIR", tampered)
    with pytest.raises(pretrain.ShippedWeightsCorrupt, match="sha256"):
        pretrained_glyphnet(config, cache_dir=tmp_path / "other", progress=False)
    assert not (pretrain.pretrained_dir(config, tmp_path / "other") / pretrain.WEIGHTS).exists()  # nothing half-published
