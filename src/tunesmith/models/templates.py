"""The chat template a recipe names in place of the model's own (`model.chat_template`), as Jinja text.

A base model ships no chat template, and some instruct models ship one that cannot train (see data/contract.py).
`chatml` is ChatML (`<|im_start|>role\\n...`) with every turn closed by the tokenizer's own eos_token, as
Unsloth's `get_chat_template(..., map_eos_token=True)` does: the tuned model learns to end its answer with the
token every engine (transformers, llama.cpp, Ollama) stops at, without new tokens or resized embeddings. For a model
whose eos_token is `<|im_end|>` (Qwen, SmolLM2) it is ChatML exactly.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from tunesmith.config import Recipe
from tunesmith.errors import RecipeError

CHATML = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + eos_token + '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
BUILT_IN = {"chatml": CHATML}
TEMPLATE_FILE = "chat_template.jinja"  # the name transformers saves a tokenizer's template under


def chat_template_text(value: str | None, base_dir: Path) -> str | None:
    """The Jinja text `model.chat_template` names: a built-in (`chatml`), Jinja text itself (it holds `{{` or `{%`),
    or a file (relative to `base_dir`, the recipe's folder). None: the model's own. Raises RecipeError naming the key
    when the file is missing, unreadable or not a Jinja template."""
    if value is None:
        return None
    if value.strip().lower() in BUILT_IN:
        return BUILT_IN[value.strip().lower()]
    if "{{" in value or "{%" in value:
        return value
    path = Path(value).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if not path.is_file():
        close = difflib.get_close_matches(value.strip().lower(), list(BUILT_IN), n=1)
        raise RecipeError(f"model.chat_template: {value!r} is neither a built-in template ({', '.join(BUILT_IN)}) nor "
                          f"a file ({path} does not exist)." + (f" Did you mean {close[0]!r}?" if close else ""),
                          "Write chatml, the path of a .jinja file (relative to the recipe), or the Jinja text.")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"model.chat_template: {path} cannot be read as UTF-8 text ({exc}).") from None
    if "{{" not in text and "{%" not in text:
        raise RecipeError(f"model.chat_template: {path} is not a Jinja chat template (no {{{{ or {{% in it).",
                          "A chat template loops over `messages`; see the model folder's chat_template.jinja of any "
                          "instruct model, or write chatml.")
    return text


def template_label(value: str) -> str:
    """model.chat_template as messages show it: a name or path as written, Jinja text cut to 60 characters."""
    return value if len(value) <= 60 else value[:57] + "..."


def recipe_chat_template(recipe: Recipe) -> str | None:
    """The Jinja text of `recipe`'s model.chat_template (None: the model's own), read relative to the recipe."""
    return chat_template_text(recipe.model.chat_template, Path(recipe.base_dir))


def saved_chat_template(folder: Path) -> str | None:
    """The chat template saved beside a trained adapter or model (training saves its tokenizer there), or None. A run
    trained with model.chat_template renders with it; every other run saved the base's own, which is the same."""
    path = folder / TEMPLATE_FILE
    return path.read_text(encoding="utf-8") if path.is_file() else None
