"""The Kalman filter and RTS smoother against a hand-worked case and the batch least-squares solution."""

from __future__ import annotations

import math

import pytest
import torch

from pose_toss.tracking import constant_velocity, fit_process_noise, kalman_filter, rts_smoother


def test_one_coordinate_by_hand():
    """Prior N(0, 4 I) on [position, velocity], y0 = 2 with variance 1: the update gives position 0.8 x 2 =
    1.6 with variance 0.8, velocity untouched; the prediction to frame 1 with q = 0.5 is F P F^T + Q."""
    run = kalman_filter(torch.tensor([[2.0], [5.0]]), torch.ones(2, 1, 1), q=0.5, init_var=4.0)
    torch.testing.assert_close(run["x"][0], torch.tensor([1.6, 0.0], dtype=torch.float64))
    torch.testing.assert_close(run["p"][0], torch.tensor([[0.8, 0.0], [0.0, 4.0]], dtype=torch.float64))
    expected = torch.tensor([[4.8 + 1 / 6, 4.0 + 0.25], [4.0 + 0.25, 4.0 + 0.5]], dtype=torch.float64)
    torch.testing.assert_close(run["p_pred"][1], expected)
    first = -0.5 * (4 / 5 + math.log(5) + math.log(2 * math.pi))  # innovation 2, variance 4 + 1
    p1 = expected[0, 0].item() + 1.0
    second = -0.5 * ((5.0 - 1.6) ** 2 / p1 + math.log(p1) + math.log(2 * math.pi))
    assert run["loglik"] == pytest.approx(first + second)


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
    smoothed, smoothed_cov = rts_smoother(means, covs, observed, q, init_var)
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
    f, q_mat = constant_velocity(d, q_true)
    chol = torch.linalg.cholesky(q_mat)
    x = torch.zeros(2 * d, dtype=torch.float64)
    truth = []
    for _ in range(t_len):
        x = f @ x + chol @ torch.randn(2 * d, generator=g, dtype=torch.float64)
        truth.append(x[:d].clone())
    covs = torch.eye(d, dtype=torch.float64).expand(t_len, d, d) * 4.0
    means = torch.stack(truth) + 2.0 * torch.randn(t_len, d, generator=g, dtype=torch.float64)
    q = fit_process_noise(means, covs)
    assert q_true / 3 < q < q_true * 3
    smoothed, _ = rts_smoother(means, covs, q=q)
    truth = torch.stack(truth)
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
    assert main(["smooth", "--predictions", str(src), "--out", str(out)]) == 0
    assert "smoothed 24 people over 2 tracks" in capsys.readouterr().out
    smoothed = json.loads(out.read_text())
    assert len(smoothed) == 24 and all(r["process_noise"] > 0 for r in smoothed)
    gap = next(r for r in smoothed if r["track_id"] == 8 and r["frame"] == 5)
    assert 50 + 5 + 5 - 3 < gap["keypoints"][3] < 50 + 5 + 5 + 3  # the unobserved joint, filled from its track
    assert gap["keypoints"][2] == 0.9  # confidences kept
    assert main(["smooth", "--predictions", str(src), "--out", str(src), "--overwrite"]) == 2
    assert "is the input" in capsys.readouterr().err
    bad = [dict(results[0]), dict(results[1], frame=0)]
    src.write_text(json.dumps(bad))
    assert main(["smooth", "--predictions", str(src), "--out", str(tmp_path / "x.json")]) == 2
    assert "track 7 has several people in one frame" in capsys.readouterr().err
