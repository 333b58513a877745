"""Generate k4d's built-in I2RT YAM description: URDF + simplified closed STL meshes.

    .venv/bin/python k4d_kinematics/tools/make_yam_description.py  # writes k4d_kinematics/k4d_kinematics/description/yam/

The kinematics (link names, joint names, origins, axes, limits) and the inertial values are the numeric
facts of the official I2RT YAM URDF (MIT). The geometry is OURS: each link is approximated by a few
axis-aligned boxes in the link frame. The box extents were measured once from the official meshes
(the official visual meshes were posed in their link frames, surface-sampled, sliced along their longest
axis, and the 1st..99th percentile extent of each slice taken); only those numbers are kept here.

Each link becomes one binary STL whose shells are closed, outward-facing boxes (every edge shared by
exactly two triangles), so the meshes are valid for the k4d rasteriser (back-face culling) and MuJoCo.
The URDF references the meshes by relative path (``meshes/<link>.stl``), carries the same mesh as
``<visual>`` and ``<collision>`` (MuJoCo's URDF import keeps collision geoms), and has a ``<mujoco>``
compiler hint so MuJoCo finds the meshes.
"""
from __future__ import annotations

import argparse
import struct
from pathlib import Path

import numpy as np

OUT_DIR = Path(__file__).resolve().parents[1] / "k4d_kinematics" / "description" / "yam"

# Boxes per link, (min xyz, max xyz) in metres in the link frame.
BOXES = {
    "base": [
        ((-0.035, -0.1, 0.0), (0.035, 0.1, 0.0731)),
    ],
    "link1": [
        ((-0.0621, -0.0469, -0.0365), (-0.0061, -0.0176, 0.019)),
        ((-0.0143, -0.0176, -0.0198), (0.0, 0.0116, 0.019)),
        ((-0.0625, 0.0116, -0.037), (-0.0013, 0.0409, 0.019)),
    ],
    "link2": [
        ((-0.031, -0.0667, -0.031), (0.031, -0.001, 0.0342)),
        ((-0.027, -0.0646, 0.0342), (0.0281, -0.0004, 0.0994)),
        ((-0.027, -0.0563, 0.0994), (0.0275, -0.0085, 0.1646)),
        ((-0.027, -0.0646, 0.1646), (0.0275, -0.0005, 0.2298)),
        ((-0.031, -0.0667, 0.2298), (0.031, -0.001, 0.295)),
    ],
    "link3": [
        ((-0.0885, -0.0678, -0.2735), (-0.0315, -0.002, -0.2125)),
        ((-0.088, -0.0657, -0.2125), (-0.0333, -0.0015, -0.1515)),
        ((-0.088, -0.0574, -0.1515), (-0.0336, -0.0095, -0.0905)),
        ((-0.088, -0.0787, -0.0905), (-0.001, 0.0088, -0.0295)),
        ((-0.0912, -0.0799, -0.0295), (0.0308, 0.01, 0.0315)),
    ],
    "link4": [
        ((-0.0982, 0.0056, -0.1023), (-0.0405, 0.0622, -0.0424)),
        ((-0.098, -0.013, -0.0424), (0.0173, 0.073, -0.0125)),
        ((-0.0177, -0.013, -0.0125), (0.0175, 0.073, 0.0175)),
    ],
    "link5": [
        ((0.0, -0.0284, -0.0356), (0.0689, 0.0284, 0.0335)),
    ],
    "gripper": [
        ((-0.0325, -0.051, -0.0583), (0.0325, -0.017, 0.0084)),
        ((-0.0325, -0.0175, -0.0635), (0.0325, 0.0175, 0.0105)),
        ((-0.0325, 0.017, -0.0583), (0.0325, 0.051, 0.0105)),
    ],
    "tip_left": [
        ((0.0093, -0.0519, -0.0902), (0.0387, -0.0445, -0.0667)),
        ((-0.0007, -0.0592, -0.0667), (0.0487, -0.045, -0.0432)),
        ((-0.0099, -0.0682, -0.0432), (0.0579, -0.0466, -0.0198)),
        ((-0.01, -0.0683, -0.0198), (0.0578, 0.0033, 0.0037)),
    ],
    "tip_right": [
        ((-0.0387, 0.0445, -0.0902), (-0.0093, 0.0519, -0.0667)),
        ((-0.0487, 0.045, -0.0667), (0.0007, 0.0593, -0.0432)),
        ((-0.0579, 0.0466, -0.0432), (0.0099, 0.0682, -0.0198)),
        ((-0.0578, -0.0033, -0.0198), (0.01, 0.0683, 0.0037)),
    ],
}

# Distinct per-link colours (RGBA), ours.
COLORS = {
    "base": (0.30, 0.30, 0.33, 1.0),
    "link1": (0.90, 0.45, 0.10, 1.0),
    "link2": (0.15, 0.45, 0.85, 1.0),
    "link3": (0.20, 0.70, 0.30, 1.0),
    "link4": (0.85, 0.20, 0.25, 1.0),
    "link5": (0.60, 0.35, 0.80, 1.0),
    "gripper": (0.95, 0.80, 0.15, 1.0),
    "tip_left": (0.10, 0.75, 0.80, 1.0),
    "tip_right": (0.85, 0.40, 0.70, 1.0),
}

# Inertial facts of the official URDF: mass kg, COM xyz m, COM-frame rpy rad, (ixx ixy ixz iyy iyz izz) kg m^2.
INERTIALS = {
    "base": (0.873654, (-3.83908653914762e-05, 2.40068589826393e-05, 0.0247677998591499), (0, 1.5708, 3.1415963267949),
             (0.00157059, -9.4753e-07, 2.04071e-07, 0.000678307, 2.44292e-07, 0.00169404)),
    "link1": (0.101218, (-0.0233636, -0.00172503, -0.00727828), (0, 0, 0),
              (0.000114689, -4.62759e-06, -1.3427e-05, 4.76603e-05, -2.58724e-06, 0.000125996)),
    "link2": (1.46908, (0.000134495, -0.0331253, 0.129165), (0, 0, 0),
              (0.0146686, -1.1067e-08, -4.33007e-07, 0.014599, 3.12564e-06, 0.000800089)),
    "link3": (0.982553, (-0.0556042, -0.0340514, -0.135083), (0, 0, 0),
              (0.00758945, 4.36076e-06, -0.00064069, 0.00763097, -1.09984e-05, 0.000937606)),
    "link4": (0.462165, (-0.0550959, 0.032726, -0.0575534), (0, 0, 0),
              (0.000473594, 3.00819e-05, -0.000238801, 0.000764022, 2.9261e-05, 0.000604492)),
    "link5": (0.403307, (0.0375847, -3.55003e-05, -0.000825911), (0, 0, 0),
              (0.000184284, 2.10549e-07, 1.29173e-05, 0.000219791, -3.49657e-07, 0.000181053)),
    "gripper": (0.553219, (-3.57064e-05, 0.000249371, -0.0293133), (0, 0, 0),
                (0.000409669, 5.44941e-07, 7.91268e-07, 0.000324942, -4.83959e-06, 0.000369249)),
    "tip_left": (0.069657, (0.014584, -0.042586, -0.0228318), (0, 0, 0),
                 (5.14494e-05, 1.10836e-05, 1.00197e-05, 4.99137e-05, -1.14425e-05, 4.79405e-05)),
    "tip_right": (0.069657, (-0.014584, 0.042586, -0.0228318), (0, 0, 0),
                  (5.14494e-05, 1.10836e-05, -1.00197e-05, 4.99137e-05, 1.14425e-05, 4.79405e-05)),
}

# Kinematic facts of the official URDF: (name, type, parent, child, xyz, rpy, axis, lower, upper).
JOINTS = [
    ("joint1", "revolute", "base", "link1", (-2.49777947129965e-07, -9.17402363407408e-13, 0.0679999999995413),
     (0, 1.5708, 3.1415963267949), (-1, 0, 0), -2.61799, 3.14159),
    ("joint2", "revolute", "link1", "link2", (-0.0455, -0.0339, -0.02),
     (-1.7953e-16, 5.55112e-17, -3.14159), (3.58252e-15, 1, -3.2007e-16), -8.88178e-16, 3.66519),
    ("joint3", "revolute", "link2", "link3", (4.08431e-07, -0.0688, 0.264),
     (-2.99502e-14, -1.6015e-14, -3.14159), (4.54273e-15, 1, 1.04275e-14), 0, 3.14159),
    ("joint4", "revolute", "link3", "link4", (-0.0600003, -0.0688, -0.244999),
     (2.95536e-14, 8.52374e-14, -2.10585e-14), (0, 1, 0), -1.69297, 1.5708),
    ("joint5", "revolute", "link4", "link5", (-0.0405003, 0.0338995, -0.0739989),
     (2.73264e-14, -4.32956e-16, -8.32667e-17), (1, 0, 0), -1.5708, 1.5708),
    ("joint6", "revolute", "link5", "gripper", (0.0404996, 2.39858e-07, -0.0356),
     (8.83309e-16, -5.88588e-16, 7.69861e-14), (1.46014e-15, 2.40808e-14, -1), -2.0944, 2.0944),
    ("joint7", "prismatic", "gripper", "tip_left", (-0.0239931, 0.0445119, -0.0566829),
     (1.02229e-14, 4.71845e-16, 1.68314e-15), (6.86541e-15, 1, 0), -0.04695, 4.60927e-15),
    ("joint8", "prismatic", "gripper", "tip_right", (0.0239931, -0.0445119, -0.0566829),
     (9.6084e-15, -2.77556e-16, -3.77189e-15), (-6.86541e-15, -1, 0), -0.04695, 0),
]

# Box corner signs and the 12 outward (counter-clockwise seen from outside) triangles over them.
_CORNERS = np.array([[i & 1, (i >> 1) & 1, (i >> 2) & 1] for i in range(8)], dtype=float)
_BOX_FACES = np.array([
    [0, 2, 3], [0, 3, 1],  # -z
    [4, 5, 7], [4, 7, 6],  # +z
    [0, 1, 5], [0, 5, 4],  # -y
    [2, 6, 7], [2, 7, 3],  # +y
    [0, 4, 6], [0, 6, 2],  # -x
    [1, 3, 7], [1, 7, 5],  # +x
], dtype=np.int64)


def box_mesh(lo, hi) -> tuple[np.ndarray, np.ndarray]:
    """Closed box: vertices (8, 3) float64 m, faces (12, 3) int64, outward winding."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    return lo + _CORNERS * (hi - lo), _BOX_FACES.copy()


def link_mesh(boxes) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the closed box shells of one link: vertices (V, 3), faces (F, 3)."""
    verts, faces = [], []
    for lo, hi in boxes:
        v, f = box_mesh(lo, hi)
        faces.append(f + sum(len(x) for x in verts))
        verts.append(v)
    return np.concatenate(verts), np.concatenate(faces)


def check_closed(vertices: np.ndarray, faces: np.ndarray) -> None:
    """Raise ValueError unless every edge (vertices merged by exact position) is shared by exactly 2 triangles."""
    _, ids = np.unique(vertices, axis=0, return_inverse=True)
    f = ids.reshape(-1)[faces]
    e = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    _, counts = np.unique(e, axis=0, return_counts=True)
    if np.any(counts != 2):
        raise ValueError(f"mesh is not closed: {int(np.sum(counts != 2))} edges not shared by exactly two triangles")


def write_binary_stl(path: Path, vertices: np.ndarray, faces: np.ndarray, header: bytes = b"k4d yam") -> None:
    """Write a binary STL (float32 normals and vertices, little endian)."""
    tri = vertices[faces].astype(np.float64)
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-30)
    rec = np.zeros(len(faces), dtype=[("n", "<f4", 3), ("v", "<f4", (3, 3)), ("attr", "<u2")])
    rec["n"], rec["v"] = n, tri
    with open(path, "wb") as f:
        f.write(header.ljust(80, b"\0")[:80])
        f.write(struct.pack("<I", len(faces)))
        f.write(rec.tobytes())


def _fmt(values) -> str:
    return " ".join(repr(float(v)) for v in values)


def urdf_text() -> str:
    """The YAM URDF as a string, referencing meshes/<link>.stl relative to the URDF file."""
    lines = ['<?xml version="1.0"?>',
             "<!-- Generated by k4d_kinematics/tools/make_yam_description.py. Do not edit.",
             "     Kinematics and inertials: facts of the official I2RT YAM URDF (MIT). Geometry: k4d box approximation. -->",
             '<robot name="yam">',
             '  <mujoco><compiler meshdir="meshes" strippath="true" discardvisual="true" balanceinertia="true"/></mujoco>']
    for link in BOXES:
        mass, com, com_rpy, (ixx, ixy, ixz, iyy, iyz, izz) = INERTIALS[link]
        geom = f'<geometry><mesh filename="meshes/{link}.stl"/></geometry>'
        lines += [
            f'  <link name="{link}">',
            "    <inertial>",
            f'      <origin xyz="{_fmt(com)}" rpy="{_fmt(com_rpy)}"/>',
            f'      <mass value="{mass!r}"/>',
            f'      <inertia ixx="{ixx!r}" ixy="{ixy!r}" ixz="{ixz!r}" iyy="{iyy!r}" iyz="{iyz!r}" izz="{izz!r}"/>',
            "    </inertial>",
            f'    <visual><origin xyz="0 0 0" rpy="0 0 0"/>{geom}'
            f'<material name="{link}_color"><color rgba="{_fmt(COLORS[link])}"/></material></visual>',
            f'    <collision><origin xyz="0 0 0" rpy="0 0 0"/>{geom}</collision>',
            "  </link>",
        ]
    for name, jtype, parent, child, xyz, rpy, axis, lower, upper in JOINTS:
        lines += [
            f'  <joint name="{name}" type="{jtype}">',
            f'    <origin xyz="{_fmt(xyz)}" rpy="{_fmt(rpy)}"/>',
            f'    <axis xyz="{_fmt(axis)}"/>',
            f'    <parent link="{parent}"/>',
            f'    <child link="{child}"/>',
            f'    <limit effort="1" velocity="1" lower="{lower!r}" upper="{upper!r}"/>',
            "  </joint>",
        ]
    lines.append("</robot>")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output folder (default: the package's description/yam)")
    args = parser.parse_args(argv)
    (args.out / "meshes").mkdir(parents=True, exist_ok=True)
    total = 0
    for link, boxes in BOXES.items():
        v, f = link_mesh(boxes)
        check_closed(v, f)
        write_binary_stl(args.out / "meshes" / f"{link}.stl", v, f, header=f"k4d yam {link}".encode())
        total += len(f)
    (args.out / "yam.urdf").write_text(urdf_text())
    print(f"wrote {args.out / 'yam.urdf'} and {len(BOXES)} meshes, {total} triangles")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
