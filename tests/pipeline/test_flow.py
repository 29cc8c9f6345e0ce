"""Optical flow: the ops against OpenCV, TV-L1 on known motion, the public API's checks, warped flow."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from pipeline.decode import DecodeConfig, decode_video
from pipeline.flow import PRESETS, TVL1Config, compute_flow, dequantize, flow_to_color, quantize, tvl1_flow, write_flow_png
from pipeline.flow.flo import MIDDLEBURY_PAIRS, end_point_error, read_flo, write_flo
from pipeline.flow.ops import (
    divergence,
    forward_gradient,
    image_gradients,
    median_filter5,
    median_filter5_cv,
    resize_linear,
    threshold_step,
    warp_bicubic,
    warp_bicubic_cv,
)
from pipeline.synthetic import SyntheticConfig, render_video, write_video
from tests.conftest import shared_path

EAGER = {"compile": False}  # unit tests on small inputs run eagerly; one test checks the compiled path


def textured(h=96, w=128, seed=0) -> np.ndarray:
    """A smooth random texture, float32 0..255 (TV-L1 needs gradients everywhere)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (h // 6, w // 6)).astype(np.float32)
    img = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    img += cv2.resize(rng.uniform(-30, 30, (h // 2, w // 2)).astype(np.float32), (w, h))
    return np.clip(img, 0, 255)


def shift(img: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """out(x) = img(x - d): content moves by (+dx, +dy)."""
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(img, m, img.shape[::-1], flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)


def u8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# --- ops -------------------------------------------------------------------------------------------------


def test_image_gradients_on_a_ramp_match_opencv_borders():
    x = torch.arange(6.0).repeat(4, 1)[None, None] * 3  # d/dx = 3 everywhere, d/dy = 0
    dx, dy = image_gradients(x)
    assert torch.allclose(dx[..., 1:-1], torch.tensor(3.0))
    assert torch.allclose(dx[..., 0], torch.tensor(1.5)) and torch.allclose(dx[..., -1], torch.tensor(1.5))
    assert torch.count_nonzero(dy) == 0


def test_divergence_is_the_negative_adjoint_of_forward_gradient():
    """<grad u, p> = -<u, div p> for dual fields that vanish where the forward gradient does (as in TV-L1)."""
    g = torch.Generator().manual_seed(0)
    u, px, py = (torch.randn(2, 2, 7, 9, generator=g) for _ in range(3))
    px[..., -1], py[..., -1, :] = 0, 0
    gx, gy = forward_gradient(u)
    lhs = (gx * px + gy * py).sum()
    rhs = -(u * divergence(px, py)).sum()
    assert torch.allclose(lhs, rhs, atol=1e-4)


def test_median_filter_paths_equal_opencv():
    u = torch.randn(2, 2, 23, 31, generator=torch.Generator().manual_seed(1))
    expected = np.stack([[cv2.medianBlur(c.numpy(), 5) for c in pair] for pair in u])
    assert np.array_equal(median_filter5_cv(u).numpy(), expected)
    assert np.array_equal(median_filter5(u).numpy(), expected)


def test_warp_bicubic_matches_opencv_remap():
    img = textured(40, 50)
    rng = np.random.default_rng(2)
    flow = cv2.resize(rng.uniform(-4, 4, (5, 6, 2)).astype(np.float32), (50, 40))
    ys, xs = np.mgrid[0:40, 0:50].astype(np.float32)
    ref = cv2.remap(img, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT)
    args = torch.from_numpy(img)[None, None], torch.from_numpy(flow).permute(2, 0, 1)[None]
    assert np.array_equal(warp_bicubic_cv(*args)[0, 0].numpy(), ref)
    out = warp_bicubic(*args)[0, 0].numpy()
    assert np.abs(out - ref).mean() < 0.05
    assert np.abs(out - ref).max() < 1.0


def test_resize_linear_matches_opencv_resize():
    img = textured(97, 131)
    for scale in (0.8, 0.5, 0.9):
        ref = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        out = resize_linear(torch.from_numpy(img)[None, None], scale)[0, 0].numpy()
        assert out.shape == ref.shape
        assert np.abs(out - ref).max() < 0.02


def test_threshold_step_branches():
    grad = torch.tensor([[1.0, 0.0]]).view(1, 2, 1, 1).expand(3, 2, 1, 1).contiguous()
    u = torch.zeros(3, 2, 1, 1)
    rho_c = torch.tensor([-5.0, 5.0, 0.02]).view(3, 1, 1, 1)
    v = threshold_step(u, grad, rho_c, l_t=0.1)
    assert torch.allclose(v[:, 0, 0, 0], torch.tensor([0.1, -0.1, -0.02]))  # +l_t, -l_t, -rho/|grad|^2


# --- TV-L1 -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dx, dy", [(2.5, -1.5), (-4.0, 3.0)])
def test_translation_is_recovered(dx, dy):
    a = textured()
    flow = compute_flow(u8(a), u8(shift(a, dx, dy)), **EAGER)
    interior = flow[16:-16, 16:-16].reshape(-1, 2)
    assert np.allclose(np.median(interior, axis=0), [dx, dy], atol=0.1)
    assert np.percentile(np.linalg.norm(interior - [dx, dy], axis=1), 90) < 0.3


def test_identical_frames_give_zero_flow():
    a = u8(textured())
    flow = compute_flow(a, a, **EAGER)
    assert np.abs(flow).max() < 1e-3


def test_smooth_random_field_is_recovered():
    """A textured image warped by a known smooth field: mean end-point error under 0.25 px inside."""
    h, w = 96, 128
    img = textured(h, w, seed=4)
    rng = np.random.default_rng(5)
    field = cv2.resize(rng.uniform(-3, 3, (3, 4, 2)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    # nxt(x + f(x)) ~ prev(x): sample prev at x - f(x) (f is smooth, so this is the forward warp to first order)
    nxt = cv2.remap(img, xs - field[..., 0], ys - field[..., 1], cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    flow = compute_flow(u8(img), u8(nxt), **EAGER)
    epe = np.linalg.norm(flow - field, axis=-1)[12:-12, 12:-12]
    assert epe.mean() < 0.25


def test_batch_equals_single_pairs():
    frames = [u8(textured(seed=s)) for s in range(3)]
    nxts = [u8(shift(f.astype(np.float32), 1.0 + s, -0.5 * s)) for s, f in enumerate(frames)]
    batch = compute_flow(np.stack(frames), np.stack(nxts), **EAGER)
    assert batch.shape == (3, 96, 128, 2)
    for i in range(3):
        single = compute_flow(frames[i], nxts[i], **EAGER)
        assert np.abs(batch[i] - single).max() < 1e-3


def test_compiled_matches_eager_with_non_default_parameters():
    a = textured(64, 80)
    prev, nxt = u8(a), u8(shift(a, 1.5, 0.5))
    cfg = TVL1Config(lambda_=0.2, gamma=0.4, nscales=3, warps=2, compile=True)
    I0 = torch.from_numpy(np.stack([prev, prev])).float()[:, None] / 255
    I1 = torch.from_numpy(np.stack([nxt, prev])).float()[:, None] / 255
    eager = tvl1_flow(I0, I1, cfg.replace(compile=False))
    compiled = tvl1_flow(I0, I1, cfg)
    # float32 rounding differs between the fused kernel and eager ops; the flows agree to ~1e-3 px
    assert (eager - compiled).abs().max() < 5e-3 and (eager - compiled).abs().mean() < 1e-4
    assert (compiled[0].mean((1, 2)) - torch.tensor([1.5, 0.5])).abs().max() < 0.15


def test_compile_is_chosen_by_device_and_frame_size_unless_set():
    from pipeline.flow.tvl1 import use_compile

    auto = TVL1Config()
    assert not use_compile(auto, "cpu", 60, 80)  # small frames: eager beats the one-time compilation
    assert use_compile(auto, "cpu", 256, 340)
    assert use_compile(auto, "cuda", 60, 80)
    assert use_compile(auto.replace(compile=True), "cpu", 8, 8)
    assert not use_compile(auto.replace(compile=False), "cuda", 256, 340)


def test_convergence_check_interval_does_not_change_the_result():
    a = textured(64, 80)
    prev, nxt = u8(a), u8(shift(a, 2.0, 1.0))
    every = compute_flow(prev, nxt, check_every=1, **EAGER)
    sparse = compute_flow(prev, nxt, check_every=7, **EAGER)
    assert np.array_equal(every, sparse)  # a converged pair is frozen at the iteration it converged


def eight_shifted_pairs(h=96, w=128) -> tuple[torch.Tensor, torch.Tensor]:
    """8 pairs of one texture shifted by 0-2 px: they converge at different checks (as the issue measured)."""
    a = u8(textured(h, w))
    nxt = np.stack([u8(shift(a.astype(np.float32), i % 3, i // 3)) for i in range(8)])
    to_tensor = lambda x: torch.from_numpy(np.ascontiguousarray(x))[:, None].float() / 255  # noqa: E731
    return to_tensor(np.stack([a] * 8)), to_tensor(nxt)


def test_a_launch_reads_the_device_once_per_check_and_never_to_set_pairs_aside():
    from pipeline.flow.host_reads import HostReads
    from pipeline.flow.tvl1 import SolveTrace

    I0, I1 = eight_shifted_pairs()
    trace = SolveTrace()
    cfg = PRESETS["opencv"].replace(compile=False, check_every=10, opencv_cpu_ops=False)  # the code a GPU runs
    with torch.no_grad(), HostReads() as reads:  # not inference mode: there .item() escapes the count
        tvl1_flow(I0, I1, cfg, trace)
    assert trace.compactions > 0  # pairs were set aside
    assert dict(reads.by_op) == {"aten._local_scalar_dense.default": trace.reads}, reads.by_op  # no mask, no nonzero
    assert trace.reads <= trace.blocks and trace.reads <= 110  # the code before this change read 339-546 times


def test_async_checks_give_the_same_flow_as_reading_at_once():
    I0, I1 = eight_shifted_pairs(48, 64)
    cfg = PRESETS["opencv"].replace(compile=False, check_every=3, opencv_cpu_ops=False)
    at_once = tvl1_flow(I0, I1, cfg.replace(async_check=False))
    late = tvl1_flow(I0, I1, cfg.replace(async_check=True))  # what a GPU does: act on each check one block later
    assert torch.equal(at_once, late)


@pytest.mark.parametrize(("check_every", "blocks"), [(10, 30), (7, 50), (1, 300)])
def test_the_host_calls_once_per_block_of_iterations(check_every, blocks):
    """One warp of 10 x 30 iterations that never converges: one host call per `check_every` iterations (a
    new block at each outer iteration, which starts with the median filter)."""
    from pipeline.flow.tvl1 import SolveTrace

    I0, I1 = eight_shifted_pairs(16, 16)
    trace = SolveTrace()
    cfg = TVL1Config(compile=False, nscales=1, warps=1, epsilon=1e-12, check_every=check_every)
    tvl1_flow(I0, I1, cfg, trace)
    assert trace.iterations == [300] and trace.blocks == blocks and trace.reads == blocks


def block_args(n=2, h=8, w=8):
    u, grad_i, rho_c = torch.randn(n, 2, h, w), torch.randn(n, 2, h, w), torch.randn(n, 1, h, w)
    params = torch.tensor([0.045, 0.3, 0.833, 1e-4])
    return u, torch.zeros_like(u), torch.zeros_like(u), grad_i, rho_c, torch.ones(n, dtype=torch.bool), params


def test_only_a_compile_error_turns_the_kernels_eager():
    """Out of memory (or a lost device) while a compiled block runs is raised and the kernels stay compiled;
    a compile error (no C++ compiler) switches them to eager, which gives the block's result."""
    from torch._inductor.exc import CppCompileError

    from pipeline.flow.tvl1 import Kernels

    kernels = Kernels("cpu", compile=True, opencv_cpu_ops=False)
    key = ("block", 3, True)  # 3 iterations after the median filter

    def raise_(exc):
        def call(*args):
            raise exc

        return call

    kernels._compiled[key] = raise_(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    with pytest.raises(torch.OutOfMemoryError):
        kernels.block(*block_args(), iterations=3, filtered=True)
    kernels._compiled[key] = raise_(RuntimeError("CUDA error: an illegal memory access was encountered"))
    with pytest.raises(RuntimeError, match="illegal memory access"):
        kernels.block(*block_args(), iterations=3, filtered=True)
    assert kernels.compile

    kernels._compiled[key] = raise_(CppCompileError(["g++"], "g++: not found"))
    args = block_args()
    out = kernels.block(*args, iterations=3, filtered=True)
    assert not kernels.compile
    eager = Kernels("cpu", compile=False, opencv_cpu_ops=False).block(*args, iterations=3, filtered=True)
    assert all(torch.equal(a, b) for a, b in zip(out, eager))


def test_gpu_code_path_on_the_cpu_matches_the_opencv_ops():
    """The tensor remap and median (what runs on a GPU) give the flow OpenCV's own ops give on the CPU."""
    a = textured(64, 80)
    prev, nxt = u8(a), u8(shift(a, 2.5, -1.0))
    native = compute_flow(prev, nxt, **EAGER)
    portable = compute_flow(prev, nxt, opencv_cpu_ops=False, **EAGER)
    # The ops agree to 3e-4 gray levels; TV-L1's thresholding amplifies that into ~0.01 px, mostly at borders.
    assert np.abs(native - portable).mean() < 0.02
    assert np.allclose(np.median(native.reshape(-1, 2), 0), np.median(portable.reshape(-1, 2), 0), atol=1e-3)


def test_tiny_and_odd_sizes_work():
    rng = np.random.default_rng(0)
    for h, w in [(2, 2), (5, 7), (17, 15)]:
        a = rng.integers(0, 255, (h, w), dtype=np.uint8)
        assert compute_flow(a, a, **EAGER).shape == (h, w, 2)


# --- the public API --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prev, nxt, message",
    [
        (np.zeros((4, 5, 6, 7), np.uint8), np.zeros((4, 5, 6, 7), np.uint8), "must be \\(H, W\\) or \\(N, H, W\\)"),
        (np.zeros((8, 8), np.float32), np.zeros((8, 8), np.float32), "must be uint8"),
        (np.zeros((8, 8), np.uint8), np.zeros((8, 9), np.uint8), "sizes differ"),
        (np.zeros((0, 8, 8), np.uint8), np.zeros((0, 8, 8), np.uint8), "is empty"),
        (np.zeros((8, 1), np.uint8), np.zeros((8, 1), np.uint8), "at least 2x2"),
        (torch.full((8, 8), float("nan")), torch.zeros(8, 8), "contains NaN"),
        (np.zeros((8, 8), np.uint8), torch.zeros(8, 8, dtype=torch.uint8), "must both be numpy arrays or both torch tensors"),
        ([[0, 1], [2, 3]], [[0, 1], [2, 3]], "must both be numpy arrays or both torch tensors"),
    ],
)
def test_bad_inputs_raise_value_error(prev, nxt, message):
    with pytest.raises(ValueError, match=message):
        compute_flow(prev, nxt)


def test_bad_names_raise_value_error():
    a = np.zeros((8, 8), np.uint8)
    with pytest.raises(ValueError, match="unknown flow algorithm"):
        compute_flow(a, a, algorithm="farneback")
    with pytest.raises(ValueError, match="unknown flow algorithm.*none given"):
        compute_flow(a, a, algorithm=())
    with pytest.raises(ValueError, match="return_homographies needs algorithm='warp_tvl1'"):
        compute_flow(a, a, return_homographies=True)
    with pytest.raises(ValueError, match="unknown flow preset"):
        compute_flow(a, a, preset="fast")
    with pytest.raises(ValueError, match="unknown flow parameter\\(s\\) lamda"):
        compute_flow(a, a, lamda=0.1)
    with pytest.raises(ValueError, match="must be positive"):
        compute_flow(a, a, tau=-1)


def test_lambda_spelled_without_underscore_is_accepted():
    a = textured(48, 64)
    prev, nxt = u8(a), u8(shift(a, 1.0, 0.0))
    spelled = compute_flow(prev, nxt, **{"lambda": 0.5}, **EAGER)
    assert np.array_equal(spelled, compute_flow(prev, nxt, lambda_=0.5, **EAGER))
    assert not np.allclose(spelled, compute_flow(prev, nxt, lambda_=0.02, **EAGER))  # and lambda takes effect


def test_tensors_in_tensors_out():
    a = u8(textured(48, 64))
    b = u8(shift(a.astype(np.float32), 1.0, 0.0))
    out = compute_flow(torch.from_numpy(a), torch.from_numpy(b), **EAGER)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (48, 64, 2)
    assert np.allclose(out.numpy(), compute_flow(a, b, **EAGER))
    out_f = compute_flow(torch.from_numpy(a).float(), torch.from_numpy(b).float(), **EAGER)
    assert torch.allclose(out, out_f)


def test_default_device_is_cuda_when_present():
    from pipeline.flow import default_device

    assert default_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    a = textured()
    prev, nxt = u8(a), u8(shift(a, 2.0, -1.0))
    cpu = compute_flow(prev, nxt, device="cpu", **EAGER)
    gpu = compute_flow(prev, nxt, device="cuda")
    assert np.abs(cpu - gpu).mean() < 0.01


# --- 8-bit flow images and pictures ----------------------------------------------------------------------


def test_quantize_round_trip_and_convention():
    bound = 20.0
    rng = np.random.default_rng(0)
    flow = rng.uniform(-25, 25, (32, 32, 2)).astype(np.float32)
    x, y = quantize(flow, bound)
    assert x.dtype == np.uint8 and x.shape == (32, 32)
    back = dequantize(x, y, bound)
    inside = np.abs(flow) <= bound
    assert np.abs(back - flow)[inside].max() <= bound / 255 + 1e-5  # half a quantization step
    assert np.all(back[~inside] == np.sign(flow[~inside]) * bound)  # saturates at +-B
    zx, zy = quantize(np.zeros((1, 1, 2)), bound)
    assert zx[0, 0] == zy[0, 0] == 128  # round(127.5) with round-half-even, as OpenCV's saturate_cast


def test_color_wheel_picture(tmp_path):
    flow = np.zeros((10, 40, 2), np.float32)
    flow[:, 10:20, 0] = 5  # right
    flow[:, 20:30, 1] = 5  # down
    rgb = flow_to_color(flow)
    assert tuple(rgb[0, 0]) == (255, 255, 255)  # no motion is white
    right, down = rgb[5, 15].astype(int), rgb[5, 25].astype(int)
    assert right[0] > 200 and right[1] < 60  # rightward is red in the Middlebury wheel
    assert np.abs(right - down).sum() > 150
    path = write_flow_png(tmp_path / "f.png", flow)
    assert cv2.imread(str(path)).shape == (10, 40, 3)


# --- warped flow -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def panning_video(tmp_path_factory):
    """A `jobs.make_synthetic --camera-pan 2` video, through H.264 and back, with its ground truth."""
    cfg = SyntheticConfig(classes=4, camera_pan=2.0, frames=4)
    video = render_video(cfg, 1, 100, 200)  # objects move down at ~2 px/frame, the camera pans 2 px/frame
    path = tmp_path_factory.mktemp("pan") / "pan.mp4"
    write_video(path, video.frames, cfg.fps)
    decoded = decode_video(str(path), DecodeConfig(short_side=None)).frames
    gray = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in decoded[:3]])
    return video, gray


def test_warped_flow_removes_camera_pan_and_keeps_object_motion(panning_video):
    video, gray = panning_video
    plain = compute_flow(gray[:-1], gray[1:], "tvl1")
    warped, homographies = compute_flow(gray[:-1], gray[1:], "warp_tvl1", return_homographies=True)
    for i, h in enumerate(homographies):
        assert h.found and h.inliers > 100
        assert np.allclose(h.matrix[:2, 2], video.background_velocity, atol=0.2)
        background = ~(video.object_mask[i] | video.object_mask[i + 1])
        background[:, -6:] = background[:, :6] = False  # the strip entering / leaving the view
        assert np.median(np.linalg.norm(plain[i][background], axis=-1)) > 1.5  # plain flow shows the pan
        assert np.median(np.linalg.norm(warped[i][background], axis=-1)) <= 0.3
        objects = video.object_mask[i] & video.object_mask[i + 1]
        own = np.median(warped[i][objects], axis=0)
        true = np.array(video.object_velocity)
        assert np.linalg.norm(own - true) <= 0.2 * np.linalg.norm(true)


def test_several_algorithms_at_once_equal_each_alone(panning_video):
    _, gray = panning_video
    both, homographies = compute_flow(gray[:-1], gray[1:], ("tvl1", "warp_tvl1"), return_homographies=True, **EAGER)
    assert sorted(both) == ["tvl1", "warp_tvl1"] and len(homographies) == len(gray) - 1
    assert np.array_equal(both["tvl1"], compute_flow(gray[:-1], gray[1:], "tvl1", **EAGER))
    assert np.array_equal(both["warp_tvl1"], compute_flow(gray[:-1], gray[1:], "warp_tvl1", **EAGER))
    assert list(compute_flow(gray[:-1], gray[1:], ["warp_tvl1"], **EAGER)) == ["warp_tvl1"]


def test_featureless_frames_fall_back_to_identity():
    flat = np.full((2, 48, 64), 120, np.uint8)
    flow, homographies = compute_flow(flat[:1], flat[1:], "warp_tvl1", return_homographies=True, **EAGER)
    assert not homographies[0].found and np.array_equal(homographies[0].matrix, np.eye(3))
    assert np.abs(flow).max() < 1e-3


# --- Middlebury ------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("sequence", list(MIDDLEBURY_PAIRS))
def test_middlebury_opencv_preset_within_5_percent_of_opencv(sequence):
    root = shared_path("middlebury", sequence)
    a, b, f = MIDDLEBURY_PAIRS[sequence]
    prev, nxt = cv2.imread(str(root / a), cv2.IMREAD_GRAYSCALE), cv2.imread(str(root / b), cv2.IMREAD_GRAYSCALE)
    gt = read_flo(root / f)
    reference = end_point_error(cv2.optflow.DualTVL1OpticalFlow_create().calc(prev, nxt, None), gt)
    ours = end_point_error(compute_flow(prev, nxt, preset="opencv", device="cpu"), gt)
    assert ours <= 1.05 * reference, f"{sequence}: {ours:.3f} vs OpenCV {reference:.3f}"


def test_flo_round_trip_and_bad_file(tmp_path):
    flow = np.random.default_rng(0).normal(size=(5, 7, 2)).astype(np.float32)
    write_flo(tmp_path / "a.flo", flow)
    assert np.array_equal(read_flo(tmp_path / "a.flo"), flow)
    truth = flow.copy()
    truth[0, 0] = 1e10  # unknown
    assert end_point_error(flow + [3, 4], truth) == pytest.approx(5.0)
    (tmp_path / "b.flo").write_bytes(b"JUNK" + bytes(8))
    with pytest.raises(ValueError, match="not a Middlebury .flo file"):
        read_flo(tmp_path / "b.flo")


def test_presets_are_documented_configs():
    assert PRESETS["opencv"] == TVL1Config()
    assert PRESETS["accurate"].nscales is None
