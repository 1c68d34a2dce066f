"""`tunesmith doctor`: every failure path without network.

The Hub is a local http.server answering as the real one does (status codes and X-Error-Code headers, with and
without a token); versions are fake sets; the model checks run on the tiny tokenizer and model of conftest.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from tests.conftest import CHATML, make_tiny_project
from tunesmith.doctor.access import hub_access_check
from tunesmith.doctor.model_checks import model_checks
from tunesmith.doctor.report import Check
from tunesmith.doctor.run import run_doctor
from tunesmith.doctor.versions import installed_versions, known_bad_findings, version_checks

GOOD_TOKEN, BAD_TOKEN = "hf_good_token_for_tests", "hf_revoked_token_for_tests"
TESTED = {"python": "3.11.7", "torch": "2.13.0+cpu", "transformers": "5.24.0", "trl": "1.16.0", "peft": "0.21.2",
          "accelerate": "1.15.0", "datasets": "5.2.0", "safetensors": "0.8.0", "gguf": "0.19.0",
          "huggingface_hub": "2.4.0"}


# --- a fake Hub ------------------------------------------------------------------------------------------------

class FakeHub(BaseHTTPRequestHandler):
    """Answers HEAD /{owner}/{name}/resolve/{revision}/config.json like huggingface.co does."""

    seen_tokens: ClassVar[list[str | None]] = []

    def do_HEAD(self) -> None:
        auth = self.headers.get("Authorization")
        token = auth.removeprefix("Bearer ") if auth else None
        FakeHub.seen_tokens.append(token)
        repo = "/".join(self.path.strip("/").split("/")[:2])
        status, headers = self.answer(repo, token)
        self.send_response(status)
        for key, value in {"Content-Length": "0", **headers}.items():
            self.send_header(key, value)
        self.end_headers()

    @staticmethod
    def answer(repo: str, token: str | None) -> tuple[int, dict[str, str]]:
        if token == BAD_TOKEN:
            return 401, {"X-Error-Message": "Invalid credentials in Authorization header"}
        if repo == "acme/public":
            return 200, {"ETag": '"abc"', "X-Repo-Commit": "0" * 40, "Content-Length": "12"}
        if repo == "acme/gated":
            return (403 if token else 401), {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access restricted"}
        if repo == "acme/scoped" and token:
            return 403, {"X-Error-Message": "This token does not have read access"}
        return (404 if token else 401), {"X-Error-Code": "RepoNotFound"}

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """A fake Hub at HF_ENDPOINT; no token anywhere (HF_TOKEN unset, no token file) and an empty Hub cache."""
    from huggingface_hub import constants

    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    FakeHub.seen_tokens = []
    yield url
    server.shutdown()
    server.server_close()


def test_public_repo_passes(hub):
    check = hub_access_check("acme/public")
    assert check.status == "pass" and "no token" in check.detail


def test_gated_without_token_says_request_access_then_log_in(hub):
    check = hub_access_check("acme/gated")
    assert check.status == "fail" and FakeHub.seen_tokens == [None]
    assert "gated" in check.detail and "no Hugging Face token" in check.detail and "401" in check.detail
    assert "https://huggingface.co/acme/gated" in check.fix and "hf auth login" in check.fix


def test_gated_with_a_token_says_the_account_lacks_access(hub, monkeypatch):
    without = hub_access_check("acme/gated")
    monkeypatch.setenv("HF_TOKEN", GOOD_TOKEN)
    check = hub_access_check("acme/gated")
    assert FakeHub.seen_tokens == [None, GOOD_TOKEN]
    assert check.status == "fail" and "403" in check.detail
    assert "token is valid" in check.detail and "not been granted access" in check.detail
    assert "fine-grained" in check.fix and "hf auth whoami" in check.fix
    assert check.fix != without.fix and check.detail != without.detail


def test_missing_repo_is_told_apart_with_and_without_a_token(hub, monkeypatch):
    anonymous = hub_access_check("acme/nope")
    monkeypatch.setenv("HF_TOKEN", GOOD_TOKEN)
    logged_in = hub_access_check("acme/nope")
    assert anonymous.status == logged_in.status == "fail"
    assert "401" in anonymous.detail and "no token is set" in anonymous.detail and "hf auth login" in anonymous.fix
    assert "404" in logged_in.detail and "private to an account your token cannot read" in logged_in.detail


def test_an_invalid_token_is_named(hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", BAD_TOKEN)
    check = hub_access_check("acme/public")
    assert check.status == "fail" and "rejected your token" in check.detail
    assert "https://huggingface.co/settings/tokens" in check.fix


def test_a_token_without_the_scope_gets_the_fine_grained_advice(hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", GOOD_TOKEN)
    check = hub_access_check("acme/scoped")
    assert check.status == "fail" and "403" in check.detail and "fine-grained" in check.detail


def test_unreachable_hub_without_a_cached_copy_fails(hub, monkeypatch):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    check = hub_access_check("acme/public")
    assert check.status == "fail" and "Cannot reach the Hub" in check.detail
    assert "not in the local cache" in check.detail


def test_offline_mode_does_not_ask_the_hub(hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    check = hub_access_check("acme/public")
    assert check.status == "fail" and "HF_HUB_OFFLINE" in check.detail and FakeHub.seen_tokens == []


# --- versions --------------------------------------------------------------------------------------------------

def by_name(checks: list[Check], name: str) -> Check:
    return next(check for check in checks if check.name == name)


def test_the_tested_set_passes_its_ranges_and_only_the_peft_note_remains():
    checks = version_checks(TESTED)
    assert [check.name for check in checks if check.status != "pass"] == ["known bad: transformers + peft"]
    assert by_name(checks, "known bad: transformers + peft").status == "warn"


def test_a_known_bad_combination_is_named_with_its_source_and_fix():
    checks = version_checks({**TESTED, "transformers": "5.1.0", "peft": "0.17.1"})
    finding = by_name(checks, "known bad: transformers + peft")
    assert finding.status == "fail" and "HybridCache" in finding.detail
    assert "https://github.com/huggingface/transformers/pull/41889" in finding.detail and "peft" in finding.fix
    assert known_bad_findings({**TESTED, "transformers": "5.1.0", "peft": "0.21.0"}) == []


def test_out_of_range_fails_and_newer_than_tested_warns():
    checks = version_checks({**TESTED, "trl": "0.19.1", "torch": "2.14.1", "python": "3.10.4"})
    assert by_name(checks, "trl").status == "fail" and "trl>=1.16,<2" in by_name(checks, "trl").fix
    assert by_name(checks, "torch").status == "warn" and "newer than tested" in by_name(checks, "torch").detail
    assert "torch<2.14" in by_name(checks, "torch").fix
    assert by_name(checks, "python").status == "fail"


def test_missing_packages_required_fail_optional_pass():
    checks = version_checks({name: v for name, v in TESTED.items() if name != "peft"})
    assert by_name(checks, "peft").status == "fail"
    assert by_name(checks, "bitsandbytes").status == "pass" and "needed for adapter.kind: qlora" in \
        by_name(checks, "bitsandbytes").detail


def test_installed_versions_come_from_package_metadata(monkeypatch):
    import importlib.metadata

    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "0.48.0" if name == "bitsandbytes" else real(name))
    assert installed_versions()["bitsandbytes"] == "0.48.0"
    checks = version_checks()
    assert by_name(checks, "bitsandbytes").status == "fail"  # below pyproject's >=0.50
    assert by_name(checks, "known bad: bitsandbytes").status == "fail"


# --- the model's tokenizer and chat template -------------------------------------------------------------------

def with_template(folder: Path, template: str | None) -> Path:
    """Give the tokenizer in `folder` another chat template (None: none at all)."""
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config.pop("chat_template", None)
    if template is not None:
        config["chat_template"] = template
    config_file.write_text(json.dumps(config), encoding="utf-8")
    return folder


def tokenizer_copy(tokenizer_dir: Path, target: Path, template: str | None) -> Path:
    """The fixture tokenizer with another chat template."""
    shutil.copytree(tokenizer_dir, target)
    return with_template(target, template)


def test_chatml_with_pad_equal_to_eos_passes_and_says_how_it_is_handled(tokenizer_dir):
    checks = model_checks(tokenizer_dir)
    assert all(check.status == "pass" for check in checks), [c for c in checks if c.status != "pass"]
    pad = by_name(checks, "pad token")
    assert "pad == EOS" in pad.detail and "assistant spans" in pad.detail
    assert "no {% generation %} markers" in by_name(checks, "assistant masks").detail


def test_no_chat_template_warns_with_the_fix_and_the_recipes_template_is_checked(tokenizer_dir, tmp_path):
    """A base model: raw text trains, so no failure; conversations need model.chat_template, which doctor checks as
    training renders it."""
    from tunesmith.models.templates import CHATML

    folder = tokenizer_copy(tokenizer_dir, tmp_path / "tok", None)
    checks = model_checks(folder)
    template = by_name(checks, "chat template")
    assert template.status == "warn" and "model.chat_template: chatml" in template.fix
    assert not any(check.name == "EOS after assistant turns" for check in checks)
    checks = model_checks(folder, chat_template=CHATML)
    assert by_name(checks, "chat template").detail == "model.chat_template of the recipe"
    assert by_name(checks, "EOS after assistant turns").status == "pass"


def test_template_without_eos_or_system_role_warns(tokenizer_dir, tmp_path):
    plain = ("{% for m in messages %}{% if m['role'] != 'system' %}{{ m['role'] + ': ' + m['content'] + '\n' }}"
             "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
    checks = model_checks(tokenizer_copy(tokenizer_dir, tmp_path / "tok", plain))
    assert by_name(checks, "EOS after assistant turns").status == "warn"
    assert by_name(checks, "system role").status == "warn"
    assert "data.system_fallback: merge" in by_name(checks, "system role").fix


def test_generation_markers_are_recognised(tokenizer_dir, tmp_path):
    marked = CHATML.replace("{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}",
                            "{% if message['role'] == 'assistant' %}{{'<|im_start|>assistant\n'}}{% generation %}"
                            "{{message['content'] + '<|im_end|>'}}{% endgeneration %}{{'\n'}}{% else %}"
                            "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
                            "{% endif %}")
    assert marked != CHATML
    checks = model_checks(tokenizer_copy(tokenizer_dir, tmp_path / "tok", marked))
    assert "marks assistant turns" in by_name(checks, "assistant masks").detail
    assert by_name(checks, "EOS after assistant turns").status == "pass"


# --- sources, recipes, the whole report ------------------------------------------------------------------------

def test_local_sources(tmp_path, tiny_model_dir):
    missing = run_doctor(str(tmp_path / "nowhere"), probe_seconds=0.02)
    assert by_name(missing.checks, f"source {tmp_path / 'nowhere'}").status == "fail" and missing.failed
    (tmp_path / "empty").mkdir()
    empty = run_doctor(str(tmp_path / "empty"), probe_seconds=0.02)
    assert "no config.json" in by_name(empty.checks, f"source {tmp_path / 'empty'}").detail
    ready = run_doctor(str(tiny_model_dir), probe_seconds=0.02)
    assert by_name(ready.checks, "chat template").status == "pass"
    assert {"versions", "accelerator", "model access", "model"} <= set(ready.sections())


def test_recipe_checks_data_and_template_fit(tmp_path, tiny_model_dir):
    recipe = make_tiny_project(tmp_path, tiny_model_dir, train_rows=8, eval_rows=4)
    report = run_doctor(recipe_path=recipe, probe_seconds=0.02)
    recipe_checks = report.sections()["recipe"]
    assert by_name(recipe_checks, "train data").status == "pass" and "shape messages" in \
        by_name(recipe_checks, "train data").detail
    assert by_name(recipe_checks, "template fit").status == "pass"
    assert by_name(recipe_checks, "rendered rows").status in ("pass", "warn")


def test_data_of_a_shape_the_method_does_not_train_fails_as_train_would_refuse_it(tmp_path, tiny_model_dir):
    recipe = make_tiny_project(tmp_path, tiny_model_dir, train_rows=8, eval_rows=4)
    report = run_doctor(recipe_path=recipe, sets=["method.kind=cpt"], probe_seconds=0.02)
    check = by_name(report.checks, "train data")
    assert check.status == "fail" and "holds messages rows; method.kind cpt needs text rows" in check.detail
    assert "method.kind sft" in check.fix


def test_a_broken_row_fails_unless_skip_invalid(tmp_path, tiny_model_dir):
    recipe = make_tiny_project(tmp_path, tiny_model_dir, train_rows=8, eval_rows=4)
    with (tmp_path / "data" / "train.jsonl").open("a", encoding="utf-8") as handle:
        handle.write('{"messages": [{"role": "user", "content": "no answer"}]}\n')
    strict = by_name(run_doctor(recipe_path=recipe, probe_seconds=0.02).checks, "train data")
    assert strict.status == "fail" and "data.skip_invalid: true" in strict.fix
    lenient = run_doctor(recipe_path=recipe, sets=["data.skip_invalid=true"], probe_seconds=0.02)
    assert by_name(lenient.checks, "train data").status == "warn"


def test_system_turns_on_a_template_that_drops_them_fail_the_recipe(tmp_path, tiny_model_dir):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    drops = ("{% for m in messages %}{% if m['role'] != 'system' %}{{'<|im_start|>' + m['role'] + '\n' + "
             "m['content'] + '<|im_end|>\n'}}{% endif %}{% endfor %}"
             "{% if add_generation_prompt %}{{'<|im_start|>assistant\n'}}{% endif %}")
    with_template(model, drops)
    recipe = make_tiny_project(tmp_path, model, train_rows=8, eval_rows=4)
    report = run_doctor(recipe_path=recipe, sets=["data.system_prompt=Answer in JSON."], probe_seconds=0.02)
    fit = [check for check in report.checks if check.name == "template fit"]
    assert any(check.status == "fail" and "data.system_fallback: merge" in check.detail for check in fit)


# --- the command ------------------------------------------------------------------------------------------------

def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """`tunesmith ARGS` in this process through the console entry point: (exit code, stdout, stderr)."""
    from tunesmith.cli.app import main

    monkeypatch.setattr(sys, "argv", ["tunesmith", *args])
    with pytest.raises(SystemExit) as exited:
        main()
        raise SystemExit(0)
    out = capsys.readouterr()
    return exited.value.code or 0, out.out, out.err


def test_cli_json_and_exit_codes(monkeypatch, capsys, tmp_path, tiny_model_dir):
    code, out, err = run_cli(monkeypatch, capsys, "doctor", "--model", str(tiny_model_dir), "--json")
    document = json.loads(out)
    failed = [check for check in document["checks"] if check["status"] == "fail"]
    assert code == (1 if failed else 0) and "checks:" in err
    assert {"name", "section", "status", "detail", "fix"} <= set(document["checks"][0])
    code, out, _ = run_cli(monkeypatch, capsys, "doctor", "--model", str(tmp_path / "nowhere"), "--json")
    assert code == 1 and any(c["status"] == "fail" and c["section"] == "model access"
                             for c in json.loads(out)["checks"])


def test_cli_usage_errors_exit_2(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "doctor", "--set", "training.lr=1e-4")
    assert code == 2 and "--recipe" in err
    code, _, err = run_cli(monkeypatch, capsys, "doctor", "--recipe", str(tmp_path / "missing.yaml"))
    assert code == 2 and "Recipe file not found" in err


def test_cli_help_names_the_exit_codes():
    from typer.testing import CliRunner

    from tunesmith.cli import app

    result = CliRunner().invoke(app, ["doctor", "--help"])
    assert result.exit_code == 0 and "Example: tunesmith doctor" in result.output and "Exits 1" in result.output


def test_several_processes_section_says_what_this_machine_can_launch(tmp_path, tiny_model_dir):
    """On this GPU-less machine: DDP over gloo passes; fsdp and DeepSpeed fail with the fix (they need GPUs)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("the CPU-only verdicts are checked on a machine without GPUs")
    recipe = make_tiny_project(tmp_path, tiny_model_dir, train_rows=8, eval_rows=4)
    ddp = run_doctor(recipe_path=recipe, sets=["training.distributed=ddp"], probe_seconds=0.02)
    section = ddp.sections()["several processes"]
    assert by_name(section, "backend").status == "pass" and "gloo available" in by_name(section, "backend").detail
    assert by_name(section, "training.distributed").status == "pass"
    for strategy in ("fsdp", "deepspeed-zero3"):
        sharded = run_doctor(recipe_path=recipe, sets=[f"training.distributed={strategy}"], probe_seconds=0.02)
        verdict = by_name(sharded.sections()["several processes"], "training.distributed")
        assert verdict.status == "fail" and "CUDA GPUs only" in verdict.detail and "ddp" in verdict.fix
        assert verdict in sharded.failed


def test_doctor_names_the_kept_matmul_peaks_and_how_to_measure_again(tmp_path, monkeypatch):
    from tunesmith.doctor.accelerator import kept_peaks_check
    from tunesmith.plan.precision import keep_first_peaks, machine_key, peaks_file

    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path))
    assert "not measured yet" in kept_peaks_check().detail
    keep_first_peaks(peaks_file(machine_key()), {"fp32_flops": 1e11, "bf16_flops": 4e11})
    detail = kept_peaks_check().detail
    assert "fp32 100, bf16 400 GFLOP/s" in detail and "train in bf16" in detail
    assert str(tmp_path / "hardware") in detail and "delete the file" in detail


def test_doctor_takes_the_recipe_as_an_argument_as_the_other_commands_do(tmp_path, tiny_model_dir):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    recipe = make_tiny_project(tmp_path, tiny_model_dir)
    result = CliRunner().invoke(app, ["doctor", str(recipe), "--json"])
    names = [check["name"] for check in json.loads(result.stdout)["checks"]]
    assert "train data" in names and "template fit" in names


def test_doctor_fails_eval_metrics_the_answers_cannot_be_scored_by(tmp_path):
    """The check train makes at start-up, made by doctor first: json_fields on answers that are not JSON."""
    from tunesmith.config import load_recipe
    from tunesmith.doctor.recipe import metric_checks

    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text("data:\n  train: t.jsonl\neval:\n  task_metric: json_fields\n", encoding="utf-8")
    recipe = load_recipe(recipe_file)
    prose = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"answer {i}"}]}
             for i in range(30)]
    [check] = metric_checks(recipe, prose)
    assert check.status == "fail" and "json_fields" in check.detail and "eval.task_metric: auto" in check.fix
    objects = [{"messages": [m, {"role": "assistant", "content": f'{{"n": {i}}}'}]}
               for i, m in enumerate(row["messages"][0] for row in prose)]
    assert metric_checks(recipe, objects) == []
