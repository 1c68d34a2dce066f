"""Task metrics that score a generated answer against the reference answer automatically."""

from __future__ import annotations

import json
from typing import Any


def parse_json_object(text: str) -> dict[str, Any] | None:
    """The answer as a JSON object: the whole text, else the first balanced {...} inside it."""
    text = text.strip()
    try:
        value = json.loads(text)
        return value if isinstance(value, dict) else None
    except json.JSONDecodeError:
        pass
    start = text.find("{")
    while start != -1:
        try:
            value, _ = json.JSONDecoder().raw_decode(text[start:])
            if isinstance(value, dict):
                return value
        except json.JSONDecodeError:
            pass
        start = text.find("{", start + 1)
    return None


def json_fields_score(prediction: str, reference: str) -> dict[str, Any]:
    """Exact match of the whole object, per-field matches, and whether the output parsed at all."""
    expected = json.loads(reference)
    got = parse_json_object(prediction)
    fields = {key: bool(got is not None and key in got and got[key] == value)
              for key, value in expected.items()}
    return {
        "exact_match": float(got == expected),
        "json_valid": float(got is not None),
        "field_accuracy": sum(fields.values()) / max(len(fields), 1),
        "fields": fields,
    }


def exact_match_score(prediction: str, reference: str) -> dict[str, Any]:
    return {"exact_match": float(prediction.strip() == reference.strip())}


SCORERS = {"json_fields": json_fields_score, "exact_match": exact_match_score}


def aggregate(scores: list[dict[str, Any]]) -> dict[str, float]:
    """Mean of every numeric score, plus per-field accuracy for JSON tasks."""
    if not scores:
        return {}
    keys = [k for k, v in scores[0].items() if isinstance(v, float)]
    summary = {k: round(sum(s[k] for s in scores) / len(scores), 4) for k in keys}
    if "fields" in scores[0]:
        for field in scores[0]["fields"]:
            hits = [s["fields"].get(field, False) for s in scores]
            summary[f"field/{field}"] = round(sum(hits) / len(hits), 4)
    return summary
