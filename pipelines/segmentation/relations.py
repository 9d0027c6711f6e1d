"""The relational words of a referring expression, resolved on detected boxes, with a reason a person can read.

Grounding DINO finds boxes for a noun phrase but ignores "left", "largest" or "second from the right"
(IDEA-Research/GroundingDINO#249, #406). So the studio splits the expression: `parse_expression` keeps the phrase
to ground and turns the relational words into a `Query`; `resolve` picks among the grounder's candidates in code
and says why, in a sentence shown next to the result.

Small rule-based English, not a language model: one position word per expression ("top left" is refused, not
guessed); "above"/"below" mean the frame's top/bottom, not relative to another object; an ordinal without a direction
counts from the left (reading order); a count makes the head noun (the word before "holding", "with", "in", ...)
singular by simple rules: "dogs" -> "dog", "boxes" -> "box", "people" -> "person" ("buses" -> "buse": harmless).
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass

from pipelines.core.errors import InputError

RELATIONS = ("left", "right", "top", "bottom", "middle", "largest", "smallest")
DUPLICATE_IOU = 0.8  # grounders often return the same object twice, with slightly different boxes

_RELATION_WORDS = {word: relation for relation, words in {
    "left": "left leftmost", "right": "right rightmost", "top": "top topmost upper uppermost highest above",
    "bottom": "bottom bottommost lower lowest below", "middle": "middle center centre central",
    "largest": "largest biggest", "smallest": "smallest tiniest"}.items() for word in words.split()}
_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")
_NUMBERS = {"both": 2, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
            "ten": 10}
# A position word with the filler around it: "on the far left side of the image", "at the very top", "leftmost".
_RELATION_RE = re.compile(
    r"(?:\b(?:on|in|at|to|towards?|from)\s+(?:the\s+)?)?(?:\b(?:very|far)\s+)?"
    rf"\b({'|'.join(sorted(_RELATION_WORDS, key=len, reverse=True))})\b"
    r"(?:[\s-]+hand\b)?(?:\s+side\b)?(?:\s+(?:of|in|on)\s+(?:the\s+)?(?:image|frame|picture|photo|video|screen|scene)\b)?")
_ORDINAL_RE = re.compile(rf"\b(?:({'|'.join(_ORDINALS)})|(\d{{1,4}})(?:st|nd|rd|th))\b(?:\s+ones?\b)?")
# A count only at the head of the expression, so that "the man with two dogs" stays one man.
_COUNT_RE = re.compile(rf"^(?:(?:the|a|an)\s+)?(?:(all|every|each)|({'|'.join(_NUMBERS)}|\d{{1,4}})|(pair))"
                       r"(?:\s+of)?(?:\s+(?:the|these|those))?\b")
_LEADING = {"the", "a", "an", "one", "ones", "of"}
_TRAILING = {"the", "a", "an", "one", "ones", "on", "in", "at", "to", "from", "of", "side", "that", "which", "who",
             "is", "are"}
_JOINERS = {"with", "in", "on", "at", "of", "by", "near", "next", "behind", "under", "over", "beside", "between",
            "that", "who", "which", "and"}  # and any word ending in "ing": "person holding a cup"
_IRREGULAR = {"people": "person", "men": "man", "women": "woman", "children": "child", "mice": "mouse",
              "geese": "goose", "feet": "foot", "teeth": "tooth"}


@dataclass(frozen=True)
class Candidate:
    box: tuple[float, float, float, float]   # x1, y1, x2, y2 in pixels of the frame
    score: float                             # grounding score
    label: str = ""                          # the phrase the grounder matched


@dataclass(frozen=True)
class Query:
    phrase: str           # what to ground, without the relational words: "dog", "red car", "person holding a cup"
    relation: str | None  # one of RELATIONS, or None for "the best match"
    ordinal: int = 1      # "second from the right" -> 2
    count: int = 1        # "the two dogs" -> 2; "all the dogs" -> 0, meaning all

    def __post_init__(self):
        if self.relation is not None and self.relation not in RELATIONS:
            raise InputError(f"Unknown relation {self.relation!r}: use one of {', '.join(RELATIONS)}.")
        if isinstance(self.ordinal, bool) or not isinstance(self.ordinal, int) or self.ordinal < 1:
            raise InputError(f"The position must be first, second, ... (1 or more), not {self.ordinal!r}.")
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 0:
            raise InputError(f"Ask for at least one object (or all of them), not {self.count!r}.")


@dataclass(frozen=True)
class Choice:
    chosen: tuple[int, ...]  # indices into the candidates, in the order objects get their ids
    reason: str              # "3 dogs found on frame 12; chose the leftmost, x = 41 px."
    score: float             # mean grounding score of the chosen boxes: what picks the key frame


def parse_expression(expression: str) -> Query:
    """Split "the second dog from the right" into Query("dog", "right", ordinal=2)."""
    text = unicodedata.normalize("NFKC", str(expression or "")).lower().replace("\u2019", "'").replace("_", " ")
    text = re.sub(r"[^\w\s'-]", " ", text)
    text = re.sub(r"(?<![\w])['-]+|['-]+(?![\w])", " ", text)  # keep "t-shirt" and "dog's", drop stray marks
    text = re.sub(r"\b(left|right|top|bottom|upper)[\s-]+most\b", r"\1most", " ".join(text.split()))

    relations = sorted({_RELATION_WORDS[m.group(1)] for m in _RELATION_RE.finditer(text)})
    if len(relations) > 1:
        raise InputError(f"Use one position word at a time, not {' and '.join(relations)}: e.g. 'the dog on the left'.")
    text = _RELATION_RE.sub(" ", text)

    ordinal = 1
    if m := _ORDINAL_RE.search(text):
        ordinal = _ORDINALS.index(m.group(1)) + 1 if m.group(1) else int(m.group(2))
        text = text[:m.start()] + " " + text[m.end():]
    text = " ".join(text.split())

    count = 1
    if m := _COUNT_RE.match(text):
        count = 0 if m.group(1) else 2 if m.group(3) else _NUMBERS.get(m.group(2)) or int(m.group(2))
        if count == 0 and m.group(2):
            raise InputError("Ask for at least one object, e.g. 'the two dogs' or 'all the dogs'.")
        text = text[m.end():]

    words = text.split()
    while words and words[0] in _LEADING:
        words.pop(0)
    while words and words[-1] in _TRAILING:
        words.pop()
    if not words:
        raise InputError("Say what to look for, e.g. 'the dog on the left'.")
    if count != 1:
        head = _head(words)
        words[head] = _singular(words[head])
    relation = relations[0] if relations else ("left" if ordinal > 1 else None)
    return Query(" ".join(words), relation, ordinal, count)


def resolve(query: Query, candidates: list[Candidate], frame: int | None = None,
            frame_size: tuple[int, int] | None = None) -> Choice:
    """Pick the boxes the query refers to. `frame_size` is (width, height); it places the centre for "middle"."""
    phrase = query.phrase.strip() or "object"
    where = f" on frame {frame}" if frame is not None else ""
    if not candidates:
        raise InputError(f"No {phrase} found{where}; try a shorter description or another frame.")
    kept = _drop_duplicates(candidates)
    merged = len(candidates) - len(kept)
    found = f"{len(kept)} {_noun(phrase, len(kept))} found{where}"
    if merged:
        found += f" ({merged} duplicate box{'es' if merged > 1 else ''} merged)"
    left_to_right = sorted(kept, key=lambda i: (_centre(candidates[i].box)[0], -candidates[i].score, i))

    if query.count == 0:
        chosen = tuple(left_to_right)
        what = "it" if len(chosen) == 1 else f"all {len(chosen)}, left to right"
        return Choice(chosen, f"{found}; chose {what}.", _mean(candidates, chosen))

    value, note = _measure(query.relation, candidates, kept, frame_size)
    descending = query.relation in (None, "right", "bottom", "largest")
    ranked = sorted(kept, key=lambda i: ((-1 if descending else 1) * value[i], -candidates[i].score, i))
    k, n = query.ordinal, query.count
    name = _name(query.relation, k, n)
    if len(kept) < k + n - 1:
        asked = f"{n} {_noun(phrase, n)}" if k == 1 and n > 1 else name.removeprefix("the ")
        raise InputError(f"Only {found}; '{asked}' needs at least {k + n - 1}.")

    picked = ranked[k - 1:k - 1 + n]
    shown = _show(query.relation, [value[i] for i in picked], note)
    if n > 1:
        chosen = tuple(i for i in left_to_right if i in picked)
        reason = f"{found}; chose {name} ({shown}), left to right."
    else:
        chosen = tuple(picked)
        reason = f"{found}; chose {name}, {shown}." if k == 1 else f"{found}; chose {name} ({shown})."
    return Choice(chosen, reason, _mean(candidates, chosen))


def _centre(box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def _area(box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def iou(a, b) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    inter = _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    union = _area(a) + _area(b) - inter
    return inter / union if union > 0 else 0.0


def _drop_duplicates(candidates: list[Candidate]) -> list[int]:
    """Indices of the candidates left after merging each box into a higher-scoring one it overlaps (IoU > 0.8)."""
    kept: list[int] = []
    for i in sorted(range(len(candidates)), key=lambda i: (-candidates[i].score, i)):
        if all(iou(candidates[i].box, candidates[j].box) <= DUPLICATE_IOU for j in kept):
            kept.append(i)
    return sorted(kept)


def _measure(relation, candidates, kept, frame_size) -> tuple[dict[int, float], str]:
    """The number each kept candidate is ranked by, and a note on where "the centre" is."""
    boxes = {i: candidates[i].box for i in kept}
    if relation in ("left", "right", "top", "bottom"):
        axis = 0 if relation in ("left", "right") else 1
        return {i: _centre(b)[axis] for i, b in boxes.items()}, ""
    if relation in ("largest", "smallest"):
        return {i: _area(b) for i, b in boxes.items()}, ""
    if relation == "middle":
        if frame_size is not None:
            if not (frame_size[0] > 0 and frame_size[1] > 0):
                raise InputError(f"The frame size must be two positive numbers (width, height), not {frame_size!r}.")
            cx, cy, note = frame_size[0] / 2, frame_size[1] / 2, ""
        else:  # no frame: the centre of the region the candidates span
            x1, y1, x2, y2 = zip(*boxes.values(), strict=True)
            cx, cy, note = (min(x1) + max(x2)) / 2, (min(y1) + max(y2)) / 2, " of the boxes"
        return {i: math.dist(_centre(b), (cx, cy)) for i, b in boxes.items()}, note
    return {i: candidates[i].score for i in kept}, ""


_SUPERLATIVE = {None: "highest-scoring", "left": "leftmost", "right": "rightmost", "top": "topmost",
                "bottom": "lowest", "middle": "most central", "largest": "largest", "smallest": "smallest"}
_UNITS = {None: "{}", "left": "x = {} px", "right": "x = {} px", "top": "y = {} px", "bottom": "y = {} px",
          "middle": "{} px from the centre", "largest": "area = {} px²", "smallest": "area = {} px²"}
_RANKED = {None: "highest-scoring", "left": "from the left", "right": "from the right", "top": "from the top",
           "bottom": "from the bottom", "middle": "closest to the centre", "largest": "largest", "smallest": "smallest"}


def _ordinal(k: int) -> str:
    if k <= len(_ORDINALS):
        return _ORDINALS[k - 1]
    return f"{k}{'th' if 10 <= k % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(k % 10, 'th')}"


def _name(relation, k: int, n: int) -> str:
    """ "the leftmost", "the second from the right", "the 2 highest-scoring", "the third to fourth largest"."""
    if k == 1:
        return f"the {'' if n == 1 else f'{n} '}{_SUPERLATIVE[relation]}"
    span = _ordinal(k) if n == 1 else f"{_ordinal(k)} to {_ordinal(k + n - 1)}"
    return f"the {span} {_RANKED[relation]}"


def _show(relation, values: list[float], note: str) -> str:
    """The deciding numbers: "x = 41 px", "area = 1200, 900 px²", "0.81, 0.77"; whole pixels, scores to 2 decimals."""
    numbers = ", ".join(f"{v:.2f}" if relation is None else f"{v:.0f}" for v in values)
    unit = "score {}" if relation is None and len(values) == 1 else _UNITS[relation]
    return unit.format(numbers) + note


def _mean(candidates: list[Candidate], chosen) -> float:
    return sum(candidates[i].score for i in chosen) / len(chosen)


def _head(words: list[str]) -> int:
    """The head noun: the last word before the first joiner ("person" in "person holding a cup")."""
    for i, word in enumerate(words[1:], start=1):
        if word in _JOINERS or (word.endswith("ing") and i < len(words) - 1):  # not "red building"
            return i - 1
    return len(words) - 1


def _singular(word: str) -> str:
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "ches", "shes", "xes", "zzes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")) and len(word) > 2:
        return word[:-1]
    return word


def _plural(word: str) -> str:
    if word in _IRREGULAR or _singular(word) != word:  # already plural ("the dogs")
        return word
    if word in (plurals := {v: k for k, v in _IRREGULAR.items()}):
        return plurals[word]
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and len(word) > 1 and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def _noun(phrase: str, n: int) -> str:
    """ "dog" -> "dogs", "person holding a cup" -> "people holding a cup" when n != 1."""
    if n == 1:
        return phrase
    words = phrase.split()
    head = _head(words)
    words[head] = _plural(words[head])
    return " ".join(words)
