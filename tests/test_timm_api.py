"""The properties timm's own model tests check, on the tiny variant (and the registry entries)."""
from __future__ import annotations

import pytest
import timm
import torch
from timm.models import FeatureInfo


NAME = "test_overlock"
VARIANTS = ["overlock_xt", "overlock_t", "overlock_s", "overlock_b"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return timm.create_model(NAME).eval()


def test_registry_and_pretrained_configs():
    names = timm.list_models("*overlock*")
    for v in VARIANTS:
        assert v in names and f"{v}_reparam" in names
    assert NAME in names
    crops = {"overlock_xt": 0.925, "overlock_t": 0.95, "overlock_s": 0.95, "overlock_b": 0.975}
    for v, crop in crops.items():
        for name in (v, f"{v}_reparam"):
            cfg = timm.models.get_pretrained_cfg(name).to_dict()
            assert cfg["crop_pct"] == crop and cfg["interpolation"] == "bicubic"
            assert cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN and cfg["std"] == timm.data.IMAGENET_DEFAULT_STD
            assert cfg["classifier"] == ("head.4", "aux_head.2")
            suffix = "_in1k_224_reparam.pth" if name.endswith("_reparam") else "_in1k_224.pth"
            assert cfg["url"] == f"https://github.com/LMMMEng/OverLoCK/releases/download/v1/{v}{suffix}"


@pytest.mark.parametrize("size", [(32, 32), (32, 48), (64, 64), (97, 131), (160, 96)])
def test_forward_any_size_batch_one(model, size):
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert out.shape == (1, 1000)
    assert torch.isfinite(out).all()


def test_backward_every_parameter_gets_a_gradient():
    model = timm.create_model(NAME, num_classes=42).train()
    out = model(torch.randn(2, 3, 64, 64))
    assert type(out) is tuple and len(out) == 2
    assert out[0].shape == out[1].shape == (2, 42)
    torch.cat(out).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []


def test_default_cfg_attributes(model):
    cfg = model.pretrained_cfg
    x = torch.randn(1, 3, *cfg["input_size"][1:])
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape[1] == model.num_features and tuple(feats.shape[-2:]) == cfg["pool_size"]
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (1, model.head_hidden_size)
        m = timm.create_model(NAME).eval()
        m.reset_classifier(0)
        assert m.num_classes == 0
        out = m(x)
        assert out.shape == pre.shape
        m.reset_classifier(0, "")
        out = m(x)
        assert out.dim() == 4 and tuple(out.shape[-2:]) == cfg["pool_size"]
    state = model.state_dict()
    for name in cfg["classifier"]:
        assert f"{name}.weight" in state
    assert f"{cfg['first_conv']}.weight" in state


def test_reset_classifier_resets_both_heads():
    m = timm.create_model(NAME).train()
    m.reset_classifier(5)
    main, aux = m(torch.randn(2, 3, 64, 64))
    assert main.shape == aux.shape == (2, 5)


def test_eval_returns_plain_logits_and_no_aux_head_option():
    m = timm.create_model(NAME, with_aux_head=False).train()
    assert m.aux_head is None and not any(k.startswith("aux_head") for k in m.state_dict())
    assert isinstance(m(torch.randn(2, 3, 64, 64)), torch.Tensor)


def test_forward_intermediates_match_feature_info(model):
    info = FeatureInfo(model.feature_info, range(len(model.feature_info)))
    x = torch.randn(1, 3, 96, 80)
    with torch.no_grad():
        final, levels = model.forward_intermediates(x)
        assert torch.allclose(final, model.forward_features(x))
    assert len(levels) == 4
    for ch, red, level in zip(info.channels(), info.reduction(), levels):
        assert level.shape[1] == ch
        assert level.shape[-2] == -(-96 // red) and level.shape[-1] == -(-80 // red)
    only = model.forward_intermediates(x, indices=[0, 2], intermediates_only=True)
    assert [t.shape[1] for t in only] == [info.channels()[0], info.channels()[2]]


def test_features_only_matches_feature_info():
    fm = timm.create_model(NAME, features_only=True).eval()
    assert fm.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        outs = fm(torch.randn(1, 3, 96, 96))
    assert [o.shape[1] for o in outs] == fm.feature_info.channels()
    assert [o.shape[-1] for o in outs] == [24, 12, 6, 3]


@pytest.mark.parametrize("enable", [True, [1, 0, 1, 2]])
def test_grad_checkpointing_gives_identical_outputs_and_grads(enable):
    torch.manual_seed(0)
    ref = timm.create_model(NAME, num_classes=4).train()
    ckpt = timm.create_model(NAME, num_classes=4).train()
    ckpt.load_state_dict(ref.state_dict())
    ckpt.set_grad_checkpointing(enable)
    x = torch.randn(2, 3, 64, 64)
    outs = []
    for m in (ref, ckpt):
        out = m(x)
        torch.cat(out).square().mean().backward()
        outs.append(out)
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=0, atol=0)
    for (n, p), q in zip(ref.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=n)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_runs_close_to_fp32(model, dtype):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        with torch.autocast("cpu", dtype=dtype):
            out = model(x)
    assert torch.isfinite(out).all()
    assert (out.float() - expected).abs().max() <= 0.1 * expected.abs().max()


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
def test_traces_as_one_graph(model, grad):
    """Dynamo sees the whole model as one graph."""
    x = torch.randn(1, 3, 64, 64)
    torch._dynamo.reset()
    with torch.set_grad_enabled(grad):
        explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0, [str(b.reason)[:200] for b in explained.break_reasons]
    assert explained.graph_count == 1


@pytest.mark.slow
def test_torch_compile_fullgraph_runs(model):
    x = torch.randn(1, 3, 64, 64)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)


def test_bad_input_errors(model):
    with pytest.raises(ValueError, match="4-D"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="3 input channels, got 1"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="at least 32"):
        model(torch.randn(1, 3, 16, 64))
    with pytest.raises(RuntimeError, match="[Uu]nknown model"):
        timm.create_model("overlock_xxl")


def test_in_chans():
    m = timm.create_model(NAME, in_chans=1).eval()
    with torch.no_grad():
        assert m(torch.randn(1, 1, 32, 32)).shape == (1, 1000)


def test_timm_reparameterize_model_gives_the_deploy_form():
    model = timm.create_model(NAME).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        deployed = timm.utils.reparameterize_model(model)
        torch.testing.assert_close(deployed(x), expected, rtol=1e-4, atol=1e-5)
    assert deployed.state_dict().keys() == timm.create_model(NAME, deploy=True).state_dict().keys()
