"""The `similar-words` command: the words whose vectors in a text model are closest (cosine) to a word's.

The word is standardised and tokenised by the model's own `vectorize` layer (so `Great!` finds
`great`); a word outside the vocabulary is an error that suggests close spellings. Padding,
`[UNK]` and the pairs of words of an `--ngrams 2` model (`WordVectors.word_rows`) are never answers.
"""

from __future__ import annotations

import argparse
import difflib

import numpy as np

from pipeline.command_flags import CommandFlag, add_flags
from pipeline.tools.common import ToolError, format_table, print_json_lines
from pipeline.tools.flags import TEXT_MODEL_FLAG, UNSAFE_MODEL_LOADING_FLAG, json_lines_flag, k_flag
from pipeline.tools.knn import DEFAULT_K, top_k
from pipeline.tools.store import unit_rows
from pipeline.tools.word_vectors import OOV_INDEX, WordVectors, load_word_vectors

__all__ = ["UnknownWordError", "word_index", "similar_words", "FLAGS", "add_arguments", "main_from_args"]


class UnknownWordError(ToolError):
    """The word is not in the model's vocabulary."""


def word_index(words: WordVectors, word: str) -> int:
    """The model's token id of one word; errors for none, several, or an out-of-vocabulary word."""
    ids = words.token_ids(word)
    if not ids:
        raise ToolError(f"--word {word!r} has no word once lower-cased and stripped of punctuation")
    if len(ids) > 1:
        raise ToolError(f"--word {word!r} is {len(ids)} words to this model; give one word")
    if ids[0] == OOV_INDEX:
        vocabulary = [w for w, is_word in zip(words.vocabulary, words.word_rows) if is_word]
        close = difflib.get_close_matches(word.lower(), vocabulary, n=5)
        hint = f"; close words in the vocabulary: {', '.join(close)}" if close else ""
        raise UnknownWordError(f"--word {word!r} is not in the model's vocabulary ({words.words:,} words){hint}")
    return ids[0]


def similar_words(words: WordVectors, word: str, k: int = DEFAULT_K) -> list[dict]:
    """The k words most similar to `word`, best first: rank, word, score, index."""
    if k < 1:
        raise ToolError(f"-k must be at least 1, got {k}")
    index = word_index(words, word)
    unit, valid = unit_rows(words.vectors)
    if not valid[index]:
        raise ToolError(f"--word {word!r}: its vector is zero, so it has no direction to compare")
    scores = (unit @ unit[index]).astype(np.float64)
    scores[~(valid & words.word_rows)] = -np.inf  # padding, [UNK] and pairs are not words
    scores[index] = -np.inf
    best = top_k(scores, k)
    return [
        {"rank": rank, "word": words.vocabulary[i], "score": float(scores[i]), "index": int(i)}
        for rank, i in enumerate(best, start=1)
    ]


FLAGS = (
    TEXT_MODEL_FLAG,
    CommandFlag("--word", "The word to find neighbours of.", required=True),
    k_flag("How many words"),
    json_lines_flag("word"),
    UNSAFE_MODEL_LOADING_FLAG,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `python -m pipeline similar-words`: its `FLAGS`."""
    add_flags(parser, FLAGS)


def main_from_args(args: argparse.Namespace) -> int:
    """Run `similar-words`: a table (or JSON lines) on stdout."""
    words = load_word_vectors(args.text_model, args.unsafe_model_loading)
    rows = similar_words(words, args.word, args.k)
    if args.json:
        print_json_lines(rows)
    else:
        print(format_table(rows, ["rank", "word", "score"]))
    return 0
