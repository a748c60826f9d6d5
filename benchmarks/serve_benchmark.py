"""A bounded load test of `python -m train.serve` on localhost: requests one at a time, then
from concurrent clients. Prints a table of errors, latency (p50, p99), throughput and the lines
per decoded batch. Asserts nothing.

The server runs as a subprocess (its own process, as in use: the clients' threads do not
share its interpreter) on a free port, on --workdir, or else on a workdir holding an untrained
number-words model (d_model 64, 2+2 layers, made in a second; untrained weights write the
longest output, source length + 50 tokens). Its start-up compiles the default decoding's
shapes (--warm_up_buckets=1) and a first burst of requests is not measured, so the figures
are of decoding, not compiling. Each request is one text: a random number, or a line of
--input.

    python benchmarks/serve_benchmark.py [--workdir=DIR] [--clients=16] [--requests=256]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def make_workdir(path: Path) -> None:
    import jax

    from flax_transformer.model import init_params
    from train.configs import default as default_config
    from train.data.numbers import number_words_vocabulary
    from train.setup import model_config_from
    from train.workdir import Workdir

    config = default_config.get_config()
    config.model.update(d_model=64, num_heads=2, num_encoder_layers=2, num_decoder_layers=2)
    config.model.d_ff = 128
    model_config = model_config_from(config, number_words_vocabulary().vocab_size)
    params = init_params(model_config, jax.random.key(0))
    workdir = Workdir(str(path))
    with workdir.checkpointer() as checkpointer:
        checkpointer.save_params(0, params, config=workdir.run_config(config, model_config))
    workdir.write_config(config, model_config)


def start_server(workdir: Path, flags: list[str]) -> tuple[subprocess.Popen, str]:
    """`python -m train.serve` on a free port; (the process, its URL) once it listens."""
    command = [sys.executable, "-m", "train.serve", f"--workdir={workdir}", "--port=0", *flags]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in process.stderr:
        seen.append(line)
        found = re.search(r" on (http://\S+/) \(Ctrl-C to stop\)", line)
        if found:
            # Keep reading stderr, so that the server never blocks on a full pipe.
            threading.Thread(target=process.stderr.read, daemon=True).start()
            return process, found.group(1)
    raise SystemExit("the server did not start:\n" + "".join(seen))


def measure(url: str, texts: list[str], clients: int) -> dict[str, float]:
    """Send one request per text from `clients` threads (each with its own connection)."""
    import httpx

    local = threading.local()
    batches_before = httpx.get(url + "health").json()["batches_decoded"]

    def ask(text: str) -> tuple[float, bool]:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, timeout=120)
        start = time.perf_counter()
        try:
            response = local.client.post("translate", json={"text": text})
            ok = response.status_code == 200 and "translations" in response.json()
        except httpx.HTTPError:
            ok = False
        return time.perf_counter() - start, ok

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(ask, texts))
    seconds = time.perf_counter() - start
    batches = httpx.get(url + "health").json()["batches_decoded"] - batches_before
    latencies = np.array([latency for latency, _ in results]) * 1000
    return {
        "requests": len(texts),
        "errors": sum(not ok for _, ok in results),
        "p50": float(np.percentile(latencies, 50)),
        "p99": float(np.percentile(latencies, 99)),
        "throughput": len(texts) / seconds,
        "lines per batch": len(texts) / max(batches, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="a run of `python -m train` (default: untrained)")
    parser.add_argument("--input", help="texts to send, one a line (default: random numbers)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=256, help="of the concurrent phase")
    parser.add_argument("--sequential", type=int, default=64, help="requests one at a time")
    parser.add_argument("--decoding", default="greedy", choices=["greedy", "beam", "sample"])
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_wait_ms", type=float, default=5.0)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    if args.input:
        lines = [line.strip() for line in Path(args.input).read_text().splitlines()]
        pool = [line for line in lines if line]
    else:
        pool = [str(n) for n in rng.integers(0, 10 ** rng.integers(1, 7, 1000), dtype=np.int64)]
    flags = [
        f"--decoding={args.decoding}",
        f"--batch_size={args.batch_size}",
        f"--max_wait_ms={args.max_wait_ms}",
    ]
    with tempfile.TemporaryDirectory() as temporary:
        workdir = Path(args.workdir) if args.workdir else Path(temporary) / "untrained"
        if not args.workdir:
            make_workdir(workdir)
        process, url = start_server(workdir, flags)
        try:
            measure(url, pool[: args.clients * 4], args.clients)  # warm: not measured
            phases = {
                "one at a time": measure(url, list(rng.choice(pool, args.sequential)), 1),
                f"{args.clients} concurrent clients": measure(
                    url, list(rng.choice(pool, args.requests)), args.clients
                ),
            }
        finally:
            process.terminate()
            process.wait(60)
    model = args.workdir or "untrained, d_model 64, 2+2 layers"
    print(f"CPU cores: {len(os.sched_getaffinity(0))}; {model}; {args.decoding}, ", end="")
    print(f"--batch_size={args.batch_size}, --max_wait_ms={args.max_wait_ms}\n")
    columns = ["clients", "requests", "errors", "p50 latency (ms)", "p99 latency (ms)"]
    print("| " + " | ".join([*columns, "requests/s", "lines per batch"]) + " |")
    print("|---|---|---|---|---|---|---|")
    for name, row in phases.items():
        print(
            f"| {name} | {row['requests']} | {row['errors']} | {row['p50']:.1f} | "
            f"{row['p99']:.1f} | {row['throughput']:.1f} | {row['lines per batch']:.1f} |"
        )


if __name__ == "__main__":
    main()
