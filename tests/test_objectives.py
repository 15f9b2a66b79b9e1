"""What a step computes: pseudo-labels moved into the batch's frame, method configs."""

import numpy as np
import pytest
import torch
from scipy.linalg import sqrtm

from pose_toss.commands.compare import parse_methods
from pose_toss.config import Config, StageConfig
from pose_toss.data.synthetic import SyntheticPoseDataset
from pose_toss.data.transforms import TopDownTransform, affine_covariance, box_to_center_size, crop_affine
from pose_toss.engine.objectives import labels_in_batch_frame, method_config
from pose_toss.losses import sqrtm_eigh
from pose_toss.skeletons import LSP14


def test_bank_labels_follow_the_augmentation_including_flips():
    ds = SyntheticPoseDataset(3, 128, seed=1)
    for flip in (0.0, 1.0):
        tf = TopDownTransform(128, LSP14, augment=True, rotation=40, scale=(0.7, 1.3), flip_prob=flip)
        for i in range(3):
            rec = ds.record(i)
            center, size = box_to_center_size(rec["bbox"], 1.25)
            eval_affine = crop_affine(center, size, 128)
            bank_cov = affine_covariance(eval_affine, rec["cov_true"])  # what the bank stores
            out = tf(rec["image"], rec["joints"], rec["visibility"], center, size, cov=rec["cov_true"], seed=i)
            assert out.flipped == bool(flip)
            args = (torch.tensor(bank_cov[None]), torch.tensor(eval_affine[None]), torch.tensor(out.affine[None]),
                    torch.from_numpy(LSP14.flip_coordinate_index.copy()))
            moved, root = labels_in_batch_frame(*args)
            np.testing.assert_allclose(moved[0].numpy(), out.cov, rtol=1e-4, atol=1e-4 * np.abs(out.cov).max())
            np.testing.assert_allclose((root @ root)[0].numpy(), out.cov, atol=1e-3 * np.abs(out.cov).max())
            # The bank's own roots, moved with the similarity, equal the recomputed ones.
            bank_root = torch.from_numpy(sqrtm(bank_cov).real[None])
            moved2, carried = labels_in_batch_frame(*args, sqrt=bank_root)
            np.testing.assert_allclose(carried[0].numpy(), root[0].numpy(), atol=1e-3 * root.abs().max().item())
            assert torch.equal(moved2, moved)
    # A map that is not a similarity (stretched crop) falls back to eigh.
    cov = torch.tensor(bank_cov[None])
    stretch = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], dtype=torch.float64)
    _, root = labels_in_batch_frame(cov, torch.eye(2, 3, dtype=torch.float64)[None], stretch,
                                    torch.arange(28), sqrt=torch.from_numpy(sqrtm(bank_cov).real[None]))
    m = torch.kron(torch.eye(14, dtype=torch.float64), torch.diag(torch.tensor([2.0, 1.0])))
    np.testing.assert_allclose((root.double() @ root.double())[0].numpy(), (m @ cov[0] @ m.T).numpy(),
                               atol=1e-3 * float(cov.abs().max()) * 4)



def test_method_configs_share_the_budget():
    base = Config()
    assert [(s.loss, s.epochs) for s in method_config(base, "w2_then_nll_tic").stages] == [("w2_bound", 20),
                                                                                          ("nll", 80)]
    mse = method_config(base, "mse")
    assert mse.model.covariance == "identity" and [(s.loss, s.epochs) for s in mse.stages] == [("mse", 100)]
    assert method_config(base, "loss_pred").model.covariance == "isotropic"
    plain = Config(stages=[StageConfig("nll", 5)] * 2)  # not a W2 recipe: the paper's 20% / 80% split
    assert [s.epochs for s in method_config(plain, "w2_then_nll_tic").stages] == [2, 8]
    with pytest.raises(ValueError, match="unknown"):
        parse_methods("mse,huber")



def test_sqrt_helper_used_for_labels_is_a_root():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3, 6, 6, generator=gen)
    spd = a @ a.transpose(1, 2) + torch.eye(6)
    r = sqrtm_eigh(spd)
    torch.testing.assert_close(r @ r, spd, atol=1e-4, rtol=1e-4)
