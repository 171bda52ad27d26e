"""Hot reload under load: promotions and a rollback while a paced load generator keeps sending.

The server (2 workers, prediction log on) polls the manifest every second.
During a run at `--rate` req/s the benchmark moves the `production` alias to
version 2, then 3, then back to 1 (set_alias: the models were published
beforehand, as a pipeline would). Each worker fetches the new file into its
cache, validates it (sha256 against the manifest, section checksums, finite
weights: in a low-priority process), maps it in, scores the canary rows and
swaps it in. The cache starts empty, so every version is fetched and validated
during the run.

Reported: failed requests, overall p99, the p99 of all requests in the swap
windows (from an alias change until every worker serves the new version, +1 s;
pooled over the three swaps and per swap) against that of the requests outside
them (the baseline, same run), and the stricter per-second view: each window
second's p99 against the median one-second p99 of the seconds without a swap.
The load generator is the one bench_serve_load.py uses: wrk on a fixed
schedule when wrk is installed (serve_workload.run_wrk_paced), else the Python
open-loop client; both measure latency from the scheduled send time.

    .venv/bin/python benchmarks/bench_serve_reload.py [--quick] [--rate 2000] [--duration 40] [--no-log]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import serve_workload as w  # noqa: E402


def serving_versions(port: int, samples: int = 8) -> set:
    """Versions the workers report (several calls: each may land on another worker)."""
    seen = set()
    for _ in range(samples):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            seen.add(json.loads(r.read())["arms"]["production"]["serving_version"])
    return seen


def start_server(storage: Path, workers: int, runtime: str, log_dir: Path | None, cache: Path,
                 interface: str = "rsgi", lock_memory: bool = False) -> w.Server:
    """serve_workload's ctrops server, with a cache folder of its own (emptied: every version is fetched)."""
    import yaml

    port = w.free_port()
    cfg_path = w.ctrops_config(storage, port, workers, runtime, log_dir, poll_seconds=1.0, interface=interface,
                               lock_memory=lock_memory)
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["model"]["cache_dir"] = str(cache)
    shutil.rmtree(cache, ignore_errors=True)
    cfg_path = cfg_path.with_name(f"serving-reload-{port}.yaml")
    cfg_path.write_text(yaml.safe_dump(cfg))
    mp = w.OUT / f"prom-{port}"
    shutil.rmtree(mp, ignore_errors=True)
    mp.mkdir(parents=True)
    return w.start(f"ctrops-reload-{runtime}", [w.PY, "-m", "ctrops.cli_serve", "--config", str(cfg_path)], port,
                   "/readyz", env={"PROMETHEUS_MULTIPROC_DIR": str(mp), "CTROPS_LOG_LEVEL": "WARNING"}, timeout=600)


class Load:
    """The load generator in the background: wrk paced if available, else the Python open-loop client."""

    def __init__(self, port: int, bodies: Path, rate: float, duration: float) -> None:
        self.result: dict | None = None
        self.error: BaseException | None = None
        paced = getattr(w, "run_wrk_paced", None)
        if paced is not None and shutil.which("wrk"):
            self.kind = "wrk paced"
            self._thread = threading.Thread(target=self._run, args=(paced, port, bodies, rate, duration))
            self._proc = None
            self._thread.start()
        else:
            self.kind = "python open loop"
            self._thread = None
            self._proc = subprocess.Popen([w.PY, str(Path(w.__file__)), "--port", str(port), "--bodies", str(bodies),
                                           "--rate", str(rate), "--duration", str(duration)],
                                          stdout=subprocess.PIPE, text=True, cwd=w.ROOT)
        self.duration = duration

    def _run(self, fn, *args) -> None:
        try:
            self.result = fn(args[0], args[1], "/v1/predict", args[2], args[3], samples=True)
        except BaseException as exc:  # reported by wait()
            self.error = exc

    def wait(self) -> dict:
        if self._proc is not None:
            out, _ = self._proc.communicate(timeout=self.duration + 180)
            return json.loads(out.strip().splitlines()[-1])
        self._thread.join(self.duration + 180)
        if self.error is not None:
            raise self.error
        return self.result


def swap_windows(events: list[dict], duration: float) -> list[range]:
    """Each swap's seconds: from the alias change until every worker serves the new version, + 1 s."""
    windows = []
    for e in events:
        span = e["all_workers_swapped_after_s"] if e["all_workers_swapped_after_s"] is not None else duration / 4
        windows.append(range(int(e["t_s"]), int(e["t_s"] + span) + 2))
    return windows


def pooled_p99(samples: tuple | None, events: list[dict], duration: float) -> dict:
    """p99 over all requests of the swap windows (together and per swap) and of the seconds outside them.

    A pooled p99 is what "p99 during the swap" asks for; the worst single
    second's p99 (also reported) is a stricter, noisier figure: the tail of one
    second's 2,000 requests.
    """
    import numpy as np

    if samples is None:  # the Python client gives per-second figures only
        return {"all": None, "per_swap": None, "steady": None}
    sec, lat = samples
    windows = swap_windows(events, duration)

    def p99(mask: np.ndarray) -> float | None:
        return round(float(np.percentile(lat[mask], 99)), 2) if mask.any() else None

    masks = [(sec >= w.start) & (sec < w.stop) for w in windows]
    inside = np.logical_or.reduce(masks) if masks else np.zeros(sec.shape, bool)
    return {"all": p99(inside), "per_swap": [p99(m) for m in masks], "steady": p99(~inside & (sec > 0))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rate", type=float, default=2000.0)
    ap.add_argument("--duration", type=float, default=40.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--runtime", default="granian", choices=["granian", "uvicorn"])
    ap.add_argument("--no-log", action="store_true", help="run the server without the prediction log")
    ap.add_argument("--interface", default="rsgi", choices=["rsgi", "asgi", "wsgi"], help="granian's interface")
    ap.add_argument("--lock-memory", action="store_true", help="model.lock_memory: mlock the models' pages")
    args = ap.parse_args()
    n_features = 50_000 if args.quick else 1_000_000
    rate = min(args.rate, 200.0) if args.quick else args.rate
    duration = 12.0 if args.quick else args.duration

    from ctrops.artifact.manifest import set_alias

    models = [w.build_model(n_features, seed=s) for s in (0, 1, 2)]
    storage = w.OUT / f"store-reload-{n_features}"
    shutil.rmtree(storage, ignore_errors=True)
    for version, path in enumerate(models, 1):
        w.publish(path, storage, version, aliases=("production",) if version == 1 else ())
    bodies = w.write_bodies(w.make_requests(400, w.values_per_field(models[0])), w.OUT / "bodies-100.jsonl")
    log_dir = None if args.no_log else w.OUT / "prediction-log-reload"
    if log_dir is not None:
        shutil.rmtree(log_dir, ignore_errors=True)
    server = start_server(storage, args.workers, args.runtime, log_dir, w.OUT / "cache-reload", args.interface,
                          args.lock_memory)
    events = []
    try:
        w.open_loop_subprocess(server.port, bodies, "/v1/predict", min(rate, 500), 3)  # warm up
        load = Load(server.port, bodies, rate, duration)
        t0 = time.monotonic()
        for at, version in ((0.25, 2), (0.5, 3), (0.75, 1)):
            time.sleep(max(0.0, t0 + at * duration - time.monotonic()))
            set_alias(str(storage), w.MODEL_NAME, "production", version)
            events.append({"t_s": round(time.monotonic() - t0, 2), "production": version})
            print(f"  t={events[-1]['t_s']:5.1f}s production -> version {version}", flush=True)
            deadline = time.monotonic() + duration / 4 - 1
            while time.monotonic() < deadline and serving_versions(server.port) != {version}:
                time.sleep(0.2)
            swapped = serving_versions(server.port) == {version}
            events[-1]["all_workers_swapped_after_s"] = (round(time.monotonic() - t0 - events[-1]["t_s"], 2)
                                                         if swapped else None)
        res = load.wait()
        final = serving_versions(server.port)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5).read().decode()
        memory = server.memory()
    finally:
        server.stop()
    per_sec = res["per_second_p99_ms"]
    swap_secs = {s for window in swap_windows(events, duration) for s in window}
    during = [per_sec[s] for s in sorted(swap_secs) if s < len(per_sec)]
    steady = [v for s, v in enumerate(per_sec) if s not in swap_secs and s > 0]
    pooled = pooled_p99(res.pop("samples", None), events, duration)
    size_mb = models[0].stat().st_size / 2**20
    result = {"rate": rate, "interface": args.interface, "lock_memory": args.lock_memory, "duration_s": duration, "client": load.kind,
              "prediction_log": log_dir is not None,
              "events": events, "load": res,
              # the "p99 during the swap": every request of a swap's window, pooled
              "p99_during_swaps_ms": pooled["all"], "p99_per_swap_ms": pooled["per_swap"],
              "p99_steady_ms": pooled["steady"],
              "worst_second_p99_during_swaps_ms": max(during) if during else None,
              "seconds_in_swap_windows": len(during),
              "median_second_p99_in_swap_windows_ms": statistics.median(during) if during else None,
              "median_second_p99_steady_ms": statistics.median(steady) if steady else None,
              "final_versions": sorted(final), "loadavg_end": os.getloadavg(),
              "memory_end": memory, "model_mib": round(size_mb, 1),
              "reload_successes": [line for line in metrics.splitlines()
                                   if line.startswith('ctrops_reloads_total{outcome="success"}')]}
    print("  p99 per second (ms): " + " ".join(f"{'*' if s in swap_secs else ''}{v:.0f}" for s, v in enumerate(per_sec))
          + "   (* = in a swap window)", flush=True)
    print(f"{rate:.0f} req/s for {duration:.0f} s with 3 swaps ({load.kind}): errors {res['errors']}, achieved "
          f"{res.get('achieved_rps')} req/s, p99 {res['p99_ms']} ms; p99 of the requests in the swap windows "
          f"{result['p99_during_swaps_ms']} ms (per swap {result['p99_per_swap_ms']}; outside them "
          f"{result['p99_steady_ms']} ms); worst 1-s p99 in the swap windows "
          f"{result['worst_second_p99_during_swaps_ms']} ms (median {result['median_second_p99_in_swap_windows_ms']}) vs "
          f"steady median 1-s p99 "
          f"{result['median_second_p99_steady_ms']} ms; all workers swapped after "
          f"{[e['all_workers_swapped_after_s'] for e in events]} s; final version {sorted(final)}; "
          f"PSS {memory['pss_mb']:.0f} MiB = model {size_mb:.0f} MiB + {memory['pss_mb'] - size_mb:.0f} MiB",
          flush=True)
    (w.OUT / f"bench_serve_reload{'-quick' if args.quick else ''}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
