"""Can the cues be seen at all at a run's setting? A supervised reference for the cue metrics.

The covariance learns what the image shows from residuals alone. This trains a classifier on the synthetic
benchmark's *true* cue labels instead (is this joint on a cued limb?), from the run's own trained backbone
(a copy, fine-tuned) reading its features at each joint the model predicts, on the run's training split.
A second classifier is the local covariance term's own module (``JointLocalScale``: a small CNN on an image patch
around each predicted joint, with that joint's heatmap statistics), trained from scratch on the same labels: can
the local term's input and size see the cues at all? The epoch is chosen on the validation split; the test split
is scored with the cue metrics' own rule
(``metrics.cue_aurocs``), overall and per cue kind, and on the occlusion check's pairs (the same
figure with and without an occluder on one limb: how often the distal joint's score rises). Beside it, the
run's covariance on the same figures, the model's squared residual (one draw of what NLL trains on), and the
expected squared residual given the model's own error on each figure (``metrics.calibrated_covariance``):
what a covariance exactly calibrated to this model on each figure would score (an oracle: an estimate that
knew that error would correct the mean).

The other direction: given the cues, does the NLL teach a covariance to use them? A local scale that reads the
*true* cues of each joint's limbs in place of an image patch (``CueScale``) is fitted by the Gaussian NLL on the
frozen model's covariance without its own local term, the epoch chosen by validation NLL, and scored by the same
cue AUROC and the occlusion check's rise and coverage: what a covariance that saw the cues as well as the
generator knows them would reach after NLL training on this split. The same scale reading the local term's
module's classifier scores instead (each joint's own and its limb partners', ``score_inputs``) shows what the best
sight at hand gives once fitted by the NLL.

``--labels occluded`` trains the classifiers on what a real dataset can annotate instead of the generator's cues:
each joint an occluder hides (the distal joint of an occluded limb), as a visibility flag marks a labelled but
hidden keypoint (COCO's v = 1). No flag exists for blur or fading. A local scale is then also NLL-fitted on the
true flags: what a perfect detector of them would give, and with ``--flag-separations`` on simulated detectors of
known quality (the flag times a separation plus standard normal noise).

    python tools/cue_ceiling.py runs/sweep/lr_0.01/seed_0/w2_then_nll_tic [--epochs 12] [--patch-epochs 60]
        [--seeds 3] [--pairs 200] [--scale-epochs 60] [--labels cues|occluded] [--classifiers backbone,trunk,patch]
        [--flag-separations 1.5,2.5,3.5] [--skip-classifiers]
"""

from __future__ import annotations

import argparse
import copy
import functools
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pose_toss.config import load_config
from pose_toss.covariance import transform_joints
from pose_toss.data.dataset import PoseDataset
from pose_toss.data.loading import load_records, make_loader
from pose_toss.data.synthetic import CUE_KINDS, CUE_LIMBS, SyntheticPoseDataset, limb_cues
from pose_toss.engine.occlusion import occlusion_check, occlusion_pairs, summary_at_joints
from pose_toss.engine.prediction import attach_cues, predict_dataset
from pose_toss.losses import gaussian_nll
from pose_toss.metrics import (
    calibrated_covariance,
    cue_aurocs,
    cue_metrics_with_references,
    joint_errors,
    joint_spread,
    joints_on_limbs,
    mean_std,
    within_joint_auroc,
)
from pose_toss.models.checkpoint import load_model
from pose_toss.models.covariance_heads import JointLocalScale
from pose_toss.run_dir import resolve_checkpoint

CPU = torch.device("cpu")
LIMBS = torch.tensor(CUE_LIMBS)


class Split:
    """A split's images, the model's predicted joints, their heatmap distributions, visibility and per-joint cue
    kinds; ``positives`` (B x J) are what the classifiers learn: the joints on a cued limb (``labels="cues"``) or
    the joints an occluder hides (``labels="occluded"``)."""

    def __init__(self, model, records: list[dict], data_cfg, skeleton, labels: str = "cues") -> None:
        dataset = PoseDataset.from_config(records, data_cfg, train=False, skeleton=skeleton)
        images, joints, probs, vis = [], [], [], []
        with torch.no_grad():
            for batch in make_loader(dataset, 64, None, shuffle=False):
                images.append(batch["image"])
                out = model(batch["image"], with_covariance=False)
                joints.append(out.mean.float().reshape(len(out.mean), -1, 2))
                probs.append(model.head.distribution(out.heatmaps))
                vis.append(batch["visibility"] > 0)
        self.images, self.joints, self.visible = torch.cat(images), torch.cat(joints), torch.cat(vis)
        self.heat_prob = torch.cat(probs)
        self.limb_cue, self.limb_kind = (torch.from_numpy(a) for a in limb_cues([r["cues"] for r in records]))
        self.on_cued = joints_on_limbs(LIMBS, self.limb_cue > 0, self.visible.shape[1])
        self.positives = (self.on_cued if labels == "cues"  # the generator's flags: occluded_joints of its cues
                          else torch.from_numpy(np.stack([r["occluded"] for r in records]) > 0))


class CueClassifier(nn.Module):
    """The pose model's backbone (a copy, trained) read at each predicted joint, then a per-joint logit. With
    ``trunk``, the heatmap head's upsampling trunk (a copy, trained) after it: the head's stride-4 activation, twice
    as fine as the backbone's map."""

    def __init__(self, model, num_joints: int, hidden: int = 64, trunk: bool = False) -> None:
        super().__init__()
        self.normalise = model.normalise
        self.backbone = copy.deepcopy(model.backbone)
        self.trunk = copy.deepcopy(model.head.up) if trunk else None
        channels = self.features(torch.zeros(1, 3, model.input_size, model.input_size)).shape[1]
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(), nn.Linear(hidden, num_joints))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(self.normalise(images))
        return features if self.trunk is None else torch.relu(self.trunk(features))

    def forward(self, images: torch.Tensor, joints: torch.Tensor, heat_prob: torch.Tensor) -> torch.Tensor:
        features = self.features(images)
        grid = joints / (images.shape[-1] - 1) * 2 - 1
        at_joint = nn.functional.grid_sample(features, grid[:, :, None], align_corners=True)[..., 0].transpose(1, 2)
        return torch.diagonal(self.mlp(at_joint), dim1=1, dim2=2)  # joint j's own output


class PatchCueClassifier(nn.Module):
    """The local covariance term's module (``JointLocalScale``, fresh, with the run's ``cov_hidden``) read as a
    per-joint logit: an image patch around each predicted joint and the joint's heatmap statistics."""

    def __init__(self, model, num_joints: int) -> None:
        super().__init__()
        self.normalise, self.stride = model.normalise, model.head.out_stride
        self.local = JointLocalScale(num_joints, cov_hidden=model.config.cov_hidden)
        nn.init.normal_(self.local.out.weight, std=0.01)  # a zero output layer would pass no gradient back

    def forward(self, images: torch.Tensor, joints: torch.Tensor, heat_prob: torch.Tensor) -> torch.Tensor:
        return self.local(self.normalise(images), joints, heat_prob, self.stride)


CLASSIFIERS = {"backbone": CueClassifier, "trunk": functools.partial(CueClassifier, trunk=True),
               "patch": PatchCueClassifier}


def scores(net: nn.Module, split: Split) -> torch.Tensor:
    net.eval()
    with torch.no_grad():
        batches = zip(split.images.split(128), split.joints.split(128), split.heat_prob.split(128), strict=True)
        return torch.cat([net(*batch) for batch in batches])


def kind_aurocs(score: torch.Tensor, split: Split) -> dict:
    return cue_aurocs(score, split.visible, LIMBS, split.limb_cue, split.limb_kind, CUE_KINDS)


def train_classifier(model, kind: str, train: Split, val: Split, epochs: int, seed: int) -> tuple[nn.Module, int]:
    """A ``CLASSIFIERS[kind]`` trained on the true labels; returns the state of the epoch with the best validation
    AUROC, and that epoch."""
    torch.manual_seed(seed)
    net = CLASSIFIERS[kind](model, train.visible.shape[1])
    optimizer = torch.optim.AdamW(net.parameters(), 1e-3)
    best, best_state, best_epoch = -1.0, None, 0
    for epoch in range(1, epochs + 1):
        net.train()
        for idx in torch.randperm(len(train.images)).split(32):
            logits, visible = net(train.images[idx], train.joints[idx], train.heat_prob[idx]), train.visible[idx]
            positive = train.positives[idx][visible].float()
            loss = nn.functional.binary_cross_entropy_with_logits(logits[visible], positive)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        value = within_joint_auroc(scores(net, val), val.positives, val.visible)
        if value > best:
            best, best_state, best_epoch = value, copy.deepcopy(net.state_dict()), epoch
    net.load_state_dict(best_state)
    return net, best_epoch


def cue_inputs(limb_cue: torch.Tensor, limb_kind: torch.Tensor, num_joints: int) -> torch.Tensor:
    """B x L limb cue strengths and kinds (``synthetic.limb_cues``) -> B x J x 2K: for each cue kind, the strongest
    cue of that kind on a limb where the joint is the proximal end, then where it is the distal end (0 if none)."""
    b, kinds = limb_cue.shape[0], len(CUE_KINDS)
    out = torch.zeros(b, num_joints, 2 * kinds)
    for column, (proximal, distal) in enumerate(CUE_LIMBS):
        for kind in range(kinds):
            strength = torch.where(limb_kind[:, column] == kind, limb_cue[:, column].float(), 0.0)
            for role, joint in enumerate((proximal, distal)):
                out[:, joint, 2 * kind + role] = torch.maximum(out[:, joint, 2 * kind + role], strength)
    return out


class CueScale(nn.Module):
    """The local term's place taken by what is known of the cues (``inputs`` per joint: the true cues,
    ``cue_inputs``, or a classifier's scores, ``score_inputs``): each joint's log-scale through an MLP whose hidden
    layer has a learnt bias per joint, bounded like ``JointLocalScale``'s; zero (S = I) at the start."""

    def __init__(self, num_joints: int, inputs: int, hidden: int = 64, bound: float = 3.0) -> None:
        super().__init__()
        self.bound = bound
        self.hidden = nn.Linear(inputs, hidden)
        self.joint_bias = nn.Parameter(0.1 * torch.randn(num_joints, hidden))
        self.out = nn.Linear(hidden, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        raw = self.out(nn.functional.gelu(self.hidden(inputs) + self.joint_bias)).squeeze(-1)
        return self.bound * torch.tanh(raw / self.bound)


def score_inputs(score: torch.Tensor) -> torch.Tensor:
    """B x J classifier scores -> B x J x 2: each joint's own score and the largest of the joints it shares a cue
    limb with (an occluder near the elbow also widens the shoulder's labels)."""
    partner = torch.full_like(score, -1e4)
    for proximal, distal in CUE_LIMBS:
        partner[:, proximal] = torch.maximum(partner[:, proximal], score[:, distal])
        partner[:, distal] = torch.maximum(partner[:, distal], score[:, proximal])
    return torch.stack([score, torch.where(partner > -1e4, partner, 0.0)], -1)


class Frozen:
    """A split as the frozen model without its local term predicts it (means, covariances, labels), with each
    joint's ``inputs`` for a ``CueScale`` (the true cues, ``cue_inputs``, unless replaced)."""

    def __init__(self, model, records: list[dict], data_cfg, skeleton) -> None:
        loader = make_loader(PoseDataset.from_config(records, data_cfg, train=False, skeleton=skeleton), 64, None,
                             shuffle=False)
        preds = predict_dataset(model, loader, CPU)
        self.mean, self.cov, self.target = preds["mean"].double(), preds["cov"].double(), preds["target"].double()
        self.visibility, self.target_true = preds["visibility"], preds["target_true"].double()
        self.cov_true = preds["cov_true"].double()
        strengths, kinds = (torch.from_numpy(a) for a in limb_cues([r["cues"] for r in records]))
        self.inputs = cue_inputs(strengths, kinds, self.visibility.shape[1])

    def reading(self, inputs: torch.Tensor) -> Frozen:
        """The same split with other inputs for the scale."""
        other = copy.copy(self)
        other.inputs = inputs
        return other

    def covariance(self, scale: CueScale, index: torch.Tensor | None = None) -> torch.Tensor:
        index = torch.arange(len(self.mean)) if index is None else index
        return transform_joints(self.cov[index], scale(self.inputs[index]).double())

    def nll(self, scale: CueScale, index: torch.Tensor | None = None) -> torch.Tensor:
        index = torch.arange(len(self.mean)) if index is None else index
        return gaussian_nll(self.mean[index], self.covariance(scale, index), self.target[index],
                            self.visibility[index]).mean()


def fit_cue_scale(train: Frozen, val: Frozen, epochs: int, seed: int) -> tuple[CueScale, int]:
    """A ``CueScale`` fitted by the NLL (AdamW 1e-3, batch 64); the state of the epoch with the best validation
    NLL, and that epoch."""
    torch.manual_seed(seed)
    scale = CueScale(train.visibility.shape[1], train.inputs.shape[-1])
    optimizer = torch.optim.AdamW(scale.parameters(), 1e-3, weight_decay=0.0)
    best, best_state, best_epoch = float("inf"), None, 0
    for epoch in range(1, epochs + 1):
        for index in torch.randperm(len(train.mean)).split(64):
            loss = train.nll(scale, index)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            value = float(val.nll(scale))
        if value < best:
            best, best_state, best_epoch = value, copy.deepcopy(scale.state_dict()), epoch
    scale.load_state_dict(best_state)
    return scale, best_epoch


def fitted_scale_result(label: str, frozen: dict[str, Frozen], pairs: Frozen, test_split: Split, pair_joints: list[int],
                        epochs: int, seed: int) -> dict:
    """A ``CueScale`` fitted on ``frozen``'s train and val splits (``fit_cue_scale``), then its test NLL, cue AUROCs
    (spread), occlusion check (``summary_at_joints`` on ``pairs``) and chosen epoch; printed under ``label``."""
    scale, epoch = fit_cue_scale(frozen["train"], frozen["val"], epochs, seed)
    test = frozen["test"]
    with torch.no_grad():
        cov, pair_cov = test.covariance(scale), pairs.covariance(scale)
        result = {"nll": float(test.nll(scale))}
    result.update(kind_aurocs(joint_spread(cov), test_split))
    check = summary_at_joints(pairs.mean, pair_cov, pairs.target_true, pairs.cov_true, pair_joints)
    result.update({"rise": check["spread_rise"], "occluded": check["coverage@0.9_occluded"],
                   "plain": check["coverage@0.9_plain"], "epoch": epoch})
    print(f"{label} seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in result.items()), flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--epochs", type=int, default=12, help="epochs of the backbone and trunk classifiers")
    ap.add_argument("--patch-epochs", type=int, default=60, help="epochs of the local term's module (it starts "
                    "from scratch, and its validation AUROC still rises at 50)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--scale-epochs", type=int, default=60, help="epochs of the local scale fitted on the true cues")
    ap.add_argument("--skip-classifiers", action="store_true", help="only the local scale fitted on the true cues")
    ap.add_argument("--labels", choices=("cues", "occluded"), default="cues",
                    help="what the classifiers learn: joints on a cued limb, or the joints an occluder hides")
    ap.add_argument("--flag-separations", type=lambda v: [float(x) for x in v.split(",") if x], default=[],
                    help="with --labels occluded: simulated flag detectors, flag x separation + N(0, 1) noise, "
                    "e.g. 1.5,2.5,3.5")
    ap.add_argument("--classifiers", default="backbone,patch",
                    help=f"comma-separated, of {', '.join(CLASSIFIERS)}")
    args = ap.parse_args(argv)
    kinds = [k for k in args.classifiers.split(",") if k]
    if any(k not in CLASSIFIERS for k in kinds):
        ap.error(f"--classifiers {args.classifiers!r}: expected names of {', '.join(CLASSIFIERS)}")
    if args.flag_separations and args.labels != "occluded":
        ap.error("--flag-separations simulates detectors of the occlusion flags: it needs --labels occluded")
    cfg = load_config(args.run / "config.yaml")
    if "trunk" in kinds and cfg.model.head != "heatmap":
        ap.error(f"--classifiers trunk reads the heatmap head's trunk; {args.run} has a {cfg.model.head} head")
    model = load_model(resolve_checkpoint(args.run)[0])
    splits, records_of = {}, {}
    for name in ("train", "val", "test"):
        records_of[name], skeleton = load_records(cfg.data, name)
        splits[name] = Split(model, records_of[name], cfg.data, skeleton, args.labels)
    test_records = records_of["test"]

    # The run's covariance and its squared residual on the same test figures.
    loader = make_loader(PoseDataset.from_config(test_records, cfg.data, train=False, skeleton=skeleton), 64, None,
                         shuffle=False)
    preds = attach_cues(predict_dataset(model, loader, CPU), test_records)
    own = cue_metrics_with_references(preds["cov"], preds["visibility"], LIMBS, preds["limb_cue"],
                                      limb_kind=preds["limb_cue_kind"], cue_kinds=CUE_KINDS,
                                      calibrated=calibrated_covariance(preds["mean"], preds["target_true"],
                                                                       preds["cov_true"]))
    squared_residual = joint_errors(preds["mean"].double(), preds["target"].double()) ** 2
    generator = SyntheticPoseDataset.from_config(cfg.data.synthetic, "test")
    occlusion = occlusion_check(model, generator, cfg.data, CPU, pairs=args.pairs)

    # The classifier on the occlusion check's pairs: the distal joint's score with and without the occluder.
    pair_records, pair_joints = occlusion_pairs(generator, args.pairs)
    pairs = Split(model, pair_records, cfg.data, skeleton, args.labels)
    rows = torch.arange(len(pair_records))
    distal = torch.tensor(pair_joints).repeat_interleave(2)

    # The local term's place taken by the true cues, NLL-fitted on the model without its own local term.
    base = copy.deepcopy(model)
    base.local_scale = None
    frozen = {name: Frozen(base, records_of[name], cfg.data, skeleton) for name in ("train", "val", "test")}
    frozen_pairs = Frozen(base, pair_records, cfg.data, skeleton)
    fit = functools.partial(fitted_scale_result, test_split=splits["test"], pair_joints=pair_joints,
                            epochs=args.scale_epochs)
    scale_results = [fit("cue scale", frozen, frozen_pairs, seed=seed) for seed in range(args.seeds)]
    # With occlusion flags: the same scale reading the true flags, what a perfect detector of them would give.
    flag_results = []
    if args.labels == "occluded":
        flagged = {name: frozen[name].reading(score_inputs(splits[name].positives.float())) for name in frozen}
        flagged_pairs = frozen_pairs.reading(score_inputs(pairs.positives.float()))
        flag_results = [fit("flag scale", flagged, flagged_pairs, seed=seed) for seed in range(args.seeds)]
    # Detectors of known quality: the flags times a separation plus standard normal noise (one draw per split).
    simulated = {}
    for separation in args.flag_separations:
        noise = torch.Generator().manual_seed(0)

        def detector(positives: torch.Tensor, separation: float = separation, noise: torch.Generator = noise
                     ) -> torch.Tensor:
            return separation * positives.float() + torch.randn(positives.shape, generator=noise)

        test_scores = detector(splits["test"].positives)
        noisy = {name: frozen[name].reading(score_inputs(test_scores if name == "test" else
                                                         detector(splits[name].positives))) for name in frozen}
        noisy_pairs = frozen_pairs.reading(score_inputs(detector(pairs.positives)))
        flag_auroc = within_joint_auroc(test_scores, splits["test"].positives, splits["test"].visible)
        simulated[separation] = [{**fit(f"scale on a simulated detector ({separation:g})", noisy, noisy_pairs,
                                        seed=seed), "flag AUROC": flag_auroc} for seed in range(args.seeds)]

    epochs_of = {"backbone": args.epochs, "trunk": args.epochs, "patch": args.patch_epochs}
    results: dict[str, list[dict]] = {kind: [] for kind in kinds}
    seen_results: dict[str, list[dict]] = {kind: [] for kind in kinds}  # a local scale reading a classifier's scores
    for kind in () if args.skip_classifiers else kinds:
        for seed in range(args.seeds):
            net, epoch = train_classifier(model, kind, splits["train"], splits["val"], epochs_of[kind], seed)
            test_scores = scores(net, splits["test"])
            result = kind_aurocs(test_scores, splits["test"])
            result["own labels"] = within_joint_auroc(test_scores, splits["test"].positives, splits["test"].visible)
            at_distal = scores(net, pairs)[rows, distal]
            result["rise"] = float((at_distal[1::2] > at_distal[::2]).double().mean())
            result["epoch"] = epoch
            results[kind].append(result)
            print(f"{kind} classifier seed {seed}: epoch {epoch}, "
                  + ", ".join(f"{k} {v:.3f}" for k, v in result.items() if k != "epoch"), flush=True)
            seen = {name: frozen[name].reading(score_inputs(scores(net, splits[name]))) for name in frozen}
            seen_pairs = frozen_pairs.reading(score_inputs(scores(net, pairs)))
            seen_results[kind].append(fit(f"scale on the {kind} classifier", seen, seen_pairs, seed=seed))

    def cell(rows: list[dict], key: str) -> str:
        m, s = mean_std([r[key] for r in rows])
        return f"{m:.3f} ± {s:.3f}"

    residual = kind_aurocs(squared_residual, splits["test"])
    print(f"\nrun {args.run}, test split ({len(test_records)} figures), {args.seeds} classifier and scale seeds, "
          f"{args.pairs} occlusion pairs\n")
    print("| score | cue AUROC, all | occluder | blur | fade | occluder added: score rises |")
    print("| --- | --- | --- | --- | --- | --- |")
    for title, suffix, rise in (("the run's covariance (spread)", "", "spread_rise"),
                                ("the expected squared residual, knowing the model's error on each figure",
                                 "_calibrated", "calibrated_spread_rise")):
        print(f"| {title} | {own['cue_auroc_spread' + suffix]:.3f} | "
              + " | ".join(f"{own[f'cue_auroc_spread_{k}{suffix}']:.3f}" for k in CUE_KINDS)
              + f" | {occlusion[rise]:.2f} |")
    print(f"| the model's squared residual (one draw) | {residual['all']:.3f} | "
          + " | ".join(f"{residual[k]:.3f}" for k in CUE_KINDS) + " | – |")
    labels = {"cues": "the true cue labels", "occluded": "the occlusion flags"}[args.labels]
    named = {"backbone": "the run's backbone, fine-tuned", "trunk": "the run's backbone and head trunk, fine-tuned",
             "patch": "the local term's module, patch + heatmap"}
    titled = [(f"a classifier trained on {labels} ({named[kind]})", results[kind]) for kind in kinds]
    titled.append(("a local scale reading the true cues, NLL-fitted (spread)", scale_results))
    titled.append(("a local scale reading the true occlusion flags, NLL-fitted (spread)", flag_results))
    titled += [(f"a local scale reading the {kind} classifier's scores, NLL-fitted (spread)", seen_results[kind])
               for kind in kinds]
    for title, measured in titled:
        if measured:
            print(f"| {title} | {cell(measured, 'all')} | " + " | ".join(cell(measured, k) for k in CUE_KINDS)
                  + f" | {cell(measured, 'rise')} |")
    for kind in kinds:
        if results[kind]:
            print(f"\nthe {kind} classifier on its own test labels ({labels}), within-joint AUROC "
                  f"{cell(results[kind], 'own labels')}")
    run_nll = float(gaussian_nll(preds["mean"].double(), preds["cov"].double(), preds["target"].double(),
                                 preds["visibility"]).mean())
    print("\n| covariance | test NLL | occluded limb end: 90 % ellipse holds | without the occluder |")
    print("| --- | --- | --- | --- |")
    print(f"| the run's | {run_nll:.2f} | "
          f"{occlusion['coverage@0.9_occluded']:.2f} | {occlusion['coverage@0.9_plain']:.2f} |")
    print("| a local scale reading the true cues in place of the run's local term (added where it has none), "
          f"NLL-fitted | {cell(scale_results, 'nll')} | {cell(scale_results, 'occluded')} | "
          f"{cell(scale_results, 'plain')} |")
    if flag_results:
        print(f"| the same reading the true occlusion flags | {cell(flag_results, 'nll')} | "
              f"{cell(flag_results, 'occluded')} | {cell(flag_results, 'plain')} |")
    for kind in kinds:
        if seen_results[kind]:
            print(f"| the same reading the {kind} classifier's scores | {cell(seen_results[kind], 'nll')} | "
                  f"{cell(seen_results[kind], 'occluded')} | {cell(seen_results[kind], 'plain')} |")
    if simulated:
        print("\n| simulated flag detector: separation | its within-joint AUROC | scale's cue AUROC | spread rises | "
              "occluded cov@0.9 | clean cov@0.9 | test NLL |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for separation, measured in simulated.items():
            print(f"| {separation:g} | {measured[0]['flag AUROC']:.3f} | {cell(measured, 'all')} | "
                  f"{cell(measured, 'rise')} | {cell(measured, 'occluded')} | {cell(measured, 'plain')} | "
                  f"{cell(measured, 'nll')} |")


if __name__ == "__main__":
    main()
