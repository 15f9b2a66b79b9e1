"""The Kalman filter and RTS smoother against a hand-worked case and the batch least-squares solution."""

from __future__ import annotations

import math

import pytest
import torch

from pose_toss.tracking import (
    OnlineSmoother,
    constant_velocity,
    fit_noise,
    fit_process_noise,
    kalman_filter,
    rts_smoother,
)


def test_one_coordinate_by_hand():
    """Prior N(0, 4 I) on [position, velocity], y0 = 2 with variance 1: the update gives position 0.8 x 2 =
    1.6 with variance 0.8, velocity untouched; the prediction to frame 1 with q = 0.5 is F P F^T + Q."""
    run = kalman_filter(torch.tensor([[2.0], [5.0]]), torch.ones(2, 1, 1), q=0.5, init_var=4.0)
    torch.testing.assert_close(run["x"][0, 0], torch.tensor([1.6, 0.0], dtype=torch.float64))
    torch.testing.assert_close(run["p"][0, 0], torch.tensor([[0.8, 0.0], [0.0, 4.0]], dtype=torch.float64))
    expected = torch.tensor([[4.8 + 1 / 6, 4.0 + 0.25], [4.0 + 0.25, 4.0 + 0.5]], dtype=torch.float64)
    torch.testing.assert_close(run["p_pred"][0, 1], expected)
    first = -0.5 * (4 / 5 + math.log(5) + math.log(2 * math.pi))  # innovation 2, variance 4 + 1
    p1 = expected[0, 0].item() + 1.0
    second = -0.5 * ((5.0 - 1.6) ** 2 / p1 + math.log(p1) + math.log(2 * math.pi))
    assert float(run["loglik"][0]) == pytest.approx(first + second)
    # The measurement covariance's scale alpha: the same case with R = 2 x 0.5.
    scaled = kalman_filter(torch.tensor([[2.0], [5.0]]), 0.5 * torch.ones(2, 1, 1), q=0.5, alpha=2.0, init_var=4.0)
    torch.testing.assert_close(scaled["x"], run["x"]) and torch.testing.assert_close(scaled["loglik"], run["loglik"])


def test_rts_smoother_equals_the_batch_least_squares_solution():
    """On a linear-Gaussian sequence with full, correlated measurement covariances and unobserved
    coordinates, the smoothed means and covariances are those of the whole posterior, solved at once."""
    g = torch.Generator().manual_seed(0)
    t_len, d, q, init_var = 6, 4, 0.7, 50.0
    a = torch.randn(t_len, d, d, generator=g, dtype=torch.float64)
    covs = a @ a.transpose(1, 2) + 0.5 * torch.eye(d, dtype=torch.float64)
    means = torch.randn(t_len, d, generator=g, dtype=torch.float64) * 3
    observed = torch.rand(t_len, d, generator=g) > 0.3
    observed[2] = False  # a frame that sees nothing
    means = torch.where(observed, means, float("nan"))  # what an unobserved coordinate holds must not matter
    smoothed, smoothed_cov = rts_smoother(means, covs, observed, q, init_var=init_var)
    # Normal equations of the posterior over all states x_0 .. x_{T-1} (2D each).
    f, q_mat = constant_velocity(d, q)
    h = torch.cat([torch.eye(d, dtype=torch.float64), torch.zeros(d, d, dtype=torch.float64)], 1)
    n = 2 * d
    big = torch.zeros(t_len * n, t_len * n, dtype=torch.float64)
    rhs = torch.zeros(t_len * n, dtype=torch.float64)
    big[:n, :n] += torch.eye(n, dtype=torch.float64) / init_var
    q_inv = torch.linalg.inv(q_mat)
    for t in range(t_len):
        idx = observed[t].nonzero().flatten()
        if len(idx):
            h_o = h[idx]
            w = torch.linalg.inv(covs[t][idx][:, idx])
            big[t * n:(t + 1) * n, t * n:(t + 1) * n] += h_o.T @ w @ h_o
            rhs[t * n:(t + 1) * n] += h_o.T @ w @ means[t][idx]
        if t + 1 < t_len:
            a_t = torch.cat([-f, torch.eye(n, dtype=torch.float64)], 1)  # x_{t+1} - F x_t
            big[t * n:(t + 2) * n, t * n:(t + 2) * n] += a_t.T @ q_inv @ a_t
    solution = torch.linalg.solve(big, rhs).reshape(t_len, n)
    posterior = torch.linalg.inv(big)
    torch.testing.assert_close(smoothed, solution[:, :d], rtol=1e-7, atol=1e-7)
    for t in range(t_len):
        torch.testing.assert_close(smoothed_cov[t], posterior[t * n:t * n + d, t * n:t * n + d], rtol=1e-6, atol=1e-7)


def test_process_noise_is_read_off_the_sequence():
    g = torch.Generator().manual_seed(1)
    t_len, d, q_true = 300, 2, 2.0
    truth = motion(t_len, d, q_true, g)
    covs = torch.eye(d, dtype=torch.float64).expand(t_len, d, d) * 4.0
    means = truth + 2.0 * torch.randn(t_len, d, generator=g, dtype=torch.float64)
    q = fit_process_noise(means, covs)
    assert q_true / 3 < q < q_true * 3
    smoothed, _ = rts_smoother(means, covs, q=q)
    assert (smoothed - truth).norm(dim=1).mean() < 0.7 * (means - truth).norm(dim=1).mean()


def test_smooth_command_over_tracks(tmp_path, capsys):
    import json

    from pose_toss.cli import main

    g = torch.Generator().manual_seed(2)
    results = []
    for track, start in ((7, 10.0), (8, 50.0)):
        for frame in range(12):
            xy = torch.tensor([start + frame, 20.0, start + frame + 5, 30.0]) + torch.randn(4, generator=g)
            kps = [float(xy[0]), float(xy[1]), 0.9, float(xy[2]), float(xy[3]), 0.8]
            if frame == 5:
                kps[3:5] = [None, None]  # an unobserved joint
            results.append({"image_id": 100 - frame, "frame": frame, "track_id": track, "category_id": 1,
                            "keypoints": kps, "score": 0.8, "covariance": (torch.eye(4) * 1.0).tolist()})
    src, out = tmp_path / "preds.json", tmp_path / "smooth.json"
    src.write_text(json.dumps(results[::-1]))  # any order: frames are sorted per track
    assert main(["smooth", "--predictions", str(src), "--out", str(out)]) == 2
    assert "results with 2 joints have no default OKS sigmas" in capsys.readouterr().err
    assert main(["smooth", "--predictions", str(src), "--out", str(out), "--sigmas", "0.05,0.07"]) == 0
    assert "smoothed 24 people over 2 tracks" in capsys.readouterr().out
    smoothed = json.loads(out.read_text())
    assert len(smoothed) == 24 and all(r["process_noise"] > 0 and r["measurement_scale"] > 0 for r in smoothed)
    gap = next(r for r in smoothed if r["track_id"] == 8 and r["frame"] == 5)
    assert 50 + 5 + 5 - 3 < gap["keypoints"][3] < 50 + 5 + 5 + 3  # the unobserved joint, filled from its track
    assert 0 < gap["keypoints"][2] <= 1 and gap["keypoints"][2] != 0.9  # rescored from the smoothed covariance
    assert main(["smooth", "--predictions", str(src), "--out", str(src), "--overwrite"]) == 2
    assert "is the input" in capsys.readouterr().err
    bad = [dict(results[0]), dict(results[1], frame=0)]
    src.write_text(json.dumps(bad))
    assert main(["smooth", "--predictions", str(src), "--out", str(tmp_path / "x.json")]) == 2
    assert "track 7 has several people in one frame" in capsys.readouterr().err


@pytest.mark.slow
def test_visualize_smooths_a_folder_of_frames(tmp_path, capsys):
    import json

    import cv2
    import numpy as np

    from pose_toss import build_pose_model, save_model
    from pose_toss.cli import main
    from pose_toss.data.video import synthetic_sequence

    frames = synthetic_sequence(10, 64, seed=3)
    folder = tmp_path / "frames"
    folder.mkdir()
    for f in frames:
        cv2.imwrite(str(folder / f"frame_{f['frame']:03d}.png"), f["image"][..., ::-1])
    torch.manual_seed(0)
    model = build_pose_model("resnet10t", num_joints=14, embed_dim=8, input_size=64, deconv_channels=16,
                             cov_hidden=16, covariance="diagonal")
    ckpt = save_model(model, tmp_path / "m.safetensors")
    assert main(["visualize", "--checkpoint", str(ckpt), "--images", str(folder), "--out", str(tmp_path / "raw")]) == 0
    assert main(["visualize", "--checkpoint", str(ckpt), "--images", str(folder), "--out", str(tmp_path / "smooth"),
                 "--smooth"]) == 0
    assert "smoothed over 10 frames" in capsys.readouterr().out
    raw, smooth = (json.loads((tmp_path / d / "predictions.json").read_text()) for d in ("raw", "smooth"))
    assert [r["file_name"] for r in smooth] == [f"frame_{t:03d}.png" for t in range(10)]
    assert all(r["process_noise"] > 0 and r["frame"] == t for t, r in enumerate(smooth))

    def jitter(results):
        xy = np.array([np.asarray(r["keypoints"]).reshape(-1, 3)[:, :2] for r in results])
        return np.linalg.norm(xy[2:] - 2 * xy[1:-1] + xy[:-2], axis=-1).mean()

    assert jitter(smooth) < jitter(raw)
    assert len(list((tmp_path / "smooth").glob("frame_*.png"))) == 10
    (folder / "frame_000.png").unlink()
    boxes = tmp_path / "boxes.json"  # two people in one frame: not one track
    boxes.write_text(json.dumps([{"file_name": "frame_001.png", "bbox": [0, 0, 30, 60]},
                                 {"file_name": "frame_001.png", "bbox": [20, 0, 30, 60]}]))
    assert main(["visualize", "--checkpoint", str(ckpt), "--images", str(folder), "--boxes", str(boxes), "--smooth",
                 "--out", str(tmp_path / "two")]) == 2
    assert "give at most one box per image" in capsys.readouterr().err
    frame = cv2.imread(str(folder / "frame_002.png"))
    cv2.imwrite(str(folder / "frame_002.png"), cv2.resize(frame, (frame.shape[1] * 2, frame.shape[0])))
    assert main(["visualize", "--checkpoint", str(ckpt), "--images", str(folder), "--smooth",
                 "--out", str(tmp_path / "sizes")]) == 2
    assert "--smooth: the frames are not one video: " in capsys.readouterr().err


def motion(t_len: int, d: int, q: float, g: torch.Generator) -> torch.Tensor:
    """T x d positions of constant-velocity motion driven by white acceleration of variance q."""
    f, q_mat = constant_velocity(d, q)
    chol = torch.linalg.cholesky(q_mat)
    x = torch.zeros(2 * d, dtype=torch.float64)
    truth = []
    for _ in range(t_len):
        x = f @ x + chol @ torch.randn(2 * d, generator=g, dtype=torch.float64)
        truth.append(x[:d].clone())
    return torch.stack(truth)


def simulate(t_len: int, d: int, q: float, alpha: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Constant-velocity motion with white acceleration of variance q, measured with noise alpha R_t for full,
    correlated, frame-varying R_t: (truth, measurements, R)."""
    g = torch.Generator().manual_seed(seed)
    truth = motion(t_len, d, q, g)
    a = torch.randn(t_len, d, d, generator=g, dtype=torch.float64) * 0.5
    covs = a @ a.transpose(1, 2) + torch.eye(d, dtype=torch.float64)
    noise = torch.linalg.cholesky(alpha * covs) @ torch.randn(t_len, d, 1, generator=g, dtype=torch.float64)
    return truth, truth + noise.squeeze(-1), covs


@pytest.mark.parametrize("alpha, q", [(0.1, 0.05), (1.0, 2.0), (4.0, 0.5)])
def test_alpha_and_q_are_recovered_within_2x(alpha, q):
    """Sequences simulated with a known scale of the measurement covariance and a known process noise: the
    innovation likelihood finds both, within a factor of 2, from the measurements alone."""
    for seed in range(2):
        _, means, covs = simulate(120, 6, q, alpha, seed)
        fit = fit_noise(means, covs)
        assert alpha / 2 < fit.alpha < alpha * 2, (seed, fit)
        assert q / 2 < fit.q < q * 2, (seed, fit)
        # The grid's best is the likelihood's maximum: no nearby point is better.
        for da, dq in ((1.1, 1.0), (0.9, 1.0), (1.0, 1.1), (1.0, 0.9)):
            other = kalman_filter(means, covs, q=fit.q * dq, alpha=fit.alpha * da, keep_states=False)["loglik"]
            assert float(other[0]) <= fit.loglik + 1e-6


def test_the_online_filter_is_the_offline_forward_pass_bit_for_bit():
    _, means, covs = simulate(40, 4, 0.3, 0.5, seed=4)
    observed = torch.rand(40, 4, generator=torch.Generator().manual_seed(1)) > 0.2
    observed[7] = False  # a frame that sees nothing
    means = torch.where(observed, means, float("nan"))
    offline = kalman_filter(means, covs, observed, q=0.3, alpha=0.5)
    online = OnlineSmoother(4, alpha=0.5, q=0.3)
    for t in range(40):
        (frame, x, p), = online.step(means[t], covs[t], observed[t])
        assert frame == t
        assert torch.equal(x, offline["x"][0, t, :4]) and torch.equal(p, offline["p"][0, t, :4, :4])


def test_a_long_lag_is_the_rts_smoother_and_a_short_one_sits_between():
    truth, means, covs = simulate(30, 4, 0.3, 0.5, seed=5)
    smoothed, smoothed_cov = rts_smoother(means, covs, q=0.3, alpha=0.5)
    long = OnlineSmoother(4, alpha=0.5, q=0.3, lag=30)
    assert all(long.step(means[t], covs[t]) == [] for t in range(30))
    held = long.flush()
    assert [f for f, _, _ in held] == list(range(30))
    assert torch.equal(torch.stack([x for _, x, _ in held]), smoothed)
    assert torch.equal(torch.stack([p for _, _, p in held]), smoothed_cov)
    # Lag 3: every frame given out three frames later, then the last three at the flush; each estimate is the
    # RTS smoother's over the frames up to t.
    short = OnlineSmoother(4, alpha=0.5, q=0.3, lag=3)
    out = [e for t in range(30) for e in short.step(means[t], covs[t])] + short.flush()
    assert [f for f, _, _ in out] == list(range(30))
    upto = rts_smoother(means[:13], covs[:13], q=0.3, alpha=0.5)[0]
    torch.testing.assert_close(out[9][1], upto[9], rtol=1e-12, atol=1e-12)
    filtered = kalman_filter(means, covs, q=0.3, alpha=0.5)["x"][0, :, :4]

    def error(x):
        return float((x - truth).norm(dim=1).mean())

    lagged = torch.stack([x for _, x, _ in out])
    assert error(smoothed) <= error(lagged) <= error(filtered)


def test_smoothed_scores_are_the_expected_keypoint_similarity_of_the_smoothed_covariance():
    import numpy as np

    from pose_toss.metrics import expected_keypoint_similarity
    from pose_toss.skeletons import LSP14
    from pose_toss.tracking import smooth_results

    truth, means, covs = simulate(20, 28, 0.5, 0.3, seed=6)
    results = [{"image_id": t, "frame": t, "category_id": 1, "area": 2500.0, "score": 0.5,
                "keypoints": [v for xy in means[t].reshape(-1, 2).tolist() for v in (*xy, 0.5)],
                "covariance": covs[t].tolist()} for t in range(20)]
    out = smooth_results(results)
    for r in out:
        cov = torch.tensor(r["covariance"], dtype=torch.float64)
        eks = expected_keypoint_similarity(cov[None], torch.tensor([2500.0], dtype=torch.float64),
                                           torch.from_numpy(LSP14.oks_sigmas))[0]
        scores = torch.tensor(r["keypoints"], dtype=torch.float64).reshape(-1, 3)[:, 2]
        torch.testing.assert_close(scores, eks, atol=1e-4, rtol=0)
        assert r["score"] == pytest.approx(float(eks.mean()), abs=1e-5)
    assert np.mean([r["score"] for r in out]) > 0.5  # a smoothed covariance is tighter: the scores rise
    assert all(r["measurement_scale"] == out[0]["measurement_scale"] for r in out)


def test_online_smoothing_of_results_is_the_online_smoother_with_its_warm_up_fit():
    from pose_toss.tracking import COVARIANCE_FLOOR, smooth_results

    _, means, covs = simulate(25, 28, 0.5, 0.3, seed=7)
    results = [{"image_id": t, "frame": t, "track_id": 4, "area": 2500.0, "keypoints": [
        v for xy in means[t].reshape(-1, 2).tolist() for v in (*xy, 0.5)], "covariance": covs[t].tolist()}
        for t in range(25)]
    out = smooth_results(results, online_lag=2, warmup=10)
    covs = covs + COVARIANCE_FLOOR * torch.eye(28, dtype=torch.float64)  # what smooth_results measures with
    fit = fit_noise(means[:10], covs[:10])  # the fit sees the warm-up frames only
    smoother = OnlineSmoother(28, fit.alpha, fit.q, lag=2)
    expected = [e for t in range(25) for e in smoother.step(means[t], covs[t])] + smoother.flush()
    for r, (frame, x, _) in zip(out, expected, strict=True):
        assert r["frame"] == frame and r["measurement_scale"] == fit.alpha and r["process_noise"] == fit.q
        got = torch.tensor(r["keypoints"], dtype=torch.float64).reshape(-1, 3)[:, :2].reshape(-1)
        torch.testing.assert_close(got, x, atol=1e-4, rtol=0)  # results keep 4 decimals


def test_box_iou_by_hand_and_tracks_that_keep_their_identity():
    import numpy as np

    from pose_toss.tracking import PeopleTracker, box_iou

    # [0, 0, 2, 2] and [1, 1, 2, 2] overlap in a 1 x 1 square: 1 / (4 + 4 - 1); disjoint boxes: 0.
    np.testing.assert_allclose(box_iou([[0, 0, 2, 2]], [[1, 1, 2, 2], [5, 5, 1, 1], [0, 0, 2, 2]]),
                               [[1 / 7, 0.0, 1.0]])
    tracker = PeopleTracker(min_iou=0.3, max_age=1)
    a, b = np.array([0.0, 0.0, 10.0, 20.0]), np.array([30.0, 0.0, 10.0, 20.0])
    assert tracker.update(np.stack([a, b])) == [0, 1]
    assert tracker.update(np.stack([b + [2, 0, 0, 0], a + [1, 0, 0, 0]])) == [1, 0]  # order does not matter
    assert tracker.update(np.stack([a + [60, 0, 0, 0]])) == [2]  # no overlap: a new track
    tracker.update(np.zeros((0, 4)))
    tracker.update(np.zeros((0, 4)))
    assert tracker.update(np.stack([a])) == [3]  # track 0 unseen for more than max_age frames: ended


def test_the_covariance_gate_refuses_a_pose_that_jumped():
    import numpy as np
    from scipy.stats import chi2

    from pose_toss.tracking import PeopleTracker

    box = np.array([[0.0, 0.0, 10.0, 20.0]])
    cov = np.eye(4)[None]
    pose = np.zeros((1, 4))
    limit = chi2.ppf(0.99, 4)  # the squared Mahalanobis distance under the summed covariance 2 I
    near, far = np.full((1, 4), np.sqrt(2 * 0.9 * limit / 4)), np.full((1, 4), np.sqrt(2 * 1.1 * limit / 4))
    for moved, same in ((near, True), (far, False)):
        tracker = PeopleTracker(gate=0.99)
        tracker.update(box, pose, cov)
        assert (tracker.update(box, moved, cov) == [0]) == same


def _results(means: torch.Tensor, covs: torch.Tensor) -> list[dict]:
    return [{"image_id": t, "frame": t, "area": 2500.0, "covariance": covs[t].tolist(),
             "keypoints": [v for xy in means[t].reshape(-1, 2).tolist() for v in (*xy, 0.5)]}
            for t in range(len(means))]


def test_one_wild_keypoint_is_left_out_not_followed():
    from pose_toss.tracking import smooth_results

    _, means, covs = simulate(30, 28, 0.5, 0.3, seed=8)
    clean = smooth_results(_results(means, covs))
    assert not any("outlier_joints" in r for r in clean)  # real motion is never an outlier
    wild, missing = _results(means, covs), _results(means, covs)
    wild[3]["keypoints"][3] = 1e6  # joint 1's x in frame 3: a bad detection, its covariance unchanged
    missing[3]["keypoints"][3] = missing[3]["keypoints"][4] = None  # the joint left out: both coordinates
    out, reference = smooth_results(wild), smooth_results(missing)
    assert out[3]["outlier_joints"] == [1]
    for a, b in zip(out, reference, strict=True):  # exactly as if that coordinate had not been measured
        assert a["keypoints"] == b["keypoints"] and a["process_noise"] == b["process_noise"]


@pytest.mark.parametrize("change, message", [
    (lambda r: r[2].update(covariance=(-torch.eye(28)).tolist()), "not positive semi-definite"),
    (lambda r: r[2].update(covariance=(torch.eye(28) + torch.triu(torch.ones(28, 28), 1)).tolist()), "not symmetric"),
    (lambda r: r[2].update(keypoints=r[2]["keypoints"][:-1]), "must be a list of 3J numbers"),
    (lambda r: r[2].update(frame="2"), "mixes numbers and strings"),
    (lambda r: r[2].update(keypoints=["a"] * 42), "must hold numbers"),
])
def test_bad_results_are_named(change, message):
    from pose_toss.tracking import smooth_results

    _, means, covs = simulate(6, 28, 0.5, 0.3, seed=9)
    results = _results(means, covs)
    change(results)
    with pytest.raises(ValueError, match=message) as caught:
        smooth_results(results, source="p.json")
    assert str(caught.value).startswith("p.json: ")


def test_a_tiny_covariance_is_floored_not_fatal():
    from pose_toss.tracking import smooth_results

    _, means, covs = simulate(8, 28, 0.5, 0.3, seed=10)
    out = smooth_results(_results(means, 1e-30 * torch.eye(28).expand(8, 28, 28)))
    assert all(math.isfinite(v) for r in out for v in r["keypoints"])
