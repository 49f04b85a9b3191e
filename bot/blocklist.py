"""Blocked words: per-guild rules a prompt is checked against before anything is spent.

A rule is a word or a short phrase; ``*`` stands for any run of letters inside a
word and ``?`` for exactly one. Rules and prompts are compared after folding
case and accents ("Café" = "cafe" = "CAFÉ") and splitting into words, so a rule
matches whole words: ``cat`` blocks "Cat" but not "concatenate"; ``cat*``
blocks "cats" too. Nobody supplies a regular expression: a rule is split at its
stars and each piece is found with plain substring search, which takes time in
proportion to the prompt, whatever the rule, so no rule can make the bot hang.

Discord-free: the moderation cog stores and lists rules; the generation service
calls :func:`Blocklist.match` before it reserves credits.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bot.errors import UserError

MAX_RULE_LENGTH = 60
MAX_RULE_WORDS = 5
MAX_RULES = 200
MIN_LETTERS = 2  # a rule of one letter or only wildcards would block almost everything

# Letters and digits of any script; the underscore separates words like a space.
_WORD = re.compile(r"[^\W_]+")
_RULE_WORD = re.compile(r"(?:[^\W_]|[*?])+")
_STARS = re.compile(r"\*+")


def fold(text: str) -> str:
    """Lower-case, accent-free, compatibility-normalised text ("Ｃａｆé" -> "cafe").
    Unicode's compatibility caseless match: compatibility forms can decompose into
    capitals ("₨" -> "Rs"), so case is folded again after decomposing."""
    nfd = unicodedata.normalize("NFD", text)
    decomposed = unicodedata.normalize(
        "NFKD", unicodedata.normalize("NFKD", nfd.casefold()).casefold()
    )
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def words(text: str) -> list[str]:
    return _WORD.findall(fold(text))


@dataclass(frozen=True, slots=True)
class Rule:
    """A parsed rule; ``text`` is its canonical form (what is stored and listed)."""

    tokens: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.tokens)

    def matches(self, prompt_words: Sequence[str]) -> bool:
        width = len(self.tokens)
        for start in range(len(prompt_words) - width + 1):
            if all(
                _glob(token, prompt_words[start + offset])
                for offset, token in enumerate(self.tokens)
            ):
                return True
        return False


def parse_rule(raw: str) -> Rule:
    """A moderator's rule in canonical form, or UserError saying what is wrong."""
    if len(raw) > MAX_RULE_LENGTH:
        raise UserError(f"A blocked word or phrase is at most {MAX_RULE_LENGTH} characters.")
    tokens = tuple(_STARS.sub("*", token) for token in _RULE_WORD.findall(fold(raw)))
    if not tokens:
        raise UserError(
            "Give a word or a short phrase; `*` stands for any letters and `?` for one."
        )
    if len(tokens) > MAX_RULE_WORDS:
        raise UserError(f"A blocked phrase has at most {MAX_RULE_WORDS} words.")
    letters = sum(1 for token in tokens for ch in token if ch not in "*?")
    if letters < MIN_LETTERS:
        raise UserError(
            f"A rule needs at least {MIN_LETTERS} letters besides `*` and `?`, "
            "or it would block almost every prompt."
        )
    return Rule(tokens)


@dataclass(frozen=True, slots=True)
class Blocklist:
    """A guild's rules, ready to check prompts against."""

    rules: tuple[Rule, ...] = ()

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> Blocklist:
        """Rules as stored; a stored rule that no longer parses is skipped, not fatal."""
        rules = []
        for text in texts:
            try:
                rules.append(parse_rule(text))
            except UserError:
                continue
        return cls(tuple(rules))

    def match(self, *texts: str | None) -> Rule | None:
        """The first rule any of ``texts`` matches, or None."""
        if not self.rules:
            return None
        for text in texts:
            if not text:
                continue
            prompt_words = words(text)
            exact = set(prompt_words)
            for rule in self.rules:
                # One plain word (most rules) is a set lookup.
                if _plain(rule):
                    if rule.tokens[0] in exact:
                        return rule
                elif rule.matches(prompt_words):
                    return rule
        return None


def _plain(rule: Rule) -> bool:
    return len(rule.tokens) == 1 and not any(ch in "*?" for ch in rule.tokens[0])


def _glob(pattern: str, word: str) -> bool:
    """``fnmatch`` for ``*`` and ``?`` only, without backtracking: the pieces
    between stars are found leftmost-first in order, which is exact for globs
    and linear in the word for each piece."""
    if "*" not in pattern:
        return len(pattern) == len(word) and _piece_at(pattern, word, 0)
    pieces = pattern.split("*")
    head, middle, tail = pieces[0], pieces[1:-1], pieces[-1]
    end = len(word) - len(tail)
    if end < len(head) or not _piece_at(head, word, 0) or not _piece_at(tail, word, end):
        return False
    position = len(head)
    for piece in middle:
        found = _find(piece, word, position, end)
        if found < 0:
            return False
        position = found + len(piece)
    return True


def _piece_at(piece: str, word: str, at: int) -> bool:
    if at + len(piece) > len(word):
        return False
    return all(p == "?" or p == word[at + i] for i, p in enumerate(piece))


def _find(piece: str, word: str, start: int, end: int) -> int:
    if "?" not in piece:
        return word.find(piece, start, end)
    found = _piece_pattern(piece).search(word, start, end)
    return -1 if found is None else found.start()


_PIECES: dict[str, re.Pattern[str]] = {}


def _piece_pattern(piece: str) -> re.Pattern[str]:
    # Literals and single-character wildcards only: no repetition, no backtracking.
    pattern = _PIECES.get(piece)
    if pattern is None:
        source = "".join("." if ch == "?" else re.escape(ch) for ch in piece)
        pattern = _PIECES[piece] = re.compile(source, re.DOTALL)
        if len(_PIECES) > 4096:
            _PIECES.clear()
    return pattern


# Neutral on purpose: the member is not told which word, so the list is not
# something to probe; moderators see the rule in the log channel.
REFUSAL = "This prompt can't be used on this server. Nothing was charged."
