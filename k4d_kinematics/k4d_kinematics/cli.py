"""``k4d fk`` and ``k4d pointmap``: the kinematic core from the command line.

    k4d fk --joints joint2=0.5,joint3=0.4 --json
    k4d pointmap --camera-info k4d_kinematics/config/camera_info.yaml \
        --extrinsics k4d_kinematics/config/extrinsics.yaml --joints joint2=0.5 --out /tmp/pm.npz

Without ``--urdf`` the built-in YAM is used. Joints not given are 0. Errors (unknown joint, bad file)
exit with code 2 through the ``k4d`` entry point.
"""
from __future__ import annotations

import argparse
import json


def parse_joints(text: str | None) -> dict[str, float]:
    """'joint1=0.1,joint2=0.4' -> {'joint1': 0.1, 'joint2': 0.4}."""
    out: dict[str, float] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--joints entry {item!r} must be NAME=VALUE")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--joints entry {item!r}: {value!r} is not a number") from None
    return out


def _model(args):
    from .robot import RobotModel

    kw = {"limits": args.limits}
    if args.urdf:
        return RobotModel.from_urdf_file(args.urdf, mesh_dir=args.mesh_dir, **kw)
    return RobotModel.yam(mesh_dir=args.mesh_dir, **kw)


def cmd_fk(args) -> int:
    model = _model(args)
    poses = model.fk_dict(parse_joints(args.joints))
    data = {name: T.tolist() for name, T in poses.items()}
    if args.json:
        print(json.dumps(data))
    else:
        for name, T in poses.items():
            print(f"{name:>16s}  xyz = {T[0, 3]: .6f} {T[1, 3]: .6f} {T[2, 3]: .6f}")
    return 0


def cmd_pointmap(args) -> int:
    import numpy as np

    from .camera import Extrinsics, PinholeCamera
    from .pointmap import PointmapRenderer

    model = _model(args)
    camera = PinholeCamera.from_yaml(args.camera_info)
    ext = Extrinsics.from_yaml(args.extrinsics)
    camera.frame_id = ext.child_frame
    q = model.q_from_dict(parse_joints(args.joints))
    pm = PointmapRenderer(model, camera, ext).render(q)
    np.savez_compressed(args.out, xyz=pm.xyz, link=pm.link, link_names=np.array(model.link_names, dtype=np.str_))
    n = int((pm.link >= 0).sum())
    print(f"wrote {args.out}: {camera.height}x{camera.width}, {n} robot pixels")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--urdf", help="URDF file (default: built-in I2RT YAM)")
    p.add_argument("--mesh-dir", help="folder tried first when resolving mesh files")
    p.add_argument("--joints", default="", help="comma-separated NAME=VALUE (rad or m); others are 0")
    p.add_argument("--limits", default="reject", choices=["reject", "clamp", "ignore"],
                   help="what to do with joint values outside the URDF limits (default: reject)")


def add_commands(subparsers) -> None:
    """Register ``fk`` and ``pointmap`` on the ``k4d`` CLI's subparsers."""
    p = subparsers.add_parser("fk", help="forward kinematics: every link pose in the URDF root frame")
    _common(p)
    p.add_argument("--json", action="store_true", help="print {link: 4x4 row-major nested list} as JSON")
    p.set_defaults(func=cmd_fk)

    p = subparsers.add_parser("pointmap", help="render one robot pointmap to .npz (xyz, link, link_names)")
    _common(p)
    p.add_argument("--camera-info", required=True, help="camera_calibration_parsers YAML")
    p.add_argument("--extrinsics", required=True, help="YAML {parent_frame, child_frame, translation, rotation}")
    p.add_argument("--out", required=True, help="output .npz: xyz (H,W,3) f32 NaN bg, link (H,W) i16 -1 bg, link_names")
    p.set_defaults(func=cmd_pointmap)
