"""Benchmark: a cold `clipkit` process, as a user runs it. Whole-process wall time, time to the first line of
output, and peak RSS, for `--help`, one image (the demo model and ViT-B-32 with random weights in a real-layout
Hugging Face cache) with a label set seen before and with new labels, and 64 images; the fast path
(ONNX Runtime, encoder/fast.py) side by side with the torch path (`--engine torch`), alternating run by run.

    .venv/bin/python scripts/bench_startup.py --runs 5 --out out/bench/startup.json
    .venv/bin/python scripts/bench_startup.py --sessions-only --runs 5   # ONNX Runtime's session alone

Each case runs `--runs` times per side (min and median reported). The fast path's one-time preparation (the
ONNX export, "preparing the fast path ... (once)") is done before timing and reported on its own. Everything
lives in a temporary folder (XDG_CACHE_HOME, the HF cache, the images); nothing touches ~/.cache.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
CLIPKIT = [str(Path(sys.executable).parent / "clipkit")]
VIT_REPO = "timm/vit_base_patch32_clip_224.openai"


def run_once(args: list[str], env: dict[str, str]) -> dict[str, float]:
    """One process: wall seconds, seconds to its first stdout line, peak RSS (MB, from wait4), exit code.
    (Linux carries a forked child's peak RSS over from its parent: this script itself never imports torch.)"""
    t0 = time.perf_counter()
    proc = subprocess.Popen(CLIPKIT + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    first = proc.stdout.readline()
    t_first = time.perf_counter() - t0
    proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0,):
        raise SystemExit(f"clipkit {' '.join(args)} exited {proc.returncode}: {err.decode()[-2000:]}")
    return {"wall": wall, "first_line": t_first if first else wall, "rss_mb": usage.ru_maxrss / 1024}


def serve_ready(config: str, env: dict[str, str]) -> dict[str, float]:
    """Seconds from starting `clipkit serve` until GET /readyz answers 200, and the server's peak RSS (MB);
    the server is then stopped with SIGTERM."""
    import signal
    import socket
    import urllib.error
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    t0 = time.perf_counter()
    proc = subprocess.Popen(CLIPKIT + ["serve", "--config", config, "--port", str(port)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ready = None
    while ready is None and time.perf_counter() - t0 < 600:
        pid, _, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:  # it ended before it was ready
            raise SystemExit(f"clipkit serve --config {config} exited before it was ready")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
                ready = time.perf_counter() - t0 if r.status == 200 else None
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, _, usage = os.wait4(proc.pid, 0)
    if ready is None:
        raise SystemExit(f"clipkit serve --config {config} never became ready")
    return {"wall": ready, "first_line": ready, "rss_mb": usage.ru_maxrss / 1024}


def make_vit_cache(folder: Path) -> Path:
    """ViT-B-32 random weights as open_clip's 'openai' tag finds them: a real-layout HF cache (as tests do)."""
    import hashlib
    import shutil

    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32-quickgelu")
    tmp = folder / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    base = folder / "hf-cache" / f"models--{VIT_REPO.replace('/', '--')}"
    commit = hashlib.sha1(VIT_REPO.encode()).hexdigest()
    (base / "snapshots" / commit).mkdir(parents=True)
    (base / "blobs").mkdir()
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit)
    blob = base / "blobs" / hashlib.sha256(tmp.read_bytes()).hexdigest()
    shutil.move(tmp, blob)
    (base / "snapshots" / commit / tmp.name).symlink_to(os.path.relpath(blob, base / "snapshots" / commit))
    cfg = folder / "vit-b-32.yaml"
    cfg.write_text(f"model:\n  name: ViT-B-32\n  pretrained: openai\n  cache_dir: {folder / 'hf-cache'}\n")
    return cfg


def make_images(folder: Path, n: int) -> list[str]:
    """n 640x480 JPEGs made from the demo samples (shifted and flipped so they differ)."""
    from PIL import Image, ImageOps

    folder.mkdir(parents=True, exist_ok=True)
    samples = sorted((ROOT / "data" / "samples").glob("*.png"))
    out = []
    for i in range(n):
        im = Image.open(samples[i % len(samples)]).convert("RGB").resize((640, 480))
        im = ImageOps.mirror(im) if i % 2 else im
        im = im.rotate(i * 3, fillcolor=(255, 255, 255))
        path = folder / f"img{i:03d}.jpg"
        im.save(path, quality=90)
        out.append(str(path))
    return out


def summarize(runs: list[dict[str, float]]) -> dict[str, float]:
    return {f"{k}_{agg.__name__}": round(agg([r[k] for r in runs]), 3)
            for k in ("wall", "first_line", "rss_mb") for agg in (min, statistics.median)}


@click.command()
@click.option("--runs", type=int, default=5, show_default=True, help="Runs per case and side.")
@click.option("--images", type=int, default=64, show_default=True, help="Images in the many-images case.")
@click.option("--vit/--no-vit", default=True, show_default=True, help="Include ViT-B-32 (random weights).")
@click.option("--serve-only", is_flag=True, help="Only the time until `clipkit serve` (demo model) is ready.")
@click.option("--sessions-only", is_flag=True, help="Only the time until ONNX Runtime's image session is ready "
              "(ViT-B-32): the exported graph optimized at every load vs the graph saved optimized, run as it is.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the results as JSON here.")
def main(runs: int, images: int, vit: bool, serve_only: bool, sessions_only: bool, out: str | None) -> None:
    import shutil

    tmp = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    try:
        if sessions_only:
            return bench_sessions(tmp, runs, out)
        run_cases(tmp, runs, images, vit, serve_only, out)
    finally:  # the ONNX exports of ViT-B-32 and its weights: ~1.2 GB
        shutil.rmtree(tmp, ignore_errors=True)


def run_cases(tmp: Path, runs: int, images: int, vit: bool, serve_only: bool, out: str | None) -> None:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp / "xdg"), "HF_HUB_OFFLINE": "1"}
    if serve_only:
        return bench_serve(tmp, env, runs, out)
    one = make_images(tmp / "one", 1)
    many_dir = tmp / "many"
    make_images(many_dir, images)
    models = {"demo": ["--config", "configs/demo.yaml"]}
    if vit:  # made in a child: a process forked from one holding torch would report torch's RSS as its own peak
        code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_startup as b; " \
               f"from pathlib import Path; b.make_vit_cache(Path({str(tmp)!r}))"
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        models["ViT-B-32"] = ["--config", str(tmp / "vit-b-32.yaml")]
    prepare = {}
    for name, model in models.items():  # the one-time export (and this first run's answer), timed on its own
        load = os.getloadavg()[0]
        first = run_once(["predict", *model, *one], env)
        prepare[name] = {"wall": round(first["wall"], 2), "rss_mb": round(first["rss_mb"]), "load": round(load, 2)}
        print(f"first run (prepares the fast path), {name}: {first['wall']:.1f} s, {first['rss_mb']:.0f} MB peak, "
              f"load average {load:.2f}", flush=True)
    cases = {"--help": (["--help"], False)}
    for name, model in models.items():
        cases[f"{name}, 1 image, labels seen before"] = (["predict", *model, *one], False)
        cases[f"{name}, 1 image, new labels"] = (["predict", *model, *one], True)
    cases[f"demo, {images} images"] = (["predict", *models["demo"], str(many_dir)], False)
    results: dict[str, dict] = {}
    counter = 0
    for case, (args, new_labels) in cases.items():
        load = os.getloadavg()[0]  # beside the absolute times: what else the machine was doing
        sides: dict[str, list] = {"fast": [], "torch": []}
        for _ in range(runs):
            for side in sides:
                extra = [] if side == "fast" or args == ["--help"] else ["--engine", "torch"]
                if new_labels:  # never seen: the text tower runs (both sides encode 2 labels x 7 templates)
                    counter += 1
                    extra += ["--label", f"a thing number {counter}", "--label", f"another thing {counter}"]
                sides[side].append(run_once(args + extra, env))
        results[case] = {**{side: summarize(r) for side, r in sides.items()}, "load_before": round(load, 2)}
        f, t = results[case]["fast"], results[case]["torch"]
        print(f"{case:<42} fast {f['wall_min']:.2f}/{f['wall_median']:.2f} s {f['rss_mb_median']:.0f} MB | "
              f"torch {t['wall_min']:.2f}/{t['wall_median']:.2f} s {t['rss_mb_median']:.0f} MB | "
              f"x{t['wall_median'] / f['wall_median']:.2f}", flush=True)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    doc = {"runs": runs, "prepare": prepare, "results": results, "load_average_after": load,
           "cpus": os.cpu_count()}
    print(json.dumps(doc, indent=2))
    print(markdown(doc))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(doc, indent=2))


def markdown(doc: dict) -> str:
    """The results as the table BENCHMARKS.md shows, with the load average each case started at."""
    rows = ["| case | fast: wall min / median | fast: peak RSS | torch: wall min / median | torch: peak RSS | "
            "torch / fast (median) | load avg |", "|---|---|---|---|---|---|---|"]
    for case, r in doc["results"].items():
        f, t = r["fast"], r["torch"]
        same = case == "--help"
        torch_cols = "(same command) | | " if same else \
            f"{t['wall_min']:.2f} / {t['wall_median']:.2f} s | {t['rss_mb_median']:.0f} MB | " \
            f"{t['wall_median'] / f['wall_median']:.1f}x "
        rows.append(f"| {'`clipkit --help`' if same else case} | {f['wall_min']:.2f} / {f['wall_median']:.2f} s | "
                    f"{f['rss_mb_median']:.0f} MB | {torch_cols}| {r['load_before']:.1f} |")
    first = ", ".join(f"{name} {p['wall']:.0f} s / {p['rss_mb']} MB (load {p['load']:.1f})"
                      for name, p in doc["prepare"].items())
    rows.append(f"\nFirst run, which prepares the fast path (export, optimization, parity checks) and answers: {first}. "
                f"{doc['runs']} runs per case and side, {doc['cpus']} CPUs; load average after: "
                f"{doc['load_average_after']}.")
    return "\n".join(rows)


SESSION = """
import json, resource, sys, time
t0 = time.perf_counter()
from toolkit.encoder.onnx import OnnxImageEncoder
import numpy as np
t1 = time.perf_counter()
enc = OnnxImageEncoder(sys.argv[1], optimized=sys.argv[2] == "saved")
t2 = time.perf_counter()
enc.encode_batch(np.zeros((1, 3, 224, 224), np.float32))
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "session": t2 - t1, "first_image": t3 - t2,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def bench_sessions(tmp: Path, runs: int, out: str | None) -> None:
    """ViT-B-32's image tower (random weights): seconds until the ONNX Runtime session is ready, and the first
    image, in a fresh process, for the graph as exported (optimized at level ALL on every load, as before) and
    as encoder/onnx.save_optimized writes it once (loaded without optimizing), alternating run by run."""
    raw, saved = tmp / "raw.onnx", tmp / "saved" / "image.onnx"
    subprocess.run(CLIPKIT + ["export-onnx", "--model", "ViT-B-32", "--pretrained", "none", "--out", str(raw),
                              "--no-check"], check=True, capture_output=True, cwd=ROOT)
    subprocess.run([sys.executable, "-c", "import sys; from toolkit.encoder.onnx import save_optimized; "
                    "save_optimized(sys.argv[1], sys.argv[2])", str(raw), str(saved)], check=True, cwd=ROOT)
    sides: dict[str, list] = {"exported": [], "saved": []}
    load = os.getloadavg()[0]
    for _ in range(runs):
        for side, path in (("exported", raw), ("saved", saved)):
            proc = subprocess.run([sys.executable, "-c", SESSION, str(path), side], check=True, capture_output=True,
                                  text=True, cwd=ROOT)
            sides[side].append(json.loads(proc.stdout.splitlines()[-1]))
    doc = {side: {k: round(statistics.median(r[k] for r in rs), 3) for k in rs[0]} for side, rs in sides.items()}
    doc.update(runs=runs, load_before=round(load, 2), load_after=" ".join(f"{x:.2f}" for x in os.getloadavg()))
    e, v = doc["exported"], doc["saved"]
    print(json.dumps(doc, indent=2))
    print(f"| graph | session ready | first image | peak RSS |\n|---|---|---|---|\n"
          f"| as exported, optimized at every load | {e['session']:.2f} s | {e['first_image']:.2f} s | "
          f"{e['rss_mb']:.0f} MB |\n| saved optimized, run as it is | {v['session']:.2f} s | {v['first_image']:.2f} s "
          f"| {v['rss_mb']:.0f} MB |\n\nmedians of {runs} runs per side, alternating; session {e['session'] / v['session']:.1f}x "
          f"sooner; load average {load:.1f} before, {doc['load_after']} after.")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(doc, indent=2))


def bench_serve(tmp: Path, env: dict[str, str], runs: int, out: str | None) -> None:
    """`clipkit serve --config configs/demo.yaml` until ready: fast path vs model.engine torch, alternating."""
    demo = (ROOT / "configs" / "demo.yaml").read_text()
    torch_cfg = tmp / "demo-torch.yaml"  # the demo config with its paths made absolute, engine torch
    torch_cfg.write_text(demo.replace("../data/", f"{ROOT / 'data'}/").replace("  device: auto", "  device: auto\n  engine: torch"))
    serve_ready("configs/demo.yaml", env)  # prepares the fast path (once), not timed
    sides = {"fast": [], "torch": []}
    for _ in range(runs):
        sides["fast"].append(serve_ready("configs/demo.yaml", env))
        sides["torch"].append(serve_ready(str(torch_cfg), env))
    doc = {side: summarize(r) for side, r in sides.items()}
    doc["load_average_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(json.dumps(doc, indent=2))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
