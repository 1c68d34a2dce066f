"""Find and redact personal data and secrets in training text, so a fine-tuned model cannot repeat them.

The regex engine is the default and the one the tests pin: it needs no download and scans ~300-character
chat turns at tens of thousands per second. Wherever a checksum or an issuing rule exists the match must
pass it, so look-alikes (dates, versions, order ids, ISBNs, UUIDs, commit hashes, prices) stay in the text:

- EMAIL: `local@domain.tld`, in letters of any script (RFC 6531); an scp-style git remote (`git@host:org/repo`) is
  not an address.
- PHONE: a North American number (area and exchange start 2-9, a separator before the last four digits,
  optional `+1`/`1-`) or an international number written with `+` and 8-15 digits in all.
Digits of every script (Arabic-Indic, Devanagari, full-width) count as digits (`ascii_digits`).
- IP_ADDRESS: IPv4 with every octet 0-255, not inside a longer dotted run and not right after a word such as
  "version", "build" or "section" ("version 1.2.3.4" is a version); IPv6 that `ipaddress` parses and that has
  three groups or a group of three hex digits ("fe80::1" yes, the slice `1::2` no).
- CREDIT_CARD: 13-19 digits, plain or grouped 4-4-4-1..4 / 4-6-5 / 4-6-4, with a known brand prefix and a valid
  Luhn check digit.
- IBAN: country code, check digits and the country's exact length, with the mod-97 checksum.
- US_SSN: `AAA-GG-SSSS` outside the never-issued ranges (area 000, 666, 9xx; group 00; serial 0000); spaced or
  bare nine digits only right after "SSN" or "social security".
- SECRET: known key prefixes (OpenAI, GitHub, AWS, Slack, Google, Hugging Face, GitLab, Stripe), JWTs,
  private-key blocks, and a value given to a key named like a secret (`api_key=...`, `password: ...`,
  `Bearer ...`); otherwise a token of 20+ characters that looks random: upper and lower case and digits, Shannon
  entropy ≥ 3.5 bits, frequent character-class changes and few word-like runs (so not a CamelCase identifier or
  a path), or 32+ hex digits that are not a UUID and do not follow a word such as "commit", "sha256" or "checksum".

Presidio's analyzer is used instead (for every kind but SECRET) when it is installed with a local spaCy model.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import logging
import math
import re
import sys
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

from tunesmith.errors import DataError

PII_KINDS = ("EMAIL", "PHONE", "IP_ADDRESS", "CREDIT_CARD", "IBAN", "US_SSN", "SECRET")
Engine = Literal["auto", "regex", "presidio"]
ENGINES = ("auto", "regex", "presidio")
Span = tuple[int, int]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finding:
    kind: str
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class Detector:
    """One regex for one kind. `locate` turns a match into the span to report, or None for a look-alike.

    `may_match` is a cheap pre-check on the whole text that skips the regex where it cannot match.
    """

    kind: str
    pattern: re.Pattern[str]
    may_match: Callable[[TextFacts], bool]
    locate: Callable[[re.Match[str]], Span | None] = lambda match: match.span()


# --- checks that tell real values from look-alikes -------------------------------------------------------------

def luhn_valid(digits: str) -> bool:
    """The card-number check digit: one mistyped digit always fails it."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char) * (2 if position % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29, "CH": 21,
    "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18,
    "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23,
    "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27,
    "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29,
    "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TN": 24, "TR": 26,
    "UA": 29, "VG": 24, "XK": 20,
}


def iban_valid(compact: str) -> bool:
    """ISO 13616: the country's length, and the number read with letters as 10..35 is 1 modulo 97."""
    if IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def ssn_valid(area: str, group: str, serial: str) -> bool:
    """The SSA never issues area 000, 666 or 9xx, group 00 or serial 0000."""
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def word_fraction(text: str) -> float:
    """The share of characters in word-like runs ("Users", "HTTP"): ~0.2 for random keys, ~0.7 for identifiers."""
    return sum(len(word) for word in WORD_RUN.findall(text)) / max(len(text), 1)


def shannon_entropy(text: str) -> float:
    """Bits per character of the string's own character distribution."""
    size = len(text)
    return -sum(count / size * math.log2(count / size) for count in Counter(text).values())


def class_change_rate(text: str) -> float:
    """How often neighbouring characters differ in class (upper, lower, digit, other): ~0.6 for random keys,
    ~0.4 for CamelCase words and paths."""
    classes = ["u" if c.isupper() else "l" if c.islower() else "d" if c.isdigit() else "o" for c in text]
    changes = sum(a != b for a, b in itertools.pairwise(classes))
    return changes / max(len(text) - 1, 1)


# --- how each kind is found -----------------------------------------------------------------------------------

# Patterns read digits as ASCII (`\d` is 0-9), like the digit groups that gate them (TextFacts): the scanner reads a
# copy of the text whose digits of every script, full-width `＋－（）．` and wide spaces are folded to ASCII one
# character for one (`ascii_digits`), so spans hold for the text itself. Addresses take letters of any script
# (RFC 6531's internationalized mail: `jürgen@müller.de`, `иван@почта.рф`).
# Chinese, Japanese and Korean run words together without spaces, so an address's edges there are where the script
# changes: a Latin local part starts after CJK text, a TLD ends where CJK text resumes (`联系zhang@example.com获取`).
CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
SPACED_WORD = rf"[^\W{CJK}]"  # a word character of a script that puts spaces between words
SPACED_ALNUM = rf"[^\W_{CJK}]"
EMAIL = re.compile(
    rf"(?:(?<![.%+-])(?<!{SPACED_WORD})(?:{SPACED_WORD}|[.%+-])+|(?<![{CJK}])[{CJK}]+)@"
    rf"(?:(?:{SPACED_ALNUM}(?:(?:{SPACED_WORD}|-){{0,61}}{SPACED_ALNUM})?|[{CJK}]+)\.)+"
    rf"[^\W\d_{CJK}]{{2,24}}(?!{SPACED_WORD}|-|\.{SPACED_ALNUM})")
NANP_PHONE = re.compile(r"(?<![\w+./-])(?:\+?1[ .-]?)?(?:\([2-9]\d\d\)[ .-]?|[2-9]\d\d[ .-]?)[2-9]\d\d[ .-]\d{4}"
                        r"(?![\w-]|\.\d)", re.A)
INTL_PHONE = re.compile(r"\+(?<![\w+]\+)[2-9]\d{0,2}(?:[ .-]?(?:\(\d{1,4}\)|\d++)){1,6}(?![\w-]|\.\d)", re.A)
IPV4 = re.compile(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
                  r"(?!\w|\.\d)", re.A)
IPV6 = re.compile(r"(?<![\w:.])(?=[0-9A-Fa-f]*:[0-9A-Fa-f]*:)[0-9A-Fa-f:]+(?:(?<=:)\d{1,3}(?:\.\d{1,3}){3})?"
                  r"(?![\w:]|\.\d)", re.A)
CARD = re.compile(r"\d(?<![\w-]\d)(?:\d{3}([ -])\d{4}\1\d{4}\1\d{1,4}|\d{3}([ -])\d{6}\2\d{4,5}|\d{12,18})"
                  r"(?!\w|[-.,]\d)", re.A)
CARD_BRANDS = re.compile(r"4(?:\d{12}|\d{15}|\d{18})|5[1-5]\d{14}|2(?:22[1-9]|2[3-9]\d|[3-6]\d\d|7[01]\d|720)\d{12}"
                         r"|3[47]\d{13}|3(?:0[0-5]|[689]\d)\d{11,16}|35\d{14,17}|6(?:011|4[4-9]\d|5\d\d|2\d\d)\d{12,15}",
                         re.A)
IBAN = re.compile(r"[A-Z](?<![A-Za-z0-9][A-Z])[A-Z]\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?", re.A)
SSN = re.compile(r"(\d(?<![\w-]\d)\d\d)-(\d{2})-(\d{4})(?![\w-])", re.A)
SSN_IN_CONTEXT = re.compile(r"(?i)\b(?:ssn|social security(?: number| no\.?)?)\s*(?:#|number|no\.?)?\s*[:=]?\s*"
                            r"(\d{3})[ ]?(\d{2})[ ]?(\d{4})(?!\w)", re.A)
SECRET_PREFIXES = ("sk-", "sk_", "rk_", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "AKIA", "ASIA", "xox",
                   "AIza", "hf_", "glpat-", "eyJ")
SECRET_PREFIXED = re.compile(
    r"(?<![\w-])(?:sk-(?:proj-|ant-(?:api\d\d-)?)?[A-Za-z0-9_-]{20,}|gh[pousr]_[A-Za-z0-9]{36,}"
    r"|github_pat_[A-Za-z0-9_]{22,}|(?:AKIA|ASIA)[A-Z0-9]{16}|xox[abeprs]-[A-Za-z0-9-]{10,}|AIza[A-Za-z0-9_-]{35}"
    r"|hf_[A-Za-z0-9]{30,}|glpat-[A-Za-z0-9_-]{20,}|[rs]k_(?:live|test)_[A-Za-z0-9]{16,}"
    r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})(?![\w-])", re.A)
SECRET_KEY_WORDS = ("secret", "token", "key", "password", "passwd", "pwd")
ASSIGNED_VALUE = re.compile(r"[:=][ \t]*[\"']?([A-Za-z0-9+/_.=-]{11,}[A-Za-z0-9+/_=-])", re.A)
SECRET_KEY_BEFORE = re.compile(r"(?i)(?:secret|token|api[_-]?key|apikey|password|passwd|pwd|access[_-]?key"
                               r"|private[_-]?key)[\w-]*[\"']?\s*$", re.A)
# A password written out: any value of 6+ characters after password/passwd/pwd/passcode and `:` or `=`, where the
# value is no plain lower-case word ("password: required" stays).
PASSWORD_VALUE = re.compile(r"(?i)\b(?:password|passwd|pwd|passcode)\s*[:=]\s*[\"']?([^\s\"']{6,})", re.A)
BEARER_VALUE = re.compile(r"[Bb]earer\s+([A-Za-z0-9+/_.=-]{11,}[A-Za-z0-9+/_=-])", re.A)
PRIVATE_KEY = re.compile(r"-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY-----[\s\S]*?(?:-----END \1PRIVATE KEY-----|\Z)")
RANDOM_TOKEN = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{20,}={0,2}(?![A-Za-z0-9+/=_-])", re.A)
UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
HEX = re.compile(r"[0-9a-fA-F]+")
VERSION_BEFORE = re.compile(r"(?i)(?:\b(?:v|ver|version|release|build|firmware|kernel|python|node|chrome|section|sec"
                            r"|chapter|clause|paragraph|step|figure|table|item|rule"
                            # the word "version" in other languages: es/pt/it/fr, ru/uk, ja, zh, ko, ar
                            r"|versión|versão|versione|версия|версії|версія)|バージョン|版本|버전|إصدار|الإصدار)"
                            r"\.?\s*:?\s*(?:(?:is|was|number|no\.?|of)\s+)?$")
HASH_BEFORE = re.compile(r"(?i)\b(?:commit|commits|sha|sha1|sha256|sha512|md5|hash|digest|checksum|revision|rev|git"
                         r"|merge|revert|cherry-pick|blob|tree|etag|object)\b\W{0,3}(?:\w+\W{1,3}){0,3}$")
WORD_RUN = re.compile(r"[A-Z]?[a-z]{3,}|[A-Z]{4,}")
# Cheap patterns (they start with a character class, which `re` scans fast) that every match of a slower one contains.
NANP_HINT = re.compile(r"\d[ .)-]{0,2}\d{3}[ .-]\d{4}", re.A)
IPV4_HINT = re.compile(r"\d\.\d{1,3}\.\d{1,3}\.\d", re.A)
DIGIT_GROUP = re.compile(r"\d(?:[ .()/+-]{0,2}\d)*", re.A)  # "415-555-0132", "(415) 555", "2024-05-01"


def text_before(match: re.Match[str], width: int = 24) -> str:
    return match.string[max(0, match.start() - width):match.start()]


def email_span(match: re.Match[str]) -> Span | None:
    after = match.string[match.end():match.end() + 2]
    return None if after[:1] == ":" and after[1:].strip() else match.span()


def international_phone_span(match: re.Match[str]) -> Span | None:
    digits = sum(char.isdigit() for char in match.group())
    return match.span() if 8 <= digits <= 15 else None


def ipv4_span(match: re.Match[str]) -> Span | None:
    return None if VERSION_BEFORE.search(text_before(match)) else match.span()


def ipv6_span(match: re.Match[str]) -> Span | None:
    try:
        ipaddress.IPv6Address(match.group())
    except ValueError:
        return None
    groups = [group for group in match.group().split(":") if group]
    return match.span() if len(groups) >= 3 or any(len(group) >= 3 for group in groups) else None


def card_span(match: re.Match[str]) -> Span | None:
    digits = re.sub(r"[ -]", "", match.group())
    return match.span() if CARD_BRANDS.fullmatch(digits) and luhn_valid(digits) else None


def iban_span(match: re.Match[str]) -> Span | None:
    """The IBAN is the prefix of the match with the country's length, ending on a group boundary: a grouped
    IBAN may be followed by an unrelated capitalised word ("... 3000 EUR") that the regex also took."""
    length = IBAN_LENGTHS.get(match.group()[:2], 0)
    compact, stop = "", match.start()
    for char in match.group():
        if len(compact) == length:
            break
        compact += char if char != " " else ""
        stop += 1
    following = match.string[stop:stop + 1]
    if len(compact) != length or following.isalnum() or not iban_valid(compact):
        return None
    return match.start(), stop


def ssn_span(match: re.Match[str]) -> Span | None:
    return (match.start(1), match.end(3)) if ssn_valid(*match.groups()) else None


def secret_value_span(match: re.Match[str]) -> Span | None:
    """A value given to a key named like a secret (`api_key=...`, `Bearer ...`) needs only a letter and a digit."""
    value = match.group(1)
    has_both = any(c.isdigit() for c in value) and any(c.isalpha() for c in value)
    return match.span(1) if has_both else None


def assigned_secret_span(match: re.Match[str]) -> Span | None:
    """The value after `:` or `=` when the key before it is named like a secret (`api_key`, `DB_PASSWORD`)."""
    if not SECRET_KEY_BEFORE.search(match.string, max(0, match.start() - 40), match.start()):
        return None
    return secret_value_span(match)


def password_span(match: re.Match[str]) -> Span | None:
    """The value given to a password key, unless it reads as a word (lower case letters alone)."""
    value = match.group(1).rstrip(".,;)")
    if value.isalpha() and value.islower():
        return None
    return match.start(1), match.start(1) + len(value)


def random_token_span(match: re.Match[str]) -> Span | None:
    """A token that looks random; a UUID, a hash after "commit"/"sha256", a dotted name's tail or a CamelCase
    identifier or path does not."""
    token = match.group().rstrip("=")
    if UUID.fullmatch(token) or match.string[match.start() - 1:match.start()] == ".":
        return None
    if HEX.fullmatch(token):
        hex_like = len(token) >= 32 and not token.isdigit() and not token.isalpha() and shannon_entropy(token) >= 3.0
        return match.span() if hex_like and not HASH_BEFORE.search(text_before(match, 40)) else None
    mixes_classes = any(c.isupper() for c in token) and any(c.islower() for c in token) and any(
        c.isdigit() for c in token)
    random_like = shannon_entropy(token) >= 3.5 and class_change_rate(token) >= 0.3 and word_fraction(token) < 0.6
    return match.span() if mixes_classes and random_like else None


class TextFacts:
    """Cheap facts about a text that rule detectors out before their regex runs: the longest group of digits
    (with short separators between them), the longest whitespace-separated word, the lower-cased text."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.digit_group = max(map(len, DIGIT_GROUP.findall(text)), default=0)

    def has_any(self, parts: Iterable[str]) -> bool:
        return any(part in self.text for part in parts)

    @cached_property
    def lower(self) -> str:
        return self.text.lower()

    @cached_property
    def longest_word(self) -> int:
        return max(map(len, self.text.split()), default=0)


# Each pre-check is a necessary condition for the pattern to match in the formats above (the shortest digit group
# each kind can be written with, a character or word it must contain), so it skips work, not findings. One
# exception, a heuristic: an IBAN is only looked for where some group of digits is 10 characters or longer.
DETECTORS = (
    Detector("EMAIL", EMAIL, lambda t: "@" in t.text, email_span),
    Detector("PHONE", NANP_PHONE, lambda t: t.digit_group >= 11 and NANP_HINT.search(t.text) is not None),
    Detector("PHONE", INTL_PHONE, lambda t: t.digit_group >= 8 and "+" in t.text, international_phone_span),
    Detector("IP_ADDRESS", IPV4, lambda t: t.digit_group >= 7 and IPV4_HINT.search(t.text) is not None, ipv4_span),
    Detector("IP_ADDRESS", IPV6, lambda t: "::" in t.text or t.text.count(":") >= 6, ipv6_span),
    Detector("CREDIT_CARD", CARD, lambda t: t.digit_group >= 13, card_span),
    Detector("IBAN", IBAN, lambda t: t.digit_group >= 10, iban_span),
    Detector("US_SSN", SSN, lambda t: t.digit_group >= 11 and "-" in t.text, ssn_span),
    Detector("US_SSN", SSN_IN_CONTEXT, lambda t: t.digit_group >= 9 and ("ssn" in t.lower or "social" in t.lower),
             ssn_span),
    Detector("SECRET", SECRET_PREFIXED, lambda t: t.longest_word >= 15 and t.has_any(SECRET_PREFIXES)),
    Detector("SECRET", ASSIGNED_VALUE, lambda t: t.digit_group > 0 and ("=" in t.text or ":" in t.text)
             and t.longest_word >= 12 and any(word in t.lower for word in SECRET_KEY_WORDS), assigned_secret_span),
    Detector("SECRET", PASSWORD_VALUE, lambda t: "pass" in t.lower or "pwd" in t.lower, password_span),
    Detector("SECRET", BEARER_VALUE, lambda t: t.digit_group > 0 and "earer" in t.text, secret_value_span),
    Detector("SECRET", PRIVATE_KEY, lambda t: "-----BEGIN" in t.text),
    Detector("SECRET", RANDOM_TOKEN, lambda t: t.digit_group > 0 and t.longest_word >= 20, random_token_span),
)


# --- the scanner -----------------------------------------------------------------------------------------------

PRESIDIO_KINDS = {"EMAIL_ADDRESS": "EMAIL", "PHONE_NUMBER": "PHONE", "IP_ADDRESS": "IP_ADDRESS",
                  "CREDIT_CARD": "CREDIT_CARD", "IBAN_CODE": "IBAN", "US_SSN": "US_SSN"}
MAX_REDACTION_PASSES = 8  # each pass replaces at least one original character; real text needs one or two
SPACY_MODELS = ("en_core_web_lg", "en_core_web_md", "en_core_web_sm", "en_core_web_trf")


class PiiScanner:
    """Finds the `kinds` of PII in a string and redacts them to `<KIND>` tokens."""

    def __init__(self, kinds: Iterable[str] = PII_KINDS, engine: Engine = "auto") -> None:
        self.kinds = tuple(kinds)
        unknown = sorted(set(self.kinds) - set(PII_KINDS))
        if unknown:
            raise DataError(f"unknown PII kind(s) {unknown}.", f"Choose from {', '.join(PII_KINDS)}.")
        if engine not in ENGINES:
            raise DataError(f"unknown PII engine {engine!r}.", f"Choose from {', '.join(ENGINES)}.")
        self.detectors = [detector for detector in DETECTORS if detector.kind in self.kinds]
        self.presidio = choose_presidio(engine)
        if self.presidio is not None:
            self.detectors = [detector for detector in self.detectors if detector.kind == "SECRET"]
        self.engine = "regex" if self.presidio is None else "presidio"

    def find(self, text: str) -> list[Finding]:
        """Non-overlapping findings sorted by start; where two overlap the longer wins."""
        found = regex_findings(text, self.detectors)
        if self.presidio is not None:
            found += presidio_findings(self.presidio, text, self.kinds)
        return without_overlaps(found)

    def redact(self, text: str) -> tuple[str, Counter[str]]:
        """The text with each finding replaced by `<KIND>`, and how many of each kind were replaced.

        Scans again until nothing is found: a token can free a neighbour that a boundary rule held back
        ("0@0.AA+@0.AA" -> "<EMAIL>+@0.AA"), and the redacted text must itself scan clean.
        """
        counts: Counter[str] = Counter()
        for _ in range(MAX_REDACTION_PASSES):
            findings = self.find(text)
            if not findings:
                break
            text = replaced_by_tokens(text, findings)
            counts.update(finding.kind for finding in findings)
        return text, counts


def replaced_by_tokens(text: str, findings: list[Finding]) -> str:
    pieces, last = [], 0
    for finding in findings:
        pieces += [text[last:finding.start], f"<{finding.kind}>"]
        last = finding.end
    return "".join([*pieces, text[last:]])


def regex_findings(text: str, detectors: Iterable[Detector]) -> list[Finding]:
    """Every detector's findings, skipping a detector when the text lacks what all its matches contain. The
    detectors read `ascii_digits(text)` (the same length), so `+٩٦٦ ٥٠ ١٢٣ ٤٥٦٧` is the phone number it is."""
    read = text if text.isascii() else text.translate(ascii_digits())
    facts = TextFacts(read)
    found = []
    for detector in detectors:
        if not detector.may_match(facts):
            continue
        for match in detector.pattern.finditer(read):
            span = detector.locate(match)
            if span is not None:
                found.append(Finding(detector.kind, span[0], span[1], text[span[0]:span[1]]))
    return found


FULL_WIDTH_SIGNS = {"＋": "+", "－": "-", "（": "(", "）": ")", "．": ".", "\u3000": " ", "\u00a0": " ", "\u202f": " "}


@functools.cache
def ascii_digits() -> dict[int, str]:
    """A str.translate table, one character for one: every decimal digit of Unicode (category Nd: Arabic-Indic,
    Devanagari, full-width...) to its ASCII digit, and the full-width signs and wide spaces numbers are written with
    to their ASCII forms. Built once (about 0.3 s over the code space)."""
    table = {ord(sign): ascii_sign for sign, ascii_sign in FULL_WIDTH_SIGNS.items()}
    for code in range(0x80, sys.maxunicode + 1):
        char = chr(code)
        if unicodedata.category(char) == "Nd":
            table[code] = str(unicodedata.decimal(char))
    return table


def without_overlaps(findings: list[Finding]) -> list[Finding]:
    """Longest first (ties: the order of PII_KINDS), then keep each finding that overlaps none already kept."""
    kept: list[Finding] = []
    for finding in sorted(findings, key=lambda f: (f.start - f.end, PII_KINDS.index(f.kind), f.start)):
        if all(finding.end <= other.start or finding.start >= other.end for other in kept):
            kept.append(finding)
    return sorted(kept, key=lambda f: f.start)


def choose_presidio(engine: Engine) -> Any | None:
    """Presidio's analyzer for "presidio" (or it raises), and for "auto" when it works offline; else None."""
    if engine == "regex":
        return None
    try:
        return presidio_analyzer()
    except ImportError as error:
        if engine == "presidio":
            raise DataError(f"the presidio engine needs presidio-analyzer and spaCy ({error}).",
                            "Install presidio-analyzer, spaCy and an English spaCy model, or use the regex engine.",
                            ) from error
    except Exception as error:
        if engine == "presidio":
            raise DataError(f"presidio's analyzer could not start offline: {error}") from error
        log.warning("presidio's analyzer could not start offline (%s); using the regex PII engine.", error)
    return None


def presidio_analyzer() -> Any:
    """An analyzer on a spaCy model that is already installed: presidio would otherwise try to download one."""
    import spacy
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    model = next((name for name in SPACY_MODELS if spacy.util.is_package(name)), None)
    if model is None:
        raise RuntimeError(f"none of the spaCy models {', '.join(SPACY_MODELS)} is installed")
    config = {"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": model}]}
    nlp_engine = NlpEngineProvider(nlp_configuration=config).create_engine()
    return AnalyzerEngine(nlp_engine=nlp_engine, supported_languages=["en"])


def presidio_findings(analyzer: Any, text: str, kinds: tuple[str, ...]) -> list[Finding]:
    entities = [name for name, kind in PRESIDIO_KINDS.items() if kind in kinds]
    results = analyzer.analyze(text=text, language="en", entities=entities) if entities else []
    return [Finding(PRESIDIO_KINDS[r.entity_type], r.start, r.end, text[r.start:r.end]) for r in results]


# --- scoring against labelled text (shared by the tests and benchmarks/pii_accuracy.py) ------------------------

@dataclass
class KindScore:
    true_positives: int = 0
    false_positives: int = 0
    false_negatives: int = 0

    @property
    def precision(self) -> float:
        found = self.true_positives + self.false_positives
        return self.true_positives / found if found else 1.0

    @property
    def recall(self) -> float:
        expected = self.true_positives + self.false_negatives
        return self.true_positives / expected if expected else 1.0

    @property
    def f1(self) -> float:
        total = self.precision + self.recall
        return 2 * self.precision * self.recall / total if total else 0.0


def score_findings(scanner: PiiScanner, labelled: Iterable[Mapping[str, Any]]) -> dict[str, KindScore]:
    """Per-kind and "ALL" scores over rows `{"text", "pii": [{"kind", "value"}]}`; a finding is a true positive
    when its kind and exact text match an expected one (each expected value is matched at most once)."""
    scores = {kind: KindScore() for kind in (*PII_KINDS, "ALL")}
    for row in labelled:
        expected = Counter((item["kind"], item["value"]) for item in row["pii"])
        found = Counter((finding.kind, finding.text) for finding in scanner.find(row["text"]))
        for (kind, _), count in (expected & found).items():
            scores[kind].true_positives += count
        for (kind, _), count in (found - expected).items():
            scores[kind].false_positives += count
        for (kind, _), count in (expected - found).items():
            scores[kind].false_negatives += count
    for score in list(scores.values())[:-1]:
        scores["ALL"].true_positives += score.true_positives
        scores["ALL"].false_positives += score.false_positives
        scores["ALL"].false_negatives += score.false_negatives
    return scores
