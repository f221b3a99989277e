"""Video accuracy of the demo model on generated exercise videos with ground truth: per-frame agreement of the
smoothed labels and of the raw per-frame argmax, and exact rep counts, on random schedules.

    .venv/bin/python scripts/eval_video.py --videos 12 --source-fps 10 15 30

Each video: standing 0.5-1.5 s, 3-10 reps of a squat or a jumping jack at 0.7-2.0 s per rep with +-20% tempo
jitter per rep, standing 0.5-1.5 s; 96 px; the default VideoConfig (10 fps sampling, window 5, rep_window 3).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from _bench import ROOT


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=12, help="Videos per source frame rate.")
    ap.add_argument("--source-fps", type=float, nargs="+", default=[10.0, 15.0, 30.0])
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    from toolkit.config import load_config
    from toolkit.demo.video import write_video
    from toolkit.predictor import build_predictor
    from toolkit.video import predict_video

    cfg = load_config(ROOT / "configs" / "demo.yaml", {"model.device": "cpu"})
    predictor = build_predictor(cfg)
    tmp = Path(tempfile.mkdtemp(prefix="eval-video-"))
    print("| source fps | videos | smoothed agreement (mean, min) | raw agreement (mean) | exact rep counts |")
    print("|---|---|---|---|---|")
    for fps in args.source_fps:
        rng = np.random.default_rng([args.seed, int(fps)])
        smoothed, raw, exact = [], [], 0
        for k in range(args.videos):
            key = ("squat", "jumping_jack")[k % 2]
            n = int(rng.integers(3, 11))
            schedule = [("standing", float(rng.uniform(0.5, 1.5))), (key, n, float(rng.uniform(0.7, 2.0))),
                        ("standing", float(rng.uniform(0.5, 1.5)))]
            path = tmp / f"v{k}.mp4"
            truth = write_video(path, schedule, seed=1000 + k, size=(96, 96), fps=fps, tempo_jitter=0.2)
            doc = predict_video(predictor, path, cfg.video)
            smoothed.append(np.mean([f["label"] == truth.labels[f["index"]] for f in doc["frames"]]))
            raw.append(np.mean([f["raw_label"] == truth.labels[f["index"]] for f in doc["frames"]]))
            exact += doc["reps"][truth.segments[1]["label"]] == n
        print(f"| {fps:g} | {args.videos} | {np.mean(smoothed):.3f}, {np.min(smoothed):.3f} | {np.mean(raw):.3f} "
              f"| {exact}/{args.videos} |", flush=True)


if __name__ == "__main__":
    main()
