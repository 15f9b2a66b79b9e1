import numpy as np
import pytest
import torch
from _gloo import run_on_gloo_ranks
from torch.utils.data import DataLoader, Subset

from pose_toss.config import load_config
from pose_toss.data import PoseDataset, SyntheticPoseDataset
from pose_toss.embedding_bank import EmbeddingBank
from pose_toss.models import build_pose_model
from pose_toss.pseudo_labels import knn, pseudo_covariances, whiten


def setup(n=40):
    cfg = load_config(overrides=["data.input_size=64"])
    ds = PoseDataset.from_config(SyntheticPoseDataset(n, 64, seed=0), cfg.data, train=False)
    targets = torch.stack([ds[i]["target"] for i in range(n)])
    masks = torch.stack([ds[i]["visibility"] for i in range(n)])
    torch.manual_seed(0)
    model = build_pose_model("resnet18", 14, covariance="tic", input_size=64, embed_dim=8, deconv_channels=16)
    return ds, targets, masks, model


def test_refresh_from_model_matches_direct_computation():
    ds, targets, masks, model = setup()
    bank = EmbeddingBank(targets, masks, k=10)
    model.train()
    bank.refresh_from_model(model, DataLoader(ds, batch_size=16, shuffle=True))
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        z = torch.cat([model.embed(model.features(torch.stack([ds[i]["image"] for i in range(40)])))])
    assert torch.allclose(bank.embeddings, z, atol=1e-5)
    cov, root = pseudo_covariances(z, targets, 10, masks=masks)
    got_cov, got_root = bank.lookup(torch.tensor([3, 17]))
    assert torch.allclose(got_cov, cov[[3, 17]], rtol=1e-4, atol=1e-4)
    assert torch.allclose(got_root @ got_root, got_cov, rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="were never embedded"):
        bank.refresh_from_model(model, DataLoader(Subset(ds, range(20)), batch_size=8))


def test_residual_labels_use_the_models_own_errors():
    ds, targets, masks, model = setup()
    bank = EmbeddingBank(targets, masks, k=10, labels_from="residuals")
    bank.refresh_from_model(model, DataLoader(ds, batch_size=16, shuffle=True))
    model.eval()
    with torch.no_grad():
        out = model(torch.stack([ds[i]["image"] for i in range(40)]), with_covariance=False)
    assert torch.allclose(bank.embeddings, out.embedding, atol=1e-5)
    assert torch.allclose(bank.predictions, out.mean, atol=1e-4)
    want, _ = pseudo_covariances(out.embedding, targets - out.mean, 10, masks=masks, centre=False)
    assert torch.allclose(bank.cov, want, rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="residual pseudo-labels need the model's predictions"):
        bank.set_embeddings(out.embedding)
    with pytest.raises(ValueError, match="labels_from must be one of"):
        EmbeddingBank(targets, masks, labels_from="errors")


def test_label_quality_against_the_true_covariance():
    """Every number logged at a refresh, against numpy / scipy on a small bank: W2^2 to the truth and the best
    constant's, the Spearman of the traces, the labels' within-joint cue AUROC, the effective neighbours."""
    from scipy.linalg import sqrtm
    from scipy.stats import mannwhitneyu, spearmanr

    gen = torch.Generator().manual_seed(0)
    n, j = 60, 3
    z, targets = torch.randn(n, 4, generator=gen), torch.randn(n, 2 * j, generator=gen) * 5
    masks = torch.ones(n, j)
    masks[::4, 2] = 0
    a = torch.randn(n, 2 * j, 2 * j, generator=gen, dtype=torch.float64)
    true = a @ a.transpose(1, 2) + torch.eye(2 * j, dtype=torch.float64)
    limbs = torch.tensor([[0, 1], [1, 2]])
    limb_cue = (torch.rand(n, 2, generator=gen) < 0.4).double()
    bank = EmbeddingBank(targets, masks, k=12, temperature="median", true_cov=true, limbs=limbs, limb_cue=limb_cue)
    bank.set_embeddings(z)
    assert set(bank.quality) == {"temperature", "effective_neighbours", "w2_to_true", "w2_constant_to_true",
                                 "trace_spearman", "cue_auroc_spread", "mean_trace", "true_mean_trace"}

    def w2(p, t):
        rt = np.real(sqrtm(t))
        return np.trace(p + t - 2 * np.real(sqrtm(rt @ p @ rt)))

    keep = [masks[i].repeat_interleave(2).bool().numpy() for i in range(n)]
    labels = [bank.cov[i].double().numpy()[np.ix_(keep[i], keep[i])] for i in range(n)]
    truths = [true[i].numpy()[np.ix_(keep[i], keep[i])] for i in range(n)]
    assert bank.quality["w2_to_true"] == pytest.approx(np.mean([w2(p, t) for p, t in zip(labels, truths, strict=True)]),
                                                        rel=1e-6)
    # The best constant: the truths' barycenter (here over the 60 masked truths), evaluated on each visible block.
    constant = bank._best_constant[1].numpy()
    want = np.mean([w2(constant[np.ix_(k, k)], t) for k, t in zip(keep, truths, strict=True)])
    assert bank.quality["w2_constant_to_true"] == pytest.approx(want, rel=1e-6)
    full = np.stack([np.where(np.outer(k, k), true[i].numpy(), np.eye(2 * j)) for i, k in enumerate(keep)])

    def mean_w2_to(c):
        return np.mean([w2(c, t) for t in full])

    best = mean_w2_to(constant)  # no other constant is closer: not the mean, not a nudged barycenter
    assert best < mean_w2_to(full.mean(0)) and best < mean_w2_to(constant * 1.05) and best < mean_w2_to(constant * 0.95)
    rho = spearmanr([np.trace(p) for p in labels], [np.trace(t) for t in truths]).statistic
    assert bank.quality["trace_spearman"] == pytest.approx(rho, rel=1e-9)
    on = np.zeros((n, j), dtype=bool)  # a joint is cued when a limb it belongs to is
    for limb, (pa, pb) in enumerate(limbs.tolist()):
        on[:, pa] |= limb_cue[:, limb].numpy() > 0
        on[:, pb] |= limb_cue[:, limb].numpy() > 0
    spread = np.sqrt(np.stack([[np.trace(bank.cov[i, 2 * q:2 * q + 2, 2 * q:2 * q + 2].double().numpy())
                                for q in range(j)] for i in range(n)]))
    per_joint = []
    for q in range(j):
        ok = masks[:, q].numpy() > 0
        pos, neg = spread[ok & on[:, q], q], spread[ok & ~on[:, q], q]
        per_joint.append(mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg)))
    assert bank.quality["cue_auroc_spread"] == pytest.approx(np.mean(per_joint), rel=1e-9)
    w = torch.softmax(-knn(whiten(z), 12)[0] / bank.quality["temperature"], dim=1).double().numpy()
    assert bank.quality["effective_neighbours"] == pytest.approx(np.mean(1 / (w**2).sum(1)), rel=1e-6)
    with pytest.raises(ValueError, match=r"true_cov has shape \(60, 6, 5\), expected \(60, 6, 6\)"):
        EmbeddingBank(targets, masks, true_cov=true[:, :, :5])


def test_frozen_sources(tmp_path):
    ds, targets, masks, model = setup()
    bank = EmbeddingBank(targets, masks, k=10)
    with pytest.raises(RuntimeError, match="not been filled"):
        bank.lookup(torch.tensor([0]))
    emb = np.random.default_rng(0).normal(size=(40, 5)).astype(np.float32)
    np.save(tmp_path / "e.npy", emb)
    bank.refresh_from_file(tmp_path / "e.npy")
    assert torch.equal(bank.embeddings, torch.from_numpy(emb))
    np.save(tmp_path / "bad.npy", emb[:30])
    with pytest.raises(ValueError, match=r"bad\.npy: embeddings have shape \(30, 5\), expected \(40, E\)"):
        bank.refresh_from_file(tmp_path / "bad.npy")
    with pytest.raises(FileNotFoundError, match="embedding file not found"):
        bank.refresh_from_file(tmp_path / "none.npy")
    loader = DataLoader(ds, batch_size=16)
    bank.refresh_from_frozen_features(lambda x: model.backbone(x).mean((2, 3)), loader, dim=6)
    assert bank.embeddings.shape == (40, 6)
    cov = bank.embeddings.T @ bank.embeddings
    assert torch.allclose(cov, torch.diag(torch.diagonal(cov)), atol=1e-2 * cov.diagonal().max())  # PCA axes


def _worker(rank, world, out):
    ds, targets, masks, model = setup(30)
    model.eval()
    shard = Subset(ds, list(range(rank, 30, world)))  # each rank embeds its own half
    bank = EmbeddingBank(targets, masks, k=8)
    bank.refresh_from_model(model, DataLoader(shard, batch_size=8))
    torch.save({"emb": bank.embeddings, "cov": bank.cov}, f"{out}/rank{rank}.pt")


@pytest.mark.slow
def test_bank_is_gathered_across_ranks(tmp_path):
    run_on_gloo_ranks(_worker, tmp_path)
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert torch.equal(a["emb"], b["emb"]) and torch.equal(a["cov"], b["cov"])
    ds, targets, masks, model = setup(30)
    model.eval()
    with torch.no_grad():
        z = model.embed(model.features(torch.stack([ds[i]["image"] for i in range(30)])))
    assert torch.allclose(a["emb"], z, atol=1e-4)
