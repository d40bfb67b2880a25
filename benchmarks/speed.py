"""The fused encoder and the kNN searches on the GPU (issue 14): images/s and kNN seconds.

    python benchmarks/speed.py --json $OUT/speed.json                 # both parts, on CUDA
    python benchmarks/speed.py --part knn --memory 4610348 --queries 200000

encoder: for each backbone (timm tf_efficientnet_lite0 and, when open_clip imports, CLIP RN101
  to layer3; random weights, fp16, channels-last, batch 256): images/s of the eager fp16 encoder
  (the pipeline's exact-arithmetic path) and of the fused one (`encoder.fused`: BatchNorm folded,
  torch.compile mode COMPILE_MODE), on 224 x 224 network inputs and end to end from uint8 crops
  of 64 and 224 pixels (`preprocess` included); the compile time of the first call; the largest
  relative difference of the fused maps from the eager fp16 maps; GFLOP per image
  (torch.utils.flop_counter, 2 FLOP a multiply-add) and the share of the GPU's matrix rate
  (a 8192^3 fp16 product, measured here).
knn: a memory of --memory x 64 (clustered: 20,000 centres with jitter, like the tiled coresets)
  and --queries queries near it; seconds of each search: `reference` (torch.cdist(Q, M).min(1)
  per set of 49, the faithful arithmetic; a few sets timed, extrapolated), `exact` (`nearest`,
  float32 ranking), `fast-topk` (`nearest_fast`, bf16 + top-k), `fast-tiles` (`nearest_tiles`,
  the Triton tile kernel) and faiss's GPU flat index when faiss imports; the fast searches'
  agreement with `exact` and, on 1,000 queries, with float64 brute force.
Timings: CUDA events, median of repeats after warm-ups.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vpclib.config import from_dict                                          # noqa: E402
from vpclib.encoder import COMPILE_MODE, build_encoder, preprocess           # noqa: E402


def cuda_time(fn, repeats: int = 10, warmup: int = 3) -> float:
    """Median seconds of fn() (CUDA events)."""
    times = []
    for i in range(repeats + warmup):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end) / 1e3)
    return float(np.median(times))


def matrix_rate(dtype=torch.float16, n: int = 8192) -> float:
    """TFLOP/s of one n^3 matrix product in `dtype`."""
    a, b = (torch.randn(n, n, device="cuda", dtype=dtype) for _ in range(2))
    return 2 * n ** 3 / cuda_time(lambda: a @ b) / 1e12


def flops_per_image(stages) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    x = torch.randn(1, 3, 224, 224, device="cuda", dtype=torch.half).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        stages(x)
    return counter.get_total_flops()


def encoder_part(backbones, batch: int, rate: float) -> list[dict]:
    rows = []
    for backbone in backbones:
        e = {"backbone": backbone, "pretrained": "random", "fp16": True,
             "preprocessing": "inception" if backbone.startswith("timm:") else "faithful"}
        plain = build_encoder(from_dict({"arithmetic": "exact", "encoder": e}), "cuda")
        plain.to(memory_format=torch.channels_last)
        t0 = time.perf_counter()
        fused = build_encoder(from_dict({"arithmetic": "exact", "encoder": {**e, "fused": True}}), "cuda")
        build_s = time.perf_counter() - t0
        flops = flops_per_image(plain.stages)
        x = torch.randn(batch, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = fused(x)
            torch.cuda.synchronize()
            compile_s = time.perf_counter() - t0
            ref = plain(x)
            diff = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(out, ref))
            row = dict(backbone=backbone, batch=batch, gflop_per_image=flops / 1e9, compile_mode=COMPILE_MODE,
                       fused_build_s=build_s, compile_first_call_s=compile_s, fused_max_rel_diff=diff,
                       fused_fallback=repr(fused.stages.failed) if fused.stages.failed else None)
            for name, enc in (("eager_fp16", plain), ("fused", fused)):
                t = cuda_time(lambda: enc(x))
                row[f"{name}_images_per_s"] = batch / t
                row[f"{name}_tflops"] = flops * batch / t / 1e12
                row[f"{name}_share_of_matrix_rate"] = flops * batch / t / 1e12 / rate
                for size in (64, 224):
                    crops = torch.randint(0, 256, (batch, size, size, 3), device="cuda", dtype=torch.uint8)
                    mode = e["preprocessing"]
                    step = lambda: enc(preprocess(crops, mode).contiguous(memory_format=torch.channels_last))
                    row[f"{name}_crops{size}_images_per_s"] = batch / cuda_time(step)
        print(json.dumps(row), flush=True)
        rows.append(row)
        del plain, fused
        torch.cuda.empty_cache()
    return rows


def knn_part(n_memory: int, n_queries: int, d: int = 64, searches=("fast-topk", "fast-tiles")) -> dict:
    from vpclib.scores import nearest, nearest_fast, nearest_tiles, reference_set_distances
    g = torch.Generator(device="cuda").manual_seed(0)
    centres = torch.randn(20_000, d, device="cuda", generator=g)
    memory = centres[torch.randint(0, 20_000, (n_memory,), device="cuda", generator=g)]
    memory += 0.3 * torch.randn(n_memory, d, device="cuda", generator=g)
    queries = memory[torch.randint(0, n_memory, (n_queries,), device="cuda", generator=g)]
    queries += 0.3 * torch.randn(n_queries, d, device="cuda", generator=g)
    out = dict(memory=n_memory, queries=n_queries, dims=d, seconds={}, notes={})

    def timed(name, fn, repeats=1):
        torch.cuda.synchronize()
        result = fn()                                                        # warm-up (kernels, compile)
        t = cuda_time(fn, repeats=repeats, warmup=0)
        out["seconds"][name] = t
        print(f"knn {name}: {t:.3f} s", flush=True)
        return result

    exact_d, exact_i = timed("exact", lambda: nearest(queries, memory))
    for name, fn in (("fast-topk", lambda: nearest_fast(queries, memory, 16)),
                     ("fast-tiles", lambda: nearest_tiles(queries, memory, 16))):
        if name not in searches:
            continue
        dist, idx = timed(name, fn)
        out["notes"][name] = dict(same_distance_as_exact=float((dist == exact_d).float().mean()),
                                  max_rel_vs_exact=float(((dist - exact_d).abs() / exact_d.clamp_min(1e-12)).max()),
                                  closer_than_exact=int((dist < exact_d).sum()),
                                  farther_than_exact=int((dist > exact_d).sum()))
    # the faithful arithmetic: one cdist per set of 49 queries against the whole memory
    sets = queries[: 49 * 200].view(200, 49, d)
    t = cuda_time(lambda: reference_set_distances(sets, memory), repeats=1, warmup=1)
    out["seconds"]["reference (extrapolated from 200 sets of 49)"] = t * n_queries / (49 * 200)
    out["seconds"]["reference, 200 sets of 49 measured"] = t
    # float64 brute force on 1,000 queries
    sub = queries[:1000].double()
    best = torch.full((1000,), float("inf"), device="cuda", dtype=torch.float64)
    for lo in range(0, n_memory, 1 << 20):
        m = memory[lo:lo + (1 << 20)].double()
        best = torch.minimum(best, ((sub * sub).sum(1, keepdim=True) + (m * m).sum(1) - 2 * sub @ m.T).amin(1))
    brute = best.clamp_min(0).sqrt()
    out["brute_force_1000"] = {name: float(((d_[:1000].double() - brute).abs() / brute).max())
                               for name, d_ in (("exact", exact_d), ("fast-tiles", dist))}
    try:
        import faiss
        res = faiss.StandardGpuResources()
        index = faiss.GpuIndexFlatL2(res, d)
        index.add(memory.cpu().numpy())
        q = queries.cpu().numpy()
        t0 = time.perf_counter()
        index.search(q, 1)
        out["seconds"]["faiss GpuIndexFlatL2 (host arrays)"] = time.perf_counter() - t0
    except Exception as err:                                                 # not installed here
        out["notes"]["faiss"] = f"not run: {type(err).__name__}: {err}"
    print(json.dumps(out), flush=True)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["all", "encoder", "knn"], default="all")
    p.add_argument("--backbones", default="timm:tf_efficientnet_lite0,clip_rn101")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--memory", type=int, default=4_610_348)
    p.add_argument("--queries", type=int, default=200_000)
    p.add_argument("--searches", default="fast-topk,fast-tiles", help="fast searches to time besides exact")
    p.add_argument("--json", default="")
    args = p.parse_args()
    result = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__)
    result["fp16_matrix_tflops"] = matrix_rate(torch.float16)
    result["bf16_matrix_tflops"] = matrix_rate(torch.bfloat16)
    print(json.dumps(result), flush=True)
    if args.part in ("all", "knn"):
        try:
            result["knn"] = knn_part(args.memory, args.queries, searches=args.searches.split(","))
        except Exception:                                                    # report, go on with the encoder
            result["knn_error"] = traceback.format_exc()
            print(result["knn_error"], flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))
    if args.part in ("all", "encoder"):
        backbones = args.backbones.split(",")
        try:
            import open_clip  # noqa: F401
        except ImportError:
            backbones = [b for b in backbones if b != "clip_rn101"]
        result["encoder"] = []
        for backbone in backbones:
            try:
                result["encoder"] += encoder_part([backbone], args.batch, result["fp16_matrix_tflops"])
            except Exception:
                result[f"encoder_error {backbone}"] = traceback.format_exc()
                print(result[f"encoder_error {backbone}"], flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
