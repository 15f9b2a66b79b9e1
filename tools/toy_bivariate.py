"""The ToSS toy: learn a fixed bivariate normal from its samples with NLL, calibrated KL and the
2-Wasserstein bound, at a low and a high learning rate.

Writes a PNG of the predicted 90 % ellipse over iterations against the truth and prints, per
objective, the final relative covariance error and how much the estimate still fluctuates.

    python tools/toy_bivariate.py --out runs/toy_bivariate.png
"""

import argparse
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pose_toss.losses import gaussian_nll, kl_calibrated, w2_bound  # noqa: E402

TRUE_MEAN = torch.tensor([1.0, -0.5])
TRUE_COV = torch.tensor([[2.0, 1.2], [1.2, 1.0]])
# A reasonable but imperfect prior (KL) / pseudo-label (W2): right orientation, 30 % too wide.
PRIOR = 1.3 * TRUE_COV


def fit(objective: str, lr: float, steps: int, batch: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    chol_true = torch.linalg.cholesky(TRUE_COV)
    mean = torch.zeros(2, requires_grad=True)
    raw = torch.zeros(3, requires_grad=True)  # Cholesky entries; log of the diagonal
    opt = torch.optim.Adam([mean, raw], lr=lr)
    history = []
    for _ in range(steps):
        low = torch.zeros(2, 2)
        low = low.index_put((torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1])),
                            torch.stack([raw[0].exp(), raw[1], raw[2].exp()]))
        cov = (low @ low.T + 1e-4 * torch.eye(2)).expand(batch, 2, 2)
        y = TRUE_MEAN + torch.randn(batch, 2, generator=gen) @ chol_true.T
        m = mean.expand(batch, 2)
        if objective == "nll":
            loss = gaussian_nll(m, cov, y)
        elif objective == "kl_calibrated":
            loss = kl_calibrated(m, cov, y, PRIOR.expand(batch, 2, 2))
        else:
            loss = w2_bound(m, cov, y, PRIOR.expand(batch, 2, 2))
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
        history.append(cov[0].detach().clone())
    return history


def ellipse(cov: torch.Tensor, centre: torch.Tensor, level: float = 0.9):
    r = math.sqrt(-2 * math.log(1 - level))
    evals, evecs = torch.linalg.eigh(cov)
    t = torch.linspace(0, 2 * math.pi, 100)
    circle = torch.stack([t.cos(), t.sin()])
    pts = evecs @ torch.diag(evals.clamp_min(0).sqrt() * r) @ circle
    return (pts[0] + centre[0]).numpy(), (pts[1] + centre[1]).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/toy_bivariate.png")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lrs", type=float, nargs=2, default=[0.01, 0.1])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    objectives = ("nll", "kl_calibrated", "w2_bound")
    fig, axes = plt.subplots(2, 3, figsize=(12, 8), sharex=True, sharey=True)
    print("| objective | lr | final rel. cov error | fluctuation (std of error, last 30 %) | optimum |")
    print("| --- | --- | --- | --- | --- |")
    for row, lr in enumerate(args.lrs):
        for col, obj in enumerate(objectives):
            hist = fit(obj, lr, args.steps, args.batch, args.seed)
            errs = torch.stack([(c - TRUE_COV).norm() / TRUE_COV.norm() for c in hist])
            tail = errs[int(0.7 * len(errs)):]
            optimum = {"nll": "truth", "kl_calibrated": "(prior + truth) / 2", "w2_bound": "prior"}[obj]
            print(f"| {obj} | {lr:g} | {errs[-1]:.3f} | {tail.std():.3f} | {optimum} |")
            ax = axes[row, col]
            for k in range(0, len(hist), max(1, len(hist) // 12)):
                ax.plot(*ellipse(hist[k], TRUE_MEAN), color=plt.cm.viridis(k / len(hist)), lw=0.8)
            ax.plot(*ellipse(TRUE_COV, TRUE_MEAN), "r--", lw=2, label="truth")
            ax.plot(*ellipse(PRIOR, TRUE_MEAN), "k:", lw=1.5, label="prior / pseudo-label")
            ax.set_title(f"{obj}, lr {lr:g}")
            ax.set_aspect("equal")
    axes[0, 0].legend(loc="lower right", fontsize=8)
    fig.suptitle("90 % ellipse over iterations (dark: early, yellow: late)")
    fig.tight_layout()
    import os

    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
