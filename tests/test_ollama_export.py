"""Ollama export: the Jinja chat template translated to Go, proven by rendering the same conversations with
Go's own text/template (tests/go/render_template.go) and transformers' apply_chat_template; and the
exports/ollama/ folder (Modelfile + GGUF) that `tunesmith export --format ollama` writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import gguf
import pytest
from transformers import AutoTokenizer

from tests.conftest import CHATML
from tunesmith.errors import TunesmithError
from tunesmith.export import ollama as ollama_export
from tunesmith.export.ollama import create_with_ollama, modelfile_text
from tunesmith.export.ollama_templates import FAMILIES, Translation, translate_chat_template
from tunesmith.export.ollama_tools import apart_from_schemas

GO_PROGRAM = Path(__file__).parent / "go" / "render_template.go"

# Representative Jinja templates, one per family, modelled on the models' own tokenizer_config.json.
SMOLLM2 = CHATML.replace("You are a helpful assistant.", "You are a helpful AI assistant named SmolLM, trained by "
                         "Hugging Face")
QWEN25 = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}{{- raise_exception('tools are not part of this test') }}"
    "{%- else %}{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\\n' }}{%- endif %}{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or "
    "(message.role == 'assistant' and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- endif %}\n{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"
)
# Qwen 2.5's template with its tool rendering, as its tokenizer_config.json writes it
QWEN25_TOOLS = (
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n    {%- endif %}\n"
    "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are "
    "provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n"
    "{%- else %}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n"
    "            {%- if tool_call.function is defined %}\n                {%- set tool_call = tool_call.function %}\n"
    "            {%- endif %}\n            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"
)
CHATML_PLAIN = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
                "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                "{% endif %}")
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
          "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + "
          "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
          "{% endif %}")
MISTRAL = (
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}\n"
    "{{- bos_token }}\n{%- for message in loop_messages %}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif %}\n"
    "    {%- if message['role'] == 'user' %}\n"
    "        {%- if loop.last and system_message is defined %}"
    "{{- '[INST] ' + system_message + '\\n\\n' + message['content'] + '[/INST]' }}\n"
    "        {%- else %}{{- '[INST] ' + message['content'] + '[/INST]' }}{%- endif %}\n"
    "    {%- elif message['role'] == 'assistant' %}{{- ' ' + message['content']|trim + eos_token }}\n"
    "    {%- else %}{{- raise_exception('Only user and assistant roles are supported, with the exception of an "
    "initial optional system message!') }}{%- endif %}\n{%- endfor %}\n"
)
GEMMA3 = (
    "{{ bos_token }}\n{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}{%- set role = 'model' -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}\n"
)
GEMMA2 = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
          "{% endif %}{% for message in messages %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
          "{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\\n' + "
          "message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}"
          "{{'<start_of_turn>model\\n'}}{% endif %}")
PHI3 = ("{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}"
        "{{'<|system|>\\n' + message['content'] + '<|end|>\\n'}}{% elif message['role'] == 'user' %}"
        "{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}{% elif message['role'] == 'assistant' %}"
        "{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}")

# name: (Jinja template, bos_token, eos_token, expected family, expected default system prompt)
TEMPLATES = {
    "qwen2-chatml": (CHATML, "<|im_start|>", "<|im_end|>", "chatml", "You are a helpful assistant."),
    "smollm2": (SMOLLM2, "<|im_start|>", "<|im_end|>", "chatml",
                "You are a helpful AI assistant named SmolLM, trained by Hugging Face"),
    "qwen2.5": (QWEN25, None, "<|im_end|>", "chatml",
                "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
    "qwen2.5-tools": (QWEN25_TOOLS, None, "<|im_end|>", "chatml",
                      "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
    "chatml-plain": (CHATML_PLAIN, "<|im_start|>", "<|im_end|>", "chatml", ""),
    "llama3": (LLAMA3, "<|begin_of_text|>", "<|eot_id|>", "llama3", ""),
    "mistral": (MISTRAL, "<s>", "</s>", "mistral", ""),
    "gemma3": (GEMMA3, "<bos>", "<eos>", "gemma", ""),
    "gemma2": (GEMMA2, "<bos>", "<eos>", "gemma", ""),
    "phi3": (PHI3, "<s>", "<|endoftext|>", "phi3", ""),
}

S, U, A = "system", "user", "assistant"


def chat(*turns: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": role, "content": content} for role, content in turns]


CONVERSATIONS = [
    chat((U, "Hello!")),
    chat((S, "You answer in JSON."), (U, "2 large pizzas to 12 Main St.")),
    chat((U, "Hi"), (A, "Hello, how can I help?"), (U, "Tell me a joke.")),
    chat((S, "Be brief."), (U, "First question?"), (A, "First answer."), (U, "Second question?")),
    chat((S, "Reply in French."), (U, "One"), (A, "Un"), (U, "Two"), (A, "Deux"), (U, "Three")),
    chat((U, "Line one\nLine two with {{ braces }}, \"quotes\", <tags> & $vars"), (A, "Noted:\n- a\n- b"),
         (U, "And a tab\there?")),
    chat((U, "Grüße 👋 — ¿qué tal? 你好")),
    chat((U, "q1"), (A, "a1"), (U, "q2"), (A, "a2"), (U, "q3"), (A, "a3"), (U, "q4")),
]


def family_tokenizer(tokenizer_dir: Path, name: str):
    template, bos, eos, _, _ = TEMPLATES[name]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.chat_template = template
    tokenizer.bos_token, tokenizer.eos_token = bos, eos
    return tokenizer


def jinja_prompts(tokenizer) -> list[tuple[int, str]]:
    """(index, prompt) for every conversation the Jinja template accepts (Gemma 2 refuses system turns)."""
    from jinja2.exceptions import TemplateError

    prompts = []
    for index, conversation in enumerate(CONVERSATIONS):
        try:
            prompts.append((index, tokenizer.apply_chat_template(conversation, tokenize=False,
                                                                 add_generation_prompt=True)))
        except TemplateError:
            continue
    return prompts


@pytest.fixture(scope="module")
def go_renderer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/go/render_template.go built once, with Go's caches under a temporary folder and no network."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("Go is not installed (apt-get install golang-go; scripts/setup.sh does it as root): the "
                    "Ollama template proof needs Go's text/template")
    folder = tmp_path_factory.mktemp("go")
    env = {**os.environ, "GOCACHE": str(folder / "cache"), "GOPATH": str(folder / "gopath"), "GOTOOLCHAIN": "local",
           "GOPROXY": "off", "GOFLAGS": "", "GO111MODULE": "on", "CGO_ENABLED": "0"}
    binary = folder / "render_template"
    subprocess.run([go, "build", "-o", str(binary), str(GO_PROGRAM)], env=env, check=True, capture_output=True)
    return binary


def go_renderer_if_installed(request: pytest.FixtureRequest) -> Path | str:
    """The go_renderer fixture's binary, or why it skips: fetched before a test hides `ollama` from PATH (and Go with
    it), and skipped on (`renderer_or_skip`) only after the checks that need no Go have run."""
    try:
        return request.getfixturevalue("go_renderer")
    except pytest.skip.Exception as skipped:
        return str(skipped)


def renderer_or_skip(found: Path | str) -> Path:
    if isinstance(found, str):
        pytest.skip(found)
    return found


def go_render(binary: Path, template: str, conversations: list[list[dict[str, str]]], tmp_path: Path) -> list[str]:
    """Each conversation rendered by the Go template as Ollama executes it (Messages with Role/Content)."""
    template_file = tmp_path / "template.gotmpl"
    template_file.write_text(template, encoding="utf-8")
    data = [{"Messages": [{"Role": m["role"], "Content": m["content"]} for m in c]} for c in conversations]
    done = subprocess.run([str(binary), str(template_file)], input=json.dumps(data), capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout)


@pytest.mark.parametrize("name", list(TEMPLATES))
@pytest.mark.parametrize("adds_bos", [True, False], ids=["gguf-adds-bos", "template-writes-bos"])
def test_go_template_renders_exactly_what_the_jinja_template_renders(name, adds_bos, tokenizer_dir, go_renderer,
                                                                     tmp_path):
    tokenizer = family_tokenizer(tokenizer_dir, name)
    translation = translate_chat_template(tokenizer, adds_bos=adds_bos)
    _, _, _, family, default_system = TEMPLATES[name]
    assert (translation.family, translation.default_system) == (family, default_system)

    expected = jinja_prompts(tokenizer)
    assert len(expected) >= (5 if name == "gemma2" else len(CONVERSATIONS))
    rendered = go_render(go_renderer, translation.go_template, [CONVERSATIONS[i] for i, _ in expected], tmp_path)
    bos = tokenizer.bos_token if adds_bos and "bos_token" in tokenizer.chat_template else ""
    for (index, jinja), go in zip(expected, rendered, strict=True):
        assert bos + go == jinja, f"conversation {index}"


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_python_mirror_renders_what_the_go_template_renders(family, go_renderer, tmp_path):
    """The export-time check compares the Jinja template with these mirrors, so they must equal Go."""
    from tunesmith.export.ollama_templates import TemplateContext

    context = TemplateContext(eos_token="</s>", default_system="Default {{ system }} prompt")
    rendered = go_render(go_renderer, family.go_template(context), CONVERSATIONS, tmp_path)
    assert rendered == [family.render(conversation, context) for conversation in CONVERSATIONS]


def test_default_system_prompt_is_reproduced_only_without_a_system_turn(tokenizer_dir, go_renderer, tmp_path):
    tokenizer = family_tokenizer(tokenizer_dir, "smollm2")
    template = translate_chat_template(tokenizer, adds_bos=False).go_template
    without, with_system = go_render(go_renderer, template, [CONVERSATIONS[0], CONVERSATIONS[1]], tmp_path)
    assert without.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert "SmolLM" not in with_system and with_system.startswith("<|im_start|>system\nYou answer in JSON.")
    assert without.endswith("<|im_start|>assistant\n") and with_system.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize(("name", "stops"), [
    ("smollm2", ("<|im_start|>", "<|im_end|>")),
    ("llama3", ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")),
    ("mistral", ("[INST]", "[/INST]", "</s>")),
    ("gemma3", ("<start_of_turn>", "<end_of_turn>")),
    ("phi3", ("<|end|>", "<|user|>", "<|assistant|>")),
])
def test_stop_strings_match_the_family(name, stops, tokenizer_dir):
    assert translate_chat_template(family_tokenizer(tokenizer_dir, name), adds_bos=True).stops == stops


def test_unknown_template_is_refused_with_what_to_write(tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.chat_template = ("{% for m in messages %}### {{ m['role'] }}:\n{{ m['content'] }}\n{% endfor %}"
                               "{% if add_generation_prompt %}### assistant:\n{% endif %}")
    with pytest.raises(TunesmithError, match="not one tunesmith can translate") as info:
        translate_chat_template(tokenizer, adds_bos=False)
    assert "TEMPLATE" in info.value.hint and ".Messages" in info.value.hint


def test_a_variant_of_a_known_family_is_refused_not_mistranslated(tokenizer_dir):
    """Llama 2 also uses [INST], but wraps the system prompt in <<SYS>>: the probes catch the difference."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.chat_template = (
        "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}"
        "{{ '[INST] <<SYS>>\\n' + message['content'] + '\\n<</SYS>>\\n\\n' }}{% elif message['role'] == 'user' %}"
        "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}{{ ' ' + message['content'] + ' ' + eos_token }}"
        "{% endif %}{% endfor %}")
    with pytest.raises(TunesmithError, match="looks like mistral but renders differently"):
        translate_chat_template(tokenizer, adds_bos=True)


TRANSLATION = Translation("chatml", "{{- range .Messages }}{{ .Content }}{{ end }}", ("<|im_end|>",), "")


def test_modelfile_has_system_only_when_the_recipe_sets_one():
    without = modelfile_text("model-Q8_0.gguf", TRANSLATION, None)
    assert "SYSTEM" not in without
    assert 'FROM ./model-Q8_0.gguf\nTEMPLATE """{{- range .Messages }}{{ .Content }}{{ end }}"""\n' in without
    assert 'PARAMETER stop "<|im_end|>"' in without
    with_system = modelfile_text("model-Q8_0.gguf", TRANSLATION, "Reply with JSON only.\nNo prose.")
    assert with_system.endswith('SYSTEM """Reply with JSON only.\nNo prose."""\n')
    assert "temperature" not in with_system and "num_ctx" not in with_system  # the recipe implies neither


def test_triple_quotes_cannot_be_written_into_the_modelfile():
    with pytest.raises(TunesmithError, match=r"data\.system_prompt"):
        modelfile_text("m.gguf", TRANSLATION, 'Say """hi"""')


def fake_ollama(folder: Path, exit_code: int) -> Path:
    """An `ollama` on PATH that records its arguments and working directory."""
    folder.mkdir()
    script = folder / "ollama"
    script.write_text(f'#!/bin/sh\necho "$@" > "{folder}/args"\npwd > "{folder}/cwd"\n'
                      f'echo "transferring model data"\n[ {exit_code} = 0 ] || echo "Error: boom" >&2\n'
                      f"exit {exit_code}\n", encoding="utf-8")
    script.chmod(0o755)
    return folder


def test_ollama_create_runs_when_installed_and_is_printed_when_not(tmp_path, monkeypatch):
    modelfile = tmp_path / "ollama" / "Modelfile"
    modelfile.parent.mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    absent = create_with_ollama("tiny", modelfile, "chatml")
    assert absent.created is None and absent.create_command == f"ollama create tiny -f {modelfile}"

    bin_dir = fake_ollama(tmp_path / "bin", 0)
    monkeypatch.setenv("PATH", str(bin_dir))
    created = create_with_ollama("tiny", modelfile, "chatml")
    assert created.created is True and "transferring" in created.create_output
    assert (bin_dir / "args").read_text().split() == ["create", "tiny", "-f", str(modelfile)]
    assert Path((bin_dir / "cwd").read_text().strip()) == modelfile.parent

    monkeypatch.setenv("PATH", str(fake_ollama(tmp_path / "bin-failing", 1)))
    failed = create_with_ollama("tiny", modelfile, "chatml")
    assert failed.created is False and "Error: boom" in failed.create_output


def make_run(model_dir: Path, root: Path, system_prompt: str | None = None, tool_format: str = "template"):
    """A run of the tiny model with an untrained (random) LoRA adapter saved where training puts it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunesmith.config import load_recipe
    from tunesmith.runs import create_run

    recipe_file = root / "recipe.yaml"
    system = f"  system_prompt: {json.dumps(system_prompt)}\n" if system_prompt else ""
    recipe_file.write_text(f"name: Tiny\nmodel:\n  source: {model_dir}\ndata:\n  train: train.jsonl\n{system}"
                           f"  tool_format: {tool_format}\n", encoding="utf-8")
    run = create_run(load_recipe(recipe_file), root / "runs")
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), lora).save_pretrained(run.adapter_dir)
    return run


def modelfile_value(text: str, keyword: str) -> str:
    return text.split(f'{keyword} """', 1)[1].split('"""', 1)[0]


def test_cli_exports_a_run_for_ollama(tiny_model_dir, tmp_path, monkeypatch, request):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    run = make_run(tiny_model_dir, tmp_path, system_prompt="You turn orders into JSON.")
    go_renderer = go_renderer_if_installed(request)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no ollama on PATH
    # --no-verify: the conftest model's std-0.3 random weights fail the Q8_0 llama.cpp check by design
    # (test_gguf_verify.py checks that on realistic tiny models)
    result = CliRunner().invoke(app, ["export", str(run.path), "--format", "ollama", "--quant", "Q8_0",
                                      "--no-verify"])
    assert result.exit_code == 0, result.output
    folder = run.exports_dir / "ollama"
    assert f"\n  ollama create tiny -f {folder / 'Modelfile'}\n" in result.output
    text = (folder / "Modelfile").read_text(encoding="utf-8")

    from_line = next(line for line in text.splitlines() if line.startswith("FROM "))
    gguf_file = folder / from_line.removeprefix("FROM ")
    assert from_line == "FROM ./model-Q8_0.gguf" and gguf_file.is_file()
    reader = gguf.GGUFReader(gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert reader.fields["general.name"].contents() == "Tiny"  # the Ollama model name is lowercased
    assert reader.fields["tokenizer.chat_template"].contents() == tokenizer.chat_template
    assert [line for line in text.splitlines() if line.startswith("PARAMETER")] == [
        'PARAMETER stop "<|im_start|>"', 'PARAMETER stop "<|im_end|>"']
    assert modelfile_value(text, "SYSTEM") == "You turn orders into JSON."

    manifest = json.loads((run.exports_dir / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["ollama"]["template_family"] == "chatml" and manifest["ollama"]["created"] is None
    assert "Q8_0" in manifest["gguf"]
    # the template in the file, run by Go, prompts the model exactly as its tokenizer does (where Go is installed;
    # a skip, reported by -ra, after the checks above ran)
    rendered = go_render(renderer_or_skip(go_renderer), modelfile_value(text, "TEMPLATE"), CONVERSATIONS, tmp_path)
    assert rendered == [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
                        for c in CONVERSATIONS]


def test_gguf_and_ollama_in_one_export_write_and_check_the_gguf_once(tiny_model_dir, tmp_path, monkeypatch):
    import tunesmith.export.gguf as gguf_module
    from tunesmith.export.stage import export_formats

    run = make_run(tiny_model_dir, tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    written = []
    real_write = gguf_module.write_gguf
    monkeypatch.setattr(gguf_module, "write_gguf", lambda *a, **k: written.append(a[1]) or real_write(*a, **k))
    outcome = export_formats(run.load_recipe(), run, ["gguf", "ollama"], quant="F16", verify=False)
    assert written == [outcome.written["gguf"]]  # once: the Ollama folder links the GGUF just written
    linked = outcome.written["ollama"] / "model-F16.gguf"
    assert linked.read_bytes() == outcome.written["gguf"].read_bytes()


def test_a_failed_export_leaves_no_partial_folder(tiny_model_dir, tmp_path, monkeypatch):
    run = make_run(tiny_model_dir, tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    recipe = run.load_recipe()
    # verify off: the tiny random model's Q8_0 agrees ~91% by nature (tests/test_gguf_verify.py checks verify)
    first = ollama_export.run_ollama_export(recipe, run, "Q8_0", verify=False)
    before = (first.folder / "Modelfile").read_text(encoding="utf-8")
    assert "SYSTEM" not in before

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ollama_export, "modelfile_text", disk_full)
    with pytest.raises(OSError, match="disk full"):
        ollama_export.run_ollama_export(recipe, run, "F16", verify=False)
    assert sorted(p.name for p in first.folder.iterdir()) == ["Modelfile", "model-Q8_0.gguf"]
    assert (first.folder / "Modelfile").read_text(encoding="utf-8") == before
    assert not [p for p in run.exports_dir.iterdir() if p.name.startswith(".ollama")]

    shutil.rmtree(first.folder)
    with pytest.raises(OSError, match="disk full"):
        ollama_export.run_ollama_export(recipe, run, "Q8_0", verify=False)
    assert not (run.exports_dir / "ollama").exists()
    assert not [p for p in run.exports_dir.iterdir() if p.name.startswith(".ollama")]


def test_recipe_accepts_the_gguf_and_ollama_formats_and_a_quant(tiny_model_dir, tmp_path):
    from tunesmith.config import load_recipe

    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(f"model:\n  source: {tiny_model_dir}\ndata:\n  train: t.jsonl\n"
                           "export:\n  formats: [gguf, ollama]\n  quant: Q8_0\n", encoding="utf-8")
    recipe = load_recipe(recipe_file)
    assert recipe.export.formats == ["gguf", "ollama"] and recipe.export.quant == "Q8_0"


# Tool calls: a run trained with data.tool_format: hermes on ChatML gets a template that offers Ollama's tools.
TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Weather <now> in a city & its region.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"},
                                                        "days": {"type": "integer"}}, "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "convert", "description": "Convert an amount of money.",
        "parameters": {"type": "object", "properties": {"amount": {"type": "number"},
                                                        "unit": {"type": "string", "enum": ["EUR", "USD"]}},
                       "required": ["amount", "unit"]}}},
]


def call(name: str, **arguments) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


TOOL_ROWS = [  # arguments' keys in sorted order: Ollama hands a template the call's arguments as a sorted map
    {"tools": TOOLS, "messages": [{"role": U, "content": "Weather in Oslo?"}]},
    {"tools": TOOLS, "messages": [
        {"role": S, "content": "Be brief."}, {"role": U, "content": "Weather in Oslo for 2 days?"},
        {"role": A, "content": "", "tool_calls": [call("get_weather", city="Oslo", days=2)]},
        {"role": "tool", "content": '{"temp": 3}'}]},
    {"tools": TOOLS, "messages": [
        {"role": U, "content": "Oslo weather, and 5 USD in EUR?"},
        {"role": A, "content": "Checking both.", "tool_calls": [call("get_weather", city="Oslo"),
                                                               call("convert", amount=5, unit="EUR")]},
        {"role": "tool", "content": '{"temp": 3}'}, {"role": "tool", "content": "4.6"},
        {"role": A, "content": "3 degrees; 4.6 EUR."}, {"role": U, "content": "Thanks! Grüße 👋"}]},
]


def ollama_data(row: dict) -> dict:
    """A row as Ollama hands it to the template: calls with their arguments as objects, the request's tools."""
    messages = [{"Role": m["role"], "Content": m["content"],
                 "ToolCalls": [{"Function": {"Name": c["function"]["name"],
                                             "Arguments": json.loads(c["function"]["arguments"])}}
                               for c in m.get("tool_calls", [])]} for m in row["messages"]]
    return {"Messages": messages, "Tools": row.get("tools")}


def go_render_data(binary: Path, template: str, data: list[dict], tmp_path: Path) -> list[str]:
    template_file = tmp_path / "template.gotmpl"
    template_file.write_text(template, encoding="utf-8")
    done = subprocess.run([str(binary), str(template_file)], input=json.dumps(data), capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout)


def tools_renderer(tokenizer, tool_format: str):
    from tunesmith.config import DataSection
    from tunesmith.export.ollama import training_tools_renderer

    return training_tools_renderer(tokenizer, DataSection(train="train.jsonl", tool_format=tool_format))


@pytest.mark.parametrize(("name", "tool_format"), [("smollm2", "hermes"), ("chatml-plain", "hermes"),
                                                   ("qwen2.5-tools", "template")])
def test_ollama_prompts_tool_conversations_as_training_did(name, tool_format, tokenizer_dir, go_renderer, tmp_path):
    """Qwen 2.5's own tool rendering and the Hermes fallback on ChatML templates: Go's prompt for conversations with
    tools, calls and results is training's, character for character but for the schemas' JSON spacing."""
    tokenizer = family_tokenizer(tokenizer_dir, name)
    render_tools = tools_renderer(tokenizer, tool_format)
    translation = translate_chat_template(tokenizer, adds_bos=False, render_tools=render_tools)
    assert translation.offers_tools and translation.family == "chatml" and translation.tools_note == ""
    rendered = go_render_data(go_renderer, translation.go_template, [ollama_data(row) for row in TOOL_ROWS],
                              tmp_path)
    for index, (row, go) in enumerate(zip(TOOL_ROWS, rendered, strict=True)):
        assert apart_from_schemas(go) == apart_from_schemas(render_tools(row["messages"], row["tools"])), f"row {index}"
    # and a conversation without tools is prompted exactly as the plain translation (checked against Jinja) does
    plain = translate_chat_template(tokenizer, adds_bos=False)
    assert not plain.offers_tools
    assert (go_render(go_renderer, translation.go_template, CONVERSATIONS, tmp_path)
            == go_render(go_renderer, plain.go_template, CONVERSATIONS, tmp_path))


def test_tool_renderings_that_do_not_translate_say_why(tokenizer_dir):
    def note(name: str, tool_format: str, template: str | None = None) -> str:
        tokenizer = family_tokenizer(tokenizer_dir, name)
        if template is not None:
            tokenizer.chat_template = template
        translation = translate_chat_template(tokenizer, adds_bos=False,
                                              render_tools=tools_renderer(tokenizer, tool_format))
        assert not translation.offers_tools and "$.Tools" not in translation.go_template
        return translation.tools_note

    assert "ChatML templates only (this one is llama3)" in note("llama3", "hermes")
    assert "do not write tool schemas" in note("smollm2", "template")  # plain ChatML drops tools
    assert "refuses a conversation with tools" in note("qwen2.5", "template")  # raise_exception on tools
    # a call written on one line: the schemas are found, but the probes' prompts differ, so no tools
    one_line = QWEN25_TOOLS.replace("'\\n<tool_call>\\n{\"name\": \"'", "'\\n<tool_call>{\"name\": \"'")
    assert one_line != QWEN25_TOOLS
    assert "not one tunesmith translates: on tool probe 2" in note("qwen2.5-tools", "template", one_line)


def test_a_hermes_run_exports_an_ollama_model_that_offers_tools(tiny_model_dir, tmp_path, monkeypatch, request):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    run = make_run(tiny_model_dir, tmp_path, tool_format="hermes")
    go_renderer = go_renderer_if_installed(request)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    result = CliRunner().invoke(app, ["export", str(run.path), "--format", "ollama", "--no-verify"])
    assert result.exit_code == 0, result.output
    assert "Note:" not in result.output
    text = (run.exports_dir / "ollama" / "Modelfile").read_text(encoding="utf-8")
    assert "With tools, as the run's prompts render them" in text
    manifest = json.loads((run.exports_dir / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["ollama"]["offers_tools"] is True
    go = go_render_data(renderer_or_skip(go_renderer), modelfile_value(text, "TEMPLATE"), [ollama_data(TOOL_ROWS[1])],
                        tmp_path)[0]
    assert go.endswith('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "days": 2}}\n</tool_call>'
                       "<|im_end|>\n<|im_start|>user\n<tool_response>\n{\"temp\": 3}\n</tool_response><|im_end|>\n"
                       "<|im_start|>assistant\n")


def test_an_ollama_export_says_when_the_tools_a_run_trained_are_not_offered(tiny_model_dir, tmp_path, monkeypatch):
    from tunesmith.runs import record_data_stage

    run = make_run(tiny_model_dir, tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    recipe = run.load_recipe()
    quiet = ollama_export.run_ollama_export(recipe, run, "F16", verify=False)
    assert quiet.notes == () and not quiet.offers_tools

    record_data_stage(run, recipe.data, [TOOL_ROWS[1]], [TOOL_ROWS[0]], "messages", {"train": "train.jsonl"})
    told = ollama_export.run_ollama_export(recipe, run, "F16", verify=False)
    assert not told.offers_tools and "does not support tools" in told.notes[0]
    assert "do not write tool schemas" in told.notes[0] and "data.tool_format: hermes" in told.notes[0]
