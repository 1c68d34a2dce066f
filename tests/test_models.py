"""Model sources: each failure users hit gets a message that says what to do.

The Hub cases run against a real HTTP server started in the test (HF_ENDPOINT points at it), so the
error translation is exercised end to end through huggingface_hub, not mocked.
"""

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tunesmith.errors import ModelSourceError
from tunesmith.models import list_models, resolve_model_source


def test_missing_directory_says_what_to_do(tmp_path):
    with pytest.raises(ModelSourceError, match="Model directory not found") as info:
        resolve_model_source(str(tmp_path / "nope"))
    assert "models list" in info.value.hint


def test_directory_without_config_is_refused(tmp_path):
    (tmp_path / "weights").mkdir()
    with pytest.raises(ModelSourceError, match=r"no config\.json"):
        resolve_model_source(str(tmp_path / "weights"))


def test_a_model_folder_missing_its_tokenizer_or_weights_or_with_a_broken_config_is_a_usage_error(tmp_path,
                                                                                                tiny_model_dir):
    """What `model.save_pretrained` alone leaves (no tokenizer), a copy cut off (config.json truncated) and a folder
    without weights: each names the folder and the fix (exit 2), never a library's raw error."""
    import shutil

    from tunesmith.models import load_model, load_tokenizer

    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / name, no_tokenizer / name)
    with pytest.raises(ModelSourceError, match="its tokenizer does not load") as refused:
        load_tokenizer(no_tokenizer)
    assert "tokenizer.save_pretrained" in refused.value.hint
    (no_tokenizer / "model.safetensors").unlink()
    with pytest.raises(ModelSourceError, match="the model's weights do not load"):
        load_model(no_tokenizer)
    (no_tokenizer / "config.json").write_text('{"model_type": "lla', encoding="utf-8")
    with pytest.raises(ModelSourceError, match=r"config\.json cannot be read as JSON"):
        resolve_model_source(str(no_tokenizer))
    (tmp_path / "d.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "a"},
                                                               {"role": "assistant", "content": "b"}]}) + "\n")
    shutil.copy(tiny_model_dir / "config.json", no_tokenizer / "config.json")
    result = subprocess.run([sys.executable, "-m", "tunesmith", "data", "inspect", str(tmp_path / "d.jsonl"),
                             "--model", str(no_tokenizer)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "its tokenizer does not load" in result.stderr, result.stderr


def test_a_model_name_never_reaches_outside_the_model_cache(tmp_path, monkeypatch, tiny_model_dir):
    """`models import X.gguf --name ..` would have replaced the whole $TUNESMITH_HOME (the import writes its folder
    atomically, replacing what is there); a source path was looked up in the cache first, so `/abs/folder` skipped
    the folder's checks."""
    from tunesmith.models.gguf_import import import_gguf

    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "models").mkdir(parents=True)
    (tmp_path / "home" / "keep.txt").write_text("kept")
    (tmp_path / "x.gguf").write_bytes(b"GGUF")
    for name in ("..", "../../elsewhere", "/tmp/abs", "a/b", ""):
        if name:
            with pytest.raises(ModelSourceError, match="cannot name a model in the cache"):
                import_gguf(tmp_path / "x.gguf", name=name)
    assert (tmp_path / "home" / "keep.txt").read_text() == "kept"
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ModelSourceError, match="not a model configuration"):
        resolve_model_source(str(broken))


def test_models_import_never_replaces_the_embedded_model_or_an_import_unasked(tmp_path, monkeypatch, tiny_model_dir):
    """A newcomer imported a tuned GGUF as `smollm2-135m-instruct`: the embedded base silently became the tuned
    model under every recipe and recorded run. A folder, or a file that is not GGUF, is said to be one."""
    from tunesmith.models.registry import import_model

    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path / "home"))
    (tmp_path / "x.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelSourceError, match="the embedded model's name"):
        import_model(tmp_path / "x.gguf", name="smollm2-135m-instruct")
    imported = tmp_path / "home" / "models" / "mine"
    imported.mkdir(parents=True)
    (imported / "config.json").write_text("{}")
    with pytest.raises(ModelSourceError, match="already imported") as refused:
        import_model(tmp_path / "x.gguf", name="mine")
    assert "--force" in refused.value.hint and (imported / "config.json").read_text() == "{}"
    with pytest.raises(ModelSourceError, match="is a folder") as folder:
        import_model(tiny_model_dir, name="other")
    assert "needs no import: name it in model.source" in folder.value.hint
    (tmp_path / "train.log").write_text("not a model")
    with pytest.raises(ModelSourceError, match="is not a GGUF file"):
        import_model(tmp_path / "train.log", name="other")
    assert sorted(p.name for p in (tmp_path / "home" / "models").iterdir()) == ["mine"]


def test_local_directory_relative_to_recipe(tmp_path, tiny_model_dir):
    link = tmp_path / "model"
    link.symlink_to(tiny_model_dir)
    assert resolve_model_source("model", base_dir=tmp_path) == tiny_model_dir.resolve()


def test_list_models_shows_embedded_alias(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path))
    rows = list_models()
    assert rows[0]["name"] == "smollm2-135m-instruct" and rows[0]["pulled"] is False


class HubStub(http.server.BaseHTTPRequestHandler):
    """Answers every request the way the Hub answers a gated or a missing repository."""

    status, code = 403, "GatedRepo"

    def do_GET(self):
        body = json.dumps({"error": "Access to this model is restricted."}).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Error-Code", self.code)
        self.send_header("X-Error-Message", "Access restricted")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


def fetch_with_stub(tmp_path: Path, status: int, code: str, offline: bool = False,
                    source: str = "acme/secret-model", cwd: Path | None = None) -> str:
    handler = type("Stub", (HubStub,), {"status": status, "code": code})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}", "HF_HOME": str(tmp_path),
           "HF_HUB_OFFLINE": "1" if offline else "0", "HF_HUB_ETAG_TIMEOUT": "5", "HF_HUB_DOWNLOAD_TIMEOUT": "5"}
    code_ = ("from tunesmith.models import resolve_model_source\nfrom tunesmith.errors import TunesmithError\n"
             f"try:\n    resolve_model_source({source!r})\n"
             "except TunesmithError as e:\n    print('MESSAGE:', e)\n")
    try:
        result = subprocess.run([sys.executable, "-c", code_], env=env, capture_output=True, text=True, timeout=120,
                                cwd=cwd)
    finally:
        server.shutdown()
    assert "MESSAGE:" in result.stdout, result.stderr[-2000:]
    return result.stdout


def test_gated_repo_explains_licence_and_login(tmp_path):
    out = fetch_with_stub(tmp_path, 403, "GatedRepo")
    assert "gated" in out and "accept" in out and "hf auth login" in out


def test_missing_or_private_repo(tmp_path):
    out = fetch_with_stub(tmp_path, 401, "RepoNotFound")
    assert "does not exist or is private" in out


def test_offline_and_not_cached(tmp_path):
    out = fetch_with_stub(tmp_path, 500, "", offline=True)
    assert "Cannot reach the Hugging Face Hub" in out and "smollm2-135m-instruct" in out


def test_offline_misspelt_alias_is_named_as_such_not_as_an_unreachable_hub(tmp_path):
    out = fetch_with_stub(tmp_path, 500, "", offline=True, source="smollm2-135m")
    assert "is not an embedded or imported model" in out and "Did you mean 'smollm2-135m-instruct'" in out


def test_a_misspelt_run_folder_is_named_as_a_folder_not_as_an_unreachable_hub_id(tmp_path):
    """`serve runs/grpo-2` where runs/ holds grpo-1: a folder's name is wrong, whatever a Hub id would look like."""
    (tmp_path / "runs" / "grpo-1").mkdir(parents=True)
    out = fetch_with_stub(tmp_path, 500, "", offline=True, source="runs/grpo-2", cwd=tmp_path)
    assert "No file or folder runs/grpo-2 (its folder runs/ exists)" in out and "Did you mean runs/grpo-1?" in out


def test_a_source_that_is_no_hub_id_says_so(tmp_path):
    out = fetch_with_stub(tmp_path, 500, "", source="my model?")
    assert "not a Hub id either" in out and "tunesmith models list" in out


@pytest.mark.parametrize(("file", "name"), [("my-model.Q8_0.gguf", "my-model"), ("tinyllama-Q4_K_M.gguf", "tinyllama"),
                                            ("Qwen2.5-0.5B-Instruct-BF16.gguf", "qwen2.5-0.5b-instruct"),
                                            ("plain.gguf", "plain"), ("q8_0.gguf", "q8_0")])
def test_an_imported_gguf_is_named_without_its_quant_type(file, name):
    """`models import my-model.Q8_0.gguf` registered "my-model.q8_0", a dequantized model named for a type it is
    not."""
    from pathlib import Path

    from tunesmith.models.gguf_import import gguf_model_name

    assert gguf_model_name(Path(file)) == name
