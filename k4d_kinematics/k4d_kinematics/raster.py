"""CPU triangle rasteriser (numba) producing exact per-pixel depth and a label per pixel.

Used by ``k4d_kinematics.pointmap``; works in the camera optical frame (z forward, x right, y down)
with pixel centres at integer coordinates (u = fx x / z + cx).

Rules
- Coverage: vertices are snapped to fixed point (1/256 pixel) and edge functions are evaluated exactly
  in int64, with the top-left fill rule (y down). Triangles that share an edge (same vertex indices)
  therefore cover every pixel centre on it exactly once: no cracks, no double hits.
- Depth: 1/z is affine in (u, v) over a planar triangle. Its coefficients are computed per triangle in
  float64 from the camera-frame vertices (not from the snapped ones), so the depth at a pixel centre
  is the exact ray/plane intersection. The nearest surface (largest 1/z) wins; ties keep the first.
- Back-face culling: only for triangles flagged ``cull`` (links whose mesh is closed and outward-wound).
  The sign of the snapped screen-space area decides, so culling agrees exactly with coverage: the
  front faces of a closed mesh then cover every pixel centre of its silhouette, and skipping back faces
  cannot change the nearest surface seen from outside the mesh.
- Near plane: triangles entirely at z <= near are dropped; triangles crossing it are clipped in camera
  space (Sutherland-Hodgman against z = near) and the 3-4 vertex remainder is rasterised as a fan.
  A triangle whose clipped vertices project beyond +-2^22 pixels (only possible within micrometres of
  the near plane) is dropped.
- Parallelism: triangles are split into one contiguous chunk per thread; each thread writes its own
  1/z and label buffers, which are then merged (max 1/z) over the union of the touched boxes.
"""
from __future__ import annotations

import os

# Busy-waiting OpenMP workers collapse under CPU contention (measured ~4x slower per frame on 2 shared
# cores); passive waiting costs only microseconds per frame when the cores are idle. Must be set before
# the OpenMP runtime starts (first parallel call); a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import numpy as np  # noqa: E402
from numba import njit, prange  # noqa: E402

SUBPIXEL_BITS = 8
_ONE = 1 << SUBPIXEL_BITS
_GUARD_PX = float(1 << 22)


@njit(cache=True, inline="always")
def _fix(v):
    return np.int64(np.floor(v * 256.0 + 0.5))


@njit(cache=True)
def _raster_tri(x0, y0, x1, y1, x2, y2, A, B, C, lo, hi, label, cull, inv, lab, box):
    """Rasterise one fixed-point triangle into inv (H, W) float32 (1/z) and lab (H, W) int16.

    A, B, C: 1/z = A u + B v + C (u, v in pixels), clamped to [lo, hi] (the vertices' 1/z range, which
    contains every interior value of a planar triangle; this bounds sliver triangles' round-off).
    cull: skip the triangle if it is back-facing. The sign of the snapped screen area decides (negative =
    front-facing, since sign(area) = sign(p0 . (p1 - p0) x (p2 - p0)) for z > 0), consistently with coverage.
    box: (4,) int64 touched [r0, r1, c0, c1], updated.
    """
    H, W = inv.shape
    area = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)
    if area == 0 or (cull and area > 0):
        return
    if area < 0:  # make every triangle positively oriented (interior: all edge functions > 0)
        x1, y1, x2, y2 = x2, y2, x1, y1
    # pixel-centre bounding box: centres are multiples of 256 in fixed point
    c0 = max((min(x0, min(x1, x2)) + 255) >> 8, 0)
    c1 = min(max(x0, max(x1, x2)) >> 8, W - 1)
    r0 = max((min(y0, min(y1, y2)) + 255) >> 8, 0)
    r1 = min(max(y0, max(y1, y2)) >> 8, H - 1)
    if c0 > c1 or r0 > r1:
        return
    # edge a->b: E(p) = (bx-ax)(py-ay) - (by-ay)(px-ax); edges (1->2), (2->0), (0->1)
    dx0, dy0 = x2 - x1, y2 - y1
    dx1, dy1 = x0 - x2, y0 - y2
    dx2, dy2 = x1 - x0, y1 - y0
    # top-left rule (y down, positive orientation): include E == 0 on top (dy == 0, dx > 0) or left (dy < 0) edges
    b0 = 0 if (dy0 < 0 or (dy0 == 0 and dx0 > 0)) else -1
    b1 = 0 if (dy1 < 0 or (dy1 == 0 and dx1 > 0)) else -1
    b2 = 0 if (dy2 < 0 or (dy2 == 0 and dx2 > 0)) else -1
    px, py = c0 << 8, r0 << 8
    e0r = dx0 * (py - y1) - dy0 * (px - x1) + b0
    e1r = dx1 * (py - y2) - dy1 * (px - x2) + b1
    e2r = dx2 * (py - y0) - dy2 * (px - x0) + b2
    sx0, sx1, sx2 = -dy0 * _ONE, -dy1 * _ONE, -dy2 * _ONE
    sy0, sy1, sy2 = dx0 * _ONE, dx1 * _ONE, dx2 * _ONE
    lab_v = np.int16(label)
    hit = False
    for r in range(r0, r1 + 1):
        e0, e1, e2 = e0r, e1r, e2r
        zr = B * r + C
        for c in range(c0, c1 + 1):
            if (e0 | e1 | e2) >= 0:  # all three non-negative
                iz = np.float32(min(max(A * c + zr, lo), hi))
                if iz > inv[r, c]:
                    inv[r, c] = iz
                    lab[r, c] = lab_v
                    hit = True
            e0 += sx0
            e1 += sx1
            e2 += sx2
        e0r += sy0
        e1r += sy1
        e2r += sy2
    if hit:
        box[0] = min(box[0], r0)
        box[1] = max(box[1], r1)
        box[2] = min(box[2], c0)
        box[3] = max(box[3], c1)


@njit(cache=True, inline="always")
def _quick_reject(x0, y0, x1, y1, x2, y2, cull, H, W):
    """True if a fixed-point triangle is degenerate, culled, or covers no pixel centre (cheap integer test)."""
    area = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)
    if area == 0 or (cull and area > 0):
        return True
    c0 = max((min(x0, min(x1, x2)) + 255) >> 8, 0)
    c1 = min(max(x0, max(x1, x2)) >> 8, W - 1)
    r0 = max((min(y0, min(y1, y2)) + 255) >> 8, 0)
    r1 = min(max(y0, max(y1, y2)) >> 8, H - 1)
    return c0 > c1 or r0 > r1


@njit(cache=True)
def _project_fix(p, fx, fy, cx, cy):
    u = fx * p[0] / p[2] + cx
    v = fy * p[1] / p[2] + cy
    ok = abs(u) < _GUARD_PX and abs(v) < _GUARD_PX
    return _fix(u), _fix(v), ok


@njit(cache=True)
def _raster_clipped(p0, p1, p2, near, fx, fy, cx, cy, A, B, C, label, cull, inv, lab, box):
    """Clip a camera-frame triangle against z = near, rasterise the remaining polygon as a fan."""
    pts = np.empty((4, 3))
    src = (p0, p1, p2)
    n = 0
    for i in range(3):
        a, b = src[i], src[(i + 1) % 3]
        a_in, b_in = a[2] > near, b[2] > near
        if a_in:
            pts[n] = a
            n += 1
        if a_in != b_in:
            t = (near - a[2]) / (b[2] - a[2])
            pts[n] = a + t * (b - a)
            pts[n, 2] = near * (1.0 + 1e-12)
            n += 1
    if n < 3:
        return
    xs = np.empty(4, np.int64)
    ys = np.empty(4, np.int64)
    lo, hi = np.inf, 0.0
    for i in range(n):
        lo, hi = min(lo, 1.0 / pts[i, 2]), max(hi, 1.0 / pts[i, 2])
        xs[i], ys[i], ok = _project_fix(pts[i], fx, fy, cx, cy)
        if not ok:
            return
    for k in range(1, n - 1):
        _raster_tri(xs[0], ys[0], xs[k], ys[k], xs[k + 1], ys[k + 1], A, B, C, lo, hi, label, cull, inv, lab, box)


@njit(cache=True, parallel=True)
def transform_project(verts, vlink, T_cam_link, fx, fy, cx, cy, near, vcam, ufix, vfix, vok):
    """Vertices (V,3) in link frames -> vcam (V,3) camera frame, fixed-point pixel coords, vok (z > near, in guard)."""
    for i in prange(verts.shape[0]):
        l = vlink[i]
        for k in range(3):
            vcam[i, k] = (T_cam_link[l, k, 0] * verts[i, 0] + T_cam_link[l, k, 1] * verts[i, 1]
                          + T_cam_link[l, k, 2] * verts[i, 2] + T_cam_link[l, k, 3])
        if vcam[i, 2] > near:
            ufix[i], vfix[i], vok[i] = _project_fix(vcam[i], fx, fy, cx, cy)
        else:
            vok[i] = False


@njit(cache=True, parallel=True)
def raster_faces(vcam, ufix, vfix, vok, faces, flabel, fcull, chunk_bounds, fx, fy, cx, cy, near, inv, lab, box):
    """Rasterise faces (F,3) int32 into per-chunk buffers inv (C,H,W) float32 / lab (C,H,W) int16.

    chunk_bounds: (C+1,) face index bounds of the chunks; box: (C, 4) touched [r0, r1, c0, c1] per chunk
    (reset by the caller to an empty box).
    """
    nchunks = chunk_bounds.shape[0] - 1
    H, W = inv.shape[1], inv.shape[2]
    for ch in prange(nchunks):
        ib, lb, bx = inv[ch], lab[ch], box[ch]
        for f in range(chunk_bounds[ch], chunk_bounds[ch + 1]):
            i0, i1, i2 = faces[f, 0], faces[f, 1], faces[f, 2]
            p0, p1, p2 = vcam[i0], vcam[i1], vcam[i2]
            if p0[2] <= near and p1[2] <= near and p2[2] <= near:
                continue
            inside = vok[i0] and vok[i1] and vok[i2]
            if inside and _quick_reject(ufix[i0], vfix[i0], ufix[i1], vfix[i1], ufix[i2], vfix[i2], fcull[f], H, W):
                continue
            # plane n.X = d in camera frame; 1/z at pixel (u, v) = n.ray(u, v) / d, ray = ((u-cx)/fx, (v-cy)/fy, 1)
            ax, ay, az = p1[0] - p0[0], p1[1] - p0[1], p1[2] - p0[2]
            bx_, by_, bz_ = p2[0] - p0[0], p2[1] - p0[1], p2[2] - p0[2]
            nx, ny, nz = ay * bz_ - az * by_, az * bx_ - ax * bz_, ax * by_ - ay * bx_
            d = nx * p0[0] + ny * p0[1] + nz * p0[2]
            if d != 0.0:
                A = nx / (fx * d)
                B = ny / (fy * d)
                C = (nz - nx * cx / fx - ny * cy / fy) / d
            else:  # plane through the camera centre (edge-on): constant, bounded by the clamp below
                A, B, C = 0.0, 0.0, np.inf
            if inside:
                iz0, iz1, iz2 = 1.0 / p0[2], 1.0 / p1[2], 1.0 / p2[2]
                lo, hi = min(iz0, min(iz1, iz2)), max(iz0, max(iz1, iz2))
                _raster_tri(ufix[i0], vfix[i0], ufix[i1], vfix[i1], ufix[i2], vfix[i2], A, B, C, lo, hi, flabel[f],
                            fcull[f], ib, lb, bx)
            else:
                _raster_clipped(p0, p1, p2, near, fx, fy, cx, cy, A, B, C, flabel[f], fcull[f], ib, lb, bx)


@njit(cache=True, parallel=True)
def merge_to_pointmap(inv, lab, box, fx, fy, cx, cy, xyz, link, depth, write_depth=True):
    """Merge chunk buffers (nearest wins), write xyz (H,W,3) / link (H,W) / depth (H,W), reset the buffers.

    Pixels outside the union of touched boxes are set to background (NaN / -1 / NaN). With
    ``write_depth=False`` the depth image is left untouched (sequences need only xyz and link).
    """
    C, H, W = inv.shape
    r0, r1, c0, c1 = H, -1, W, -1
    for ch in range(C):
        r0, r1 = min(r0, box[ch, 0]), max(r1, box[ch, 1])
        c0, c1 = min(c0, box[ch, 2]), max(c1, box[ch, 3])
    nan = np.float32(np.nan)
    for r in prange(H):
        inside_r = r0 <= r <= r1
        for c in range(W):
            best = np.float32(0.0)
            bl = np.int16(-1)
            if inside_r and c0 <= c <= c1:
                for ch in range(C):
                    v = inv[ch, r, c]
                    if v > best:
                        best = v
                        bl = lab[ch, r, c]
                    inv[ch, r, c] = 0.0
                    lab[ch, r, c] = -1
            if bl >= 0:
                z = 1.0 / np.float64(best)
                xyz[r, c, 0] = (c - cx) * z / fx
                xyz[r, c, 1] = (r - cy) * z / fy
                xyz[r, c, 2] = z
                if write_depth:
                    depth[r, c] = z
            else:
                xyz[r, c, 0] = nan
                xyz[r, c, 1] = nan
                xyz[r, c, 2] = nan
                if write_depth:
                    depth[r, c] = nan
            link[r, c] = bl
