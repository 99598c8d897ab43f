"""Scoring a reply against a record's answer, with the scorer chosen from what the answers look like.

    name, why = choose_scorer(heldout_records)          # "exact", "choice" or "text", and the reason in words
    result = scoring.evaluate(model, tok, records, match=matcher(name))
    summary = summarize(result["rows"], name)           # the headline number: accuracy, or chrF for open text

- exact: short answers (a word or two, a number, a name). Both sides are normalised (Unicode NFKC, case,
  punctuation and spaces dropped) and must then be equal; the plates task keeps its own bilingual rule
  (labsupport.datasets.plates.answer_matches), which also accepts the answer in the other language.
- choice: multiple choice (the options stand in the question, the answer is one letter, FoodieQA's shape).
  The letter is parsed from the reply ("B", "(B)", "B.", "The answer is B", "答案是B") and compared.
- text: open answers (captions, explanations). chrF from sacrebleu (character n-grams, so Chinese and English
  alike, no tokenizer needed); a reply counts as right at chrF >= TEXT_PASS, and the summary is the mean chrF.
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from typing import Callable, Sequence

from labsupport.datasets.plates import answer_matches

SCORERS = ("exact", "choice", "text")
TEXT_PASS = 50.0        # chrF at which an open answer counts as right in the per-record table (0-100 scale)
SHORT_WORDS = 3         # an answer of at most this many words (or CJK characters x 3) is a short answer
_LETTER = re.compile(r"^\(?([A-Ja-j])\)?[.)]?$")   # A-J: ten options at most (a digit per letter)
_LETTER_AND_TEXT = re.compile(r"^\(?([A-J])\)?[.)、:：]\s*\S")  # "C. 新疆菜": FoodieQA's answers, the option repeated
_OPTION = re.compile(r"(?m)(?:^|\s)\(?([A-J])[.)：:、]\s*\S")
_OPTION_LINE = re.compile(r"(?m)^\s*\(?[A-J][.)：:、]\s*\S.*$")   # a whole option line, as option_sets compares them
_PRONOUN_I = re.compile(r"(?<![A-Za-z])I(?=\s+[a-z]|['’])")   # "I think it is B": the pronoun, not option I
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_PUNCT = re.compile(r"[\W_]+", re.UNICODE)


def reference(record: dict) -> str:
    """The answer a record expects: its meta answer (the plates task), else its first gpt turn."""
    meta = record.get("meta") or {}
    if "answer" in meta:
        return str(meta["answer"])
    turns = record.get("conversations") or []
    return next((str(t.get("value", "")) for t in turns if t.get("from") == "gpt"), "")


def question(record: dict) -> str:
    """The first human turn of RECORD (without the <image> placeholder)."""
    turns = record.get("conversations") or []
    return next((str(t.get("value", "")) for t in turns if t.get("from") == "human"), "").replace("<image>", "").strip()


def normalise(text: str) -> str:
    """TEXT compared as a short answer: NFKC, case-folded, punctuation and spaces removed."""
    return _PUNCT.sub("", unicodedata.normalize("NFKC", text).casefold())


def is_short(answer: str) -> bool:
    """Whether ANSWER is a short answer: a few words, or a few CJK characters."""
    cjk = len(_CJK.findall(answer))
    return len(answer.split()) <= SHORT_WORDS and cjk <= 3 * SHORT_WORDS and 0 < len(answer.strip()) <= 40


def answer_letter(answer: str) -> str | None:
    """The option letter an expected ANSWER names ("B", "(B)", "B." or "B. noodles"), else None."""
    text = unicodedata.normalize("NFKC", answer).strip()
    m = _LETTER.match(text) or _LETTER_AND_TEXT.match(text)
    return m.group(1).upper() if m else None


def is_choice(record: dict) -> bool:
    """Whether RECORD is multiple choice: its answer names an option letter that its question lists."""
    letter = answer_letter(reference(record))
    return letter is not None and letter in set(_OPTION.findall(question(record)))


def option_sets(records: Sequence[dict]) -> int:
    """How many different option lists (the lettered lines of the questions) RECORDS ask: 1 when every question lists the same."""
    return len({tuple(m.strip() for m in _OPTION_LINE.findall(question(r))) for r in records})


def choose_scorer(records: Sequence[dict], override: str = "", which: str = "held-out") -> tuple[str, str]:
    """(scorer, reason): OVERRIDE when given, else chosen from what RECORDS' answers look like (WHICH names them in the reason)."""
    if override:
        if override not in SCORERS:
            raise ValueError(f"SCORER = {override!r} is not one of {', '.join(SCORERS)} (or '' to choose from the data)")
        return override, f"SCORER = {override!r} was set in the parameters cell"
    if not records:
        raise ValueError(f"no {which} records to choose a scorer from")
    if all("kind" in (r.get("meta") or {}) for r in records):
        return "exact", "the plates task: one word or number per answer, in either language (plates.answer_matches)"
    n = len(records)
    choice = sum(is_choice(r) for r in records)
    if choice >= 0.9 * n:
        return "choice", (f"{choice} of {n} {which} answers name an option letter their question lists: "
                          "multiple choice, accuracy of the letter parsed from the reply")
    short = sum(is_short(reference(r)) for r in records)
    if short >= 0.9 * n:
        return "exact", (f"{short} of {n} {which} answers have at most {SHORT_WORDS} words: short answers, "
                         "normalised exact match")
    return "text", (f"only {short} of {n} {which} answers are short and {choice} name an option: open answers, "
                    "chrF (sacrebleu) against the reference")


def parse_choice(reply: str, options: str = "ABCDEFGHIJ") -> str | None:
    """The option letter a REPLY picks ("B", "(B)", "B. …", "The answer is B", "答案是B"), or None."""
    text = unicodedata.normalize("NFKC", reply).strip()
    m = _LETTER.match(text.split("\n")[0].strip()) or re.match(rf"^\(?([{options}])\)?[.)、:：\s]", text + " ")
    if m and m.group(1).upper() in options and not _PRONOUN_I.match(text):
        return m.group(1).upper()
    found = re.findall(rf"(?<![A-Za-z])([{options}])(?![A-Za-z])", _PRONOUN_I.sub(" ", text))
    return found[0] if len(set(found)) == 1 else None


def chrf(reply: str, answer: str) -> float:
    """sacrebleu's sentence chrF of REPLY against ANSWER (0-100)."""
    from sacrebleu.metrics import CHRF  # only open answers need it; the lent GPU machines do not carry it

    return float(CHRF().sentence_score(reply, [answer]).score)


def matcher(name: str) -> Callable[[str, dict], bool]:
    """A match(reply, meta) for labsupport.evaluate.scoring: whether the reply answers the record (meta has `answer`)."""
    if name == "exact":
        def exact(reply: str, meta: dict) -> bool:
            if "kind" in meta and "value" in meta:
                return answer_matches(reply, meta)
            first = reply.strip().split("\n")[0]
            return normalise(first) == normalise(str(meta["answer"])) or normalise(reply) == normalise(str(meta["answer"]))
        return exact
    if name == "choice":
        return lambda reply, meta: parse_choice(reply) == answer_letter(str(meta["answer"]))
    if name == "text":
        return lambda reply, meta: chrf(reply, str(meta["answer"])) >= TEXT_PASS
    raise ValueError(f"unknown scorer {name!r}; choose one of {', '.join(SCORERS)}")


def judge(name: str, reply: str, meta: dict) -> tuple[bool, float]:
    """(right, score) of one REPLY under scorer NAME: chrF >= TEXT_PASS and chrF / 100 for open answers (chrF computed
    once), else matcher(NAME)'s verdict and 1.0 or 0.0."""
    if name == "text":
        value = chrf(reply, str(meta["answer"]))
        return value >= TEXT_PASS, value / 100
    right = bool(matcher(name)(reply, meta))
    return right, float(right)


def with_meta(records: Sequence[dict], kind: str = "all") -> list[dict]:
    """RECORDS with a `meta` {kind, answer} where they have none (the learner's own data), originals untouched."""
    out = []
    for r in records:
        if "answer" in (r.get("meta") or {}):
            out.append(r)
        else:
            out.append({**r, "meta": {"kind": kind, "answer": reference(r)}})
    return out


def summarize(rows: Sequence[dict], name: str) -> dict:
    """The headline of a scored run: {"metric", "score", "n"}; accuracy for exact/choice, mean chrF/100 for text."""
    if not rows:
        return {"metric": "accuracy" if name != "text" else "chrF", "score": 0.0, "n": 0}
    if name == "text":
        values = [chrf(r["reply"], r["answer"]) for r in rows]
        return {"metric": "chrF", "score": round(sum(values) / len(values) / 100, 4), "n": len(rows)}
    return {"metric": "accuracy", "score": round(sum(bool(r["correct"]) for r in rows) / len(rows), 4), "n": len(rows)}


def constant_answer_score(records: Sequence[dict], name: str) -> float:
    """The best lazy model's score under scorer NAME: the most frequent answer of each kind given to every question of
    that kind (accuracy for exact/choice, as compare.constant_answer_baseline counts it; mean chrF / 100 for text)."""
    by_kind: dict[str, list[str]] = {}
    for r in records:
        meta = r["meta"]
        by_kind.setdefault(str(meta["kind"]), []).append(str(meta.get("value", meta["answer"])))
    if not records:
        return 0.0
    if name != "text":
        return round(sum(Counter(v).most_common(1)[0][1] for v in by_kind.values()) / len(records), 4)
    rows = [{"reply": Counter(v).most_common(1)[0][0], "answer": a} for v in by_kind.values() for a in v]
    return summarize(rows, "text")["score"]
