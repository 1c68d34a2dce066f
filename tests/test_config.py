"""The recipe schema: defaults, overrides, and errors that name the key, the line and the fix."""

import re
import shutil
from pathlib import Path

import pytest

from tunesmith.config import Recipe, apply_override, load_recipe, recipe_to_yaml
from tunesmith.errors import RecipeError

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_the_practitioners_ones(tmp_path):
    recipe = load_recipe(write(tmp_path, "data:\n  train: t.jsonl\n"))
    assert (recipe.adapter.r, recipe.adapter.alpha, recipe.adapter.targets) == (16, 32, "all-linear")
    assert (recipe.training.lr, recipe.training.scheduler, recipe.training.warmup_ratio) == ("auto", "cosine", 0.03)
    assert recipe.resolve_path("t.jsonl") == (tmp_path / "t.jsonl").resolve()


def test_misspelt_key_names_path_line_and_suggestion(tmp_path):
    path = write(tmp_path, "data:\n  train: t.jsonl\ntraining:\n  epochs: 1\n  lerning_rate: 3\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    text = str(info.value)
    assert "training.lerning_rate" in text and "line 5" in text and str(path) in text


def test_misspelt_key_suggests_close_match(tmp_path):
    with pytest.raises(RecipeError, match="Did you mean 'batch_size'"):
        load_recipe(write(tmp_path, "data:\n  train: t.jsonl\ntraining:\n  batch_sise: 4\n"))


def test_misspelt_adapter_key_suggests_inside_the_union(tmp_path):
    with pytest.raises(RecipeError, match=r"adapter\.rr .*Did you mean 'r'"):
        load_recipe(write(tmp_path, "data:\n  train: t.jsonl\nadapter:\n  kind: lora\n  rr: 4\n"))


@pytest.mark.parametrize(("yaml", "said"), [
    # a key of another section wins over a close key of this one (adapter.lr is not a misspelt adapter.r)
    ("adapter:\n  kind: lora\n  lr: 0.001\n",
     "adapter.lr (line 5): unknown key. It is a key of training: training.lr."),
    # misspelt, and of another kind: simpo's gamma written on dpo
    ("method:\n  kind: dpo\n  gama: 0.5\n",
     "method.gama (line 5): unknown key. Did you mean 'gamma'? It is a key of method.kind simpo, not of method.kind "
     "dpo."),
    # a key of other adapter kinds on one without it: the kind named, with what it takes
    ("adapter:\n  kind: partial\n  r: 8\n",
     "adapter.r (line 5): unknown key. It is a key of adapter.kind lora, dora, rslora, pissa, olora, qlora, "
     "not of adapter.kind partial: remove it (adapter.kind partial takes last_blocks, train_norm, train_lm_head)."),
    ("method:\n  kind: DPO\n", "unknown kind 'DPO'. Did you mean 'dpo'? (kinds are lowercase)"),
])
def test_a_key_or_kind_written_where_it_does_not_belong_is_pointed_home(tmp_path, yaml, said):
    with pytest.raises(RecipeError) as caught:
        load_recipe(write(tmp_path, "data:\n  train: t.jsonl\n" + yaml))
    assert said in str(caught.value)


@pytest.mark.parametrize(("yaml", "key"), [
    ("training:\n  learning_rate: 1.0e-3\n", "training.lr"),  # transformers' TrainingArguments
    ("training:\n  gradient_accumulation_steps: 4\n", "training.grad_accum"),
    ("adapter:\n  kind: lora\n  lora_alpha: 32\n", "adapter.alpha"),  # PEFT's LoraConfig
    ("cutoff_len: 1024\n", "data.max_length"),  # LLaMA-Factory, at the top level
    ("adapter:\n  kind: lora\n  rank: 8\n", "adapter.r"),
])
def test_a_key_as_another_tool_names_it_gets_the_recipes_name(tmp_path, yaml, key):
    with pytest.raises(RecipeError, match=f"unknown key. tunesmith calls it {re.escape(key)}"):
        load_recipe(write(tmp_path, "data:\n  train: t.jsonl\n" + yaml))


def test_a_key_of_another_method_kind_says_which_kind_has_it(tmp_path):
    with pytest.raises(RecipeError, match=r"method\.num_generations .*It is a key of method\.kind grpo, not of "
                                          r"method\.kind cpt: remove it \(method\.kind cpt takes no other key\)"):
        load_recipe(write(tmp_path, "data:\n  train: t.jsonl\nmethod:\n  kind: cpt\n  num_generations: 4\n"))


def test_bad_value_names_key_and_value(tmp_path):
    with pytest.raises(RecipeError) as info:
        load_recipe(write(tmp_path, "data:\n  train: t.jsonl\ntraining:\n  lr: -1\n"))
    assert "training.lr" in str(info.value) and "-1" in str(info.value) and "line 4" in str(info.value)


@pytest.mark.parametrize("steps", [0, -5])
def test_max_steps_is_at_least_one_or_minus_one(tmp_path, steps):
    recipe = write(tmp_path, "data:\n  train: t.jsonl\n")
    with pytest.raises(RecipeError, match=rf"training.max_steps .*{steps} steps: give at least 1 optimizer step"):
        load_recipe(recipe, [f"training.max_steps={steps}"])
    assert load_recipe(recipe, ["training.max_steps=-1"]).training.max_steps == -1


def test_unknown_adapter_kind_lists_valid_kinds(tmp_path):
    with pytest.raises(RecipeError, match="lora"):
        load_recipe(write(tmp_path, "data:\n  train: t.jsonl\nadapter:\n  kind: lorra\n"))


def test_unknown_target_preset_is_refused(tmp_path):
    with pytest.raises(RecipeError, match=r"adapter.targets \(line 4\): targets must be one of .* \(got 'qvk'\)"):
        load_recipe(write(tmp_path, "data:\n  train: t.jsonl\nadapter:\n  targets: qvk\n"))
    with pytest.raises(RecipeError) as listed:  # comma-separated names on the command line: how to write a list
        load_recipe(write(tmp_path, "data:\n  train: t.jsonl\n"), ["adapter.targets=q_proj,foo"])
    assert "adapter.targets (from the command line: adapter.targets=q_proj,foo)" in str(listed.value)
    assert "'adapter.targets=[q_proj,foo]'" in str(listed.value) and "'kind'" not in str(listed.value)


def test_missing_required_key(tmp_path):
    with pytest.raises(RecipeError, match=r"data: required"):
        load_recipe(write(tmp_path, "name: x\n"))


def test_set_overrides_parse_yaml_values(tmp_path):
    path = write(tmp_path, "data:\n  train: t.jsonl\n")
    recipe = load_recipe(path, ["training.lr=1e-4", "adapter.targets=[q_proj, v_proj]", "data.eval=null"])
    assert recipe.training.lr == 1e-4
    assert recipe.adapter.targets == ["q_proj", "v_proj"]
    assert recipe.data.eval is None


def test_off_unquoted_as_yaml_reads_it_is_off(tmp_path):
    """README's `pii: off|redact|drop`: YAML 1.1 reads an unquoted off as false, which was refused ("got False")."""
    path = write(tmp_path, "data:\n  train: t.jsonl\n  clean: {pii: off, dedup: off}\n")
    clean = load_recipe(path).data.clean
    assert (clean.pii, clean.dedup) == ("off", "off")
    assert load_recipe(path, ["data.clean.pii=off", "data.clean.dedup=no"]).data.clean.dedup == "off"
    with pytest.raises(RecipeError, match=r"data\.clean\.pii.*boolean true.*write redact or drop"):
        load_recipe(path, ["data.clean.pii=yes"])


def test_a_relative_path_set_on_the_command_line_is_from_the_current_folder(tmp_path, monkeypatch):
    recipe_dir, here = tmp_path / "recipes", tmp_path / "work"
    recipe_dir.mkdir()
    (here / "data").mkdir(parents=True)
    (here / "data" / "mine.jsonl").write_text("{}\n")
    monkeypatch.chdir(here)
    recipe = load_recipe(write(recipe_dir, "data:\n  train: t.jsonl\n"),
                         ["data.eval=data/mine.jsonl", "model.source=HuggingFaceTB/SmolLM2-135M"])
    assert recipe.resolve_path(recipe.data.eval) == here / "data" / "mine.jsonl"
    assert recipe.resolve_path(recipe.data.train) == recipe_dir / "t.jsonl"  # written in the file: from the recipe
    assert recipe.model.source == "HuggingFaceTB/SmolLM2-135M"  # nothing of that name here: kept as written
    mistyped = load_recipe(write(recipe_dir, "data:\n  train: t.jsonl\n"), ["data.train=data/mnie.jsonl"])
    assert recipe.resolve_path(mistyped.data.train) == here / "data" / "mnie.jsonl"  # the "not found" names it
    hub = load_recipe(write(recipe_dir, "data:\n  train: t.jsonl\n"), ["data.train=hf:org/dataset"])
    assert hub.data.train == "hf:org/dataset"
    (here / "my.jinja").write_text("{{ messages[0].content }}")
    templates = [load_recipe(write(recipe_dir, "data:\n  train: t.jsonl\n"), [f"model.chat_template={value}"])
                 for value in ("my.jinja", "missing.jinja", "chatml")]
    assert [t.model.chat_template for t in templates] == [str(here / "my.jinja"), str(here / "missing.jinja"),
                                                          "chatml"]


def test_override_of_unknown_key_fails_with_hint(tmp_path):
    with pytest.raises(RecipeError, match="Did you mean 'epochs'"):
        load_recipe(write(tmp_path, "data:\n  train: t.jsonl\n"), ["training.epoch=2"])


def test_a_key_in_the_wrong_section_names_the_section_it_belongs_to(tmp_path):
    with pytest.raises(RecipeError, match=r"export.distributed \(line 4\): unknown key. It is a key of training: "
                                          r"training.distributed."):
        load_recipe(write(tmp_path, "data:\n  train: t.jsonl\nexport:\n  distributed: ddp\n"))


def test_an_error_in_a_value_set_on_the_command_line_names_the_override_not_a_line_of_the_file(tmp_path):
    path = write(tmp_path, "data:\n  train: t.jsonl\ntraining:\n  lr: 1.0e-3\nadapter:\n  r: 8\n")
    with pytest.raises(RecipeError) as caught:
        load_recipe(path, ["training.lrr=1", "adapter.r=8.5"])
    message = str(caught.value)
    assert "training.lrr (from the command line: training.lrr=1): unknown key" in message
    assert "adapter.r (from the command line: adapter.r=8.5)" in message and "(line" not in message
    with pytest.raises(RecipeError, match=r"adapter.r \(line 6\)"):
        load_recipe(write(tmp_path, "data:\n  train: t.jsonl\ntraining:\n  lr: 1.0e-3\nadapter:\n  r: 8.5\n"),
                    ["training.lr=1e-4"])


def test_an_unknown_kind_and_a_value_fitting_no_member_of_a_union_read_as_one_plain_line_each(tmp_path):
    path = write(tmp_path, "data:\n  train: t.jsonl\nadapter:\n  kind: lorra\ntraining:\n  lr: fast\n")
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    lines = str(caught.value).splitlines()[1:]
    assert lines == ["  - adapter.kind (line 3): unknown kind 'lorra'. Did you mean 'lora'? Choose from lora, dora, "
                     "rslora, pissa, olora, qlora, adalora, ia3, prompt_tuning, prefix_tuning, p_tuning, full, "
                     "partial, hft.",
                     "  - training.lr (line 6): should be a valid number or 'auto' (got 'fast')."]


def test_a_yaml_syntax_error_names_the_file(tmp_path):
    with pytest.raises(RecipeError, match=r'in ".*r.yaml", line 2') as caught:
        load_recipe(write(tmp_path, "data:\n  train: [t.jsonl\n"))
    assert "<unicode string>" not in str(caught.value)


def test_a_folder_given_as_the_recipe_is_named_as_a_folder(tmp_path):
    with pytest.raises(RecipeError, match=r"is a folder; a recipe is one YAML file"):
        load_recipe(tmp_path)


def test_malformed_override():
    with pytest.raises(RecipeError, match=r"section\.key=value"):
        apply_override({}, "training.lr")


def test_a_set_value_holding_a_colon_stays_text_and_braces_make_a_mapping(tmp_path):
    recipe = load_recipe(write(tmp_path, "data:\n  train: t.jsonl\n"),
                         ["data.system_prompt=Reply with one word: yes or no.", "data.columns={question: prompt}"])
    assert recipe.data.system_prompt == "Reply with one word: yes or no."
    assert recipe.data.columns == {"question": "prompt"}


def test_invalid_yaml_reports_file(tmp_path):
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(write(tmp_path, "data: [unclosed\n"))


def test_resolved_recipe_round_trips(tmp_path):
    recipe = load_recipe(write(tmp_path, "data:\n  train: t.jsonl\n"), ["adapter.r=4"])
    again = write(tmp_path, recipe_to_yaml(recipe))
    assert load_recipe(again).model_copy(update={"defaulted_keys": []}) == recipe
    assert Recipe.model_validate(recipe.model_dump()).adapter.r == 4


def sections_given(recipe: Recipe) -> dict[str, set[str]]:
    return {name: set(getattr(recipe, name).model_fields_set) for name in ("model", "method", "adapter", "training",
                                                                          "eval", "export")} | {
        "data": set(recipe.data.model_fields_set), "data.replay": set(recipe.data.replay.model_fields_set)}


def test_a_runs_recipe_file_leaves_to_the_defaults_what_the_recipe_left_to_them(tmp_path):
    from tunesmith.config import recipe_differences
    from tunesmith.train.defaults import resolve_epochs

    original = load_recipe(write(tmp_path, "data:\n  train: t.jsonl\ntraining:\n  lr: 1e-3\n"))
    text = recipe_to_yaml(original)
    assert "  epochs: 1.0\n" in text and "  grad_accum: 1\n" in text  # every value written out
    saved = load_recipe(write(tmp_path, text))
    assert sections_given(saved) == sections_given(original)  # epochs, grad_accum, data.replay: still defaults
    assert not saved.training.steps_given and recipe_differences(original, saved) == {}  # a resume takes either
    assert recipe_to_yaml(saved) == text
    chosen = [resolve_epochs(r.training, "sft", rows=16) for r in (original, saved)]  # 2 steps an epoch
    assert chosen[0] == chosen[1] and saved.training.epochs == original.training.epochs == 3.0
    edited = load_recipe(write(tmp_path, text.replace("  epochs: 1.0\n", "  epochs: 2.0\n")))
    assert edited.training.steps_given  # a value changed in the file is the user's
    overridden = load_recipe(write(tmp_path, text), ["training.epochs=1", "data.replay.ratio=0"])
    assert overridden.training.steps_given and "ratio" in overridden.data.replay.model_fields_set


def test_a_data_file_given_where_a_recipe_goes_is_named_as_such(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"messages": []}\n', encoding="utf-8")
    with pytest.raises(RecipeError) as caught:
        load_recipe(data)
    assert "is a data file; this command takes a recipe" in str(caught.value)
    assert f"tunesmith data inspect {data}" in caught.value.hint


def test_setting_another_kind_on_the_command_line_leaves_out_the_files_keys_that_kind_does_not_take():
    """`plan recipe.yaml --set adapter.kind=full` on a LoRA recipe was refused for the file's r, alpha and targets,
    and the only way out (`--set 'adapter={kind: full}'`) was found by trying."""
    full = load_recipe(RECIPES / "quickstart.yaml", ["adapter.kind=full"])
    assert full.adapter.kind == "full"
    dora = load_recipe(RECIPES / "quickstart.yaml", ["adapter.kind=dora"])
    assert (dora.adapter.kind, dora.adapter.r, dora.adapter.alpha) == ("dora", 16, 32.0)  # keys it takes stay
    simpo = load_recipe(RECIPES / "dpo.yaml", ["method.kind=simpo"])  # dpo's loss_type left out, beta kept
    assert (simpo.method.kind, simpo.method.beta) == ("simpo", 0.1)
    with pytest.raises(RecipeError, match=r"adapter\.r \(from the command line: adapter\.r=4\): unknown key"):
        load_recipe(RECIPES / "quickstart.yaml", ["adapter.kind=full", "adapter.r=4"])  # a --set mistake is said


def test_a_misspelt_key_is_still_said_when_the_kind_is_set_on_the_command_line(tmp_path):
    """Setting the file's own kind again (every --grid adapter.kind=... combination does), or another, must not make a
    typo in the file vanish: only the keys the file's kind takes and the new one does not are left out."""
    text = (RECIPES / "quickstart.yaml").read_text(encoding="utf-8").replace("  alpha: 32", "  alpah: 32")
    assert "alpah" in text
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text.replace("../examples", str(RECIPES.parent / "examples")), encoding="utf-8")
    for kind in ("lora", "full"):
        with pytest.raises(RecipeError, match="alpah"):
            load_recipe(recipe, [f"adapter.kind={kind}"])


def test_a_name_no_run_folder_can_start_with_is_said_in_words(tmp_path):
    path = write(tmp_path, "name: Légumes / fruits\ndata:\n  train: t.jsonl\n")
    with pytest.raises(RecipeError, match=r"name \(line 1\): the name is each run folder's prefix"):
        load_recipe(path)
    with pytest.raises(RecipeError, match="not all dots"):
        load_recipe(write(tmp_path, "data:\n  train: t.jsonl\n"), ["name=.."])
    assert load_recipe(write(tmp_path, "name: legumes-v1.2\ndata:\n  train: t.jsonl\n")).name == "legumes-v1.2"


@pytest.mark.parametrize("layout", ["recipe at the project's root", "recipe in recipes/ naming ../data"])
def test_a_runs_recipe_reads_its_data_from_the_moved_project(tmp_path, capsys, layout):
    """A run's recipe.yaml records the folder its relative paths started from; once the project is moved, they are read
    from the same place in the moved project: the project's root, or its recipes/ folder for `../data/...` paths."""
    project = tmp_path / "a" / "project"
    (project / "data").mkdir(parents=True)
    for name in ("train.jsonl", "eval.jsonl"):
        (project / "data" / name).write_text('{"prompt": "a", "completion": "b"}\n')
    recipes = project / "recipes" if layout.startswith("recipe in") else project
    prefix = "../data/" if recipes != project else "data/"
    recipes.mkdir(exist_ok=True)
    run = project / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "run.json").write_text("{}")
    (run / "data").mkdir()  # a run's own split rows: never taken for the project's
    for name in ("train.jsonl", "eval.jsonl"):
        (run / "data" / name).write_text('{"prompt": "a", "completion": "b"}\n')
    (run / "recipe.yaml").write_text(f"base_dir: {recipes}\nmodel: {{source: m}}\n"
                                     f"data: {{train: {prefix}train.jsonl, eval: {prefix}eval.jsonl}}\n")
    (tmp_path / "b").mkdir()
    moved = project.rename(tmp_path / "b" / "elsewhere")
    decoy = tmp_path / "b" / "project"  # another checkout named as the first, beside the moved one: never read
    shutil.copytree(moved / "data", decoy / "data")
    (decoy / "recipes").mkdir()
    recipe = load_recipe(moved / "runs" / "r1" / "recipe.yaml")
    assert recipe.base_dir == str(moved / recipes.relative_to(project))
    assert (Path(recipe.base_dir) / recipe.data.train).resolve() == moved / "data" / "train.jsonl"
    assert "the project moved" in capsys.readouterr().err
