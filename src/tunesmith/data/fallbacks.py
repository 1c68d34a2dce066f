"""Rewrite rows into what a limited chat template can express, when the recipe asks for it.

Two documented fallbacks, each applied to every conversational part of every row (train and eval alike,
so eval prompts the model the way it was trained):

- `data.tool_format: hermes`: tool schemas go into the system turn inside `<tools>`, each tool call is
  written into the assistant's text as a `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` block
  and tool results come back as a user turn of `<tool_response>` blocks: the convention of the Hermes
  function-calling models (NousResearch, Hermes-2-Pro), which plain ChatML templates render as text.
- `data.system_fallback: merge`: the system turn's text is put in front of the first user turn, for
  templates that drop or refuse the system role (Gemma's raises on it).
"""

from __future__ import annotations

import json
from typing import Any

from tunesmith.config import DataSection
from tunesmith.data.template import answer_text

Row = dict[str, Any]
Messages = list[dict[str, Any]]
CONVERSATION_KEYS = ("messages", "prompt", "chosen", "rejected", "completion")
HERMES_TOOLS_INTRO = ("You can call functions. Their signatures are inside <tools></tools>:\n<tools>\n{schemas}\n"
                      "</tools>\nTo call one, answer with <tool_call>{{\"name\": ..., \"arguments\": {{...}}}}"
                      "</tool_call>; its result comes back inside <tool_response></tool_response>.")


def apply_fallbacks(row: Row, data: DataSection) -> Row:
    """`row` rewritten as the recipe's fallbacks say (the row itself when none is set)."""
    if data.tool_format == "hermes":
        row = hermes_row(row)
    if data.system_fallback == "merge":
        row = {key: merge_system(value) if key in ("messages", "prompt") and isinstance(value, list) else value
               for key, value in row.items()}
    return row


def hermes_row(row: Row) -> Row:
    """Tool calls and results as text in every conversational part; the schemas in the first system turn."""
    rewritten = {key: hermes_turns(value) if key in CONVERSATION_KEYS and isinstance(value, list) else value
                 for key, value in row.items() if key != "tools"}
    if row.get("tools"):
        head = "messages" if "messages" in rewritten else "prompt"
        if isinstance(rewritten.get(head), list):
            rewritten[head] = with_tool_schemas(rewritten[head], row["tools"])
    return rewritten


def hermes_turns(messages: Messages) -> Messages:
    """Assistant tool calls become `<tool_call>` blocks; each run of tool results becomes one user turn."""
    turns: Messages = []
    for message in messages:
        if message["role"] == "tool":
            block = f"<tool_response>\n{message['content']}\n</tool_response>"
            if turns and turns[-1].get("tunesmith_tool_results"):
                turns[-1]["content"] += "\n" + block
            else:
                turns.append({"role": "user", "content": block, "tunesmith_tool_results": True})
        elif message["role"] == "assistant" and message.get("tool_calls"):
            turns.append({"role": "assistant", "content": answer_text(message)})
        else:
            turns.append(dict(message))
    return [{key: value for key, value in turn.items() if key != "tunesmith_tool_results"} for turn in turns]


def with_tool_schemas(messages: Messages, tools: list[dict[str, Any]]) -> Messages:
    intro = HERMES_TOOLS_INTRO.format(schemas="\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools))
    if messages and messages[0]["role"] == "system":
        return [{**messages[0], "content": f"{messages[0]['content']}\n\n{intro}"}, *messages[1:]]
    return [{"role": "system", "content": intro}, *messages]


def merge_system(messages: Messages) -> Messages:
    """The system turn's text in front of the first user turn (separated by a blank line), no system turn."""
    if not messages or messages[0]["role"] != "system":
        return messages
    system, rest = messages[0]["content"], list(messages[1:])
    for index, message in enumerate(rest):
        if message["role"] == "user":
            rest[index] = {**message, "content": f"{system}\n\n{message['content']}" if system else message["content"]}
            return rest
    return rest
