"""kNN searches of the exact arithmetic (`scoring.knn`) against numpy float64 brute force (METHOD.md §7).

`nearest_fast` ranks in low precision (bf16 here on CPU, as on CUDA; float32 by default on CPU)
and re-ranks its candidates in float32: whenever the true nearest vector is among the candidates
its distance is the exact one. Random data, near-ties, duplicated vectors, well-separated
clusters (the nearest must be among the candidates), and a case built to push it out.
"""

import numpy as np
import pytest
import torch

from vpclib.config import from_dict
from vpclib.errors import ConfigError
from vpclib.scores import local_clip_scores, nearest, nearest_fast, nearest_tiles, set_distances


def brute(q: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 nearest distances and first nearest indices: (Q, D), (N, D) -> (Q,), (Q,)."""
    m = m.astype(np.float64)
    step = max(1, (1 << 25) // (len(m) * m.shape[1]))
    squared = np.concatenate([((q[i:i + step, None, :].astype(np.float64) - m[None]) ** 2).sum(-1)
                              for i in range(0, len(q), step)])                 # (Q, N)
    return np.sqrt(squared.min(1)), squared.argmin(1)


def as_t(x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float32)


RANKINGS = [None, torch.bfloat16]                                              # float32 (CPU default), bf16


@pytest.mark.parametrize("dtype", RANKINGS)
@pytest.mark.parametrize("memory_chunk", [1 << 18, 37])                          # one block; many blocks, merged
def test_fast_equals_brute_force_on_random_data(rng, dtype, memory_chunk):
    q = rng.normal(size=(200, 24)).astype(np.float32)
    m = rng.normal(size=(500, 24)).astype(np.float32)
    distance, index = nearest_fast(as_t(q), as_t(m), candidates=16, memory_chunk=memory_chunk, dtype=dtype)
    expected, expected_index = brute(q, m)
    np.testing.assert_allclose(distance.numpy(), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(index.numpy(), expected_index)             # no ties in random data


@pytest.mark.parametrize("dtype", RANKINGS)
def test_fast_well_separated_nearest_is_always_a_candidate(rng, dtype):
    """Bank: 40 tight clusters far apart; queries near a cluster centre. The nearest vector is in
    the query's own cluster, 8 vectors, all within the 8 candidates even in bf16 (the next cluster
    is ~50 away, the cluster's spread 0.1): the result must be the exact distance."""
    centres = rng.normal(size=(40, 16)) * 20
    m = (centres[:, None] + 0.1 * rng.normal(size=(40, 8, 16))).reshape(-1, 16).astype(np.float32)
    q = (centres[rng.integers(0, 40, 300)] + 0.1 * rng.normal(size=(300, 16))).astype(np.float32)
    distance, index = nearest_fast(as_t(q), as_t(m), candidates=8, dtype=dtype)
    expected, expected_index = brute(q, m)
    np.testing.assert_allclose(distance.numpy(), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(index.numpy(), expected_index)


@pytest.mark.parametrize("dtype", RANKINGS)
def test_fast_near_ties_and_duplicates(rng, dtype):
    """Duplicated bank vectors (exact ties: the distance is the same, the first index wins) and
    queries halfway between two bank vectors plus 1e-4 (near-ties below bf16's rounding of the
    ranking: the exact re-ranking must pick the truly nearer one)."""
    base = rng.normal(size=(60, 32)).astype(np.float32)
    m = np.concatenate([base, base[:20], rng.normal(size=(40, 32)).astype(np.float32)])   # rows 60..79 repeat 0..19
    a, b = base[:30], base[30:60]
    direction = (b - a) / np.linalg.norm(b - a, axis=1, keepdims=True)
    halfway = (a + b) / 2 - 1e-4 * direction                                  # a hair nearer to a
    q = np.concatenate([base[:20] + 0.01, halfway, rng.normal(size=(50, 32))]).astype(np.float32)
    distance, index = nearest_fast(as_t(q), as_t(m), candidates=16, dtype=dtype)
    expected, expected_index = brute(q, m)
    np.testing.assert_allclose(distance.numpy(), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(index.numpy(), expected_index)             # first of the duplicates; a, not b
    assert set(index.numpy()[:20]) <= set(range(20))


def test_fast_exact_zero_and_large_offset(rng):
    """A query equal to a bank vector is at distance 0 exactly; a shared offset of 1000 (where the
    matrix-product form |q|^2 + |m|^2 - 2q.m cancels in float32) does not move the result."""
    m = rng.normal(size=(100, 8)).astype(np.float32)
    q = np.concatenate([m[[5, 50]], rng.normal(size=(20, 8))]).astype(np.float32)
    expected, _ = brute(q, m)
    for offset in (0.0, 1000.0):
        distance, _ = nearest_fast(as_t(q + offset), as_t(m + offset), candidates=16)
        assert distance[0] == 0 and distance[1] == 0
        np.testing.assert_allclose(distance.numpy(), expected, rtol=1e-4, atol=1e-4)   # q + 1000 rounds in float32


def test_fast_with_one_candidate_can_miss_where_enough_candidates_do_not(rng):
    """The re-ranking is what makes the fast search exact: bf16 ranking with a single candidate
    returns a farther vector for some near-tied queries; with 16 candidates, none."""
    base = rng.normal(size=(200, 64)).astype(np.float32) + 4.0                # |m| ~ 32: bf16 ranking error ~ 0.1
    q = (base[rng.integers(0, 200, 400)] + 0.02 * rng.normal(size=(400, 64))).astype(np.float32)
    m = np.concatenate([base, base + 0.02 * rng.normal(size=base.shape).astype(np.float32)])   # near-twins
    expected, _ = brute(q, m)
    one, _ = nearest_fast(as_t(q), as_t(m), candidates=1, dtype=torch.bfloat16)
    many, _ = nearest_fast(as_t(q), as_t(m), candidates=16, dtype=torch.bfloat16)
    assert (one.numpy() > expected * (1 + 1e-4)).any()                       # the test can fail: one is not enough
    np.testing.assert_allclose(many.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_exact_search_equals_brute_force_indices(rng):
    """The float32 search (`scoring.knn: exact`) on the same data: distances and indices."""
    q = rng.normal(size=(150, 12)).astype(np.float32)
    m = rng.normal(size=(400, 12)).astype(np.float32)
    distance, index = nearest(as_t(q), as_t(m))
    expected, expected_index = brute(q, m)
    np.testing.assert_allclose(distance.numpy(), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(index.numpy(), expected_index)


def test_set_distances_fast_and_clip_scores(rng):
    """set_distances(knn='fast') per set, and the local clip scores built on it, against brute force."""
    sets = rng.normal(size=(7, 49, 10)).astype(np.float32)
    m = rng.normal(size=(300, 10)).astype(np.float32)
    ours = set_distances(as_t(sets), as_t(m), "exact", knn="fast", candidates=4).numpy()
    expected = brute(sets.reshape(-1, 10), m)[0].reshape(7, 49)
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-6)
    clips = local_clip_scores(as_t(sets), torch.tensor([0, 0, 1, 1, 1, 3, 3]), 4, as_t(m), 2, "exact", knn="fast")
    per_object = expected.max(1) ** 2
    np.testing.assert_allclose(clips.numpy(), [per_object[:2].max(), per_object[2:5].max(), 0, per_object[5:].max()],
                               rtol=1e-5)
    with pytest.raises(ValueError, match="knn"):
        set_distances(as_t(sets), as_t(m), "exact", knn="approximate")


def test_knn_params_validated():
    assert from_dict().scoring.knn == "exact" and from_dict().scoring.knn_candidates == 16
    assert from_dict({"arithmetic": "exact", "scoring": {"knn": "fast"}}).scoring.knn == "fast"
    with pytest.raises(ConfigError, match="'scoring.knn'.*one of"):
        from_dict({"arithmetic": "exact", "scoring": {"knn": "faiss"}})
    with pytest.raises(ConfigError, match="'scoring.knn'.*arithmetic: exact"):
        from_dict({"scoring": {"knn": "fast"}})                               # the reference arithmetic
    with pytest.raises(ConfigError, match="'scoring.knn_candidates'"):
        from_dict({"arithmetic": "exact", "scoring": {"knn": "fast", "knn_candidates": 0}})


# --- the tile search (`nearest_tiles`, the fused kernel's algorithm) -----------------------------

@pytest.mark.parametrize("dtype", RANKINGS)
@pytest.mark.parametrize("n_bank", [500, 64, 13])                               # ragged last tile; one tile; < 1 tile
def test_tiles_equal_brute_force(rng, dtype, n_bank):
    q = rng.normal(size=(120, 20)).astype(np.float32)
    m = rng.normal(size=(n_bank, 20)).astype(np.float32)
    distance, index = nearest_tiles(as_t(q), as_t(m), candidates=2, dtype=dtype, kernel=False)
    expected, expected_index = brute(q, m)
    np.testing.assert_allclose(distance.numpy(), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(index.numpy(), expected_index)


@pytest.mark.parametrize("dtype", RANKINGS)
def test_tiles_near_ties_duplicates_and_separated(rng, dtype):
    base = rng.normal(size=(300, 32)).astype(np.float32)
    m = np.concatenate([base, base[:100]])                                    # duplicates in other tiles
    a, b = base[:50], base[150:200]
    direction = (b - a) / np.linalg.norm(b - a, axis=1, keepdims=True)
    q = np.concatenate([base[:100] + 0.01, (a + b) / 2 - 1e-4 * direction]).astype(np.float32)
    distance, index = nearest_tiles(as_t(q), as_t(m), candidates=4, dtype=dtype, kernel=False)
    expected, expected_index = brute(q, m)
    np.testing.assert_allclose(distance.numpy(), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(index.numpy(), expected_index)


KERNEL_CHECK = """
import os, sys
os.environ["TRITON_INTERPRET"] = "1"
import numpy as np, torch
from vpclib import knn_kernel
rng = np.random.default_rng(0)
q = torch.as_tensor(rng.normal(size=(150, 40)), dtype=torch.float32)
m = torch.as_tensor(rng.normal(size=(300, 40)), dtype=torch.float32)     # D = 40: padded to 64; 5 tiles, ragged
sq = (m.double() ** 2).sum(1)
expected = (sq[None] - 2 * q.double() @ m.double().T)                     # float64 ranking scores
expected = torch.cat([expected, torch.full((150, 20), float("inf"), dtype=torch.float64)], 1).view(150, 5, 64).amin(2)
ours = knn_kernel.tile_minima(q, knn_kernel.pad_dims(m), sq.float())
print(float((ours.double() - expected).abs().max()))
"""


def test_triton_kernel_in_the_interpreter_equals_float64_tile_minima(tmp_path):
    """The Triton kernel itself, run by Triton's CPU interpreter (a subprocess: the interpreter is
    chosen at import), on float32 inputs, against float64 tile minima."""
    pytest.importorskip("triton")
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    env = {**__import__("os").environ, "PYTHONPATH": f"{root}:{__import__('os').environ.get('PYTHONPATH', '')}"}
    run = subprocess.run([sys.executable, "-c", KERNEL_CHECK], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert float(run.stdout.strip().splitlines()[-1]) < 1e-3                  # float32 sums of 40 products ~ 1e2


# --- on CUDA (skipped without it): bf16 on tensor cores, the Triton kernel ----------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("search", ["fast", "tiles", "exact"])
def test_cuda_searches_equal_brute_force(rng, search):
    """Clustered bank (near-twins: the bf16 ranking alone confuses them) of 20,000 x 64 and a
    high-level-like 3,000 x 1536; queries near bank vectors; float64 brute force on the host."""
    for n, d in ((20_000, 64), (3_000, 1536)):
        centres = rng.normal(size=(n // 10, d))
        m = (centres[rng.integers(0, len(centres), n)] + 0.05 * rng.normal(size=(n, d))).astype(np.float32)
        q = (m[rng.integers(0, n, 700)] + 0.05 * rng.normal(size=(700, d))).astype(np.float32)
        qq, mm = as_t(q).cuda(), as_t(m).cuda()
        if search == "fast":
            distance, index = nearest_fast(qq, mm, candidates=16)
        elif search == "tiles":
            from vpclib.knn_kernel import kernel_available
            assert kernel_available("cuda")
            distance, index = nearest_tiles(qq, mm, candidates=16)
        else:
            distance, index = nearest(qq, mm)
        expected, expected_index = brute(q, m)
        np.testing.assert_allclose(distance.cpu().numpy(), expected, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(index.cpu().numpy(), expected_index)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_triton_tile_minima_equal_torch_bf16():
    """The kernel's tile minima against torch's (the same bf16 inputs, float32 accumulation)."""
    from vpclib import knn_kernel
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1000, 72, device="cuda", generator=g)
    m = torch.randn(10_000, 72, device="cuda", generator=g)
    sq = (m * m).sum(1)
    low = m.bfloat16()
    ours = knn_kernel.tile_minima(q, knn_kernel.pad_dims(low), sq)
    theirs = knn_kernel.tile_minima_torch(q, low, sq)
    assert ours.shape == theirs.shape == (1000, -(-10_000 // knn_kernel.TILE))
    assert float((ours - theirs).abs().max()) < 1e-3 * float(theirs.abs().max())   # accumulation order only


def test_pipeline_scores_pass_scoring_knn_through(rng, monkeypatch):
    """`scoring.knn` and `scoring.knn_candidates` reach the search from the pipeline's scoring
    (pipeline.frame_table -> video_clip_scores -> scores.set_distances), and the clip scores are the
    float64 brute-force ones: max over a clip's objects of (max over its vectors of the nearest distance)^n."""
    from vpclib import pipeline, scores
    calls = []
    real = scores.fast_search

    def recording(device):
        search = real(device)
        def wrapped(q, m, candidates):
            calls.append(candidates)
            return search(q, m, candidates)
        return wrapped

    monkeypatch.setattr(scores, "fast_search", recording)
    cfg = from_dict({"arithmetic": "exact", "device": "cpu", "method": {"clip_length": 3, "power": 2},
                     "scoring": {"knn": "fast", "knn_candidates": 7}})
    d = 8
    memories = {s: rng.normal(size=(50, d)).astype(np.float32) for s in ("spatial", "temporal", "highlevel")}
    feats = {"spatial": rng.normal(size=(3, 5, d)).astype(np.float32),        # 3 objects, 5 vectors each
             "temporal_max": rng.normal(size=(3, 2, d)).astype(np.float32),
             "highlevel": rng.normal(size=(2, 3, d)).astype(np.float32),      # 2 clips of T = 3
             "object_clip": np.array([0, 0, 1]), "clip_start": np.array([0, 3])}
    table = pipeline.frame_table(cfg, {"v": feats}, memories)
    assert calls and set(calls) == {7}
    for stream, key in (("spatial", "spatial"), ("temporal", "temporal_max")):
        per_object = [brute(feats[key][k], memories[stream])[0].max() for k in range(3)]
        expected = np.repeat([max(per_object[0], per_object[1]), per_object[2]], 3) ** 2    # clip -> its T frames; n = 2
        np.testing.assert_allclose(table[stream], expected, rtol=1e-5)
    high = [brute(feats["highlevel"][b], memories["highlevel"])[0].max() for b in range(2)]
    np.testing.assert_allclose(table["highlevel"], np.repeat(high, 3) ** 2, rtol=1e-5)
