"""Does an exported Ollama Modelfile prompt a run's held-out tool conversations as training did?

Renders every held-out row's prompt (the turns before its answer, with the row's tools) through the Modelfile's Go
template, as Ollama hands a template its data (tests/go/render_template.go, built here with Go), and through the
run's own training rendering (its chat template and data fallbacks: export/ollama.py `training_tools_renderer`), and
counts the prompts that are identical apart from the JSON spacing of the tool schemas (Ollama writes them compact).

    python benchmarks/data/make_tool_calls.py && tunesmith train benchmarks/data/tool_calls.yaml
    tunesmith export RUN --format ollama
    python benchmarks/ollama_tools_check.py RUN benchmarks/data/tools/eval.jsonl

Needs Go (`apt-get install golang-go`) and the run's Ollama export.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def ollama_data(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> dict[str, Any]:
    """A prompt as Ollama's template data: each call's arguments as an object, the request's tools."""
    def arguments(call: dict[str, Any]) -> Any:
        value = call["function"].get("arguments") or {}
        return json.loads(value) if isinstance(value, str) else value

    return {"Messages": [{"Role": m["role"], "Content": m.get("content") or "",
                          "ToolCalls": [{"Function": {"Name": c["function"]["name"], "Arguments": arguments(c)}}
                                        for c in m.get("tool_calls") or []]} for m in messages],
            "Tools": tools}


def go_renderer(folder: Path) -> Path:
    binary = folder / "render_template"
    env = {**os.environ, "GOCACHE": str(folder / "cache"), "GOPATH": str(folder / "gopath"), "GOTOOLCHAIN": "local",
           "GOPROXY": "off", "GOFLAGS": "", "GO111MODULE": "on", "CGO_ENABLED": "0"}
    subprocess.run(["go", "build", "-o", str(binary), str(REPO / "tests" / "go" / "render_template.go")], env=env,
                   check=True, capture_output=True)
    return binary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("data", type=Path, help="held-out rows with tools (OpenAI messages JSONL)")
    args = parser.parse_args()

    from tunesmith.data.formats import load_rows
    from tunesmith.export.ollama import training_tools_renderer
    from tunesmith.export.ollama_tools import apart_from_schemas
    from tunesmith.models import load_tokenizer
    from tunesmith.models.tuned import run_base_model
    from tunesmith.runs import Run

    run = Run(args.run)
    render = training_tools_renderer(load_tokenizer(run_base_model(run)), run.load_recipe().data)
    modelfile = (run.exports_dir / "ollama" / "Modelfile").read_text(encoding="utf-8")
    template = modelfile.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    rows = load_rows(args.data, ("messages",), "checking the Ollama template").rows
    prompts = [(row["messages"][:-1], row.get("tools")) for row in rows]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "template.gotmpl").write_text(template, encoding="utf-8")
        done = subprocess.run([str(go_renderer(folder)), str(folder / "template.gotmpl")], check=True, text=True,
                              input=json.dumps([ollama_data(m, t) for m, t in prompts]), capture_output=True)
    rendered = json.loads(done.stdout)
    trained = [render(messages, tools or []) for messages, tools in prompts]
    same = sum(apart_from_schemas(go) == apart_from_schemas(ours) for go, ours in zip(rendered, trained, strict=True))
    with_tools = sum(1 for _, tools in prompts if tools)
    print(json.dumps({"prompts": len(prompts), "with_tools": with_tools, "offers_tools": "$.Tools" in template,
                      "identical_apart_from_schema_spacing": same,
                      "byte_identical": sum(go == ours for go, ours in zip(rendered, trained, strict=True))}))


if __name__ == "__main__":
    main()
