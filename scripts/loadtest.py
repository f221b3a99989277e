#!/usr/bin/env python
"""Load test: N concurrent clients against real `clipkit serve` processes on loopback, micro-batching on vs off.

Two servers start (same model and config, one with --no-micro-batching); the runs alternate between them at
each concurrency, so both sides see the same machine state. Every run is bounded in requests AND seconds.
Reports throughput (requests/s, one image per request), p50/p99 latency, errors, and the mean model batch
size (from the server's /metrics), and writes the table into BENCHMARKS.md under "## Serving (issue 6)".

    .venv/bin/python scripts/loadtest.py                       # demo model when present, else a tiny one
    .venv/bin/python scripts/loadtest.py --requests 400 --max-seconds 60 --concurrency 1 8 32 64

Hostile scenarios (issues 24 and 25), each against two servers in one run, written under "## Hostile load
(issues 24, 25)"; they measure how long a plain request (one PNG, default labels) sent into the flood takes:

    .venv/bin/python scripts/loadtest.py --scenario flood      # N requests of 100 new labels of ~100 characters
    .venv/bin/python scripts/loadtest.py --scenario bombs      # 8 progressive JPEGs of 8000 scans in flight
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import re
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import _bench  # noqa: E402
from toolkit.serve.process import ServerProcess  # noqa: E402

SECTION = "## Serving (issue 6)"
TINY_CFG = {"embed_dim": 32,
            "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "patch_size": None},
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def model_args(tmp: Path) -> tuple[list[str], str]:
    """(clipkit serve args, description): the demo model when its weights exist, else a tiny random one."""
    demo = ROOT / "configs" / "demo.yaml"
    if demo.is_file() and (ROOT / "data" / "models" / "clipkit-demo.safetensors").is_file():
        return ["--config", str(demo)], "demo model (configs/demo.yaml)"
    import open_clip
    import torch
    from safetensors.torch import save_file

    cfg = tmp / "tiny-rn.json"
    cfg.write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(cfg)
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-rn", pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "tiny-rn.safetensors"))
    return ["--model", str(cfg), "--pretrained", str(tmp / "tiny-rn.safetensors")], "tiny random model (32 px)"


def sample_images(n: int = 8) -> list[bytes]:
    """PNG bytes: data/samples/*.png when present, else random 224x224 images."""
    files = sorted((ROOT / "data" / "samples").glob("*.png"))[:n]
    if files:
        return [f.read_bytes() for f in files]
    rng, out = np.random.default_rng(0), []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray((rng.random((224, 224, 3)) * 255).astype("uint8")).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


async def run_load(url: str, images: list[bytes], concurrency: int, n_requests: int, max_seconds: float) -> dict:
    """`concurrency` clients, each sending one request at a time, until n_requests are sent or time is up."""
    latencies: list[float] = []
    errors: dict[int, int] = {}
    issued = 0
    t_end = time.perf_counter() + max_seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        async def worker() -> None:
            nonlocal issued
            while issued < n_requests and time.perf_counter() < t_end:
                i = issued
                issued += 1
                t0 = time.perf_counter()
                r = await client.post("/v1/predict", files={"files": (f"{i}.png", images[i % len(images)])})
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors[r.status_code] = errors.get(r.status_code, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    lat = sorted(latencies)
    return {"requests": len(lat), "errors": errors, "seconds": wall, "rps": len(lat) / wall,
            "p50_ms": 1000 * statistics.median(lat) if lat else float("nan"),
            "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float("nan")}


def batch_stats(url: str) -> tuple[float, float]:
    text = httpx.get(url + "/metrics", timeout=10).text

    def value(name: str) -> float:
        m = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    return value("clipkit_batch_size_images_sum"), value("clipkit_batch_size_images_count")


def measure(servers: dict[str, ServerProcess], images: list[bytes], args) -> list[dict]:
    rows = []
    for c in args.concurrency:
        for side in ("on", "off"):  # alternate, so both sides share the machine's state
            url = servers[side].url
            asyncio.run(run_load(url, images, c, min(2 * c, 16), 10))  # warm-up: connections, caches
            s0, n0 = batch_stats(url)
            res = asyncio.run(run_load(url, images, c, args.requests, args.max_seconds))
            s1, n1 = batch_stats(url)
            res.update(concurrency=c, batching=side, mean_batch=(s1 - s0) / max(n1 - n0, 1))
            rows.append(res)
            print(f"c={c:<3} batching {side:<3}  {res['rps']:7.1f} req/s  p50 {res['p50_ms']:7.1f} ms  "
                  f"p99 {res['p99_ms']:7.1f} ms  mean batch {res['mean_batch']:5.1f}  "
                  f"n={res['requests']} errors={res['errors'] or 0}", file=sys.stderr)
    return rows


def render(rows: list[dict], model: str, args, command: str) -> str:
    by = {(r["concurrency"], r["batching"]): r for r in rows}
    lines = [SECTION, "",
             f"`{command}`", "",
             f"{model}; one PNG per request to POST /v1/predict; clients (httpx, asyncio) and both servers on the "
             f"same machine ({_bench.machine_note()}); "
             f"each run at most {args.requests} requests and {args.max_seconds:.0f} s, after a short warm-up; "
             f"server defaults otherwise (max_batch_size 32, max_wait_ms 5). "
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.", "",
             "| concurrency | batching | req/s | p50 ms | p99 ms | mean model batch | ok | errors |",
             "|---:|:---|---:|---:|---:|---:|---:|:---|"]
    for r in rows:
        errs = ", ".join(f"{k}: {v}" for k, v in sorted(r["errors"].items())) or "-"
        lines.append(f"| {r['concurrency']} | {r['batching']} | {r['rps']:.1f} | {r['p50_ms']:.1f} | "
                     f"{r['p99_ms']:.1f} | {r['mean_batch']:.1f} | {r['requests']} | {errs} |")
    lines += ["", "Throughput ratio, micro-batching on / off: " + ", ".join(
        f"c={c}: {by[(c, 'on')]['rps'] / by[(c, 'off')]['rps']:.2f}x" for c in args.concurrency
        if by[(c, 'off')]['rps'] > 0) + ".", "",
        "Clients, both servers and the model share this machine's CPUs, so single figures are noisy (c=1 most); "
        "compare the on/off ratios, which are measured in one run. Batching gains come from fewer, larger model "
        "calls (the mean model batch column); per-request work (HTTP, multipart parsing, image decoding, "
        "preprocessing) is the same on both sides. A lone request doesn't wait for company: the batcher waits "
        "up to max_wait_ms only while another request in flight could still join the batch.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- hostile scenarios (issues 24, 25)

HOSTILE_SECTION = "## Hostile load (issues 24, 25)"
HEADINGS = {"flood": "### Label-set flood (issue 24)", "bombs": "### Progressive-JPEG scan bombs (issue 25)"}
# The other side of each comparison: text passes unbounded (every label set straight into the model thread's
# queue, as before issue 24), or the JPEG decode bounded by its time cap alone (no scan count, no work budget).
SIDES = {"flood": {"admitted (defaults)": {}, "unbounded": {"text_concurrency": 100_000,
                                                            "text_queue_labels": 10 ** 9,
                                                            "text_queue_s": 1e9}},
         "bombs": {"guarded (defaults)": {}, "time cap only": {"max_jpeg_scans": 10 ** 9, "max_decode_work": 1e18,
                                                               "decode_timeout_s": 3.0}}}


def side_config(tmp: Path, margs: list[str], name: str, serve: dict) -> list[str]:
    """serve args for one side: the model of `margs` with these serve settings, in a config file."""
    import yaml

    opts = dict(zip(margs[::2], margs[1::2]))
    if "--config" in opts:
        from toolkit.config import load_config

        cfg = load_config(opts["--config"])
        model = {"name": cfg.model.name, "pretrained": cfg.model.pretrained}
        prompts = {"templates": cfg.prompts.templates}
    else:
        model, prompts = {"name": opts["--model"], "pretrained": opts["--pretrained"]}, {}
    path = tmp / f"{name.split()[0]}.yaml"
    path.write_text(yaml.safe_dump({"model": {**model, "device": "cpu"}, "prompts": prompts, "serve": serve}))
    return ["--config", str(path)]


_WORDS = "person squat jump plank lunge stretch crouch reach kick twist bend lift press raise hold step".split()


def flood_labels(request: int, n: int = 100, words: int = 16) -> str:
    """n labels of `words` words (~100 characters: with a template they still fit the demo model's 32-token
    context; longer ones are refused as too long before any text pass), distinct from every other request's."""
    rng = np.random.default_rng(request)
    return "\n".join(f"r{request} l{i} " + " ".join(rng.choice(_WORDS, words - 2)) for i in range(n))


async def hostile_run(url: str, hostile: list[dict], plain_png: bytes, delay_s: float = 0.3) -> dict:
    """Send the hostile requests at once, then after delay_s one plain request; -> statuses and latencies."""
    async with httpx.AsyncClient(base_url=url, timeout=180,
                                 limits=httpx.Limits(max_connections=len(hostile) + 2)) as client:
        async def one(kw: dict) -> tuple[int, float]:
            t0 = time.perf_counter()
            r = await client.post("/v1/predict", **kw)
            return r.status_code, time.perf_counter() - t0

        async def plain() -> tuple[int, float]:
            await asyncio.sleep(delay_s)
            return await one({"files": {"files": ("plain.png", plain_png)}})

        t0 = time.perf_counter()
        *flood, (p_status, p_s) = await asyncio.gather(*(one(kw) for kw in hostile), plain())
        wall = time.perf_counter() - t0
    statuses: dict[int, int] = {}
    for status, _ in flood:
        statuses[status] = statuses.get(status, 0) + 1
    return {"plain_status": p_status, "plain_s": p_s, "statuses": statuses, "wall_s": wall,
            "hostile_max_s": max(s for _, s in flood), "n": len(hostile)}


def hostile_requests(scenario: str, n: int, png: bytes) -> list[dict]:
    if scenario == "flood":
        return [{"files": {"files": (f"{i}.png", png)}, "data": {"labels": flood_labels(i)}} for i in range(n)]
    sys.path.insert(0, str(ROOT / "tests"))
    from test_serve_hardening2 import scan_bomb  # the test's byte-level bomb writer

    bomb = scan_bomb(4096, 8000)
    return [{"files": {"files": (f"bomb{i}.jpg", bomb)}} for i in range(n)]


def measure_hostile(scenario: str, servers: dict[str, ServerProcess], counts: dict[str, list[int]],
                    png: bytes) -> list[dict]:
    rows = []
    for n in sorted({c for cs in counts.values() for c in cs}):
        for side, srv in servers.items():  # alternate: both sides see the same machine state
            if n not in counts[side]:
                continue
            reqs = hostile_requests(scenario, n, png)
            res = asyncio.run(hostile_run(srv.url, reqs, png))
            res.update(side=side)
            rows.append(res)
            print(f"{scenario} n={n:<3} {side:<20} plain {res['plain_status']} in {res['plain_s']:6.2f}s  "
                  f"hostile {res['statuses']} (slowest {res['hostile_max_s']:.2f}s)", file=sys.stderr)
            time.sleep(2)  # let leftovers finish before the other side runs
    return rows


def render_hostile(scenario: str, rows: list[dict], model: str, command: str) -> str:
    what = {"flood": "requests of 100 new labels of 16 words (~100 characters; distinct label sets) and one PNG "
                     "each",
            "bombs": "progressive greyscale JPEGs of 4096x4096 and 8000 scans (242 KB; ~40 s of decoding each "
                     "without a guard)"}[scenario]
    sides = "; ".join(f"{k}" + (f" (serve: {json.dumps(v)})" if v else "") for k, v in SIDES[scenario].items())
    lines = [HEADINGS[scenario], "", f"`{command}`", "",
             f"{model}. N {what} sent at once to POST /v1/predict, then after 0.3 s one plain request (one PNG, "
             f"default labels). Sides: {sides}. "
             f"Clients and both servers on the same loaded machine ({_bench.machine_note()}); the sides alternate "
             f"in one run. {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.", "",
             "| N | side | plain request | plain status | hostile answers | slowest hostile | wall |",
             "|---:|:---|---:|---:|:---|---:|---:|"]
    for r in rows:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items()))
        lines.append(f"| {r['n']} | {r['side']} | {r['plain_s']:.2f} s | {r['plain_status']} | {statuses} | "
                     f"{r['hostile_max_s']:.2f} s | {r['wall_s']:.1f} s |")
    return "\n".join(lines + [""])


def main_hostile(args) -> None:
    command = "python scripts/loadtest.py " + " ".join(sys.argv[1:])
    counts = {"flood": {"admitted (defaults)": [24, 48], "unbounded": [24]},
              "bombs": {"guarded (defaults)": [8], "time cap only": [8]}}[args.scenario]
    with tempfile.TemporaryDirectory() as tmp:
        margs, model = model_args(Path(tmp))
        servers = {side: ServerProcess([*side_config(Path(tmp), margs, side, serve), "--no-access-log",
                                        "--log-level", "warning"])
                   for side, serve in SIDES[args.scenario].items()}
        try:
            for s in servers.values():
                s.start()
            for s in servers.values():
                s.wait_ready()
            rows = measure_hostile(args.scenario, servers, counts, sample_images(1)[0])
        finally:
            for s in servers.values():
                s.terminate()
    section = render_hostile(args.scenario, rows, model, command.strip())
    print(section)
    if not args.no_write:
        out, heading = Path(args.out), HEADINGS[args.scenario]
        doc = out.read_text() if out.is_file() else "# Benchmarks\n"
        if heading not in doc:  # a placeholder at the end of the hostile section, which write_section fills
            if HOSTILE_SECTION not in doc:
                doc = doc.rstrip("\n") + f"\n\n{HOSTILE_SECTION}\n"
            start = doc.index(HOSTILE_SECTION)
            end = doc.find("\n## ", start + len(HOSTILE_SECTION))
            end = len(doc) if end < 0 else end + 1
            doc = doc[:end].rstrip("\n") + f"\n\n{heading}\n\n" + doc[end:]
            tmp = out.with_name(f".{out.name}.tmp")
            tmp.write_text(doc)
            tmp.replace(out)
        _bench.write_section(out, heading, section)
        print(f"wrote {heading!r} into {args.out}", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests", type=int, default=200, help="per run (upper bound)")
    ap.add_argument("--max-seconds", type=float, default=30.0, help="per run (upper bound)")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    ap.add_argument("--no-write", action="store_true", help="print the table only")
    ap.add_argument("--scenario", choices=["batching", "flood", "bombs"], default="batching",
                    help="batching: micro-batching on vs off; flood, bombs: hostile load (issues 24, 25)")
    args = ap.parse_args()
    if args.scenario != "batching":
        main_hostile(args)
        return
    command = "python scripts/loadtest.py " + " ".join(sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        margs, model = model_args(Path(tmp))
        common = [*margs, "--no-access-log", "--log-level", "warning", "--queue-size", "4096"]
        servers = {"on": ServerProcess(common), "off": ServerProcess([*common, "--no-micro-batching"])}
        try:
            for s in servers.values():
                s.start()
            for s in servers.values():
                s.wait_ready()
            rows = measure(servers, sample_images(), args)
        finally:
            codes = {k: s.terminate() for k, s in servers.items()}
    section = render(rows, model, args, command.strip())
    print(section)
    if codes != {"on": 0, "off": 0}:
        print(f"warning: server exit codes {codes}", file=sys.stderr)
    if not args.no_write:
        _bench.write_section(Path(args.out), SECTION, section)
        print(f"wrote {SECTION!r} into {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
