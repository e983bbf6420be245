"""Loading a clone of the official implementation for benchmarks: the na2d_av stand-ins and the import
wiring, on a stand-in model file written here (the official code is not part of this repository)."""
from __future__ import annotations

import sys
import textwrap

import pytest
import timm
import torch

from overlock.benchmark import BenchConfig, benchmark, top1_of
from overlock.official import load_official_model, overlock_na2d_av, unfold_na2d_av
from overlock.ops import contmix_reference

# what the official model file needs from NATTEN, mmengine and timm's old registry, in miniature
FAKE_MODEL_FILE = textwrap.dedent(
    """
    import torch
    from torch import nn
    from natten.functional import na2d_av
    from mmengine.runner import load_checkpoint
    from timm.models.registry import register_model

    print('building')  # the official code prints; the loader keeps stdout clean

    class Tiny(nn.Module):
        def __init__(self, k=3):
            super().__init__()
            self.k = k
            self.head = nn.Linear(2, 1000)
        def reparam(self):
            self.reparamed = True
        def forward(self, x):
            b, _, h, w = x.shape
            value = x[:, :2].reshape(b, 1, 2, h, w).permute(0, 1, 3, 4, 2)
            attn = torch.full((b, 1, h, w, self.k * self.k), 1.0 / self.k ** 2)
            out = na2d_av(attn, value, kernel_size=self.k)
            return self.head(out.mean((1, 2, 3)))

    @register_model
    def overlock_xt(pretrained=False, **kwargs):
        return Tiny(**kwargs)
    """
)


@pytest.fixture
def fake_repo(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "overlock.py").write_text(FAKE_MODEL_FILE)
    yield tmp_path
    for name in ("natten", "natten.functional"):
        sys.modules.pop(name, None)


@pytest.mark.parametrize("shape", [(2, 2, 7, 9, 3, 5), (1, 3, 13, 13, 4, 13), (1, 1, 6, 11, 2, 3)], ids=str)
def test_stand_ins_match_the_reference(shape):
    *dims, k = shape
    gen = torch.Generator().manual_seed(k)
    logits = torch.randn(*dims[:4], k * k, generator=gen)
    value = torch.randn(*dims, generator=gen)
    expected = contmix_reference(logits, value, k)
    attn = logits.softmax(-1)
    torch.testing.assert_close(unfold_na2d_av(attn, value, k), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(overlock_na2d_av(attn, value, k), expected, rtol=1e-5, atol=1e-5)


def test_loads_model_file_with_stand_ins_and_keeps_our_registry(fake_repo, capsys):
    ours = timm.models.model_entrypoint("overlock_xt")
    model = load_official_model(fake_repo, "official:overlock_xt", "unfold", k=5)
    assert type(model).__name__ == "Tiny" and model.k == 5
    assert model(torch.randn(2, 3, 9, 9)).shape == (2, 1000)
    assert timm.models.model_entrypoint("overlock_xt") is ours  # not overwritten by the official file
    assert "building" not in capsys.readouterr().out


def test_loader_errors(tmp_path, fake_repo):
    with pytest.raises(FileNotFoundError, match="no official model file"):
        load_official_model(tmp_path / "nowhere", "official:overlock_xt")
    with pytest.raises(ValueError, match="no model 'overlock_zz'"):
        load_official_model(fake_repo, "official:overlock_zz")
    with pytest.raises(ValueError, match="unknown na2d_av stand-in"):
        load_official_model(fake_repo, "official:overlock_xt", av="fast")


def test_benchmark_runs_official_beside_ours(fake_repo):
    cfg = BenchConfig(batch_size=2, img_size=32, iters=1, warmup=1, official_repo=str(fake_repo))
    official, ours = benchmark(["official:overlock_xt", "test_overlock"], cfg)
    assert official.model == "official:overlock_xt" and official.images_per_s > 0 and official.top1 == 82.7
    assert ours.model == "test_overlock" and ours.images_per_s > 0
    assert top1_of("official:overlock_b_reparam") == 85.1
    with pytest.raises(ValueError, match="need official_repo"):
        benchmark(["official:overlock_xt"], BenchConfig())
