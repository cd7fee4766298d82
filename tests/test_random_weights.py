"""The full-size random builders' fast path (sdcli.convert.random_weights.make_large): a module
made on the meta device and filled from a pool of draws must come out as a usable module of
the asked dtype, its tied weights tied, its norms 1, its weights at the default init's spread,
the same for the same seed; a module with saved buffers is made the usual way."""
import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from sdcli.convert import random_weights
from sdcli.convert.random_flux2_klein import TINY_FLUX2_KLEIN


@pytest.fixture
def everything_large(monkeypatch):
    monkeypatch.setattr(random_weights, "LARGE_PARAMETERS", 0)


def qwen3():
    return Qwen3ForCausalLM(Qwen3Config(**TINY_FLUX2_KLEIN["text"]))


def test_large_module_filled_from_the_pool(everything_large):
    torch.set_default_dtype(torch.float16)
    try:
        model = random_weights.make_large(qwen3, torch.bfloat16, seed=3)
        assert torch.get_default_dtype() == torch.float16  # the caller's default dtype is restored
    finally:
        torch.set_default_dtype(torch.float32)
    params = dict(model.named_parameters())
    assert {p.dtype for p in params.values()} == {torch.bfloat16}
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied again after to_empty
    assert all(torch.isfinite(p.float()).all() for p in params.values())
    assert (params["model.norm.weight"] == 1).all()
    q = params["model.layers.0.self_attn.q_proj.weight"].float()
    assert q.std().item() == pytest.approx((1 / (3 * q.shape[1])) ** 0.5, rel=0.1)
    assert q.abs().max() > 0 and (q != q.flatten()[0]).any()
    same = random_weights.make_large(qwen3, torch.bfloat16, seed=3)
    other = random_weights.make_large(qwen3, torch.bfloat16, seed=4)
    assert torch.equal(same.model.layers[0].mlp.up_proj.weight, model.model.layers[0].mlp.up_proj.weight)
    assert not torch.equal(other.model.layers[0].mlp.up_proj.weight, model.model.layers[0].mlp.up_proj.weight)
    ids = torch.tensor([[1, 5, 9, 2]])
    assert torch.isfinite(model(ids).logits.float()).all()  # it runs


def test_saved_buffers_take_the_usual_path(everything_large):
    def with_batch_norm():
        return torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8))

    module = random_weights.make_large(with_batch_norm, torch.float32, seed=0)
    assert module[1].running_var.device.type == "cpu" and (module[1].running_var == 1).all()


def test_small_modules_take_the_usual_path():
    module = random_weights.make_large(qwen3, torch.float32, seed=0)
    assert (module.model.norm.weight == 1).all()
    std = module.model.layers[0].self_attn.q_proj.weight.std().item()
    assert std == pytest.approx(Qwen3Config(**TINY_FLUX2_KLEIN["text"]).initializer_range, rel=0.2)
