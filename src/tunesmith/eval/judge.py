"""LLM-as-judge: an OpenAI-compatible chat endpoint grades base and tuned answers (`eval.judge`).

`score` mode asks for a 1-10 score of each answer; `pairwise` mode shows both answers and asks which is
better, twice, with the order swapped, so that a judge's preference for the first (or second) position
cancels out: an example counts as a win only when the two orders together favour one side. The client
is the standard library's urllib (no SDK); the key is read from the environment variable the recipe
names and sent as a Bearer token.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import TunesmithError
from tunesmith.eval.stats import compare_metric

DEFAULT_RUBRIC = ("You judge answers written by an AI assistant. A good answer does what the user asked: it is "
                  "correct, complete, and in the form the user requested. When a reference answer is given, an "
                  "answer that agrees with it in substance is good, whatever its wording.")
SCORE_INSTRUCTION = "Rate the answer from 1 (useless) to 10 (perfect). End your reply with a line 'Score: N'."
PAIRWISE_INSTRUCTION = ("Decide which answer is better. End your reply with a line 'Verdict: A', 'Verdict: B' or "
                        "'Verdict: tie'.")
SCORE = re.compile(r"score\s*(?:[:=]|is)?\s*\**\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
VERDICT = re.compile(r"(?:verdict\s*[:=]?\s*\**\s*|\[\[)(A|B|tie)\b", re.IGNORECASE)
WORKERS = 4  # requests in flight at once: a local server keeps up, a hosted API is not flooded


@dataclass(frozen=True)
class JudgeClient:
    """POSTs chat completions to one endpoint; every failure becomes a TunesmithError saying what to fix."""

    url: str
    model: str
    api_key_env: str | None
    timeout: float

    @property
    def endpoint(self) -> str:
        base = self.url.rstrip("/")
        return base if base.endswith("/chat/completions") else base + "/chat/completions"

    def complete(self, messages: list[dict[str, str]]) -> str:
        """The reply's text (greedy: temperature 0)."""
        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0, "max_tokens": 256})
        request = urllib.request.Request(self.endpoint, data=body.encode("utf-8"), headers=self.headers())
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read().decode("utf-8", errors="replace")
        except urllib.error.HTTPError as exc:
            raise self.http_error(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TunesmithError(f"The judge endpoint {self.endpoint} cannot be reached: {reason}.",
                                 "Start the server, or fix eval.judge.url (e.g. http://localhost:8000/v1).") from None
        return reply_text(raw, self.endpoint)

    def headers(self) -> dict[str, str]:
        key_env = key_variable(self.url, self.api_key_env)
        key = os.environ.get(key_env) if key_env else None
        return {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}

    def http_error(self, exc: urllib.error.HTTPError) -> TunesmithError:
        detail = exc.read().decode("utf-8", errors="replace")[:300] if exc.fp else ""
        if exc.code in (401, 403):
            key_env = key_variable(self.url, self.api_key_env)
            has_key = bool(key_env and os.environ.get(key_env))
            hint = (f"Check the key in ${key_env}." if has_key else f"Set ${key_env} to the server's key." if key_env
                    else "Set eval.judge.api_key_env to the name of the variable holding this server's key (a key is "
                         "sent only where it names one; OPENAI_API_KEY goes to api.openai.com by default).")
            return TunesmithError(f"The judge endpoint {self.endpoint} refused the API key (HTTP {exc.code}).", hint)
        if exc.code == 404:
            return TunesmithError(f"The judge endpoint {self.endpoint} was not found (HTTP 404): {detail}",
                                  "eval.judge.url is the API's base URL, e.g. http://localhost:8000/v1; also check "
                                  "eval.judge.model.")
        return TunesmithError(f"The judge endpoint {self.endpoint} answered HTTP {exc.code}: {detail}")


def reply_text(raw: str, endpoint: str) -> str:
    """choices[0].message.content of an OpenAI chat completion, or an error quoting what came back."""
    try:
        content = json.loads(raw)["choices"][0]["message"]["content"]
    except (json.JSONDecodeError, KeyError, IndexError, TypeError):
        content = None
    if not isinstance(content, str):
        raise TunesmithError(f"The judge endpoint {endpoint} did not return a chat completion: {raw[:200]!r}.",
                             "Point eval.judge.url at an OpenAI-compatible API (POST /v1/chat/completions).")
    return content


OPENAI_HOST = "api.openai.com"


def key_variable(url: str, api_key_env: str | None) -> str | None:
    """The environment variable whose key goes to the judge: eval.judge.api_key_env where set; else
    OPENAI_API_KEY for OpenAI's own API only, so a key is never sent to another server unasked."""
    from urllib.parse import urlsplit

    if api_key_env:
        return api_key_env
    return "OPENAI_API_KEY" if urlsplit(url).hostname == OPENAI_HOST else None


def check_judge(settings: Any, compare_base: bool) -> None:
    """Before any model loads: pairwise needs the base's answers, and the endpoint answers and serves the judge
    model (GET /models, where the server has it). Raises TunesmithError naming the fix."""
    if settings.mode == "pairwise" and not compare_base:
        raise TunesmithError("eval.judge.mode: pairwise compares base and tuned, but eval.compare_base is false.",
                             "Set eval.compare_base: true, or use eval.judge.mode: score.")
    client = JudgeClient(settings.url, settings.model, settings.api_key_env, settings.timeout)
    models_url = client.endpoint.removesuffix("/chat/completions") + "/models"
    request = urllib.request.Request(models_url, headers=client.headers())
    try:
        with urllib.request.urlopen(request, timeout=min(settings.timeout, 30)) as response:
            listing = json.loads(response.read().decode("utf-8", errors="replace"))
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise client.http_error(exc) from None
        return  # no /models route here (some servers lack it): the first judge request says what is wrong
    except (urllib.error.URLError, OSError) as exc:
        raise TunesmithError(f"The judge endpoint {client.endpoint} cannot be reached: {getattr(exc, 'reason', exc)}.",
                             "Start the server (e.g. `tunesmith serve` or `vllm serve`), or fix eval.judge.url; it is "
                             "checked before any model loads.") from None
    except ValueError:
        return
    served = [entry.get("id") for entry in listing.get("data", []) if isinstance(entry, dict)] \
        if isinstance(listing, dict) else []
    if served and settings.model not in served:
        raise TunesmithError(f"eval.judge.model {settings.model!r} is not served at {models_url} (it serves "
                             f"{', '.join(map(str, served[:10]))}).", "Set eval.judge.model to one of those names.")


def parse_score(reply: str) -> float:
    """The last 'Score: N' in the reply (or a reply that is only a number), which must lie in 1..10."""
    matches = SCORE.findall(reply)
    text = matches[-1] if matches else reply.strip().rstrip(".")
    try:
        score = float(text)
    except ValueError:
        score = None
    if score is None or not 1 <= score <= 10:
        raise TunesmithError(f"Could not read a 1-10 score from the judge's reply: {reply[:200]!r}.",
                             "Use a judge model that follows instructions, or make the rubric ask it to end with "
                             "'Score: N'.")
    return score


def parse_verdict(reply: str) -> str:
    """'A', 'B' or 'tie', from the last 'Verdict: X' or '[[X]]' (or a reply that is only the verdict)."""
    matches = VERDICT.findall(reply)
    text = matches[-1] if matches else reply.strip().strip("[]().'\"")
    if text.lower() == "tie":
        return "tie"
    if text.upper() in ("A", "B"):
        return text.upper()
    raise TunesmithError(f"Could not read a verdict (A, B or tie) from the judge's reply: {reply[:200]!r}.",
                         "Use a judge model that follows instructions, or make the rubric ask it to end with "
                         "'Verdict: A', 'Verdict: B' or 'Verdict: tie'.")


def score_messages(rubric: str, prompt: str, reference: str | None, answer: str) -> list[dict[str, str]]:
    parts = [f"Question:\n{prompt}", *([f"Reference answer:\n{reference}"] if reference is not None else []),
             f"Answer:\n{answer}"]
    return [{"role": "system", "content": f"{rubric}\n\n{SCORE_INSTRUCTION}"},
            {"role": "user", "content": "\n\n".join(parts)}]


def pairwise_messages(rubric: str, prompt: str, reference: str | None, first: str,
                      second: str) -> list[dict[str, str]]:
    parts = [f"Question:\n{prompt}", *([f"Reference answer:\n{reference}"] if reference is not None else []),
             f"Answer A:\n{first}", f"Answer B:\n{second}"]
    return [{"role": "system", "content": f"{rubric}\n\n{PAIRWISE_INSTRUCTION}"},
            {"role": "user", "content": "\n\n".join(parts)}]


def judge_outputs(settings: Any, rubric: str, prompts: list[str], references: list[str | None],
                  outputs: dict[str, list[str]]) -> dict[str, Any]:
    """Grade the answers of each variant (score) or of base against tuned (pairwise); the results block."""
    limit = settings.max_examples or len(prompts)
    prompts, references = prompts[:limit], references[:limit]
    client = JudgeClient(settings.url, settings.model, settings.api_key_env, settings.timeout)
    results: dict[str, Any] = {"mode": settings.mode, "model": settings.model, "url": client.endpoint,
                               "examples": len(prompts)}
    if settings.mode == "pairwise":
        return {**results, **pairwise_results(client, rubric, prompts, references, outputs)}
    return {**results, **score_results(client, rubric, prompts, references, outputs)}


def score_results(client: JudgeClient, rubric: str, prompts: list[str], references: list[str | None],
                  outputs: dict[str, list[str]]) -> dict[str, Any]:
    """Each variant's mean 1-10 score over the replies that give one, or with base and tuned, over the examples
    both replies give one for (`judge_scored`), so that the means and their delta describe the same examples; a
    reply without a score is counted (`unparsed`) and left out. Raises TunesmithError when no reply
    of a variant gives one (the judge does not follow the instruction)."""
    scores: dict[str, list[float | None]] = {}
    replies: dict[str, list[str]] = {}
    for name, answers in outputs.items():
        requests = [score_messages(rubric, p, r, a) for p, r, a in zip(prompts, references, answers, strict=False)]
        replies[name] = ask_all(client, requests)
        scores[name] = [read_or_none(parse_score, reply) for reply in replies[name]]
        if all(score is None for score in scores[name]):
            parse_score(replies[name][0])  # raises, quoting a reply
    results: dict[str, Any] = {name: {"judge_score": _mean([v for v in s if v is not None])}
                               for name, s in scores.items()}
    results["per_example"] = scores
    results["replies"] = {name: [reply[:REPLY_KEPT] for reply in texts] for name, texts in replies.items()}
    results["unparsed"] = {name: sum(v is None for v in s) for name, s in scores.items()}
    if "base" in scores and "tuned" in scores:  # the means over the examples both got a score for: the delta's own
        both = [(b, t) for b, t in zip(scores["base"], scores["tuned"], strict=True) if b is not None and t is not None]
        if both:  # no example scored on both sides: no comparison, and each side keeps its own mean
            results["comparison"] = {"judge_score": compare_metric([b for b, _ in both], [t for _, t in both])}
            for index, name in enumerate(("base", "tuned")):
                results[name] = {"judge_score": _mean([pair[index] for pair in both]), "judge_scored": len(both)}
    return results


REPLY_KEPT = 600  # characters of each judge reply kept in results.json, to see why it scored what it did


def read_or_none(parse: Any, reply: str) -> Any:
    """`parse(reply)`, or None where the reply does not give what the instruction asked for."""
    try:
        return parse(reply)
    except TunesmithError:
        return None


def pairwise_results(client: JudgeClient, rubric: str, prompts: list[str], references: list[str | None],
                     outputs: dict[str, list[str]]) -> dict[str, Any]:
    """Each example judged as (base, tuned) and (tuned, base); tuned's preference is the mean of the two."""
    if "base" not in outputs:
        raise TunesmithError("eval.judge.mode: pairwise compares base and tuned, but this eval has no base.",
                             "Set eval.compare_base: true, or use mode: score.")
    base, tuned = outputs["base"], outputs["tuned"]
    forward = [pairwise_messages(rubric, p, r, b, t) for p, r, b, t in zip(prompts, references, base, tuned,
                                                                            strict=False)]
    swapped = [pairwise_messages(rubric, p, r, t, b) for p, r, b, t in zip(prompts, references, base, tuned,
                                                                            strict=False)]
    first_replies, second_replies = ask_all(client, forward), ask_all(client, swapped)
    read = [(read_or_none(parse_verdict, f), read_or_none(parse_verdict, s))
            for f, s in zip(first_replies, second_replies, strict=True)]
    kept = [pair for pair in read if None not in pair]
    if not kept:
        parse_verdict(first_replies[0])  # raises, quoting a reply
    first, second = [f for f, _ in kept], [s for _, s in kept]
    tuned_points = {"A": 0.0, "B": 1.0, "tie": 0.5}  # first order: A is base, B is tuned
    preference = [(tuned_points[f] + 1.0 - tuned_points[s]) / 2 for f, s in zip(first, second, strict=True)]
    consistent = sum(tuned_points[f] == 1.0 - tuned_points[s] for f, s in zip(first, second, strict=True))
    picks_a = sum(v == "A" for v in first + second)
    return {"base": {"judge_preference": _mean([1 - p for p in preference])},
            "tuned": {"judge_preference": _mean(preference)},
            "position_consistency": round(consistent / len(preference), 4),
            "first_position_rate": round(picks_a / (2 * len(preference)), 4),
            "verdicts": [[f, s] for f, s in read],
            "unparsed": {"tuned": len(read) - len(kept)},
            "replies": {"base_first": [r[:REPLY_KEPT] for r in first_replies],
                        "tuned_first": [r[:REPLY_KEPT] for r in second_replies]},
            "comparison": {"judge_preference": compare_metric([1 - p for p in preference], preference)}}


def ask_all(client: JudgeClient, requests: list[list[dict[str, str]]]) -> list[str]:
    """Replies in request order, a few in flight at once."""
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        return list(pool.map(client.complete, requests))


def read_rubric(recipe: Any) -> str:
    """The rubric file's text (read before any model loads, so a wrong path fails fast), or the default."""
    rubric = recipe.eval.judge.rubric
    if rubric is None:
        return DEFAULT_RUBRIC
    path: Path = recipe.resolve_path(rubric)
    if not path.is_file():
        raise TunesmithError(f"eval.judge.rubric: no such file {path}.", "Give a path relative to the recipe file.")
    try:
        return path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError as exc:
        raise TunesmithError(f"eval.judge.rubric: {path} is not UTF-8 text (byte {exc.start}).",
                             "Save it as UTF-8.") from None


def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 4) if values else 0.0
