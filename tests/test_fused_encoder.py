"""The fused encoder (`encoder.fused`): BatchNorm folded into the convolutions, then torch.compile
on CUDA with an eager fallback. On CPU: the folded model against the unfolded eager model (float32,
1e-5 relative) for both backbones, the fallback when compiling fails, the params checks. On CUDA
(skipped without it): compiled fp16 maps against the eager fp16 encoder at fp16 tolerance."""

import warnings

import pytest
import torch

from vpclib.config import from_dict
from vpclib.encoder import FusedStages, build_encoder, check_folded, fold_batchnorm, load_timm
from vpclib.errors import ConfigError
from test_encoder import _randomise_batchnorms  # noqa: E402  (one helper for both encoder test files)


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _stages(backbone: str) -> torch.nn.Module:
    if backbone == "clip_rn101":
        pytest.importorskip("open_clip")
        from vpclib.encoder import load_clip_rn101
        stages = load_clip_rn101("random", seed=0)
    else:
        stages = load_timm(backbone.removeprefix("timm:"), "random", [2, 3], seed=0)
    _randomise_batchnorms(stages, 1)
    return stages.eval()


@pytest.mark.parametrize("backbone", ["timm:tf_efficientnet_lite0", "clip_rn101"])
def test_folded_maps_equal_the_unfolded_eager_model(backbone):
    stages = _stages(backbone)
    folded = fold_batchnorm(stages)
    n_bn = lambda m: sum(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())
    assert n_bn(stages) > 10 and n_bn(folded) == 0                          # every BatchNorm folded away
    assert n_bn(stages) == sum(isinstance(x, torch.nn.BatchNorm2d) for x in stages.modules())   # original untouched
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for ours, eager in zip(folded(x), stages(x)):
            assert _max_rel(ours, eager) < 1e-5


def test_check_folded_catches_a_wrong_fold():
    """Folding a BatchNorm into a convolution that does not feed it changes the maps: refused."""
    stages = _stages("timm:tf_efficientnet_lite0")
    broken = fold_batchnorm(stages)
    conv = next(m for m in broken.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels > 8)
    conv.bias.data += 1.0
    with pytest.raises(ValueError, match="folding"):
        check_folded(stages, broken)


def test_fused_encoder_on_cpu_is_the_folded_eager_model():
    cfg = from_dict({"arithmetic": "exact", "encoder": {"backbone": "timm:tf_efficientnet_lite0", "pretrained": "random",
                                                        "fused": True, "batch_size": 24}})
    fused = build_encoder(cfg, "cpu")
    assert fused.stages.batch == 24                                         # the one compiled shape on CUDA
    plain = build_encoder(from_dict({"arithmetic": "exact", "encoder": {"backbone": "timm:tf_efficientnet_lite0",
                                                                         "pretrained": "random"}}), "cpu")
    assert isinstance(fused.stages, FusedStages) and not fused.stages.compiling   # no compile on CPU
    assert fused.channels == plain.channels == (40, 112)
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    for ours, eager in zip(fused(x), plain(x)):
        assert ours.shape == eager.shape and _max_rel(ours, eager) < 1e-5


def test_compile_failure_falls_back_to_eager_with_one_warning(monkeypatch):
    stages = _stages("timm:tf_efficientnet_lite0")
    fused = FusedStages(fold_batchnorm(stages), compiling=True)
    calls = []

    def broken_compile(model, **kwargs):
        calls.append(kwargs)
        raise RuntimeError("no C++ compiler found")
    monkeypatch.setattr(torch, "compile", broken_compile)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    with pytest.warns(RuntimeWarning, match="torch.compile failed.*no C\\+\\+ compiler"):
        first = fused(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                      # once only
        second = fused(x)
    assert len(calls) == 1 and calls[0]["dynamic"] is False
    with torch.no_grad():
        for a, b, eager in zip(first, second, stages(x)):
            assert torch.equal(a, b) and _max_rel(a, eager) < 1e-5


def test_fused_batches_are_padded_to_one_shape(monkeypatch):
    """Batches up to the run's batch size (here 8) reach the compiled model as 8 images, larger ones
    as the next power of two; the caller gets its own batch back."""
    stages = _stages("timm:tf_efficientnet_lite0")
    fused = FusedStages(fold_batchnorm(stages), compiling=True, batch=8)
    seen = []

    def fake_compile(model, **kwargs):
        def run(x):
            seen.append(len(x))
            return model(x)
        return run
    monkeypatch.setattr(torch, "compile", fake_compile)
    x = torch.randn(11, 3, 224, 224, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        for b in (11, 3, 8, 1):
            out = fused(x[:b])
            eager = stages(x[:b])
            assert [o.shape[0] for o in out] == [b, b]
            for a, e in zip(out, eager):
                assert _max_rel(a, e) < 1e-5
    assert seen == [16, 8, 8, 8]


def test_fused_params_validated():
    with pytest.raises(ConfigError, match="'encoder.fused'.*arithmetic: exact"):
        from_dict({"encoder": {"fused": True}})                             # the reference arithmetic
    with pytest.raises(ConfigError, match="'encoder.fused'.*true or false"):
        from_dict({"arithmetic": "exact", "encoder": {"fused": "yes"}})
    assert from_dict().encoder.fused is False


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backbone", ["timm:tf_efficientnet_lite0", "clip_rn101"])
def test_cuda_fused_fp16_maps_equal_the_eager_fp16_encoder(backbone):
    """Compiled, folded, fp16, channels-last maps against the eager fp16 encoder (the fast path
    without fusion) at fp16 tolerance, on a ragged batch (padded inside)."""
    if backbone == "clip_rn101":
        pytest.importorskip("open_clip")
    common = {"backbone": backbone, "pretrained": "random", "fp16": True}
    if backbone.startswith("timm:"):
        common["preprocessing"] = "inception"
    plain = build_encoder(from_dict({"arithmetic": "exact", "encoder": common}), "cuda")
    fused = build_encoder(from_dict({"arithmetic": "exact", "encoder": {**common, "fused": True}}), "cuda")
    x = torch.randn(13, 3, 224, 224, generator=torch.Generator().manual_seed(7)).cuda()
    x = x.contiguous(memory_format=torch.channels_last)
    plain.to(memory_format=torch.channels_last)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)                     # the compiled path, no fallback
        ours = fused(x)
    assert fused.stages.failed is None
    for a, b in zip(ours, plain(x)):
        assert a.shape == b.shape and a.dtype == torch.float32
        assert _max_rel(a, b) < 2e-2                                        # fp16 rounding through ~30 layers
