"""MapFrame: where a map's cells sit in its image, and the resampling that honours it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from camloc.cam import normalize_maps, upsample_bilinear
from camloc.cam.frame import MapFrame, pixel_positions, to_frame, to_image
from camloc.pipeline.analysis import average_views

frames = st.builds(lambda oy, ox, sy, sx: MapFrame((oy, ox), (sy, sx)),
                   st.floats(-0.2, 0.3), st.floats(-0.2, 0.3), st.floats(0.02, 0.4), st.floats(0.02, 0.4))


def grid_sample_reference(maps: torch.Tensor, frame: MapFrame, size: tuple[int, int]) -> torch.Tensor:
    """The same reading done by ``F.grid_sample`` (corner-aligned cell centres, border padding)."""
    height, width = maps.shape[-2:]
    u_y = (pixel_positions(size[0]) - frame.origin[0]) / frame.step[0]
    u_x = (pixel_positions(size[1]) - frame.origin[1]) / frame.step[1]
    norm_y = 2 * u_y / max(height - 1, 1) - 1
    norm_x = 2 * u_x / max(width - 1, 1) - 1
    grid = torch.stack(torch.meshgrid(norm_x, norm_y, indexing="xy"), -1)[None].expand(len(maps), -1, -1, -1)
    return F.grid_sample(maps[:, None].double(), grid, mode="bilinear", padding_mode="border",
                         align_corners=True)[:, 0]


@settings(max_examples=40, deadline=None)
@given(frame=frames, height=st.integers(2, 9), width=st.integers(2, 9), out_h=st.integers(1, 40),
       out_w=st.integers(1, 40))
def test_to_image_reads_each_pixel_where_the_frame_says(frame, height, width, out_h, out_w):
    maps = torch.rand(3, height, width, dtype=torch.float64, generator=torch.Generator().manual_seed(height * width))
    ours = to_image(maps, frame, (out_h, out_w))
    torch.testing.assert_close(ours, grid_sample_reference(maps, frame, (out_h, out_w)), atol=1e-9, rtol=0)


@settings(max_examples=30, deadline=None)
@given(frame=frames, width=st.integers(2, 12), out_w=st.integers(8, 64))
def test_a_map_of_its_own_positions_reads_each_pixels_position(frame, width, out_w):
    """Linear interpolation reproduces a linear function: cells holding their centres' positions read, at every
    pixel between the first and last cell centre, that pixel's own position."""
    positions = frame.cell_positions(1, width)
    maps = positions.view(1, 1, width).expand(1, 2, width).contiguous()
    read = to_image(maps, frame, (2, out_w))[0, 0]
    pixels = pixel_positions(out_w)
    inside = (pixels >= positions[0]) & (pixels <= positions[-1])
    torch.testing.assert_close(read[inside], pixels[inside], atol=1e-12, rtol=0)
    before = read[pixels < positions[0]]  # the edge cell beyond the first centre
    torch.testing.assert_close(before, positions[0].expand_as(before), atol=1e-12, rtol=0)


@pytest.mark.parametrize("height,width,size", [(14, 14, (480, 640)), (10, 7, (33, 95)), (3, 5, (3, 5))])
def test_the_stretched_grid_is_a_frame_too(height, width, size):
    """``None`` (the grid stretched over the image) is the frame with cell ``i`` at ``(i + ½)/h``."""
    maps = torch.randn(4, height, width, generator=torch.Generator().manual_seed(0))
    stretched = MapFrame((0.5 / height, 0.5 / width), (1 / height, 1 / width))
    torch.testing.assert_close(to_image(maps, stretched, size), upsample_bilinear(maps, size), atol=1e-5, rtol=1e-5)


def test_of_network_puts_cells_on_input_pixels():
    frame = MapFrame.of_network((0.0, 14.0), (32.0, 32.0), (448, 448))
    assert frame.cell_positions(0, 2).tolist() == pytest.approx([0.5 / 448, 32.5 / 448], abs=1e-15)
    assert frame.cell_positions(1, 1).tolist() == pytest.approx([14.5 / 448], abs=1e-15)


@settings(max_examples=25, deadline=None)
@given(frame=frames, width=st.integers(2, 12), out_w=st.integers(4, 50))
def test_a_mirrored_views_map_flipped_back_lies_mirrored(frame, width, out_w):
    """The map of the mirrored image (cells in ``frame``), flipped back and laid through ``frame.mirrored``, is the
    mirror image of that map laid through ``frame``."""
    maps = torch.rand(2, 5, width, generator=torch.Generator().manual_seed(width))
    laid = normalize_maps(maps, (7, out_w), frame)
    back = normalize_maps(maps.flip(-1), (7, out_w), frame.mirrored(width))
    torch.testing.assert_close(back, laid.flip(-1), atol=1e-5, rtol=0)


def test_to_frame_carries_maps_between_grids():
    """A linear ramp over the image, seen by two views with other grids, reads the same at the target's cells."""
    source = MapFrame.of_network((0.0, 0.0), (32.0, 32.0), (560, 560))
    target = MapFrame.of_network((-12.0, 7.0), (32.0, 32.0), (336, 336))
    ramp = lambda frame, h, w: (frame.cell_positions(0, h)[:, None] * 3 + frame.cell_positions(1, w)[None])[None]  # noqa: E731
    carried = to_frame(ramp(source, 18, 18), source, target, (11, 11))
    expected = ramp(target, 11, 11)
    covered = [(target.cell_positions(axis, 11) >= source.origin[axis])
               & (target.cell_positions(axis, 11) <= source.cell_positions(axis, 18)[-1]) for axis in (0, 1)]
    inside = covered[0][:, None] & covered[1][None]
    torch.testing.assert_close(carried[0][inside], expected[0][inside], atol=1e-12, rtol=0)


def test_average_views_lays_every_view_where_it_looks():
    """Two views of one ramp — a plain one and a mirrored one flipped back, on other grids — average to the ramp."""
    plain = MapFrame.of_network((-3.0, 5.0), (32.0, 32.0), (448, 448))
    mirrored = MapFrame.of_network((2.0, 9.0), (32.0, 32.0), (560, 560)).mirrored(18)
    ramp = lambda frame, h, w: (frame.cell_positions(1, w)[None].expand(h, w) * 10)[None, None].float()  # noqa: E731
    probs = torch.ones(1, 2)
    maps, _, frame = average_views([(ramp(plain, 14, 14), probs), (ramp(mirrored, 18, 18), probs)],
                                   [plain, mirrored])
    assert frame == plain
    inside = slice(1, 13)  # cells whose centres both views cover
    torch.testing.assert_close(maps[..., inside], ramp(plain, 14, 14)[..., inside], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="every view needs its frame"):
        average_views([(ramp(plain, 14, 14), probs), (ramp(plain, 14, 14), probs)], [plain, None])


def test_frames_are_checked():
    with pytest.raises(ValueError, match="steps must be positive"):
        MapFrame((0.0, 0.0), (0.1, 0.0))
    with pytest.raises(ValueError, match="finite"):
        MapFrame((float("nan"), 0.0), (0.1, 0.1))
