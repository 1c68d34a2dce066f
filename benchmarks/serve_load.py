"""`tunesmith serve` under load, side by side with llama-cpp-python's own server on the same GGUF (loopback only).

    python benchmarks/serve_load.py RUN [--clients 32] [--duration 60] [--out benchmarks/results/serve_load.json]

RUN: a finished LoRA run (the quickstart's). Its base is written as Q8_0 GGUF once; its adapter is served under
four names (four separately loaded LoRA handles: what four runs cost, as far as memory and switching go).

1. Memory: peak RSS (VmHWM) of one tunesmith server holding 4 adapters vs the sum of 4 servers holding one each.
2. Adapter switch: mean added latency of a one-token request that switches adapter vs one that does not.
3. Load: CLIENTS concurrent streaming clients for DURATION seconds against one adapter, then against the four
   interleaved, then against llama-cpp-python's server (`python -m llama_cpp.server`, base + the same LoRA):
   completion tokens/s, p50/p95 time to first token and request latency, failures.
Run it on an otherwise idle machine; every phase runs one server at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PROMPT = [{"role": "user", "content": "Convert the order to JSON with keys item, qty, size, color, when.\n"
                                      "Two red mugs, medium, by Friday please."}]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(argv: list[str], port: int) -> subprocess.Popen:
    """Start a server and wait for /v1/models; its log goes to a file (a full pipe would stall it)."""
    import tempfile
    import urllib.request

    log = tempfile.NamedTemporaryFile("w+", prefix="serve-load-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True)
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1)
            return process
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"server exited: {Path(log.name).read_text()[-2000:]}") from None
            time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"server did not start: {Path(log.name).read_text()[-2000:]}")


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def tunesmith_server(names: list[str], run: str, port: int) -> subprocess.Popen:
    argv = [sys.executable, "-m", "tunesmith", "serve", *(f"{n}={run}" for n in names), "--port", str(port),
            "--quant", "Q8_0", "--max-queue", "256"]
    return start(argv, port)


def client(port: int) -> Any:
    import openai

    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600)


def one_request(api: Any, model: str, max_tokens: int) -> tuple[float, float, int]:
    """(time to first token, latency, completion chunks) of one streamed chat request."""
    started = time.perf_counter()
    first, chunks = None, 0
    for chunk in api.chat.completions.create(model=model, messages=PROMPT, max_tokens=max_tokens, temperature=0.7,
                                             stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter() - started
            chunks += 1
    return first or float("nan"), time.perf_counter() - started, chunks


def load(port: int, models: list[str], clients: int, duration: float, max_tokens: int) -> dict[str, Any]:
    api = client(port)
    ttft, latency, tokens, failures = [], [], [0], [0]
    deadline = time.perf_counter() + duration
    lock = threading.Lock()

    def worker(index: int) -> None:
        turn = index
        while time.perf_counter() < deadline:
            try:
                first, total, count = one_request(api, models[turn % len(models)], max_tokens)
                with lock:
                    ttft.append(first)
                    latency.append(total)
                    tokens[0] += count
            except Exception:
                with lock:
                    failures[0] += 1
            turn += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started

    def pct(values: list[float], q: int) -> float:
        return round(statistics.quantiles(values, n=100)[q - 1], 3) if len(values) > 1 else float("nan")

    return {"requests": len(latency), "failures": failures[0], "completion_tokens_per_s": round(tokens[0] / seconds, 1),
            "ttft_p50_s": pct(ttft, 50), "ttft_p95_s": pct(ttft, 95), "latency_p50_s": pct(latency, 50),
            "latency_p95_s": pct(latency, 95), "seconds": round(seconds, 1)}


def switch_cost(port: int, models: list[str], repeats: int = 20) -> dict[str, float]:
    """Mean latency of a 1-token request for the same adapter as the last one vs for another one."""
    api = client(port)
    same, other = [], []
    for i in range(repeats):
        for model, bucket in ((models[0], same), (models[0], same), (models[1 + i % (len(models) - 1)], other)):
            started = time.perf_counter()
            api.chat.completions.create(model=model, messages=PROMPT, max_tokens=1, temperature=0)
            bucket.append(time.perf_counter() - started)
    return {"same_adapter_ms": round(1000 * statistics.mean(same[1::2]), 1),
            "switched_adapter_ms": round(1000 * statistics.mean(other), 1),
            "added_ms": round(1000 * (statistics.mean(other) - statistics.mean(same[1::2])), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "serve_load.json")
    args = parser.parse_args()
    names = ["a1", "a2", "a3", "a4"]
    results: dict[str, Any] = {"clients": args.clients, "duration_s": args.duration, "max_tokens": args.max_tokens,
                               "cpus": os.cpu_count()}

    port = free_port()
    server = tunesmith_server(names, args.run, port)
    try:
        for name in names:  # every adapter used once, so each is paged in
            client(port).chat.completions.create(model=name, messages=PROMPT, max_tokens=4)
        results["switch"] = switch_cost(port, names)
        results["tunesmith_one_adapter"] = load(port, names[:1], args.clients, args.duration, args.max_tokens)
        results["tunesmith_four_adapters"] = load(port, names, args.clients, args.duration, args.max_tokens)
        results["rss_one_server_four_adapters_mb"] = round(peak_rss_mb(server.pid), 1)
    finally:
        stop(server)
    separate = []
    for name in names:
        port = free_port()
        single = tunesmith_server([name], args.run, port)
        try:
            client(port).chat.completions.create(model=name, messages=PROMPT, max_tokens=4)
            separate.append(peak_rss_mb(single.pid))
        finally:
            stop(single)
    results["rss_four_servers_one_adapter_each_mb"] = round(sum(separate), 1)

    from tunesmith.runs import open_run
    from tunesmith.serve.catalog import build_catalog

    models = build_catalog([f"a1={args.run}"], quant="Q8_0")
    adapter = next(m for m in models if m.lora is not None)
    port = free_port()
    reference = start([sys.executable, "-m", "llama_cpp.server", "--model", str(adapter.gguf), "--lora_path",
                       str(adapter.lora), "--port", str(port), "--n_ctx", "4096", "--model_alias", "a1",
                       "--interrupt_requests", "False"], port)  # its default cuts a stream when a request arrives
    try:
        results["llama_cpp_server_one_adapter"] = load(port, ["a1"], args.clients, args.duration, args.max_tokens)
    finally:
        stop(reference)
    results["run"] = str(open_run(args.run).path)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
