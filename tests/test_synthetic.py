import numpy as np
import pytest

from pose_toss.data.synthetic import (
    ANNOTATOR_SIGMAS,
    CUE_LIMBS,
    CUE_STRENGTH,
    Cue,
    SyntheticPoseDataset,
    limb_cues,
    load_lsp_poses,
    object_scale,
)


@pytest.fixture(scope="module")
def labels():
    ds = SyntheticPoseDataset(3000, 128, seed=3)
    return [ds.annotation(i) for i in range(len(ds))]


def test_record_fields_and_types():
    rec = SyntheticPoseDataset(4, 96, seed=1).record(2)
    assert rec["image"].shape == (96, 96, 3) and rec["image"].dtype == np.uint8
    assert rec["joints"].shape == rec["joints_true"].shape == (14, 2)
    assert rec["visibility"].shape == (14,)
    cov = rec["cov_true"]
    assert cov.shape == (28, 28)
    assert np.allclose(cov, cov.T)
    assert np.linalg.eigvalsh(cov).min() > 0


def test_same_seed_same_bytes_and_order_independence():
    a, b = SyntheticPoseDataset(6, 128, seed=9), SyntheticPoseDataset(6, 128, seed=9)
    ra, rb = a.record(4), b.record(4)
    assert ra["image"].tobytes() == rb["image"].tobytes()
    assert ra["joints"].tobytes() == rb["joints"].tobytes()
    assert ra["cov_true"].tobytes() == rb["cov_true"].tobytes()
    for i in (5, 0, 3):  # access order does not matter
        b.record(i)
    assert b.record(4)["image"].tobytes() == ra["image"].tobytes()
    c = SyntheticPoseDataset(6, 128, seed=10).record(4)
    assert c["image"].tobytes() != ra["image"].tobytes()


def test_cached_figures_are_the_rendered_ones_and_cannot_be_changed_through_a_record():
    """``cache_images`` keeps each rendered record: the same bytes as rendering again, in a fresh dict per call,
    with read-only arrays (a consumer that writes into the image fails loudly instead of changing later epochs)."""
    import torch

    from pose_toss.config import load_config
    from pose_toss.data.dataset import PoseDataset

    plain, cached = SyntheticPoseDataset(5, 64, seed=2), SyntheticPoseDataset(5, 64, seed=2, cache_images=True)
    for _ in range(2):
        for i in (3, 0, 3):
            a, b = plain.record(i), cached.record(i)
            assert a.keys() == b.keys()
            for key in ("image", "joints", "joints_true", "cov_true", "visibility"):
                assert a[key].tobytes() == b[key].tobytes(), key
    rec = cached.record(1)
    assert rec is not cached.record(1)
    with pytest.raises(ValueError, match="read-only"):
        rec["image"][0, 0] = 0
    rec["joints"] = None  # the dict is the caller's own
    assert cached.record(1)["joints"] is not None
    # The training pipeline (crop, augmentation, heatmaps) runs on cached records as on rendered ones.
    cfg = load_config(overrides=["data.input_size=64"])
    for train in (False, True):
        x, y = PoseDataset.from_config(plain, cfg.data, train=train), PoseDataset.from_config(cached, cfg.data,
                                                                                              train=train)
        for i in range(5):
            torch.manual_seed(i)
            np.random.seed(i)
            xi = x[i]
            torch.manual_seed(i)
            np.random.seed(i)
            yi = y[i]
            assert torch.equal(torch.as_tensor(xi["image"]), torch.as_tensor(yi["image"]))


def test_annotation_equals_record_labels():
    ds = SyntheticPoseDataset(5, 128, seed=2)
    for i in range(5):
        ann, rec = ds.annotation(i), ds.record(i)
        for k in ("joints", "joints_true", "cov_true", "visibility", "bbox"):
            assert np.array_equal(ann[k], rec[k])


def test_whitened_noise_has_identity_covariance(labels):
    """Label noise whitened by cov_true must be N(0, I): catches a wrong scale, a missing factor or a transpose."""
    def whitened(scale):
        rows = []
        for r in labels:
            chol = np.linalg.cholesky(scale * r["cov_true"])
            rows.append(np.linalg.solve(chol, (r["joints"] - r["joints_true"]).reshape(-1)))
        return np.array(rows)

    w = whitened(1.0)
    emp = np.cov(w, rowvar=False)
    var = np.diag(emp)
    assert np.abs(w.mean(axis=0)).max() < 0.08
    assert 0.9 < var.min() and var.max() < 1.1, (var.min(), var.max())
    assert np.abs(emp - np.diag(var)).max() < 0.1
    # The same check with the covariance off by a factor of 2 fails clearly.
    var2 = np.diag(np.cov(whitened(2.0), rowvar=False))
    assert var2.max() < 0.6


def test_heteroscedastic_and_correlated(labels):
    # The noise scale of the worst joint varies strongly from figure to figure (size, and cues up to 4x the std).
    worst = np.array([max(np.trace(r["cov_true"][2 * k:2 * k + 2, 2 * k:2 * k + 2]) for k in range(14))
                      for r in labels])
    assert np.percentile(worst, 90) / np.percentile(worst, 10) > 3
    checked = 0
    for r in labels:
        cued_joints = [j for c in r["cues"] for j in c.limb]
        for cue in r["cues"]:
            a, b = cue.limb
            cov, jt = r["cov_true"], r["joints_true"]
            along = (jt[b] - jt[a]) / np.linalg.norm(jt[b] - jt[a])
            ua, ub = np.zeros(28), np.zeros(28)
            ua[2 * a:2 * a + 2], ub[2 * b:2 * b + 2] = along, along
            corr = (ua @ cov @ ub) / np.sqrt((ua @ cov @ ua) * (ub @ cov @ ub))
            assert corr > 0.02  # the joints of a cued limb move together along it
            if cued_joints.count(b) > 1:  # the distal joint also ends another cued limb
                continue
            evals, evecs = np.linalg.eigh(cov[2 * b:2 * b + 2, 2 * b:2 * b + 2])
            assert abs(evecs[:, 1] @ along) > 0.99  # elongated along the limb
            # along the limb: the clean variance plus the cue's (gain^2 - 1) x severity^2 x strength^2 share
            clean = ANNOTATOR_SIGMAS[b] ** 2 * object_scale(r["bbox"]) ** 2 / 2
            extra = (4.0**2 - 1) * clean * (cue.severity * CUE_STRENGTH[cue.kind]) ** 2
            assert np.isclose(evals[1], clean + extra, rtol=1e-6)
            checked += 1
    assert checked > 500
    clean = [r for r in labels if not r["cues"]]
    for r in clean[:50]:
        std = ANNOTATOR_SIGMAS * object_scale(r["bbox"]) / np.sqrt(2)
        assert np.allclose(r["cov_true"], np.diag(np.repeat(std**2, 2)))  # clean figures: isotropic per joint


def test_annotator_noise_std_per_joint_over_20000_draws():
    """Each clean joint's label noise has the per-axis std sigma_j s / sqrt(2) of COCO's annotators, with s^2
    half the person box's area; an occluder at severity 1 makes the distal joint's along-limb std 4x that."""
    from pose_toss.skeletons import OKS_SIGMAS

    ds = SyntheticPoseDataset(1, 128, seed=0)
    ann = ds.annotation(0)
    joints, height = ann["joints_true"], ann["person_height"]
    box = ann["bbox"]
    s = np.sqrt(0.5 * box[2] * box[3])
    want = np.array([OKS_SIGMAS[n] for n in ds.skeleton.joint_names]) * s / np.sqrt(2)
    rng = np.random.default_rng(5)
    draws = np.stack([ds.labels(joints, height, [], rng)["joints"] - joints for _ in range(20000)])  # N x J x 2
    std = draws.std(axis=0)
    assert np.allclose(std, want[:, None], rtol=0.03), np.abs(std / want[:, None] - 1).max()
    assert 0.02 < want.min() / height and want.max() / height < 0.05  # 2-5 % of the figure's height per axis
    limb = (8, 7)  # right shoulder -> right elbow
    occluded = np.stack([ds.labels(joints, height, [Cue("occluder", limb, 1.0)], rng)["joints"] - joints
                         for _ in range(20000)])
    along = (joints[7] - joints[8]) / np.linalg.norm(joints[7] - joints[8])
    assert np.isclose((occluded[:, 7] @ along).std(), 4.0 * want[7], rtol=0.03)
    # The earlier model stays one setting away.
    old = SyntheticPoseDataset(1, 128, seed=0, label_noise="height", clean_noise=0.006)
    assert np.allclose(np.sqrt(np.diag(old.annotation(0)["cov_true"])), 0.006 * old.annotation(0)["person_height"])


def test_with_cues_changes_only_the_cue():
    """An intervention: the same figure with an occluder added differs only where the occluder is drawn."""
    ds = SyntheticPoseDataset(40, 96, seed=4)
    for i in range(40):
        own = ds.annotation(i)
        if own["cues"]:
            continue
        plain, occluded = ds.with_cues(i, []), ds.with_cues(i, [Cue("occluder", CUE_LIMBS[1], 1.0)])
        assert np.array_equal(plain["image"], ds.record(i)["image"])  # no cue: the record itself
        changed = (plain["image"] != occluded["image"]).any(-1)
        ys, xs = np.nonzero(changed)
        wrist = own["joints_true"][CUE_LIMBS[1][1]]
        assert changed.sum() > 20
        assert np.hypot(xs - wrist[0], ys - wrist[1]).max() < 0.45 * own["person_height"]
        assert np.array_equal(plain["joints_true"], occluded["joints_true"])
        b = 2 * CUE_LIMBS[1][1]
        assert occluded["cov_true"][b, b] + occluded["cov_true"][b + 1, b + 1] > \
            4 * (plain["cov_true"][b, b] + plain["cov_true"][b + 1, b + 1])
        return
    raise AssertionError("no figure without cues among the first 40")


def test_cues_cover_all_kinds_and_limbs(labels):
    kinds = {c.kind for r in labels for c in r["cues"]}
    limbs = {c.limb for r in labels for c in r["cues"]}
    assert kinds == {"occluder", "blur", "fade"}
    assert limbs == set(CUE_LIMBS)


def test_figure_is_in_frame(labels):
    vis = np.array([r["visibility"] for r in labels])
    assert vis.mean() > 0.97


def test_occluder_changes_the_image_where_the_noise_grows():
    """The cue is visible: pixels near an occluded distal joint differ from the limb's own colour."""
    ds = SyntheticPoseDataset(200, 128, seed=0)
    found, solid = 0, 0
    for i in range(200):
        ann = ds.annotation(i)
        occ = [c for c in ann["cues"] if c.kind == "occluder"]
        if not occ:
            continue
        rec = ds.record(i)
        a, b = occ[0].limb
        x, y = np.round(rec["joints_true"][b]).astype(int)
        if 4 <= x < 124 and 4 <= y < 124:
            patch = rec["image"][y - 2:y + 3, x - 2:x + 3].astype(float)
            # a solid patch: low spread once the sensor noise is averaged out (the patch sits on the limb's
            # distal part and may leave a joint at its edge uncovered)
            solid += patch.std(axis=(0, 1)).max() < 40
            found += 1
    assert found >= 5 and solid >= 0.8 * found, (solid, found)


def test_poses_from_lsp(shared_data):
    poses = load_lsp_poses(str(shared_data / "lsp" / "joints.mat"))
    assert poses.shape[1:] == (14, 2) and len(poses) > 1500
    ds = SyntheticPoseDataset(20, 128, seed=0, poses_from=str(shared_data / "lspet" / "joints.mat"))
    rec = ds.record(3)
    assert np.linalg.eigvalsh(rec["cov_true"]).min() > 0
    assert rec["visibility"].mean() > 0.5


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        SyntheticPoseDataset(0)
    with pytest.raises(IndexError):
        SyntheticPoseDataset(3).record(3)
    with pytest.raises(ValueError, match="cannot read as a MATLAB file"):
        import tempfile
        with tempfile.NamedTemporaryFile(suffix=".mat") as f:
            f.write(b"not a mat file")
            f.flush()
            load_lsp_poses(f.name)


def test_limb_cue_strengths_hand_case():
    cues = [[], [Cue("occluder", CUE_LIMBS[3], 0.8), Cue("fade", CUE_LIMBS[0], 0.4)]]
    got, _ = limb_cues(cues)
    want = np.zeros((2, len(CUE_LIMBS)))
    want[1, 3], want[1, 0] = 0.8 * CUE_STRENGTH["occluder"], 0.4 * CUE_STRENGTH["fade"]
    assert np.allclose(got, want)


def test_limb_cues_name_each_limbs_strongest_cue():
    from pose_toss.data.synthetic import CUE_KINDS, CUE_LIMBS, Cue

    upper, fore = CUE_LIMBS[0], CUE_LIMBS[1]
    cues = [[Cue("blur", upper, 1.0), Cue("occluder", upper, 0.5)],  # blur 0.6 beats an occluder at 0.5
            [Cue("fade", fore, 0.4)], []]
    strengths, kinds = limb_cues(cues)
    assert kinds.shape == strengths.shape == (3, len(CUE_LIMBS))
    assert kinds[0, 0] == CUE_KINDS.index("blur") and strengths[0, 0] == pytest.approx(0.6)
    assert kinds[1, 1] == CUE_KINDS.index("fade") and strengths[1, 1] == pytest.approx(0.2)
    assert ((kinds >= 0) == (strengths > 0)).all() and (kinds[2] == -1).all()


def test_cue_kind_weights_set_the_kinds_and_the_hidden_share():
    """Each cue's kind is drawn with probability weight / sum, so a figure's occluders, and with them the share
    of hidden joints, follow from cue_prob, the uniform number of cues in 1..max_cues and the occluder's weight."""
    from scipy import stats

    from pose_toss.data.synthetic import CUE_KINDS, J, occluded_joints

    n, cue_prob, max_cues, weights = 6000, 0.8, 3, (3.5, 1.0, 1.0)
    ds = SyntheticPoseDataset(n, 64, seed=2, cue_prob=cue_prob, max_cues=max_cues, cue_kind_weights=weights)
    cues = [ds.annotation(i)["cues"] for i in range(n)]
    counts = np.array([sum(c.kind == k for cs in cues for c in cs) for k in CUE_KINDS])
    assert stats.chisquare(counts, counts.sum() * np.array(weights) / sum(weights)).pvalue > 1e-3
    hidden = np.mean([occluded_joints(cs) for cs in cues])
    expected = cue_prob * (1 + max_cues) / 2 * weights[0] / sum(weights) / J  # 0.0727, as LSP's 7.3 %
    assert abs(hidden - expected) < 4 * np.sqrt(expected / (n * J)), (hidden, expected)
    # equal weights of any size draw exactly the figures made without weights
    for i in (0, 7, 31):
        a = SyntheticPoseDataset(40, 64, seed=5).annotation(i)
        b = SyntheticPoseDataset(40, 64, seed=5, cue_kind_weights=(2.0, 2.0, 2.0)).annotation(i)
        assert a["cues"] == b["cues"] and a["joints"].tobytes() == b["joints"].tobytes()
    only_blur = SyntheticPoseDataset(200, 64, seed=5, cue_kind_weights=(0, 1, 0))
    assert {c.kind for i in range(200) for c in only_blur.annotation(i)["cues"]} == {"blur"}
    with pytest.raises(ValueError, match="cue_kind_weights must be 3 weights >= 0"):
        SyntheticPoseDataset(3, cue_kind_weights=(1.0, -1.0, 1.0))
