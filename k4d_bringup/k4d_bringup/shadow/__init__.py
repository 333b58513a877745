"""Shadow-mode policy evaluation, ROS-free core.

    from k4d_bringup.shadow.log import ShadowLog, read_log
    from k4d_bringup.shadow.session import ShadowSession
    from k4d_bringup.shadow.report import write_report

Each executed action chunk's outcome is imagined by the world model beside the real robot, and the
imagination is scored against what the camera then saw (Kinema4D Table 3 style evaluation; SimplerEnv's
Pearson r and MMRV across policies). Pieces:

- ``config``    ShadowConfig: one dataclass = the shadow node's ROS parameters (validated in __post_init__).
- ``log``       durable append-only JSONL (fsync per record; a torn last line is skipped on reading).
- ``chunks``    ChunkQueue: bounded queue in front of the (slow) world model, with a documented skip policy.
- ``guard``     ActuatorGuard: the topic patterns the shadow node must never publish on.
- ``metrics``   PSNR, SSIM, depth back-projection, Pearson r, MMRV, calibration (ECE / Brier).
- ``predicate`` the task success predicate on metric 4D pointmaps (imagined or from depth).
- ``scoring``   one chunk's imagined frames vs the real frames.
- ``session``   the bookkeeping: episodes, chunks, frames, results (driven by the node or by an offline replay).
- ``aggregate`` Table-3 aggregation, Pearson r / MMRV per scenario, calibration.
- ``report``    HTML report with videos (real | imagined), plots and tables.
- ``calib``     the camera-calibration check: projected robot vs image edges (and depth).
- ``imaginers`` in-process world model (checkpoint) and action-client imaginers for offline replay.
- ``offline``   ``k4d shadow replay``: a recording through the same session, in batch.
- ``synthetic`` a small synthetic RGB-D workcell camera (table, box, the YAM) for tests and examples.
"""
