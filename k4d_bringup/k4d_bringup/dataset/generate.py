"""Generate simulated YAM episodes (RGB, world pointmap, robot pointmap, trajectories, labels) in parallel.

    .venv/bin/k4d dataset generate --episodes 8 --seed 0 --out /tmp/k4d_ds --workers 2
    # or: from k4d_bringup.dataset.generate import generate; generate(8, 0, "/tmp/k4d_ds", workers=2)

Episode i is a pure function of (seed, i) and the options: its scene seed is drawn from
``SeedSequence([seed, i])``, its noise level is ``sigmas[i % len(sigmas)]`` and its task is
``tasks[(i // len(sigmas)) % len(tasks)]``, so the output does not depend on the worker count or order.
Workers are ``multiprocessing`` processes started with "spawn" (each has its own OpenGL context). With
``MUJOCO_GL=egl``, ``K4D_EGL_DEVICES=0,1,2,3`` spreads the workers' contexts over those GPUs, round-robin.

Per episode: the scripted policy runs with graded failure injection (``sim.policies``); the full state is
recorded at every camera tick (``camera.rate_hz``); then ``num_frames`` ticks evenly spread over the episode
(first and last included) are rendered: RGB + depth from MuJoCo, and the robot pointmap + mask from
``k4d_kinematics.pointmap.PointmapRenderer`` for the recorded joint positions (not from segmentation).
The file format is documented in FORMAT.md; ``load_episode`` reads it back.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..sim.policies import LABEL_RULE, relabel_metrics
from ..sim.scene import rest_half_height

os.environ.setdefault("MUJOCO_GL", "osmesa")

FORMAT_VERSION = 1
DEFAULT_SIGMAS = (0.0, 0.5, 0.8, 1.2)


@dataclass
class GenerateOptions:
    """Options of one dataset run (stored in ``dataset.json``).

    num_frames: frames per episode (Kinema4D clips: 49). scenario: easy|medium|hard. sigmas: failure-injection
    noise levels cycled over episodes. tasks: cycled every len(sigmas) episodes. width, height, fy: camera
    override (None = the sim config's). sim_config: path of a sim YAML ("" = defaults). compress: zip the npz.
    """

    num_frames: int = 49
    scenario: str = "easy"
    sigmas: tuple = DEFAULT_SIGMAS
    tasks: tuple = ("pick_place", "push")
    width: int | None = None
    height: int | None = None
    fy: float | None = None
    sim_config: str = ""
    compress: bool = True
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        from ..sim.config import SCENARIOS, TASKS

        if not (isinstance(self.num_frames, int) and 2 <= self.num_frames <= 1000):
            raise ValueError(f"num_frames = {self.num_frames!r}: must be an int in [2, 1000]")
        if self.scenario not in SCENARIOS:
            raise ValueError(f"scenario = {self.scenario!r}: must be one of {SCENARIOS}")
        self.sigmas = tuple(float(s) for s in self.sigmas)
        if not self.sigmas or any(not np.isfinite(s) or s < 0 for s in self.sigmas):
            raise ValueError(f"sigmas = {self.sigmas!r}: must be a non-empty list of values >= 0")
        self.tasks = tuple(self.tasks)
        bad = [t for t in self.tasks if t not in TASKS]
        if not self.tasks or bad:
            raise ValueError(f"tasks = {self.tasks!r}: must be a non-empty subset of {TASKS}")

    def sim_cfg(self, task: str):
        from ..sim.config import SimConfig

        cfg = SimConfig.from_yaml(self.sim_config) if self.sim_config else SimConfig()
        cam = cfg.camera
        for k in ("width", "height", "fy"):
            if getattr(self, k) is not None:
                setattr(cam, k, getattr(self, k))
        cam.__post_init__()
        return cfg.replace(scenario=self.scenario, task=task)


def episode_spec(index: int, seed: int, opts: GenerateOptions) -> dict:
    """Seed, task, sigma of episode ``index`` (deterministic in (seed, index))."""
    ss = np.random.SeedSequence([int(seed), int(index)])
    scene_seed, noise_seed = (int(x) for x in ss.generate_state(2, dtype=np.uint32))
    return {"index": int(index), "scene_seed": scene_seed, "noise_seed": noise_seed,
            "sigma": opts.sigmas[index % len(opts.sigmas)],
            "task": opts.tasks[(index // len(opts.sigmas)) % len(opts.tasks)], "scenario": opts.scenario}


def episode_name(index: int) -> str:
    return f"{index:06d}"


_ROBOT_CACHE: dict = {}


def _robot(urdf_path: str):
    from k4d_kinematics.robot import RobotModel, yam_urdf_path

    key = urdf_path or str(yam_urdf_path())
    if key not in _ROBOT_CACHE:
        _ROBOT_CACHE[key] = RobotModel.from_urdf_file(key)
    return _ROBOT_CACHE[key]


def generate_episode(index: int, seed: int, out_dir: str | Path, opts: GenerateOptions, num_threads: int | None = None) -> dict:
    """Simulate, render and write episode ``index``; returns its summary (also in ``<name>.json``)."""
    import mujoco
    from k4d_kinematics.pointmap import PointmapRenderer

    from ..sim.policies import NoiseSpec, make_policy, run_episode
    from ..sim.workcell import YamSim

    t_wall = time.perf_counter()
    spec = episode_spec(index, seed, opts)
    cfg = opts.sim_cfg(spec["task"])
    sim = YamSim(cfg, seed=spec["scene_seed"], robot=_robot(cfg.scene.urdf_path))
    m, d = sim.model, sim.data

    # 1. run the policy, recording the full state at every camera tick
    state_size = mujoco.mj_stateSize(m, mujoco.mjtState.mjSTATE_FULLPHYSICS)
    states, stamps = [], []

    def record(s):
        buf = np.empty(state_size)
        mujoco.mj_getState(m, d, buf, mujoco.mjtState.mjSTATE_FULLPHYSICS)
        states.append(buf)
        stamps.append(s.time)

    t0 = sim.time
    record(sim)
    result = run_episode(sim, make_policy(sim), NoiseSpec(sigma=spec["sigma"]),
                         np.random.default_rng(spec["noise_seed"]), frame_callback=record,
                         frame_period=1.0 / cfg.camera.rate_hz)
    # 2. pick num_frames camera ticks over the episode and restore + render them
    pick = np.linspace(0, len(states) - 1, opts.num_frames).round().astype(int)
    T, H, W = opts.num_frames, sim.camera_info.height, sim.camera_info.width
    rgb = np.empty((T, H, W, 3), np.uint8)
    depth = np.empty((T, H, W), np.float32)
    q = np.empty((T, sim.robot.num_joints))
    n_obj = len(sim.layout.objects)
    obj_pos, obj_quat = np.empty((T, n_obj, 3)), np.empty((T, n_obj, 4))
    traj_q = np.empty((len(states), sim.robot.num_joints))
    for k, st in enumerate(states):
        mujoco.mj_setState(m, d, st, mujoco.mjtState.mjSTATE_FULLPHYSICS)
        traj_q[k] = d.qpos[sim.scene.qpos_adr]
    for t, k in enumerate(pick):
        mujoco.mj_setState(m, d, states[k], mujoco.mjtState.mjSTATE_FULLPHYSICS)
        mujoco.mj_forward(m, d)
        fr = sim.render(rgb=True, depth=True)
        rgb[t], depth[t] = fr.rgb, fr.depth
        q[t] = sim.q_robot()
        for i, o in enumerate(sim.object_states()):
            obj_pos[t, i], obj_quat[t, i] = o.pos_base, o.quat_wxyz
    # 3. the robot pointmap from kinematics (the control signal), not from segmentation
    pr = PointmapRenderer(sim.robot, sim.camera_info, sim.extrinsics, num_threads=num_threads)
    robot_xyz, robot_link = pr.render_sequence(q)
    sim.close()

    # 4. write
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = episode_name(index)
    times = np.asarray(stamps)[pick] - t0
    cam = sim.camera_info
    arrays = dict(rgb=rgb, depth=depth, robot_xyz=robot_xyz, robot_link=robot_link, times=times, q=q,
                  traj_times=np.asarray(stamps) - t0, traj_positions=np.clip(traj_q, sim.robot.lower, sim.robot.upper),
                  object_pos=obj_pos, object_quat_wxyz=obj_quat, actions_T_base_tcp=result.actions_T,
                  actions_gripper=result.actions_gripper, K=cam.K, T_base_cam=sim.extrinsics.T_base_cam)
    tmp = out_dir / f".{name}.tmp.npz"
    (np.savez_compressed if opts.compress else np.savez)(tmp, **arrays)
    os.replace(tmp, out_dir / f"{name}.npz")
    lay = sim.layout
    meta = {
        "format_version": FORMAT_VERSION, "label_rule": LABEL_RULE, "name": name, **spec,
        "label": result.outcome.label,
        "success": result.outcome.success, "near_miss": result.outcome.near_miss, "metrics": result.outcome.metrics,
        "noise_segment": result.noise_segment, "ik_failures": result.ik_failures,
        "duration_s": float(times[-1]), "num_frames": T, "fps_effective": float((T - 1) / max(times[-1], 1e-9)),
        "camera": {"width": cam.width, "height": cam.height, "fx": cam.fx, "fy": cam.fy, "cx": cam.cx, "cy": cam.cy,
                   "frame_id": cam.frame_id, "rate_hz": cfg.camera.rate_hz},
        "extrinsics": sim.extrinsics.to_dict(),
        "joint_names": list(sim.robot.joint_names), "link_names": list(sim.robot.link_names),
        "objects": [{"name": o.name, "role": o.role, "kind": o.kind, "size": list(o.size), "rgba": list(o.rgba),
                     "texture": o.texture} for o in lay.objects],
        "zone": {"center_base": list(lay.zone.center_base), "radius": lay.zone.radius, "kind": lay.zone.kind},
        "wall_time_s": time.perf_counter() - t_wall,
    }
    (out_dir / f"{name}.json").write_text(json.dumps(meta, indent=1))
    return meta


def egl_device_for_worker(devices: str, worker_number: int) -> str | None:
    """The EGL device (``MUJOCO_EGL_DEVICE_ID``) for pool worker ``worker_number`` (1-based, as
    ``multiprocessing`` numbers them): round-robin over ``devices``, a comma-separated list such as "0,1,2,3".
    None when the list is empty. Spreading the workers' GL contexts over several GPUs is what lets generation
    use a multi-GPU machine: with every context on one GPU, 64 workers were no faster than 16."""
    ids = [d.strip() for d in devices.split(",") if d.strip()]
    if not ids:
        return None
    for d in ids:
        if not d.isdigit():
            raise ValueError(f"K4D_EGL_DEVICES must be comma-separated GPU indices, got {devices!r}")
    return ids[(max(1, worker_number) - 1) % len(ids)]


def _worker_init():
    os.environ.setdefault("MUJOCO_GL", "osmesa")
    if os.environ["MUJOCO_GL"] == "egl" and "MUJOCO_EGL_DEVICE_ID" not in os.environ:
        import multiprocessing as mp

        ident = mp.current_process()._identity  # (n,) for pool worker n, counting on for replaced workers
        dev = egl_device_for_worker(os.environ.get("K4D_EGL_DEVICES", ""), ident[0] if ident else 1)
        if dev is not None:
            os.environ["MUJOCO_EGL_DEVICE_ID"] = dev  # read when the worker makes its first GL context


def _worker(args):
    index, seed, out_dir, opts, threads = args
    return generate_episode(index, seed, out_dir, opts, num_threads=threads)


def outcome_stats(metas: Sequence[dict]) -> dict:
    """Per-sigma (and per-task) counts and rates of success / near_miss / failure."""
    from ..sim.policies import LABELS

    out: dict = {"per_sigma": {}, "per_task_sigma": {}}
    for key_fn, bucket in ((lambda m: f"{m['sigma']:g}", "per_sigma"),
                           (lambda m: f"{m['task']}@{m['sigma']:g}", "per_task_sigma")):
        groups: dict = {}
        for m in metas:
            groups.setdefault(key_fn(m), []).append(m["label"])
        for k, labels in sorted(groups.items()):
            n = len(labels)
            out[bucket][k] = {"episodes": n, **{lab: labels.count(lab) for lab in LABELS},
                              **{f"{lab}_rate": labels.count(lab) / n for lab in LABELS}}
    return out


def generate(episodes: int, seed: int, out_dir: str | Path, workers: int = 1, num_frames: int = 49,
             scenario: str = "easy", sigmas: Sequence[float] = DEFAULT_SIGMAS, tasks: Sequence[str] = ("pick_place", "push"),
             progress: bool = True, time_budget_s: float | None = None, overwrite: bool = False,
             **options) -> list[dict]:
    """Generate ``episodes`` episodes into ``out_dir`` with ``workers`` processes; returns their summaries
    (sorted by index) and writes ``dataset.json`` (options) and ``stats.json`` (``outcome_stats``).

    time_budget_s: stop starting episodes once this many seconds have passed (episodes in progress are dropped;
    ``dataset.json`` then says ``"stopped": "time_budget"`` and lists the episodes written).
    overwrite: a folder that already holds a dataset is refused (episode files are named by index, and every
        ``*.npz`` there would be read as one dataset, another seed's included); True deletes that dataset first.
    options: further GenerateOptions fields (width, height, fy, sim_config, compress).
    """
    if not (isinstance(episodes, int) and episodes >= 1):
        raise ValueError(f"episodes = {episodes!r}: must be an int >= 1")
    if not (isinstance(workers, int) and workers >= 1):
        raise ValueError(f"workers = {workers!r}: must be an int >= 1")
    opts = GenerateOptions(num_frames=num_frames, scenario=scenario, sigmas=tuple(sigmas), tasks=tuple(tasks), **options)
    out_dir = Path(out_dir)
    old = sorted(out_dir.glob("[0-9]*.npz")) + sorted(out_dir.glob("[0-9]*.json")) \
        + [p for p in (out_dir / "dataset.json", out_dir / "stats.json") if p.exists()]
    if old and not overwrite:
        raise ValueError(f"{out_dir} already holds a dataset ({len(old)} files, e.g. {old[0].name}); give another "
                         "folder, or overwrite it (k4d dataset generate --overwrite)")
    for p in old:
        p.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = 1 if workers > 1 else None
    jobs = [(i, int(seed), str(out_dir), opts, threads) for i in range(episodes)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=episodes, desc="episodes", unit="ep")
    metas = []
    t0 = time.perf_counter()
    stopped = "done"

    def out_of_time() -> bool:
        return time_budget_s is not None and time.perf_counter() - t0 > float(time_budget_s)

    if workers == 1:
        for j in jobs:
            if out_of_time():
                stopped = "time_budget"
                break
            metas.append(_worker(j))
            if bar:
                bar.update(1)
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(min(workers, episodes), initializer=_worker_init) as pool:
            for meta in pool.imap_unordered(_worker, jobs):
                metas.append(meta)
                if bar:
                    bar.update(1)
                if out_of_time() and len(metas) < episodes:
                    stopped = "time_budget"
                    pool.terminate()  # unfinished episodes only leave hidden .tmp files, which loaders skip
                    break
    if bar:
        bar.close()
    metas.sort(key=lambda m: m["index"])
    wall = time.perf_counter() - t0
    (out_dir / "dataset.json").write_text(json.dumps({
        "format_version": FORMAT_VERSION, "episodes": len(metas), "requested": episodes, "stopped": stopped,
        "seed": int(seed), "workers": workers,
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in opts.__dict__.items()},
        "names": [m["name"] for m in metas], "wall_time_s": wall}, indent=1))
    (out_dir / "stats.json").write_text(json.dumps(outcome_stats(metas), indent=1))
    return metas


def episode_paths(root: str | Path) -> list[Path]:
    """``<n>.npz`` episodes of ``root`` and of its sub-folders, one level deep (e.g. one ``generate`` output per
    scenario under a common root), sorted by name; hidden files (an interrupted write's ``.<n>.tmp.npz``) and
    hidden folders are skipped. Empty if there are none (or ``root`` is not a folder)."""
    root = Path(root)
    found = [p for p in root.glob("*.npz") if not p.name.startswith(".")]
    found += [p for p in root.glob("*/*.npz") if not p.name.startswith(".") and not p.parent.name.startswith(".")]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def load_episode(path: str | Path) -> dict:
    """Read ``<name>.npz`` (+ ``<name>.json`` as ``meta``, relabelled by the current rule: ``relabel_meta``). Adds
    ``world_xyz`` (T, H, W, 3) float32 metres, camera optical frame, back-projected from ``depth`` and ``K`` (NaN
    where depth is NaN), and ``robot_mask`` (T, H, W) bool = robot_link >= 0."""
    from k4d_kinematics.camera import depth_to_xyz

    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_suffix(".npz")
    with np.load(path) as z:
        ep = {k: z[k] for k in z.files}
    ep["world_xyz"] = depth_to_xyz(ep["depth"], ep["K"])
    ep["robot_mask"] = ep["robot_link"] >= 0
    meta = path.with_suffix(".json")
    ep["meta"] = relabel_meta(json.loads(meta.read_text()), ep.get("object_quat_wxyz")) if meta.is_file() else {}
    return ep


def load_meta(path: str | Path) -> dict:
    """``load_episode(path)["meta"]`` without reading the images: ``<name>.json`` relabelled by the current rule,
    with the target's final orientation read from ``<name>.npz``'s ``object_quat_wxyz`` alone, and only when an
    older rule's episode needs it. {} without a ``.json``."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_suffix(".npz")
    meta_file = path.with_suffix(".json")
    if not meta_file.is_file():
        return {}
    meta = json.loads(meta_file.read_text())
    quat = None
    if _needs_relabel(meta) and path.is_file():
        with np.load(path) as z:  # a zip: only this member is read
            quat = z["object_quat_wxyz"] if "object_quat_wxyz" in z.files else None
    return relabel_meta(meta, quat)


def target_rest_height(meta: dict) -> float:
    """Resting centre height (m) of an episode's target (``meta["objects"][0]``), by the simulator's own rule
    (``sim.scene.rest_half_height``, what ``TaskMonitor`` labels with). ValueError naming the episode when the
    metadata lacks it."""
    try:
        obj = meta["objects"][0]
        return rest_half_height(obj["kind"], [float(v) for v in obj["size"]])
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ValueError(f"episode {meta.get('name', '?')}: no target size in its metadata ({exc!r})") from None


def _needs_relabel(meta: dict) -> bool:
    """Whether ``relabel_meta`` recomputes this metadata's outcome: written under an older rule, with the metrics,
    objects and zone to recompute it from."""
    return (int(meta.get("label_rule", 1)) < LABEL_RULE and "metrics" in meta and bool(meta.get("objects"))
            and "zone" in meta and meta.get("task") in ("pick_place", "push"))


def relabel_meta(meta: dict, object_quat_wxyz=None) -> dict:
    """An episode's metadata with its outcome (``label``, ``success``, ``near_miss``) by the current rule
    (``sim.policies.LABEL_RULE``), recomputed from its recorded outcome ``metrics`` when it was written under
    an older rule. A changed outcome keeps the recorded one as ``label_recorded`` and sets ``relabelled``;
    ``label_rule`` is then the current rule. Metadata without the metrics to recompute from (synthetic test
    data, the Kinema4D layout) is returned unchanged.

    Rule 3 asks a pick_place target to stand upright at the end; episodes of rules 1 and 2 recorded no tilt, so it
    is computed from ``object_quat_wxyz`` (T, n_objects, 4), the episode's object orientations (the ``.npz`` array;
    the target's at the last frame, the episode's last camera tick after the settling) and recorded in the
    returned ``metrics`` as ``final_tilt_deg``. ValueError naming the episode when a pick_place episode's tilt can
    be neither read nor computed (no orientations given), or the orientations are malformed."""
    if not _needs_relabel(meta):
        return meta
    name = meta.get("name", "?")
    quat = None
    if object_quat_wxyz is not None:
        q = np.asarray(object_quat_wxyz, np.float64)
        if q.ndim != 3 or q.shape[0] < 1 or q.shape[1] < 1 or q.shape[2] != 4:
            raise ValueError(f"episode {name}: object_quat_wxyz must have shape (T, n_objects, 4), got {q.shape}")
        quat = q[-1, 0]
    try:
        rest_z = target_rest_height(meta)
        out = relabel_metrics(meta["task"], meta["metrics"], float(meta["zone"]["radius"]), rest_z,
                              meta["objects"][0]["kind"], quat)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"episode {name}: cannot recompute its outcome by label rule {LABEL_RULE}: {exc}") from None
    metrics = dict(meta["metrics"], final_tilt_deg=out.metrics["final_tilt_deg"])
    meta = dict(meta, label_rule=LABEL_RULE, metrics=metrics)
    if out.label != meta.get("label"):
        meta.update(label_recorded=meta.get("label"), relabelled=True, label=out.label, success=out.success,
                    near_miss=out.near_miss)
    return meta
