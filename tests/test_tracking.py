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
