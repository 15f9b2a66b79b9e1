"""Does an ensemble see the cues? Several runs of one recipe (seeds), their Gaussians merged into one by moment
matching (``covariance.mixture_moments``: the mean of the members' covariances plus the covariance of their
means), scored on the synthetic test split and the occlusion check's pairs beside each member alone and the
members' disagreement alone (the covariance of their means).

    python tools/ensemble_check.py runs/sweep/lr_0.01/seed_{0,1,2,3,4}/w2_then_nll_tic [--pairs 200]

Every run must share the data settings of the first (the same test figures).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from pose_toss.config import load_config
from pose_toss.covariance import mixture_moments
from pose_toss.data.dataset import PoseDataset
from pose_toss.data.loading import load_records, make_loader
from pose_toss.data.synthetic import CUE_KINDS, CUE_LIMBS, SyntheticPoseDataset
from pose_toss.engine.occlusion import occlusion_pairs, summary_at_joints
from pose_toss.engine.prediction import attach_cues, predict_dataset
from pose_toss.losses import gaussian_nll
from pose_toss.metrics import cue_aurocs, joint_spread, mean_std
from pose_toss.models.checkpoint import load_model
from pose_toss.run_dir import resolve_checkpoint

CPU = torch.device("cpu")


def predictions(run: Path, data_cfg, test_records: list[dict], pair_records: list[dict], skeleton) -> tuple[dict, dict]:
    """The run's best model's predictions on the test split (with its cues) and on the occlusion pairs."""
    model = load_model(resolve_checkpoint(run)[0])

    def predict(records: list[dict]) -> dict:
        dataset = PoseDataset.from_config(records, data_cfg, train=False, skeleton=skeleton)
        return predict_dataset(model, make_loader(dataset, 64, None, shuffle=False), CPU)

    return attach_cues(predict(test_records), test_records), predict(pair_records)


def scored(mean: torch.Tensor, cov: torch.Tensor, test: dict, pair_mean: torch.Tensor, pair_cov: torch.Tensor,
           pairs: dict, pair_joints: list[int]) -> dict:
    """Within-joint cue AUROCs of the spread, the occlusion check and the test NLL of one Gaussian per figure."""
    out = cue_aurocs(joint_spread(cov), test["visibility"], torch.tensor(CUE_LIMBS), test["limb_cue"],
                     test["limb_cue_kind"], CUE_KINDS)
    out.update(summary_at_joints(pair_mean, pair_cov, pairs["target_true"], pairs["cov_true"], pair_joints))
    out["nll"] = float(gaussian_nll(mean.double(), cov.double(), test["target"].double(), test["visibility"]).mean())
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--pairs", type=int, default=200)
    args = ap.parse_args(argv)
    if len(args.runs) < 2:
        ap.error("an ensemble needs at least two runs")
    cfg = load_config(args.runs[0] / "config.yaml")
    for run in args.runs[1:]:
        if load_config(run / "config.yaml").data != cfg.data:
            ap.error(f"{run}: its data settings differ from {args.runs[0]}'s; the members must predict the same "
                     "figures")
    test_records, skeleton = load_records(cfg.data, "test")
    pair_records, pair_joints = occlusion_pairs(SyntheticPoseDataset.from_config(cfg.data.synthetic, "test"),
                                                args.pairs)
    members = [predictions(run, cfg.data, test_records, pair_records, skeleton) for run in args.runs]
    tests, pairs = [m[0] for m in members], [m[1] for m in members]
    rows = {f"member {i}": scored(t["mean"], t["cov"], t, p["mean"], p["cov"], p, pair_joints)
            for i, (t, p) in enumerate(members)}

    def merged(preds: list[dict], members_cov: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """The members' moment-matched mixture; without their own covariances, the covariance of their means
        alone (their disagreement, with a small ridge to keep it invertible)."""
        means, covs = (torch.stack([p[key].double() for p in preds]) for key in ("mean", "cov"))
        if members_cov:
            return mixture_moments(means, covs)
        mean, spread = mixture_moments(means, torch.zeros_like(covs))
        return mean, spread + 1e-6 * torch.eye(spread.shape[-1], dtype=spread.dtype)

    rows["mixture"] = scored(*merged(tests), tests[0], *merged(pairs), pairs[0], pair_joints)
    rows["disagreement"] = scored(*merged(tests, False), tests[0], *merged(pairs, False), pairs[0], pair_joints)
    for key in ("coverage@0.9_occluded", "coverage@0.9_plain", "nll"):  # meaningless for a spread of means alone
        rows["disagreement"][key] = float("nan")

    columns = ["all", *CUE_KINDS, "spread_rise", "spread_ratio", "error_ratio", "coverage@0.9_occluded",
               "coverage@0.9_plain", "nll"]
    singles = [rows[f"member {i}"] for i in range(len(args.runs))]
    print(f"{len(args.runs)} runs, {len(test_records)} test figures, {args.pairs} occlusion pairs\n")
    print("| covariance | cue AUROC, all | " + " | ".join(CUE_KINDS) + " | spread rises | spread × | error × | "
          "occluded cov@0.9 | clean cov@0.9 | test NLL |")
    print("| --- " * (len(columns) + 1) + "|")
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join("–" if math.isnan(row[c]) else f"{row[c]:.3f}" for c in columns) + " |")
    print("| members, mean ± std | " + " | ".join("{:.3f} ± {:.3f}".format(*mean_std([r[c] for r in singles]))
                                                 for c in columns) + " |")


if __name__ == "__main__":
    main()
