"""`pose-toss export`: the model with its covariance as one ONNX graph (mean, covariance, heatmaps, and each
joint's probability of being hidden when the model has an occlusion head).

ONNX has no autograd, so TIC's J is built in closed form (``PoseModel.tail_jacobian``), and the two
data-dependent-shaped operations of the bottleneck (adaptive pooling to the grid, bilinear resizing
back) become the constant matrices they are at a fixed input size. Everything else is the model's own
modules. Input: B x 3 x S x S floats in [0, 1] (normalisation inside), any batch size.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch
from torch import nn

from pose_toss.covariance import interpolation_matrix, tic_covariance, transform_joints
from pose_toss.models.covariance_heads import TICCovarianceHead
from pose_toss.models.heads import HeatmapHead
from pose_toss.outputs import atomic_write_bytes

OUTPUTS = ("mean", "cov", "heatmaps", "occluded")


def pooling_matrix(grid: int, height: int, width: int) -> torch.Tensor:
    """The (grid^2) x (H W) matrix of ``adaptive_avg_pool2d(x, grid)`` (a linear map, read off the unit maps)."""
    basis = torch.eye(height * width).reshape(height * width, 1, height, width)
    return torch.nn.functional.adaptive_avg_pool2d(basis, grid).reshape(height * width, grid * grid).T


def export_problem(model) -> str | None:
    """Why ``model`` cannot be exported, or None when it can."""
    if model.bottleneck_at != "head":
        return ("export needs z at the head's last layer (model.bottleneck_at: head): with z at the features, "
                "TIC's J crosses the whole head and has no closed form here")
    if model.config.use_hessian:
        return "export does not support TIC's Hessian term (model.use_hessian)"
    return None


class ExportablePoseModel(nn.Module):
    """``model``'s eval-mode forward with the covariance, in operations ONNX has; equal to it (tested)."""

    def __init__(self, model) -> None:
        super().__init__()
        problem = export_problem(model)
        if problem:
            raise ValueError(problem)
        self.model = model.eval()
        s = model.input_size
        with torch.no_grad():
            device = next(model.parameters()).device
            feats = model.features(torch.zeros(1, 3, s, s, device=device))
            context = model.head.trunk(feats)
        grid = model.bottleneck.grid
        self.heatmap = isinstance(model.head, HeatmapHead)
        self.register_buffer("pool", pooling_matrix(grid, *feats.shape[-2:]).to(device))
        if self.heatmap:
            self.register_buffer("resize", interpolation_matrix(grid, *context.shape[-2:], device=device))
        self.tic = isinstance(model.cov_head, TICCovarianceHead)
        if self.tic:
            scale = model.cov_head.jacobian_log_scale
            if not bool(torch.isfinite(scale)):
                raise ValueError("the TIC head's running J scale was never measured (the model never trained): "
                                 "train it, or run it once in training mode, before exporting")

    def forward(self, images: torch.Tensor):
        m = self.model
        feats = m.features(images)
        b = feats.shape[0]
        bn = m.bottleneck
        if bn.grid == 1:
            z = bn.down(feats.mean(dim=(2, 3)))
        else:
            z = bn.down((feats.flatten(2) @ self.pool.T).flatten(1))
        context = m.head.trunk(feats)
        up = bn.up(z)
        if self.heatmap:
            c, h, w = context.shape[1:]
            offset = (up.reshape(b, c, -1) @ self.resize.T).reshape(b, c, h, w)
        else:
            offset = up
        if self.heatmap:
            mean, heat, activation = m.head.tail_parts(context, offset)
        else:
            (mean, heat), activation = m.head.tail(context, offset), None
        mean = mean.float()
        if self.tic:
            head = m.cov_head
            jac = m.tail_jacobian(z, context)
            eps1, _, low = head.parameters_from_embedding(z.float(), head.jacobian_log_scale.exp())
            cov = tic_covariance(jac, eps1, low, floor=head.cov_floor, check=False)
        else:
            cov = m.cov_head(z)
        joints = mean.reshape(b, m.num_joints, 2)
        if m.local_scale is not None:
            prob = m.head.distribution(heat)
            features = m.local_scale_features(prob, activation, context, joints)
            log_scale = m.local_scale(m.normalise(images), joints, prob, m.head.out_stride, features)
            cov = transform_joints(cov, log_scale)
        outputs = (mean, cov.float()) + ((heat.float(),) if heat is not None else ())
        if m.occlusion_head is not None:
            outputs += (torch.sigmoid(m.occlusion_logits(context, joints)),)
        return outputs


def export_onnx(model, path: str | Path, opset: int = 17) -> list[str]:
    """Write ``model`` (with its covariance) as ONNX to ``path``; returns the output names."""
    was_training = model.training
    wrapper = ExportablePoseModel(model).eval()  # the exporter restores the wrapper's mode afterwards
    s = model.input_size
    example = torch.rand(2, 3, s, s, device=next(model.parameters()).device)
    names = list(OUTPUTS[:3 if isinstance(model.head, HeatmapHead) else 2])
    if model.occlusion_head is not None:
        names.append("occluded")
    axes = {"images": {0: "batch"}, **{n: {0: "batch"} for n in names}}
    blob = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on constant shapes
        torch.onnx.export(wrapper, (example,), blob, input_names=["images"], output_names=names,
                          dynamic_axes=axes, opset_version=opset, dynamo=False)
    model.train(was_training)

    atomic_write_bytes(path, blob.getvalue())
    return names
