"""Load on `textlora serve`: requests/s, texts/s and latency at several concurrency levels, loopback only.

    python benchmarks/serve_load.py /tmp/runs/qs-timed                       # a run folder or an export
    python benchmarks/serve_load.py RUN --concurrency 1,8,32 --requests 300 --max-seconds 60

For each arm a real server process is started on a free 127.0.0.1 port (nothing else is ever
contacted), warmed up, then driven by ``C`` concurrent clients (httpx, asyncio) that send real AG
News test texts until ``--requests`` requests are done or ``--max-seconds`` have passed; then it is
stopped. Arms, measured in the same run so their ratio means something:

- ``batched``: the default server (micro-batching, ``--max-batch 32 --max-wait-ms 5``);
- ``unbatched``: the reference, one model call per request (``--max-batch 1 --max-wait-ms 0``).
- ``onnx``: ``batched`` on ONNX Runtime (``--onnx``; MODEL must be a ``textlora export --onnx`` folder).

Any non-200 answer or transport error counts as an error. Results: a markdown table printed and
written as the "Serving" section of BENCHMARKS.md, together with this command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (OFFLINE_ENV, REPO, command_line, default_test_data, load_agnews,  # noqa: E402
                               machine, markdown_table, publish_section)

ARMS = {"batched": ["--max-batch", "32", "--max-wait-ms", "5"], "unbatched": ["--max-batch", "1", "--max-wait-ms", "0"],
        "onnx": ["--onnx", "--max-batch", "32", "--max-wait-ms", "5"]}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(model: Path, flags: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "textlora.cli", "serve", str(model), "--port", str(port),
                                "--log-level", "warning", *flags], stdout=log.open("w"), stderr=subprocess.STDOUT,
                               env={**os.environ, **OFFLINE_ENV})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    process.kill()
    raise SystemExit("server did not become healthy in 300 s")


async def drive(url: str, texts: list[str], concurrency: int, requests: int, max_seconds: float,
                per_request: int) -> dict:
    """``concurrency`` clients send requests until ``requests`` are done or ``max_seconds`` pass."""
    import httpx

    latencies: list[float] = []
    errors = 0
    issued = 0
    deadline = time.perf_counter() + max_seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal issued, errors
        while issued < requests and time.perf_counter() < deadline:
            start = (issued * per_request) % len(texts)
            issued += 1
            batch = texts[start:start + per_request]
            began = time.perf_counter()
            try:
                response = await http.post(f"{url}/v1/classify", json={"texts": batch})
                ok = response.status_code == 200 and len(response.json()["results"]) == len(batch)
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - began)
            errors += not ok

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        before = (await http.get(f"{url}/v1/stats")).json()
        began = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        seconds = time.perf_counter() - began
        after = (await http.get(f"{url}/v1/stats")).json()
    done = len(latencies)
    calls = after["model_calls"] - before["model_calls"]
    ms = np.array(latencies) * 1000
    texts_done = after["texts"] - before["texts"]
    return {"requests": done, "errors": errors, "seconds": seconds, "texts": done * per_request,
            "texts_s": done * per_request / seconds, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "latencies_ms": ms, "model_calls": calls,
            "model_texts": texts_done, "mean_batch": texts_done / calls if calls else 0.0}


def merge_rounds(parts: list[dict]) -> dict:
    """One result from several rounds: totals over total time, percentiles over all latencies."""
    seconds = sum(p["seconds"] for p in parts)
    requests = sum(p["requests"] for p in parts)
    ms = np.concatenate([p["latencies_ms"] for p in parts])
    calls = sum(p["model_calls"] for p in parts)
    return {"requests": requests, "errors": sum(p["errors"] for p in parts), "seconds": seconds,
            "req_s": requests / seconds, "texts_s": sum(p["texts"] for p in parts) / seconds,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_batch": sum(p["model_texts"] for p in parts) / calls if calls else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="run folder or exported model folder")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated client counts")
    parser.add_argument("--requests", type=int, default=300, help="requests per level (bound)")
    parser.add_argument("--max-seconds", type=float, default=60, help="time per level (bound)")
    parser.add_argument("--texts-per-request", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2, help="turns each arm takes per level (interleaved)")
    parser.add_argument("--arms", default="batched,unbatched")
    parser.add_argument("--out", default=str(REPO / "BENCHMARKS.md"), help="markdown file to update, or 'none'")
    args = parser.parse_args()

    texts = load_agnews(default_test_data()).texts
    load_before = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    levels = [int(c) for c in args.concurrency.split(",")]
    arms = args.arms.split(",")
    runs: dict[tuple[str, int], list[dict]] = {}
    workdir = Path(tempfile.mkdtemp(prefix="serve-load-"))
    # Every arm's server is up at once (idle ones use no CPU) and the arms take turns within each level,
    # round after round, so that load from other processes on a shared machine hits them alike.
    servers = {arm: start_server(args.model, ARMS[arm], workdir / f"{arm}.log") for arm in arms}
    try:
        for arm, (_, url) in servers.items():
            asyncio.run(drive(url, texts[-200:], 4, 40, 30, args.texts_per_request))  # warm-up, not counted
        for level in levels:
            for round_ in range(args.rounds):
                for arm in arms:
                    result = asyncio.run(drive(servers[arm][1], texts, level, args.requests, args.max_seconds,
                                               args.texts_per_request))
                    runs.setdefault((arm, level), []).append(result)
                    print(f"[bench] {arm:>9} c={level:<3} round {round_ + 1}: {result['requests']} req, "
                          f"{result['errors']} errors, {result['texts_s']:.1f} texts/s, p50 {result['p50_ms']:.0f} ms, "
                          f"p99 {result['p99_ms']:.0f} ms, mean batch {result['mean_batch']:.1f}", flush=True)
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=30)
    results = {key: merge_rounds(parts) for key, parts in runs.items()}
    load_after = ", ".join(f"{x:.1f}" for x in os.getloadavg())

    rows = []
    for (arm, level), r in sorted(results.items(), key=lambda item: (item[0][1], arms.index(item[0][0]))):
        reference = results.get(("unbatched", level))
        ratio = f"{r['texts_s'] / reference['texts_s']:.2f}x" if reference else "n/a"
        rows.append([arm, level, r["requests"], r["errors"], f"{r['req_s']:.1f}", f"{r['texts_s']:.1f}",
                     f"{r['p50_ms']:.0f}", f"{r['p99_ms']:.0f}", f"{r['mean_batch']:.1f}", ratio])
    table = markdown_table(["arm", "concurrency", "requests", "errors", "requests/s", "texts/s", "p50 ms", "p99 ms",
                            "texts per model call", "texts/s vs unbatched"], rows)
    exported = args.model / "textlora.json"
    source = (f" (`textlora export {json.loads(exported.read_text())['run_dir']} --out {args.model} --onnx`)"
              if exported.is_file() else "")
    body = (f"## Serving\n\n`textlora serve` under load: real server processes on 127.0.0.1, "
            f"{args.texts_per_request} AG News test text(s) per request, {args.rounds} interleaved rounds per level "
            f"of at most {args.requests} requests or {args.max_seconds:g} s each, after a 40-request warm-up. "
            f"`unbatched` (one model call per request) is the reference measured in the same run.\n\n{table}\n\n"
            f"Model: `{args.model}`{source}. Machine: {machine()}; load average before/after: {load_before} / "
            f"{load_after} (other processes share this machine).\n\nCommand: `{command_line()}`\n")
    publish_section(args.out, "serve-load", body)


if __name__ == "__main__":
    main()
