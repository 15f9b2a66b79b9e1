import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from pose_toss import TICCovarianceHead, build_pose_model, load_model, save_model
from pose_toss.data.transforms import box_to_center_size
from pose_toss.models import PoseOutput

TINY = {"input_size": 64, "embed_dim": 8, "deconv_channels": 16, "cov_hidden": 16}


def tiny(covariance="tic", head="heatmap", backbone="resnet18", **kw):
    torch.manual_seed(0)
    return build_pose_model(backbone, 14, head=head, covariance=covariance, **{**TINY, **kw})


@pytest.mark.parametrize("head", ["heatmap", "regression"])
@pytest.mark.parametrize("covariance", ["tic", "full", "diagonal", "identity"])
def test_shapes_and_spd(head, covariance):
    model = tiny(covariance, head)
    out = model(torch.rand(3, 3, 64, 64))
    assert out.mean.shape == (3, 28) and out.cov.shape == (3, 28, 28) and out.embedding.shape == (3, 8)
    assert (out.heatmaps.shape == (3, 14, 16, 16)) if head == "heatmap" else out.heatmaps is None
    assert torch.allclose(out.cov, out.cov.transpose(1, 2))
    assert torch.linalg.eigvalsh(out.cov.double()).min() > 0
    loss = out.mean.sum() + out.cov.diagonal(dim1=1, dim2=2).sum()
    loss.backward()  # everything trainable gets a gradient path


def test_vit_backbone_at_configured_size():
    model = tiny(backbone="vit_tiny_patch16_224", input_size=64)
    assert model.backbone.stride == 16
    out = model(torch.rand(2, 3, 64, 64))
    assert out.mean.shape == (2, 28) and torch.isfinite(out.cov).all()


@pytest.mark.parametrize("bottleneck_at", ["head", "features"])
def test_tic_equals_formula_by_hand(bottleneck_at):
    model = tiny("tic", bottleneck_at=bottleneck_at).eval()
    head = model.cov_head
    head.jacobian_log_scale.fill_(math.log(0.37))  # the running rms(J) that eps1 is measured against
    images = torch.rand(2, 3, 64, 64)
    out = model(images)
    with torch.no_grad():
        feats = model.features(images)
        z = model.embed(feats)
        ctx = model.decoder_input(feats)
        raw = head.mlp(z)
        low = head.parameters_from_embedding(z, torch.tensor(0.37))[2]
        assert torch.allclose(model.decode(z, ctx), out.mean)
    for i in range(2):
        jac = torch.autograd.functional.jacobian(lambda zi, i=i: model.decode(zi[None], ctx[i:i + 1])[0], z[i])
        assert jac.abs().max() > 1e-3  # z moves the mean wherever it enters
        # eps1 = s / r: s from the MLP in pixels, r the running scale of J
        eps1 = torch.nn.functional.softplus(raw[i, 0]) / math.log(2) * head.init_std / 0.37
        expected = eps1**2 * jac @ jac.T + low[i] @ low[i].T + head.cov_floor * torch.eye(28)
        assert torch.allclose(out.cov[i], expected, rtol=1e-4, atol=1e-4)


def test_eps1_scale_runs_over_batches_and_keeps_each_samples_jacobian():
    # The scale eps1 is measured against is a running average (log space, momentum 0.1) of the batches'
    # median rms(J): the first training batch sets it, later ones read the old value and then move it,
    # eval only reads it. Within a batch it is one number, so a sample whose J is twice as large gets a
    # Taylor term four times as large.
    from pose_toss.covariance import jacobian, rms_scale

    head = TICCovarianceHead(embed_dim=2, num_joints=2, init_std=1.0)
    weight = torch.nn.Parameter(torch.randn(4, 2))
    decode = lambda z: (z[:, :1] * z) @ weight.T  # noqa: E731  (J grows with z[0])
    z1, z2 = torch.tensor([[1.0, 0.5], [2.0, 0.5]]), torch.tensor([[3.0, 1.0], [3.0, -1.0]])
    batch_scale = lambda z: rms_scale(jacobian(decode, z)).log().median()  # noqa: E731
    head.eval()
    assert torch.isnan(head.jacobian_log_scale)  # nothing seen yet: eval uses its own batch
    head.train()
    first = head.parts(z1, decode)
    assert head.jacobian_log_scale.item() == pytest.approx(batch_scale(z1).item(), rel=1e-6)
    torch.testing.assert_close(first.eps1, torch.full((2,), 1.0 / batch_scale(z1).exp().item()))
    head.train()
    before = head.jacobian_log_scale.clone()
    second = head.parts(z2, decode)
    torch.testing.assert_close(second.eps1, torch.full((2,), 1.0 / before.exp().item()))  # the old value
    assert head.jacobian_log_scale.item() == pytest.approx(0.9 * before.item() + 0.1 * batch_scale(z2).item())
    head.eval()
    frozen = head.jacobian_log_scale.clone()
    parts = head.parts(z1, decode)
    assert torch.equal(head.jacobian_log_scale, frozen)
    taylor = (parts.eps1**2 * (parts.jacobian**2).sum((1, 2))).detach()
    norms = (parts.jacobian**2).sum((1, 2))
    assert (taylor[1] / taylor[0]).item() == pytest.approx((norms[1] / norms[0]).item(), rel=1e-5)
    assert norms[1] / norms[0] > 2


def test_a_grid_map_moves_the_peaks_where_a_channel_offset_cannot():
    # Make the head's last pre-activation a positive constant: every channel is on everywhere. A per-channel
    # offset (grid 1) then shifts each heatmap's logits uniformly, which the soft-argmax ignores: J = 0.
    # A spatially varying map (grid 4) moves the peaks: J has full rank min(D, E).
    for grid, rank in ((1, 0), (4, 8)):
        model = tiny("tic", bottleneck_grid=grid).eval()
        with torch.no_grad():
            bn = model.head.up[-1]
            bn.weight.zero_()
            bn.bias.fill_(5.0)
            model.bottleneck.up.weight.mul_(0.1)  # offsets well inside the +-5 margin: no ReLU switches off
        out = model(torch.rand(3, 3, 64, 64))
        singular = torch.linalg.svdvals(out.tic.jacobian.double())
        if grid == 1:
            assert out.tic.jacobian.abs().max() < 1e-5
        else:
            assert (singular > 1e-3 * singular[:, :1]).sum(1).tolist() == [rank] * 3


def test_covariance_losses_train_no_backbone_unless_asked():
    # TIC-TAC reads z detached in the covariance network: Faithful (MSE + NLL of the detached residual) then
    # gives the backbone exactly MSE's gradient, and a covariance-only loss gives it none.
    from pose_toss import losses

    images, target = torch.rand(4, 3, 64, 64), torch.rand(4, 28) * 64
    vis = torch.ones(4, 14)

    def backbone_grads(loss_fn, **kw):
        model = tiny(**{"covariance": "tic", **kw}).train()
        with torch.no_grad():  # the zero-initialised output layer would pass no gradient to z either way
            model.cov_head.mlp[-1].weight.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(1))
        out = model(images)
        loss_fn(out).sum().backward()
        return torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel())
                          for p in model.backbone.parameters()])

    mse = backbone_grads(lambda o: losses.mse(o.mean, target, vis))
    faithful = backbone_grads(lambda o: losses.faithful(o.mean, o.cov, target, vis))
    torch.testing.assert_close(faithful, mse, rtol=1e-5, atol=1e-7)
    trace = backbone_grads(lambda o: torch.diagonal(o.cov, dim1=1, dim2=2).sum(-1))
    assert trace.abs().max() == 0
    trains = backbone_grads(lambda o: torch.diagonal(o.cov, dim1=1, dim2=2).sum(-1), covariance_trains_backbone=True)
    assert trains.abs().max() > 0
    for covariance in ("full", "diagonal"):
        assert backbone_grads(lambda o: torch.diagonal(o.cov, dim1=1, dim2=2).sum(-1),
                              covariance=covariance).abs().max() == 0


def test_jacobian_is_float32_under_autocast():
    # bf16 autocast must not reach J: given the same (bf16-made) inputs, J under autocast equals J without it,
    # while a plain autograd Jacobian under autocast is visibly off.
    from pose_toss.covariance import jacobian

    model = tiny("tic").eval()
    images = torch.rand(3, 3, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        feats = model.features(images)
        z, ctx = model.embed(feats), model.decoder_input(feats)
        out = model(images)
    assert ctx.dtype == torch.bfloat16 and out.cov.dtype == torch.float32 and out.tic.jacobian.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = jacobian(model.decode, z, ctx)
    reference = jacobian(model.decode, z.float(), ctx.float())
    torch.testing.assert_close(under, reference, rtol=1e-5, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        naive = torch.autograd.functional.jacobian(lambda zz: model.decode(zz, ctx[:1].float()), z[:1].float())
    assert (naive[0, :, 0] - reference[0]).abs().max() > 1e-3 * reference[0].abs().max()


@pytest.mark.parametrize("bottleneck_at", ["head", "features"])
def test_jacobian_is_taken_in_eval_mode_without_gradient(bottleneck_at):
    model = tiny("tic", bottleneck_at=bottleneck_at).train()
    model.backbone.eval()  # the features' own batch statistics are not J's business
    images = torch.rand(4, 3, 64, 64)
    model(images)  # the first batch sets eps1's running scale; later ones only read it before moving it
    state = {k: v.clone() for k, v in model.state_dict().items()}
    a = model(images).cov
    model.load_state_dict(state)  # the same running statistics for both calls
    b = model(images[:2]).cov  # with batch statistics in J, the first two samples would change
    assert torch.allclose(a[:2], b, rtol=1e-5, atol=1e-5)
    model.backbone.train()
    assert model.training and model.head.training  # modes restored


def test_no_nan_for_zero_or_huge_embedding():
    head = TICCovarianceHead(embed_dim=4, num_joints=3)
    lin = torch.nn.Linear(4, 6)
    for z in (torch.zeros(2, 4), torch.full((2, 4), 1e12), torch.tensor([[float("inf"), 0, 0, 0]] * 2)):
        cov = head(z, lambda zz: torch.tanh(lin(zz)) * 50)
        assert torch.isfinite(cov).all() and torch.linalg.eigvalsh(cov.double()).min() > 0
    for cov_type in ("full", "diagonal"):
        m = tiny(cov_type)
        cov = m.cov_head(torch.full((2, 8), 1e12))
        assert torch.isfinite(cov).all() and torch.linalg.eigvalsh(cov.double()).min() > 0


class FixedOutput(torch.nn.Module):
    """Stands in for a network: joints at fixed crop coordinates, a known covariance."""

    def __init__(self, model, mean, cov):
        super().__init__()
        self.model, self.mean, self.cov = model, mean, cov

    def __call__(self, images):
        b = images.shape[0]
        return PoseOutput(self.mean.expand(b, -1), self.cov.expand(b, -1, -1), torch.zeros(b, 8))


def test_predict_maps_back_to_original_pixels(monkeypatch):
    model = tiny("diagonal")
    crop_mean = torch.tensor([[10.0, 20.0] * 14])
    rng = np.random.default_rng(0)
    a = rng.normal(size=(28, 28))
    crop_cov = torch.tensor(a @ a.T, dtype=torch.float32)[None]
    stub = FixedOutput(model, crop_mean, crop_cov)
    monkeypatch.setattr(type(model), "__call__", lambda self, x: stub(x))
    image = np.zeros((300, 200, 3), np.uint8)
    box = np.array([40.0, 60.0, 80.0, 120.0])
    res = model.predict([image], boxes=[[box]])[0]
    center, size = box_to_center_size(box, 1.25)
    k = size / 64.0  # original pixels per crop pixel
    expected = center + (np.array([10.0, 20.0]) - 31.5) * k
    assert np.allclose(res["joints"][0], np.tile(expected, (14, 1)), atol=1e-4)
    assert np.allclose(res["cov"][0], crop_cov[0].numpy() * k**2, rtol=1e-5)
    whole = model.predict(image)[0]  # no box: the whole image, its longer side fitted to the input
    k = 300 / 64.0
    assert np.allclose(whole["joints"][0, 0], np.array([99.5, 149.5]) + (np.array([10.0, 20.0]) - 31.5) * k)


def test_predict_rejects_bad_images():
    model = tiny("identity")
    with pytest.raises(ValueError, match=r"image 0: expected an H x W x 3 RGB array, got shape \(10, 10, 2\)"):
        model.predict([np.zeros((10, 10, 2), np.uint8)])
    with pytest.raises(ValueError, match=r"image 0: expected a uint8 image \(values 0-255\), got dtype float32"):
        model.predict([np.zeros((10, 10, 3), np.float32)])
    with pytest.raises(ValueError, match="got 2 box lists for 1 images"):
        model.predict([np.zeros((10, 10, 3), np.uint8)], boxes=[[], []])


def test_save_and_load_round_trip(tmp_path):
    model = tiny("tic").eval()
    path = save_model(model, tmp_path / "m.safetensors")
    again = load_model(path).eval()
    assert again.config == model.config
    x = torch.rand(2, 3, 64, 64)
    a, b = model(x), again(x)
    assert torch.equal(a.mean, b.mean) and torch.allclose(a.cov, b.cov)
    with pytest.raises(FileNotFoundError, match="model file not found"):
        load_model(tmp_path / "none.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_model(tmp_path / "junk.safetensors")


def _flat_metadata(model) -> dict:
    """The metadata earlier versions wrote: the model's options beside num_joints, input_size and heatmap_stride in
    one flat dict (``pretrained`` left out)."""
    from dataclasses import asdict

    flat = {k: v for k, v in asdict(model.config).items() if k != "pretrained"}
    return {**flat, "num_joints": model.num_joints, "input_size": model.input_size,
            "heatmap_stride": model.heatmap_stride}


def test_model_files_from_earlier_versions_load_as_what_they_were(tmp_path):
    # The flat metadata of the files written before the model section was stored whole; and the files written
    # before the grid bottleneck, the detached covariance input and the relative eps1, which have none of those
    # keys: they must rebuild the per-channel offset, the absolute eps1 and the old input.
    from safetensors.torch import load_file, save_file

    recent = tiny("diagonal", deconv_channels=8).eval()
    weights = load_file(str(save_model(recent, tmp_path / "recent.safetensors")))
    flat = {k: v for k, v in _flat_metadata(recent).items() if k != "local_covariance"}
    save_file(weights, str(tmp_path / "flat.safetensors"), metadata={"pose_toss_model": json.dumps(flat)})
    again = load_model(tmp_path / "flat.safetensors").eval()
    assert again.config == recent.config and again.num_joints == 14 and again.input_size == 64
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(recent(x).cov, again(x).cov)

    old = tiny("tic", bottleneck_grid=1, covariance_trains_backbone=True, tic_eps_relative=False).eval()
    path = save_model(old, tmp_path / "new.safetensors")
    config = _flat_metadata(old)
    for key in ("bottleneck_grid", "covariance_trains_backbone", "tic_eps_relative", "local_covariance"):
        del config[key]
    save_file(load_file(str(path)), str(tmp_path / "old.safetensors"), metadata={"pose_toss_model": json.dumps(config)})
    again = load_model(tmp_path / "old.safetensors").eval()
    assert again.config == old.config and again.bottleneck.grid == 1
    x = torch.rand(2, 3, 64, 64)
    a, b = old(x), again(x)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.cov, b.cov)
    raw = torch.nn.functional.softplus(again.cov_head.mlp(b.embedding)[:, 0]) / math.log(2)
    torch.testing.assert_close(b.tic.eps1, raw)  # the absolute eps1 of those files


def test_channels_last_weights_give_the_same_model(tmp_path):
    # The trainer keeps conv weights channels-last for speed: outputs, the TIC Jacobian and saved files
    # must not depend on it.
    model = tiny("tic").eval()
    fast = tiny("tic").eval().to(memory_format=torch.channels_last)
    assert next(fast.backbone.parameters()).is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 64, 64)
    a, b = model(x), fast(x)
    torch.testing.assert_close(b.mean, a.mean, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(b.cov, a.cov, rtol=1e-3, atol=1e-3)
    fast.train()
    fast(x).cov.diagonal(dim1=1, dim2=2).sum().backward()
    again = load_model(save_model(fast.eval(), tmp_path / "m.safetensors")).eval()
    assert all(p.is_contiguous() for p in again.parameters())
    c = again(x)
    torch.testing.assert_close(c.mean, fast(x).mean, rtol=1e-4, atol=1e-3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown timm backbone 'resnet_nope'"):
        build_pose_model("resnet_nope", 14)
    with pytest.raises(ValueError, match="embed_dim must be an integer >= 1, got 0"):
        build_pose_model("resnet18", 14, embed_dim=0, input_size=64)
    with pytest.raises(ValueError, match="covariance must be one of"):
        build_pose_model("resnet18", 14, covariance="wishart", input_size=64)
    model = tiny("identity")
    with pytest.raises(ValueError,
                       match=r"expected images as a B x 3 x 64 x 64 float tensor in \[0, 1\], got \(2, 1, 64, 64\)"):
        model(torch.rand(2, 1, 64, 64))
    with pytest.raises(ValueError, match=r"B x 3 x 64 x 64 .*got \(2, 3, 96, 96\)"):
        model(torch.rand(2, 3, 96, 96))
    head = TICCovarianceHead(embed_dim=4, num_joints=3)
    with pytest.raises(ValueError, match="decode_fn returned 5 values per sample, expected 2 x num_joints = 6"):
        head(torch.zeros(2, 4), torch.nn.Linear(4, 5))
    with pytest.raises(ValueError, match="embed_dim must be >= 1"):
        TICCovarianceHead(embed_dim=0, num_joints=3)


def test_local_pretrained_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(1)
    src = timm.create_model("resnet18", pretrained=False)
    save_file(src.state_dict(), str(tmp_path / "r18.safetensors"))
    model = build_pose_model("resnet18", 14, input_size=64, pretrained=str(tmp_path / "r18.safetensors"),
                             deconv_channels=16)
    assert torch.equal(model.backbone.body.conv1.weight, src.conv1.weight)
    with pytest.raises(FileNotFoundError, match="pretrained weights file not found"):
        build_pose_model("resnet18", 14, input_size=64, pretrained=str(tmp_path / "none.pth"))


def test_readme_plugin_example_runs():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(# plugin example.*?)```", readme, flags=re.S)
    assert len(blocks) == 1, "README must hold exactly one '# plugin example' block"
    code = blocks[0]
    code_lines = [line for line in code.splitlines()[1:] if line.strip()]
    assert len(code_lines) < 25
    scope: dict = {}
    exec(compile(code, "README plugin example", "exec"), scope)
    mean, cov = scope["mean"], scope["cov"]
    assert mean.shape == (2, 28) and cov.shape == (2, 28, 28)
    assert torch.linalg.eigvalsh(cov.double()).min() > 0


@pytest.mark.parametrize("kwargs", [{}, {"bottleneck_grid": 1}, {"feature_stride": 8, "heatmap_stride": 8},
                                    {"feature_stride": 4, "heatmap_stride": 4}])
def test_closed_form_jacobian_equals_autograd(kwargs):
    """J of the heatmap tail in closed form (the default) against torch.func's reverse passes, in float64 so
    that only the formula can differ: grid maps and the earlier per-channel offset, a head with
    deconvolutions and one without (no ReLU in its tail); then the whole TIC covariance, in training mode."""
    from pose_toss.covariance import jacobian

    torch.manual_seed(0)
    model = build_pose_model("resnet10t", num_joints=14, embed_dim=8, input_size=64, deconv_channels=16,
                             cov_hidden=16, **kwargs).double().eval()
    with torch.no_grad():
        model.head.log_beta.fill_(1.3)  # sharper softmax than at initialisation
    images = torch.rand(3, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        feats = model.features(images)
        z, ctx = model.embed(feats), model.decoder_input(feats)
    closed = model.tail_jacobian(z, ctx)
    reference = jacobian(model.decode, z, ctx)
    assert closed.dtype == torch.float64 and reference.abs().max() > 1e-6
    torch.testing.assert_close(closed, reference, rtol=1e-10, atol=1e-12 * float(reference.abs().max()))
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fast = model(images)
    model.load_state_dict(state)
    model.closed_form_jacobian = False
    plain = model(images)
    torch.testing.assert_close(fast.tic.jacobian, plain.tic.jacobian, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(fast.cov, plain.cov, rtol=1e-10, atol=1e-10)


@pytest.mark.cuda
def test_closed_form_jacobian_on_cuda_under_bf16_autocast():
    """On CUDA, with bf16 autocast as in training: the closed form is computed in float32 and equals the
    reverse passes taken in float32 on the same inputs."""
    from pose_toss.covariance import jacobian

    torch.manual_seed(0)
    model = build_pose_model("resnet10t", num_joints=14, embed_dim=8, input_size=64, deconv_channels=16,
                             cov_hidden=16).cuda().eval()
    images = torch.rand(4, 3, 64, 64, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        feats = model.features(images)
        z, ctx = model.embed(feats), model.decoder_input(feats)
        closed = model.tail_jacobian(z, ctx)
        out = model(images)
    assert closed.dtype == torch.float32 and out.cov.dtype == torch.float32
    reference = jacobian(model.decode, z.float(), ctx.float())
    # (cuDNN may run the 1 x 1 convolution in TF32: agreement to its ~1e-3, far below a wrong formula's O(1).)
    torch.testing.assert_close(closed, reference, rtol=1e-2, atol=5e-3 * float(reference.abs().max()))


def _local_term(model, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z, the head's trunk output, the local term) of an eval-mode model with a local scale, piece by piece."""
    with torch.no_grad():
        feats = model.backbone(model.normalise(images))
        z, context = model.embed(feats), model.decoder_input(feats)
        return z, context, model.local_log_scale(z, context, model.normalise(images))


def test_local_scale_starts_as_no_change_reads_the_image_and_trains_no_backbone(tmp_path):
    """The per-joint local scale multiplies each joint's rows and columns of the covariance by exp(log-scale):
    zero at initialisation (the covariance is the plain model's), a function of the pixels around the joint
    afterwards, trained by covariance losses without any gradient reaching the backbone; it survives a
    save and load."""
    from pose_toss.covariance import scale_joints

    plain, local = tiny("tic").eval(), tiny("tic", local_covariance=True).eval()
    local.load_state_dict(plain.state_dict(), strict=False)
    images = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(local(images).cov, plain(images).cov)
    with torch.no_grad():
        local.local_scale.out.weight.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(1))
    out = local(images)
    z, context, log_scale = _local_term(local, images)
    torch.testing.assert_close(out.cov, scale_joints(plain(images).cov, log_scale))
    joints = out.mean.reshape(2, 14, 2)
    far = images.clone()  # repaint a square around joint 0 of the first image only
    x, y = joints[0, 0].round().long().clamp(4, 59).tolist()
    far[0, :, y - 4:y + 4, x - 4:x + 4] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]
    with torch.no_grad():
        changed = local.local_log_scale(z, context, local.normalise(far)) - log_scale
    assert changed[0, 0].abs() > 1e-4 and changed[1].abs().max() == 0
    local.train()
    local(images).cov.diagonal(dim1=1, dim2=2).sum().backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in local.backbone.parameters())
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in local.local_scale.parameters())
    path = save_model(local.eval(), tmp_path / "local.safetensors")
    again = load_model(path).eval()
    torch.testing.assert_close(again(images).cov, local(images).cov)
    with pytest.raises(ValueError, match="local_covariance reads each joint's heatmap"):
        tiny("tic", head="regression", local_covariance=True)


def test_local_term_can_read_the_heads_activation_under_each_joints_heatmap():
    """``pooled_under_heatmaps`` is each joint's activation averaged under its heatmap (against numpy); with
    ``local_features`` the local term starts as no change and then depends on those pooled features."""
    import numpy as np

    from pose_toss.models.heads import pooled_under_heatmaps

    g = torch.Generator().manual_seed(0)
    prob = torch.rand(2, 3, 4, 5, generator=g)
    prob = prob / prob.sum((2, 3), keepdim=True)
    act = torch.randn(2, 6, 4, 5, generator=g)
    want = np.einsum("bjhw,bchw->bjc", prob.numpy(), act.numpy())
    np.testing.assert_allclose(pooled_under_heatmaps(prob, act).numpy(), want, rtol=1e-5, atol=1e-6)

    plain, local = tiny("tic").eval(), tiny("tic", local_covariance=True, local_features=True).eval()
    assert local.local_scale.feature_dim == local.head.out_channels
    local.load_state_dict(plain.state_dict(), strict=False)
    images = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(local(images).cov, plain(images).cov)  # zero-initialised output: S = I
    with torch.no_grad():
        for p in local.local_scale.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        joints, prob = torch.rand(2, 14, 2) * 64, torch.full((2, 14, 16, 16), 1 / 256)
        features = torch.randn(2, 14, local.head.out_channels, generator=g)
        base = local.local_scale(local.normalise(images), joints, prob, local.head.out_stride, features)
        moved = local.local_scale(local.normalise(images), joints, prob, local.head.out_stride, features + 1.0)
    assert base.shape == (2, 14) and not torch.allclose(base, moved)  # the same patches, other features
    with pytest.raises(ValueError, match="reads 16 features per joint; got none"):
        local.local_scale(local.normalise(images), joints, prob, local.head.out_stride)


@pytest.mark.parametrize("form", ["scale", "affine"])
def test_tic_share_of_a_locally_scaled_covariance_reads_the_scaled_jacobian(form):
    """With a local term, Σ = T Σ_TIC Tᵀ, so the part J carries is ε₁² (T J)(T J)ᵀ: the model hands that J to its
    diagnostics, and J's share of Σ stays within (0, 1] however large T makes Σ_TIC."""
    from pose_toss.covariance import taylor_share

    model = tiny("tic", local_covariance=True, local_form=form).eval()
    with torch.no_grad():
        model.local_scale.out.weight.normal_(0.0, 2.0, generator=torch.Generator().manual_seed(2))
        model.local_scale.out.bias.fill_(-2.0)  # shrink every joint a lot, as trained demo models do
    images = torch.rand(3, 3, 64, 64)
    out = model(images)
    z, context, local = _local_term(model, images)
    with torch.no_grad():
        jac = model.tail_jacobian(z, context)
    # T J built by hand from the per-joint 2 x 2 blocks.
    blocks = torch.zeros(3, 28, 28)
    for j in range(14):
        if form == "scale":
            t = torch.eye(2) * local[:, j].exp()[:, None, None]
        else:
            t = torch.zeros(3, 2, 2)
            t[:, 0, 0], t[:, 1, 1], t[:, 1, 0] = local[:, j, 0].exp(), local[:, j, 1].exp(), local[:, j, 2]
        blocks[:, 2 * j:2 * j + 2, 2 * j:2 * j + 2] = t
    torch.testing.assert_close(out.tic.jacobian, blocks @ jac, rtol=1e-4, atol=1e-6)
    j_part = out.tic.eps1[:, None, None] ** 2 * out.tic.jacobian @ out.tic.jacobian.transpose(1, 2)
    share = taylor_share(out.tic.jacobian, out.tic.eps1, out.cov)
    torch.testing.assert_close(share.float(), (j_part.diagonal(dim1=1, dim2=2).sum(-1)
                                               / out.cov.diagonal(dim1=1, dim2=2).sum(-1)).float())
    assert ((share > 0) & (share <= 1)).all()
