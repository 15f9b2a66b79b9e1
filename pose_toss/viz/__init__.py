"""Drawing poses, their covariance ellipses, conditional poses and joint correlations."""

from pose_toss.viz.draw import (
    chi2_2dof,
    contact_sheet,
    draw_conditional,
    draw_correlation_links,
    draw_pose,
    draw_pose_scaled,
    ellipse_axes,
    write_png,
)

__all__ = ["chi2_2dof", "contact_sheet", "draw_conditional", "draw_correlation_links", "draw_pose",
           "draw_pose_scaled", "ellipse_axes", "write_png"]
