"""A tool-calling run behind `tunesmith serve`, asked through the openai client's `tools` API (loopback only).

    .venv/bin/python benchmarks/data/make_tool_calls.py
    .venv/bin/tunesmith train benchmarks/data/tool_calls.yaml --evaluate
    .venv/bin/python benchmarks/serve_tool_calls.py RUN [--data benchmarks/data/tools/eval.jsonl]

Starts `tunesmith serve RUN` (the base as GGUF, the run's LoRA as a GGUF LoRA; the run's recipe trains tools in the
Hermes format, which the server applies to each request's `tools`), sends each held-out row's prompt with its
`tools` (greedy), and counts the answers whose `tool_calls` are exactly the row's calls (name and arguments), whose
function names are right, and which answer in words where the row does (base vs tuned on the same rows is eval's
tool_call_match; the served base has no Hermes fallback, so its template has no place for `tools`: a 400).
Writes JSON to benchmarks/results/serve_tool_calls.json.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from serve_load import free_port, start  # noqa: E402


def expected_calls(row: dict[str, Any]) -> list[tuple[str, Any]]:
    from tunesmith.data.template import answer_text
    from tunesmith.scoring import tool_calls_in

    return sorted(tool_calls_in(answer_text(row["messages"][-1])), key=json.dumps)


def served_calls(message: Any) -> list[tuple[str, Any]]:
    calls = [(call.function.name, json.loads(call.function.arguments)) for call in message.tool_calls or []]
    return sorted(calls, key=json.dumps)


def ask_all(client: Any, model: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    exact = names = words = with_calls = 0
    examples = []
    for row in rows:
        reply = client.chat.completions.create(model=model, messages=row["messages"][:-1], tools=row["tools"],
                                               temperature=0, max_tokens=96)
        message = reply.choices[0].message
        want, got = expected_calls(row), served_calls(message)
        with_calls += bool(want)
        exact += bool(want) and got == want
        names += bool(want) and [n for n, _ in got] == [n for n, _ in want]
        words += not want and not got and bool((message.content or "").strip())
        if len(examples) < 4:
            examples.append({"prompt": row["messages"][-2]["content"], "expected": want, "tool_calls": got,
                             "content": message.content, "finish_reason": reply.choices[0].finish_reason})
    plain = len(rows) - with_calls
    return {"rows": len(rows), "rows_with_calls": with_calls, "exact_calls": exact, "right_names": names,
            "exact_call_rate": round(exact / max(with_calls, 1), 4),
            "answered_in_words": words, "rows_in_words": plain, "examples": examples}


def main() -> None:
    import openai

    from tunesmith.data.loaders import load_records

    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    parser.add_argument("--data", type=Path, default=REPO / "benchmarks/data/tools/eval.jsonl")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/serve_tool_calls.json")
    args = parser.parse_args()
    rows = load_records(args.data).rows
    port = free_port()
    server = start([sys.executable, "-m", "tunesmith", "serve", str(args.run), "--port", str(port)], port)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        tuned = args.run.resolve().name
        report = {"run": str(args.run), "data": str(args.data), "model": tuned, "tuned": ask_all(client, tuned, rows)}
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    figures = report["tuned"]
    print(f"tuned: exact calls {figures['exact_calls']}/{figures['rows_with_calls']}, right names "
          f"{figures['right_names']}, answered in words {figures['answered_in_words']}/{figures['rows_in_words']}")


if __name__ == "__main__":
    main()
