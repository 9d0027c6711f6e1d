"""The relational words of a referring expression, resolved on detected boxes, with a reason a person can read.

Grounding DINO finds boxes for a noun phrase but ignores "left", "largest" or "second from the right"
(IDEA-Research/GroundingDINO#249, #406). So the studio splits the expression: `parse_expression` keeps the phrase
to ground and turns the relational words into a `Query`; `resolve` picks among the grounder's candidates in code
and says why, in a sentence shown next to the result.

Small rule-based English, not a language model, and honest about it: what it reads it resolves, what it does not
read it names (`Query.unread`), never dropping a word silently. It reads
- one position word per expression ("top left" is refused, not guessed), of the frame ("on the left", "the upper
  bird", "the last dog": the rightmost in reading order) or of another object ("the dog left of the cat", "the lamp
  above the table", "the cup next to the laptop": `Query.anchor`, grounded too);
- ordinals ("the second from the right"; without a direction, from the left), counts ("the two dogs", "all the
  dogs", "the dogs"), comparatives of size and height ("the bigger dog", "the higher bird");
- negation of a position or count ("not the left dog", "every dog except the left one", "the dogs other than the
  largest"): `Query.exclude`, everything found but those;
- position and ordinal words that belong to a noun ("top hat", "right hand", "right lane", "second-hand",
  "middle-aged") stay in the phrase to ground.
What boxes cannot answer (depth: "closest to the camera", "behind", "in front of"; a negated attribute: "without a
hat", "that is not black"; a comparison with another object: "bigger than the cat"; "between"; an exception by
another noun: "every animal except the cat") is `Query.unread`: the pipeline hands the whole expression to a grounder
that reads it (Florence-2), or refuses, saying which words and how to rephrase. Text not in English is refused.
A count makes the head noun (the word before "holding", "with", "in", ...) singular by simple rules: "dogs" ->
"dog", "boxes" -> "box", "people" -> "person" ("buses" -> "buse": harmless).
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass

from pipelines.core.errors import InputError

RELATIONS = ("left", "right", "top", "bottom", "middle", "largest", "smallest", "near")
ANCHOR_RELATIONS = ("left", "right", "top", "bottom", "near")   # measured from another object
DUPLICATE_IOU = 0.8  # grounders often return the same object twice, with slightly different boxes
# A box under this fraction of its frame's best score is no candidate: the grounder was unsure, and "leftmost" or
# "largest" would otherwise crown the weakest box at the frame's edge. Half: two real objects of one kind score
# within a factor two of each other on Grounding DINO (0.4-0.8 for the same class in its demo images).
SCORE_FLOOR = 0.5

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
_LEADING = {"the", "a", "an", "one", "ones", "of", "any"}
_COUNT_WORDS = {"all", "every", "each", "both", *_NUMBERS}
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
    exclude: bool = False # relation/ordinal/count name the objects to leave out: "not the left dog" -> the others
    anchor: str | None = None   # "the dog left of the cat": "cat"; the relation is then measured from its box
    unread: tuple[str, ...] = ()  # what the rules do not read ("closest to the camera"): never resolved as if absent

    def __post_init__(self):
        if self.relation is not None and self.relation not in RELATIONS:
            raise InputError(f"Unknown relation {self.relation!r}: use one of {', '.join(RELATIONS)}.")
        if isinstance(self.ordinal, bool) or not isinstance(self.ordinal, int) or self.ordinal < 1:
            raise InputError(f"The position must be first, second, ... (1 or more), not {self.ordinal!r}.")
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 0:
            raise InputError(f"Ask for at least one object (or all of them), not {self.count!r}.")
        if self.relation == "near" and self.anchor is None:
            raise InputError("'near' needs another object to be near, e.g. 'the cup next to the laptop'.")
        if self.anchor is not None and self.relation not in ANCHOR_RELATIONS:
            raise InputError(f"A relation to another object must be one of {', '.join(ANCHOR_RELATIONS)}, "
                             f"not {self.relation!r}.")

    def understood(self) -> bool:
        return not self.unread

    def not_understood(self) -> str:
        """The explanation's "not understood" line ('' when everything was read)."""
        if not self.unread:
            return ""
        return "Not understood by the studio's relation rules: " + "; ".join(f"“{u}”" for u in self.unread) + "."

    def refusal(self, expression: str) -> str:
        """The message when no grounder here reads the whole expression."""
        return (f"The studio did not understand {', '.join(f'“{u}”' for u in self.unread)} in “{expression}”: "
                "boxes alone cannot answer depth, a negated attribute or a comparison with another object. "
                "Rephrase with a position, size or count (e.g. 'the largest dog', 'the dog on the left', "
                "'the dog left of the cat'), or choose the Florence-2 grounder, which reads the whole expression.")


@dataclass(frozen=True)
class Choice:
    chosen: tuple[int, ...]  # indices into the candidates, in the order objects get their ids
    reason: str              # "3 dogs found on frame 12; chose the leftmost, x = 41 px."
    score: float             # mean grounding score of the chosen boxes: what picks the key frame


def parse_expression(expression: str) -> Query:
    """Split "the second dog from the right" into Query("dog", "right", ordinal=2); see the module's opening comment
    for what is read, and `Query.unread` for what is not."""
    text = unicodedata.normalize("NFKC", str(expression or "")).lower().replace("\u2019", "'").replace("_", " ")
    _refuse_other_languages(text)
    text = re.sub(r"[^\w\s'-]", " ", text)
    text = re.sub(r"(?<![\w])['-]+|['-]+(?![\w])", " ", text)  # keep "t-shirt" and "dog's", drop stray marks
    text = re.sub(r"\b(left|right|top|bottom|upper)[\s-]+most\b", r"\1most", " ".join(text.split()))
    text, kept = _protect_compounds(text)

    if m := _NOT_HEAD_RE.match(text):            # "not the left dog", "all but the largest dog"
        return _excluding(_plain(m.group(2), kept), None, _restore(m.group(0), kept))
    if m := _EXCEPT_RE.match(text):              # "every dog except the left one"
        return _excluding(_plain(m.group(1), kept), _plain(m.group(3), kept, noun_optional=True),
                          _restore(f"{m.group(2)} {m.group(3)}", kept))
    return _plain(text, kept).query()


# ----------------------------------------------------------------- the pieces of parse_expression
_VIEWER_WORDS = {"camera", "viewer", "lens", "us", "me", "you", "photographer"}
_IMAGE_WORDS = {"image", "frame", "picture", "photo", "video", "screen", "scene", "clip", "shot"}
_LETTERS_OK = ("LATIN",)
# Common function words of the languages people most often type instead of English, none of them English words.
_FOREIGN = set("""el los las del y una unos izquierda derecha perro gato coche le les des du et une gauche droite
chien voiture der das und ein eine rechts hund katze il gli della sinistra destra gatto macchina os uma esquerda
direita cachorro de la het een linker rechter""".split())
_FOREIGN_DIRECTIONS = {"izquierda", "derecha", "gauche", "droite", "rechts", "sinistra", "destra", "esquerda",
                       "direita", "rechter"}
_ENGLISH_GLUE = {"the", "a", "an", "on", "of", "in", "with", "to", "and", "at", "from", "is", "that", "who", "one"}
# Position and ordinal words that belong to a noun: these are things, not places in the frame.
_COMPOUNDS = {
    "left": "hand hands arm arms leg legs foot feet shoe shoes glove eye eyes ear ears wing lane turn knee shoulder "
            "wrist elbow cheek boot",
    "right": "hand hands arm arms leg legs foot feet shoe shoes glove eye eyes ear ears wing lane turn knee shoulder "
             "wrist elbow cheek boot",
    "top": "hat hats coat shelf floor deck bunk drawer",
    "bottom": "shelf floor drawer bunk bracket",
    "middle": "finger school name lane",
    "upper": "body lip deck jaw arm",
    "lower": "body lip deck jaw back",
    "center": "console court field forward piece lane",
    "centre": "console court field forward piece lane",
    "first": "aid",
    "second": "hand",
    "third": "party",
}
_COMPOUND_RES = tuple(re.compile(rf"\b{first}\s+({'|'.join(seconds.split())})\b(?!\s+side\b)")
                      for first, seconds in _COMPOUNDS.items())
_POSITION_PARTS = {*"left right top bottom upper lower middle center centre".split()}
_NOT_HEAD_RE = re.compile(r"^(not|anything but|everything but|all but|any but|every one but|everyone but)\s+(.+)$")
_EXCEPT_RE = re.compile(r"^(.+?)\s+(except(?:\s+for)?|but not|other than|apart from|excluding|besides|save for|"
                        r"but)\s+(.+)$")
# Depth, negated attributes and comparisons with another object: boxes cannot answer them.
_UNREAD_RES = (
    re.compile(r"\b(?:closest|nearest|closer|nearer)\s+to\s+(?:the\s+)?(?:camera|viewer|lens|us|me|front)\b"),
    re.compile(r"\b(?:in\s+(?:the\s+)?)?(?:front|back|foreground|background)\b(?:\s+of\b(?:\s+(?:the|a|an)\b)?"
               r"(?:\s+\w+)?)?"),
    re.compile(r"\bbehind\b(?:\s+(?:the|a|an)\b)?(?:\s+\w+)?"),
    re.compile(r"\b(?:farthest|furthest|farther|further|closest|nearest|closer|nearer|distant)\b(?!\s+to\b)"),
    re.compile(r"\b(?:without|not|no|isn't|aren't|doesn't|don't|never|non)\b(?:\s+(?:a|an|the|any|wearing|"
               r"holding|having)\b)*(?:\s+\w+)?"),
    re.compile(r"\b\w+er\s+than\b(?:\s+(?:the|a|an)\b)?(?:\s+\w+)?"),
    re.compile(r"\b(?:taller|shorter|older|younger|wider|narrower|thinner|fatter|longer|heavier|darker|lighter|"
               r"brighter|tallest|shortest|oldest|youngest|widest|narrowest|thinnest|fattest|longest|heaviest|"
               r"darkest|lightest|brightest|fastest|slowest)\b"),
    re.compile(r"\bbetween\b(?:\s+(?:the|a|an)\b)?(?:\s+\w+)*"),
)
_COMPARATIVES = {"bigger": "largest", "larger": "largest", "smaller": "smallest", "tinier": "smallest",
                 "higher": "top"}
_ANCHOR_RES = (
    # "on the left of the cat", "to the right of a car", "left of the cat", "on the left-hand side of the cat"
    ("side", re.compile(r"(?:\b(?:on|to|at)\s+)?(?:\bthe\s+)?\b(left|right)(?:[\s-]+hand)?(?:\s+side)?\s+of\s+"
                        r"(?:the\s+|a\s+|an\s+)?(?P<anchor>.+)$")),
    ("vertical", re.compile(r"\b(above|over|on\s+top\s+of|below|under|underneath|beneath)\s+(?:the|a|an)\s+"
                            r"(?P<anchor>.+)$")),
    ("near", re.compile(r"\b(next\s+to|beside|near|close\s+to|closest\s+to|nearest\s+to|alongside)\s+"
                        r"(?:the\s+|a\s+|an\s+)?(?P<anchor>.+)$")),
)
_VERTICAL = {"above": "top", "over": "top", "on top of": "top", "below": "bottom", "under": "bottom",
             "underneath": "bottom", "beneath": "bottom"}
_PLURALIA_TANTUM = {"glasses", "pants", "jeans", "shorts", "scissors", "trousers", "sunglasses", "headphones",
                    "earphones", "binoculars", "tongs", "pliers", "goggles", "leggings", "clothes", "stairs", "news",
                    "species", "series", "dishes"}


def _refuse_other_languages(text: str) -> None:
    letters = [ch for ch in text if ch.isalpha()]
    foreign = [ch for ch in letters if not unicodedata.name(ch, "").startswith(_LETTERS_OK)]
    words = re.findall(r"[^\W\d_]+", text)
    guessed = [w for w in words if w in _FOREIGN]
    if foreign or any(w in _FOREIGN_DIRECTIONS for w in words) or (
            guessed and (len(guessed) >= 2 or not any(w in _ENGLISH_GLUE for w in words))):
        raise InputError(f"The grounders here read English; “{text.strip()}” does not look like English. "
                         "Write it in English, e.g. 'the dog on the left'.")


def _protect_compounds(text: str) -> tuple[str, list[str]]:
    """Hide the compounds ("top hat", "second-hand", "middle-aged") behind placeholder words, so that no rule reads
    their position or ordinal word; `_restore` puts them back in the phrase."""
    kept: list[str] = []

    def hide(word: str) -> str:
        kept.append(word)
        return f"qq{len(kept) - 1}qq"

    def hyphenated(m: re.Match) -> str:
        word = m.group(0)
        parts = word.split("-")
        if sum(part in _POSITION_PARTS for part in parts) >= 2 or (parts[0] in ("left", "right") and parts[1:] == ["hand"]):
            return word            # "top-left" (two positions: refused) and "left-hand side" stay readable
        if len(parts) == 2 and parts[0] in _ORDINALS and parts[1] in _RELATION_WORDS:
            return " ".join(parts)   # "second-largest": an ordinal and a superlative, read as such
        if any(part in _POSITION_PARTS or part in _ORDINALS or part == "last" for part in parts):
            return hide(word)
        return word

    text = re.sub(r"\b\w+(?:-\w+)+\b", hyphenated, text)
    for pattern in _COMPOUND_RES:
        text = pattern.sub(lambda m: hide(m.group(0)), text)
    return text, kept


def _restore(text: str, kept: list[str]) -> str:
    return re.sub(r"qq(\d+)qq", lambda m: kept[int(m.group(1))], text)


@dataclass
class _Parsed:
    phrase: str
    relation: str | None
    ordinal: int
    count: int
    anchor: str | None
    unread: list[str]
    plural: bool

    def query(self) -> Query:
        if self.plural and self.count == 1 and self.relation is not None and self.anchor is None \
                and self.ordinal == 1 and not self.unread:
            words = self.phrase.split()
            head = _head(words)
            one, many = " ".join([*words[:head], _singular(words[head]), *words[head + 1:]]), self.phrase
            where = {"largest": "largest", "smallest": "smallest", "middle": "in the middle"}.get(
                self.relation, f"on the {self.relation}")
            raise InputError(f"Say how many {many}: e.g. 'the two {many} {where}', 'the {one} {where}' or 'all the "
                             f"{many}'.")
        count = 0 if self.plural and self.count == 1 and self.relation is None and self.ordinal == 1 else self.count
        return Query(self.phrase, self.relation, self.ordinal, count, anchor=self.anchor,
                     unread=tuple(self.unread))


def _excluding(kept_part: _Parsed, left_out: _Parsed | None, said: str) -> Query:
    """ "every dog except the left one": every `kept_part` found, but those `left_out` (or `kept_part`'s own
    relation, for "not the left dog") describes. An exception by another noun is not read."""
    base = kept_part if left_out is None else left_out
    unread = [*kept_part.unread, *(left_out.unread if left_out else [])]
    other_noun = left_out is not None and left_out.phrase not in ("", kept_part.phrase) and \
        _singular(left_out.phrase) != _singular(kept_part.phrase)
    if other_noun or base.relation is None and base.ordinal == 1 and base.count == 1 or base.anchor is not None \
            or (left_out is not None and kept_part.relation is not None):
        unread.append(said)
    phrase = kept_part.phrase or (left_out.phrase if left_out else "")
    if not phrase:
        raise InputError("Say what to look for, e.g. 'the dog on the left'.")
    relation = base.relation if base.relation != "near" else None
    return Query(phrase, relation, base.ordinal, max(base.count, 1), exclude=True, unread=tuple(unread))


def _plain(text: str, kept: list[str], noun_optional: bool = False) -> _Parsed:
    """One description without negation of a position: its phrase, position, ordinal, count and anchor."""
    unread: list[str] = []
    for pattern in _UNREAD_RES:
        for m in list(pattern.finditer(text)):
            unread.append(_restore(m.group(0).strip(), kept))
        text = pattern.sub(" ", text)
    text = " ".join(text.split())

    anchor, anchor_relation = None, None
    for kind, pattern in _ANCHOR_RES:
        m = pattern.search(text)
        if m is None:
            continue
        tail = m.group("anchor").split()
        if kind == "side" and tail and tail[0] in _IMAGE_WORDS:
            continue                                    # "on the left of the image": the frame's left
        if tail and tail[0] in _VIEWER_WORDS:           # "near the camera": depth, which boxes cannot answer
            unread.append(" ".join(m.group(0).split()))
            text = text[:m.start()] + " " + text[m.end():]
            break
        anchor_words = list(tail)
        while anchor_words and anchor_words[-1] in _TRAILING:
            anchor_words.pop()
        if not anchor_words:
            continue
        anchor = _restore(" ".join(anchor_words), kept)
        anchor_relation = (m.group(1) if kind == "side" else _VERTICAL[" ".join(m.group(1).split())]
                           if kind == "vertical" else "near")
        if _RELATION_RE.search(" ".join(anchor_words)) or _ORDINAL_RE.search(" ".join(anchor_words)):
            unread.append(f"{' '.join(m.group(0).split()[:-len(tail)])} {anchor}")   # "left of the largest cat"
        text = text[:m.start()] + " " + text[m.end():]
        break

    words = text.split()
    last = "last" in words
    words = [_COMPARATIVES.get(w, w) for w in words if w != "last"]
    text = " ".join(words)

    relations = sorted({_RELATION_WORDS[m.group(1)] for m in _RELATION_RE.finditer(text)})
    if anchor is not None and relations:
        raise InputError(f"Use one position word at a time, not {' and '.join([anchor_relation, *relations])}: "
                         "e.g. 'the dog left of the cat'.")
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

    one_of = bool(re.search(r"^(?:the\s+)?(?:one\s+)?of\s+(?:the|these|those)\b", text))   # "the smallest of the balloons"
    words = text.split()
    while words and words[0] in _LEADING | {"these", "those"}:
        words.pop(0)
    while words and words[-1] in _TRAILING | _JOINERS | {"having", "wearing", "holding"}:
        words.pop()
    if not words and not noun_optional:
        raise InputError("Say what to look for, e.g. 'the dog on the left'.")
    plural = False
    if words:
        head = _head(words)
        plural = _is_plural(_restore(words[head], kept)) and not (one_of and count == 1)
        if count != 1 or one_of or (plural and ordinal == 1 and not relations and anchor is None):
            words[head] = _singular(words[head])
    relation = anchor_relation or (relations[0] if relations else ("left" if ordinal > 1 or last else None))
    if last and (relations or anchor):
        unread.append("last")          # "the last car on the left": the leftmost, or the last of those on the left?
    elif last:
        relation = "right"             # "the last dog": the rightmost, in reading order
    return _Parsed(_restore(" ".join(words), kept), relation, ordinal, count, anchor, unread, plural)


_OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}


def _is_plural(word: str) -> bool:
    return word not in _PLURALIA_TANTUM and "'" not in word and _singular(word) != word


def candidates_for(query: Query, candidates: list[Candidate]) -> tuple[list[int], list[str]]:
    """Indices of the candidates that can be what the query names, and what was set aside, said for a person:
    - boxes whose label is another noun of the phrase (Grounding DINO returns a box per noun phrase: the cup in
      "the person holding a cup") are dropped, when the grounder labelled its boxes;
    - boxes scoring under SCORE_FLOOR of the frame's best are dropped before any ranking, so a 0.26 box at the
      frame's edge cannot be "the leftmost" beside two 0.8 dogs;
    - near-duplicates (IoU > 0.8) are merged into the higher-scoring one."""
    notes = []
    indices = list(range(len(candidates)))
    if any(c.label.strip() for c in candidates):
        on_head = [i for i in indices if not _names_other_noun(candidates[i].label, query.phrase)]
        if len(on_head) < len(indices):
            others = sorted({candidates[i].label.strip() for i in indices if i not in on_head})
            notes.append(f"{len(indices) - len(on_head)} box{'es' if len(indices) - len(on_head) > 1 else ''} for "
                         f"{', '.join(f'“{o}”' for o in others)} set aside")
        indices = on_head
    if indices:
        best = max(candidates[i].score for i in indices)
        strong = [i for i in indices if candidates[i].score >= SCORE_FLOOR * best]
        if len(strong) < len(indices):
            weak = len(indices) - len(strong)
            notes.append(f"{weak} weak box{'es' if weak > 1 else ''} (under {SCORE_FLOOR:.0%} of the best score "
                         f"{best:.2f}) dropped")
        indices = strong
    kept = _drop_duplicates(candidates, indices)
    merged = len(indices) - len(kept)
    if merged:
        notes.append(f"{merged} duplicate box{'es' if merged > 1 else ''} merged")
    return kept, notes


def resolve(query: Query, candidates: list[Candidate], frame: int | None = None,
            frame_size: tuple[int, int] | None = None, anchors: list[Candidate] | None = None) -> Choice:
    """Pick the boxes the query refers to. `frame_size` is (width, height); it places the centre for "middle".
    `anchors`: the grounder's boxes for `query.anchor` on the same frame ("the dog left of the cat": the cats)."""
    phrase = query.phrase.strip() or "object"
    where = f" on frame {frame}" if frame is not None else ""
    if not candidates:
        raise InputError(f"No {phrase} found{where}; try a shorter description or another frame.")
    kept, notes = candidates_for(query, candidates)
    if not kept:
        raise InputError(f"No {phrase} found{where} ({'; '.join(notes)}); try a shorter description or another "
                         "frame.")
    found = f"{len(kept)} {noun(phrase, len(kept))} found{where}"
    if notes:
        found += f" ({'; '.join(notes)})"
    left_to_right = sorted(kept, key=lambda i: (_centre(candidates[i].box)[0], -candidates[i].score, i))

    if query.count == 0:
        chosen = tuple(left_to_right)
        what = "it" if len(chosen) == 1 else f"all {len(chosen)}, left to right"
        return Choice(chosen, f"{found}; chose {what}.", _mean(candidates, chosen))

    if query.anchor is not None:
        return _beside(query, candidates, kept, found, where, anchors or [])

    value, note = _measure(query.relation, candidates, kept, frame_size)
    descending = query.relation in (None, "right", "bottom", "largest")
    ranked = sorted(kept, key=lambda i: ((-1 if descending else 1) * value[i], -candidates[i].score, i))
    k, n = query.ordinal, query.count
    name = _name(query.relation, k, n)
    if len(kept) < k + n - 1:
        asked = f"{n} {noun(phrase, n)}" if k == 1 and n > 1 else name.removeprefix("the ")
        raise InputError(f"Only {found}; '{asked}' needs at least {k + n - 1}.")

    picked = ranked[k - 1:k - 1 + n]
    shown = _show(query.relation, [value[i] for i in picked], note)
    if query.exclude:
        chosen = tuple(i for i in left_to_right if i not in picked)
        if not chosen:
            raise InputError(f"Only {found}; leaving out {name} leaves none.")
        what = "it" if len(chosen) == 1 else f"the other {len(chosen)}, left to right"
        return Choice(chosen, f"{found}; left out {name} ({shown}) and chose {what}.", _mean(candidates, chosen))
    if n > 1:
        chosen = tuple(i for i in left_to_right if i in picked)
        reason = f"{found}; chose {name} ({shown}), left to right."
    else:
        chosen = tuple(picked)
        reason = f"{found}; chose {name}, {shown}." if k == 1 else f"{found}; chose {name} ({shown})."
    return Choice(chosen, reason, _mean(candidates, chosen))


def _beside(query: Query, candidates, kept, found: str, where: str, anchors: list[Candidate]) -> Choice:
    """ "the dog left of the cat": the highest-scoring cat is the anchor; among the dogs on its side (centres
    compared; "near": any side) the nearest to it, centre to centre, then the next (ordinals)."""
    if not anchors:
        raise InputError(f"No {query.anchor} found{where} to place the {query.phrase} against; try other words for it.")
    anchor = max(anchors, key=lambda c: c.score)
    ax, ay = _centre(anchor.box)
    side = {"left": lambda x, y: x < ax, "right": lambda x, y: x > ax, "top": lambda x, y: y < ay,
            "bottom": lambda x, y: y > ay, "near": lambda x, y: True}[query.relation]
    # The anchor itself is no candidate (a grounder may box the cat for "dog" too).
    on_side = [i for i in kept if iou(candidates[i].box, anchor.box) <= 0.5 and side(*_centre(candidates[i].box))]
    ranked = sorted(on_side, key=lambda i: (math.dist(_centre(candidates[i].box), (ax, ay)), -candidates[i].score, i))
    k, n = query.ordinal, query.count
    words = {"left": "left of", "right": "right of", "top": "above", "bottom": "below", "near": "nearest"}
    place = f"{words[query.relation]} the {query.anchor}"
    if len(ranked) < k + n - 1:
        raise InputError(f"Only {found} and {len(ranked)} of them {place} (the {query.anchor} at x = {ax:.0f}, "
                         f"y = {ay:.0f} px); '{query.phrase} {place}' needs at least {k + n - 1}.")
    picked = ranked[k - 1:k - 1 + n]
    chosen = tuple(i for i in sorted(picked, key=lambda i: _centre(candidates[i].box)[0]))
    distances = ", ".join(f"{math.dist(_centre(candidates[i].box), (ax, ay)):.0f}" for i in picked)
    nth = "" if k == 1 else f"{_ordinal(k)} "
    reason = (f"{found}, and a {query.anchor} at x = {ax:.0f}, y = {ay:.0f} px (score {anchor.score:.2f}); chose the "
              f"{nth}{'nearest ' if query.relation != 'near' else ''}{noun(query.phrase, n)} {place} "
              f"({distances} px from it).")
    return Choice(chosen, reason, _mean(candidates, chosen))


def _names_other_noun(label: str, phrase: str) -> bool:
    """Whether a grounder's label is another word of the phrase, not its head noun: "cup" for "person holding a
    cup". Grounding DINO labels a box with the phrase's tokens over its threshold, word pieces included ("##cle"): a
    piece belongs to a word when it is the word or (3+ letters) a part of it. A label none of whose pieces is known
    (a random toy model's) names nothing, and keeps its box."""
    words = [_singular(w) for w in phrase.lower().split()]
    head = words[_head(words)] if words else ""
    others = [w for w in words if w != head and w not in _LEADING | _TRAILING | _JOINERS | _COUNT_WORDS]
    pieces = [_singular(p) for p in re.findall(r"[a-z0-9']+", label.lower().replace("##", " "))
              if p not in ("sep", "cls", "pad")]

    def belongs(piece: str, word: str) -> bool:
        return piece == word or (len(piece) >= 3 and piece in word)

    if not pieces or not others or any(belongs(p, head) for p in pieces):
        return False
    return all(any(belongs(p, w) for w in others) for p in pieces)


def _centre(box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def _area(box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def iou(a, b) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    inter = _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    union = _area(a) + _area(b) - inter
    return inter / union if union > 0 else 0.0


def _drop_duplicates(candidates: list[Candidate], indices: list[int] | None = None) -> list[int]:
    """Indices (of `indices`, default all) left after merging each box into a higher-scoring one it overlaps
    (IoU > 0.8)."""
    kept: list[int] = []
    for i in sorted(range(len(candidates)) if indices is None else indices, key=lambda i: (-candidates[i].score, i)):
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


def noun(phrase: str, n: int) -> str:
    """ "dog" -> "dogs", "person holding a cup" -> "people holding a cup" when n != 1."""
    if n == 1:
        return phrase
    words = phrase.split()
    head = _head(words)
    words[head] = _plural(words[head])
    return " ".join(words)
