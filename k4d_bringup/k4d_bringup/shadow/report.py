"""HTML report of a shadow log: tables, plots and per-episode side-by-side videos.

    k4d shadow report out/shadow/shadow_log.jsonl --out out/shadow/report     # -> index.html + assets/

``write_report(log_path, out_dir)`` writes ``index.html`` and ``assets/``:
- a Kinema4D Table-3 style table (GT vs imagined success rate per scenario and policy, and the difference),
- Pearson r and MMRV across policies per scenario (SimplerEnv's metrics; lower MMRV is better),
- calibration of the imagined success probability (reliability bins, ECE, Brier score, diagram),
- PSNR / SSIM / depth error / imagination latency per chunk over time (PNG with matplotlib, else SVG),
- per episode a video real | imagined (the chunks' compared frames side by side; MP4 with imageio-ffmpeg,
  else an animated GIF) from the frames the shadow node stored next to the log (``save_frames``),
- every chunk's status, so skipped and failed-to-evaluate chunks are visible.
"""
from __future__ import annotations

import html
import math
import os
import time
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np

from .aggregate import calibration_of, chunk_records, chunk_summary, episode_records, ranking, table3
from .log import read_log
from .metrics import metrics_source


def _fmt(v, nd: int = 2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return html.escape(str(v))


# ---------------------------------------------------------------------------------------------
# Plots: matplotlib when installed, else a small SVG writer
# ---------------------------------------------------------------------------------------------


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401

        return True
    except ImportError:
        return False


def line_plot(path_stem: Path, series: dict, title: str, xlabel: str, ylabel: str, diagonal: bool = False,
              markers_only: bool = False) -> Path:
    """series: {name: (x list, y list)}. Writes ``path_stem.png`` (matplotlib) or ``.svg``; returns the path."""
    if _have_matplotlib():
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
        for name, (x, y) in series.items():
            ax.plot(x, y, "o" if markers_only else ".-", label=name, markersize=4)
        if diagonal:
            ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if len(series) > 1:
            ax.legend(fontsize=7)
        fig.tight_layout()
        out = path_stem.with_suffix(".png")
        fig.savefig(out)
        plt.close(fig)
        return out
    out = path_stem.with_suffix(".svg")
    out.write_text(svg_plot(series, title, xlabel, ylabel, diagonal, markers_only))
    return out


_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]


def svg_plot(series: dict, title: str, xlabel: str, ylabel: str, diagonal: bool = False,
             markers_only: bool = False, w: int = 560, h: int = 280) -> str:
    pts = [(float(x), float(y)) for xs, ys in series.values() for x, y in zip(xs, ys)
           if x is not None and y is not None and math.isfinite(float(x)) and math.isfinite(float(y))]
    x0, x1 = (min(p[0] for p in pts), max(p[0] for p in pts)) if pts else (0.0, 1.0)
    y0, y1 = (min(p[1] for p in pts), max(p[1] for p in pts)) if pts else (0.0, 1.0)
    if diagonal:
        x0, x1, y0, y1 = min(x0, 0), max(x1, 1), min(y0, 0), max(y1, 1)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    L, R, T, B = 60, 15, 28, 40

    def px(x, y):
        return L + (x - x0) / (x1 - x0) * (w - L - R), h - B - (y - y0) / (y1 - y0) * (h - T - B)

    e = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">',
         f'<rect width="{w}" height="{h}" fill="white"/>',
         f'<text x="{w / 2}" y="16" text-anchor="middle" font-size="13">{html.escape(title)}</text>',
         f'<line x1="{L}" y1="{h - B}" x2="{w - R}" y2="{h - B}" stroke="black"/>',
         f'<line x1="{L}" y1="{T}" x2="{L}" y2="{h - B}" stroke="black"/>',
         f'<text x="{w / 2}" y="{h - 6}" text-anchor="middle">{html.escape(xlabel)}</text>',
         f'<text x="14" y="{h / 2}" text-anchor="middle" transform="rotate(-90 14 {h / 2})">{html.escape(ylabel)}</text>']
    for k in range(5):
        yv = y0 + (y1 - y0) * k / 4
        xv = x0 + (x1 - x0) * k / 4
        _, yy = px(x0, yv)
        xx, _ = px(xv, y0)
        e.append(f'<text x="{L - 4}" y="{yy + 4:.1f}" text-anchor="end">{yv:.3g}</text>')
        e.append(f'<text x="{xx:.1f}" y="{h - B + 14}" text-anchor="middle">{xv:.3g}</text>')
    if diagonal:
        (ax, ay), (bx, by) = px(0, 0), px(1, 1)
        e.append(f'<line x1="{ax:.1f}" y1="{ay:.1f}" x2="{bx:.1f}" y2="{by:.1f}" stroke="gray" stroke-dasharray="4"/>')
    for i, (name, (xs, ys)) in enumerate(series.items()):
        c = _COLORS[i % len(_COLORS)]
        p = [px(float(x), float(y)) for x, y in zip(xs, ys)
             if x is not None and y is not None and math.isfinite(float(x)) and math.isfinite(float(y))]
        if p and not markers_only:
            e.append(f'<polyline fill="none" stroke="{c}" points="{" ".join(f"{a:.1f},{b:.1f}" for a, b in p)}"/>')
        e.extend(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2.5" fill="{c}"/>' for a, b in p)
        e.append(f'<text x="{w - R - 4}" y="{T + 12 * (i + 1)}" text-anchor="end" fill="{c}">{html.escape(name)}</text>')
    e.append("</svg>")
    return "\n".join(e)


# ---------------------------------------------------------------------------------------------
# Videos
# ---------------------------------------------------------------------------------------------


def side_by_side_frames(npz_paths: list[Path], min_height: int = 240,
                        unreadable: Optional[list] = None) -> list[np.ndarray]:
    """[real | imagined] frames (uint8) of the chunks' compared frames, upscaled (nearest) to >= min_height.
    A frames file that cannot be read (empty or cut short by a crash, not an npz, missing arrays) is skipped and
    its path appended to ``unreadable``."""
    frames = []
    for p in npz_paths:
        try:
            with np.load(p) as d:
                imag, real, ks = d["imagined_rgb"], d["real_rgb"], d["real_k"]
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
            if unreadable is not None:
                unreadable.append(p)
            continue
        for real_f, k in zip(real, ks):
            sep = np.full((imag.shape[1], 2, 3), 255, np.uint8)
            frames.append(np.concatenate([real_f, sep, imag[int(k)]], axis=1))
    if not frames:
        return []
    s = max(1, int(math.ceil(min_height / frames[0].shape[0])))
    out = []
    for f in frames:
        f = np.repeat(np.repeat(f, s, axis=0), s, axis=1)
        out.append(np.pad(f, ((0, f.shape[0] % 2), (0, f.shape[1] % 2), (0, 0))))  # even size for H.264
    return out


def write_video(frames: list[np.ndarray], stem: Path, fps: float = 8.0) -> Optional[Path]:
    """MP4 (imageio-ffmpeg) or, failing that, an animated GIF (Pillow); None without frames."""
    if not frames:
        return None
    try:
        import imageio.v2 as imageio

        out = stem.with_suffix(".mp4")
        with imageio.get_writer(str(out), fps=fps, codec="libx264", quality=7, macro_block_size=1) as w:
            for f in frames:
                w.append_data(f)
        return out
    except Exception:  # noqa: BLE001 - no ffmpeg: fall back to GIF
        from PIL import Image

        out = stem.with_suffix(".gif")
        ims = [Image.fromarray(f) for f in frames]
        ims[0].save(out, save_all=True, append_images=ims[1:], duration=int(1000 / fps), loop=0)
        return out


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


def _table(headers: list[str], rows: list[list], cls: str = "") -> str:
    h = "".join(f"<th>{html.escape(x)}</th>" for x in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><tr>{h}</tr>{body}</table>'


def write_report(log_path: str | os.PathLike, out_dir: str | os.PathLike, videos: bool = True,
                 max_videos: int | None = None, probability_fit: Optional[dict] = None) -> Path:
    """Write ``out_dir/index.html`` (+ ``out_dir/assets``) for the shadow log; returns the index path.
    ``probability_fit`` (``calibrate.fit_probability`` on other episodes) replaces the imagined success
    probability by the calibrated one and adds the policy ranking by mean probability."""
    log_path, out = Path(log_path), Path(out_dir)
    stats: dict = {}
    records = read_log(log_path, stats)
    if probability_fit is not None:
        from .calibrate import apply_probability

        records = apply_probability(records, probability_fit)
    assets = out / "assets"
    assets.mkdir(parents=True, exist_ok=True)
    eps, chunks = episode_records(records), chunk_records(records)
    t3, rank, cal, cs = table3(records), ranking(records), calibration_of(records), chunk_summary(records)
    parts = [f"<h1>k4d shadow evaluation</h1><p>log <code>{html.escape(str(log_path))}</code>: {len(records)} "
             f"records ({len(eps)} episode summaries, {len(chunks)} chunks); {stats.get('skipped_torn', 0)} torn "
             f"line(s) skipped. Generated {time.strftime('%Y-%m-%d %H:%M:%S')}. Metrics: {metrics_source()}.</p>"]

    # 1. Table 3
    parts.append("<h2>Success rates: ground truth vs imagined (Kinema4D Table 3 style)</h2>")
    parts.append(_table(
        ["scenario", "policy", "mode", "episodes", "paired", "failed to evaluate", "imagination not metric",
         "GT success", "imagined success", "imagined − GT", "mean imagined p", "GT success, all known"],
        [[_fmt(r["scenario"]), _fmt(r["policy"]), _fmt(r["mode"]), r["episodes"], r["paired"], r["failed"],
          r.get("imagined_undeterminable", 0), _fmt(r["gt_rate"]), _fmt(r["imagined_rate"]), _fmt(r["diff"]),
          _fmt(r["mean_probability"]), _fmt(r.get("actual_rate_all", float("nan")))] for r in t3],
        "t3"))
    parts.append("<p>Rates over the paired episodes (imagination evaluated, its success determinable from a metric "
                 "imagination, and an actual outcome known); the last column is the actual rate over every episode "
                 "whose outcome is known, paired or not. Candidate "
                 "rows: GT is the live policy's outcome in the same episodes. Kinema4D reports differences of "
                 "0.04–0.08 in simulation and 0.12–0.30 in real out-of-distribution settings.</p>")

    # 2. Ranking
    parts.append("<h2>Policy ranking across policies (SimplerEnv metrics)</h2>")
    parts.append(_table(["scenario", "policies", "real", "imagined", "Pearson r", "MMRV", "paired episodes",
                         "GT success, pooled", "imagined, pooled", "imagined − GT, pooled"],
                        [[_fmt(s), html.escape(", ".join(d["policies"])),
                          ", ".join(_fmt(x) for x in d["real"]), ", ".join(_fmt(x) for x in d["imagined"]),
                          _fmt(d["pearson_r"], 3), _fmt(d["mmrv"], 3), d["paired"], _fmt(d["gt_rate"]),
                          _fmt(d["imagined_rate"]), _fmt(d["diff"])] for s, d in rank.items()], "rank"))
    parts.append("<p>Pooled: over all the scenario's paired live episodes, whatever the policy. "
                 "Pearson r needs at least two policies with different success rates. References: SimplerEnv "
                 "r 0.85–0.91 and MMRV 0.028–0.053; Veo 0.88 / 0.03 (in distribution).</p>")
    if probability_fit is not None:
        prank = ranking(records, rate="probability")
        parts.append("<h3>The same, with the calibrated success probability</h3>")
        parts.append(f"<p>P(success) = sigmoid({probability_fit['intercept']:.3f} + {probability_fit['slope']:.3f} "
                     f"· log(1 + n)), n = imagined points in the goal region in the last frame, fitted on "
                     f"{probability_fit.get('episodes', '?')} other episodes (<code>k4d shadow calibrate "
                     "--probability</code>). A policy's imagined rate is its episodes' mean probability.</p>")
        parts.append(_table(["scenario", "policies", "real", "imagined (mean p)", "Pearson r", "MMRV",
                             "GT success, pooled", "mean p, pooled", "mean p − GT, pooled"],
                            [[_fmt(s), html.escape(", ".join(d["policies"])),
                              ", ".join(_fmt(x) for x in d["real"]), ", ".join(_fmt(x) for x in d["imagined"]),
                              _fmt(d["pearson_r"], 3), _fmt(d["mmrv"], 3), _fmt(d["gt_rate"]),
                              _fmt(d["imagined_rate"]), _fmt(d["diff"])] for s, d in prank.items()], "prank"))

    # 3. Calibration
    parts.append("<h2>Calibration of the imagined success probability</h2>")
    what = ("the calibrated probability of the imagined zone count (fitted on other episodes)"
            if probability_fit is not None else
            "the fraction of the last frames in which the success predicate holds")
    parts.append(f"<p>{cal['count']} live episodes; ECE {_fmt(cal['ece'], 3)}, Brier {_fmt(cal['brier'], 3)}. "
                 f"The probability is {what}.</p>")
    parts.append(_table(["p bin", "episodes", "mean p", "actual success rate"],
                        [[f"{b['lo']:.1f}–{b['hi']:.1f}", b["count"], _fmt(b["mean_prob"]), _fmt(b["success_rate"])]
                         for b in cal["bins"]], "cal"))
    valid = [b for b in cal["bins"] if b["count"]]
    if valid:
        p = line_plot(assets / "calibration", {"episodes": ([b["mean_prob"] for b in valid],
                                                            [b["success_rate"] for b in valid])},
                      "Reliability", "imagined success probability", "actual success rate", diagonal=True)
        parts.append(f'<img src="assets/{p.name}" alt="calibration">')

    # 4. Metrics over time
    parts.append("<h2>Per-chunk metrics over time</h2>")
    parts.append(f"<p>{cs['chunks']} chunks: {cs['ok']} ok, {cs['skipped']} skipped (queue policy), "
                 f"{cs['failed_to_evaluate']} failed to evaluate, {cs['candidate']} candidate. Mean over live OK "
                 f"chunks: PSNR {_fmt(cs['psnr_db'])} dB, SSIM {_fmt(cs['ssim'], 3)}, depth error "
                 f"{_fmt(cs['depth_mae_m'], 3)} m, imagination latency {_fmt(cs['imagine_latency_s'], 1)} s.</p>")
    live_ok = [r for r in chunks if r.get("status") == "ok" and r.get("mode") == "live"]
    if live_ok:
        t0 = min(r["chunk_start_ns"] for r in live_ok)
        x = [(r["chunk_start_ns"] - t0) * 1e-9 for r in live_ok]
        for key, title, unit in (("psnr_db", "PSNR", "dB"), ("ssim", "SSIM", ""), ("depth_mae_m", "Depth error", "m"),
                                 ("imagine_latency_s", "Imagination latency", "s")):
            y = [float("nan") if r.get(key) is None else r[key] for r in live_ok]
            if any(math.isfinite(v) for v in y):
                p = line_plot(assets / f"metric_{key}", {title: (x, y)}, f"{title} per chunk", "chunk start (s)", unit)
                parts.append(f'<img src="assets/{p.name}" alt="{title}">')

    # 5. Episodes with videos
    parts.append("<h2>Episodes</h2>")
    rows = []
    n_videos = 0
    unreadable: list[Path] = []
    for r in eps:
        vid = ""
        if videos and r.get("mode") == "live" and (max_videos is None or n_videos < max_videos):
            files = [log_path.parent / c["frames_file"] for c in sorted(
                (c for c in chunks if c.get("episode_id") == r["episode_id"] and c.get("mode") == "live"
                 and c.get("frames_file")), key=lambda c: c["chunk_index"])]
            v = write_video(side_by_side_frames([f for f in files if f.is_file()], unreadable=unreadable),
                            assets / f"episode_{r['episode_id']}")
            if v is not None:
                n_videos += 1
                tag = (f'<video src="assets/{v.name}" controls loop muted width="360"></video>' if v.suffix == ".mp4"
                       else f'<img src="assets/{v.name}" width="360">')
                vid = tag + "<br><small>real | imagined</small>"
        rows.append([_fmt(r["episode_id"]), _fmt(r.get("scenario")), _fmt(r.get("policy")), _fmt(r.get("mode")),
                     _fmt(r.get("label", "")), _fmt(r["status"]) + f"<br><small>{_fmt(r.get('status_message'))}</small>",
                     _fmt(r.get("imagined_success")), _fmt(r.get("imagined_success_probability")),
                     (_fmt(r.get("actual_success")) + f" ({_fmt(r.get('actual_source'))})") if r.get("has_actual")
                     else "–", _fmt(r.get("psnr_db")), _fmt(r.get("ssim"), 3), vid])
    parts.append(_table(["episode", "scenario", "policy", "mode", "label", "status", "imagined success", "p",
                         "actual success", "PSNR", "SSIM", "video"], rows, "eps"))
    if unreadable:
        parts.append(f"<p>{len(unreadable)} frames file(s) could not be read and are missing from the videos: "
                     + ", ".join(f"<code>{html.escape(os.path.relpath(p, log_path.parent))}</code>"
                                 for p in unreadable) + "</p>")

    # 6. Chunks
    parts.append("<h2>Chunks</h2>")
    parts.append(_table(["episode", "chunk", "mode", "status", "PSNR", "SSIM", "depth err (m)", "imagined",
                         "actual", "latency (s)"],
                        [[_fmt(c["episode_id"]), c["chunk_index"], _fmt(c["mode"]),
                          _fmt(c["status"]) + (f"<br><small>{_fmt(c['status_message'])}</small>"
                                               if c.get("status_message") else ""),
                          _fmt(c.get("psnr_db")), _fmt(c.get("ssim"), 3), _fmt(c.get("depth_mae_m"), 3),
                          _fmt(c.get("imagined_success")), _fmt(c.get("actual_success")) if c.get("has_actual") else "–",
                          _fmt(c.get("imagine_latency_s"), 1)] for c in chunks], "chunks"))

    style = ("<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;"
             "margin:0.5em 0}td,th{border:1px solid #ccc;padding:3px 7px;font-size:13px;vertical-align:top}"
             "th{background:#f0f0f0}img{margin:4px}</style>")
    index = out / "index.html"
    index.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>k4d shadow report</title>{style}"
                     f"</head><body>{''.join(parts)}</body></html>")
    return index
