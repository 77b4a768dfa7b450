"""Keywords from item texts: per code token (TS-Rec SA-Init / TS-Align) and per title.

Words are lower-cased runs of letters and digits that contain a letter, at least 3 characters
long, minus English stopwords. With no teacher model, a code token's keywords are the words
that best tell its items apart from the rest of the catalogue, by a class-based TF-IDF score:

    score(w, token) = (share of the token's items whose title/description contains w)
                      * log(N / number of items whose text contains w)

The top ``n`` words per token (ties: higher share, then alphabetical) are kept. The token
``<b_7>`` is one vocabulary entry, so its group is every item with code 7 at level 2, whatever
the item's level-1 code.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np

from semconv.codes import code_token

STOPWORDS = frozenset(
    """
    a about above after again against all also am an and any are aren as at be because been
    before being below between both but by can cannot could did didn do does doesn doing don
    down during each etc few for from further get gets had has have having he her here hers
    herself him himself his how however i if in into is isn it its itself just let like made
    make makes may me more most much must my myself new no nor not now of off on once one only
    or other our ours ourselves out over own per same she should so some such than that the
    their theirs them themselves then there these they this those through to too two under
    until up upon us use used uses using very via was wasn we well were weren what when where
    which while who whom why will with within without would you your yours yourself
    yourselves includes including include item items product products great good high quality
    """.split()
)
_WORD = re.compile(r"[a-z0-9]+")


def words(text: str | None) -> list[str]:
    """Keyword candidates of a text, in order (duplicates kept)."""
    if not text:
        return []
    return [
        w for w in _WORD.findall(text.lower())
        if len(w) >= 3 and not w.isdigit() and any(ch.isalpha() for ch in w) and w not in STOPWORDS
    ]


def _vocab_ids(docs: Sequence[Iterable[str]]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(alphabetical vocabulary, doc index, word id) for each distinct (doc, word) pair."""
    sets = [set(d) for d in docs]
    vocab = sorted(set().union(*sets)) if sets else []
    index = {w: i for i, w in enumerate(vocab)}
    doc = np.fromiter((d for d, s in enumerate(sets) for _ in s), dtype=np.int64)
    wid = np.fromiter((index[w] for s in sets for w in s), dtype=np.int64)
    return vocab, doc, wid


def code_keywords(
    titles: Sequence[str | None], descriptions: Sequence[str | None], codes: np.ndarray, n: int
) -> dict[str, list[str]]:
    """Code token -> its top ``n`` keywords (tokens with no item, or no words, are left out)."""
    num_items, levels = codes.shape
    docs = [words(t) + words(d) for t, d in zip(titles, descriptions)]
    vocab, doc, wid = _vocab_ids(docs)
    if not len(doc):
        return {}
    df = np.bincount(wid, minlength=len(vocab))
    idf = np.log(num_items / df)
    out: dict[str, list[str]] = {}
    for level in range(levels):
        group = codes[doc, level]
        size = np.bincount(codes[:, level])
        key = group * len(vocab) + wid
        pairs, count = np.unique(key, return_counts=True)
        g, w = pairs // len(vocab), pairs % len(vocab)
        share = count / size[g]
        score = share * idf[w]
        order = np.lexsort((w, -share, -score, g))  # by group, then score, share, word
        g, w = g[order], w[order]
        starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
        ends = np.r_[starts[1:], len(g)]
        for s, e in zip(starts, ends):
            out[code_token(level, int(g[s]))] = [vocab[i] for i in w[s : min(e, s + n)]]
    return out


def _forms(word: str) -> set[str]:
    """The word and its naive singulars, so "wrench" matches "wrenches", "bottle" "bottles"."""
    out = {word}
    if word.endswith("s"):
        out.add(word[:-1])
    if word.endswith("es"):
        out.add(word[:-2])
    return out


def title_keywords(titles: Sequence[str | None], n: int, exclude: Sequence[Iterable[str]] = ()) -> list[list[str]]:
    """Per title, its ``n`` most specific words (rarest across titles), kept in title order.

    ``exclude[i]`` holds words already said elsewhere for item ``i`` (brand, category leaf);
    they are dropped in singular or plural form.
    """
    docs = [words(t) for t in titles]
    df: dict[str, int] = {}
    for d in docs:
        for w in set(d):
            df[w] = df.get(w, 0) + 1
    out = []
    for i, d in enumerate(docs):
        skip = set().union(*(_forms(w) for w in exclude[i])) if i < len(exclude) else set()
        uniq = [w for j, w in enumerate(d) if not (_forms(w) & skip) and w not in d[:j]]
        best = set(sorted(uniq, key=lambda w: (df[w], uniq.index(w)))[:n])
        out.append([w for w in uniq if w in best])
    return out
