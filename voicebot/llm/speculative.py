"""Prompt-lookup speculative decoding for the embedded model: more tokens per forward pass, same replies.

Why: on a small CPU a reply's first sentence is decoded one token at a time, and each token is one forward
pass over the whole model (≈40 ms for Qwen2.5 0.5B on 2 cores, bound by reading the weights, not by
arithmetic).  A pass over a few tokens costs little more than a pass over one (measured: 1 token 40 ms, 4
tokens 71 ms), and a phone agent's answers copy the knowledge and the caller's words ("Monday to Friday from
9 am to 6 pm", "a check-up costs 45 dollars").  So we *guess* the next tokens by finding the last few
generated tokens earlier in the context (prompt lookup: no draft model needed) and let one pass check the
guess; every token the model agrees with is a pass saved.

The replies are the model's own: verification is standard speculative sampling with a deterministic draft.
At each guessed position the model's distribution ``p`` (temperature, top-k, top-p and min-p as llama.cpp's
defaults) accepts the guess ``d`` with probability ``p(d)``; on a rejection the token is drawn from ``p``
with ``d`` removed, and nothing after it is kept.  That yields exactly the distribution of sampling ``p``
token by token; with temperature 0 it is plain greedy decoding (accept while the guess is the argmax).

Everything here is pure (token lists, logits arrays, a random generator): the embedded backend drives
llama.cpp and feeds this module the logits (``voicebot.llm.embedded``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

MIN_NGRAM = 2
"""The shortest run of tokens looked up: a single token repeats too often to predict anything."""
MAX_NGRAM = 4
MAX_DRAFT = 4
"""Guessed tokens per pass: a pass over 5 tokens costs ≈ 2.4× one over 1 on 2 cores, so longer guesses
lose more on a miss than they win on a hit."""


class PromptLookup:
    """Guesses the next tokens from the context itself.

    ``extend`` appends tokens (the prompt, then each accepted token); ``draft`` finds the longest suffix of
    the context (``MAX_NGRAM`` down to ``MIN_NGRAM`` tokens) seen earlier and returns the tokens that followed
    its latest earlier occurrence.  An index of n-gram → where it last ended keeps each step O(1)."""

    def __init__(self, tokens: Sequence[int] = ()) -> None:
        self._tokens: list[int] = []
        # n-gram → the index just after its latest occurrence that is followed by at least one token.
        self._next: dict[tuple[int, ...], int] = {}
        self.extend(tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        for token in tokens:
            # The n-grams ending at the current last token now have a follower (``token``): index them.
            end = len(self._tokens)
            for n in range(MIN_NGRAM, MAX_NGRAM + 1):
                if end >= n:
                    self._next[tuple(self._tokens[end - n:end])] = end
            self._tokens.append(int(token))

    def draft(self, limit: int = MAX_DRAFT) -> list[int]:
        """Up to ``limit`` guessed tokens (empty when no suffix of the context occurred before)."""
        if limit <= 0:
            return []
        size = len(self._tokens)
        for n in range(min(MAX_NGRAM, size), MIN_NGRAM - 1, -1):
            start = self._next.get(tuple(self._tokens[size - n:]))
            if start is not None:
                return self._tokens[start:min(start + limit, size)]
        return []


@dataclass(frozen=True)
class Sampling:
    """How a token is drawn from logits (llama-cpp-python's ``create_completion`` defaults)."""

    temperature: float = 0.0
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


def distribution(logits: npt.NDArray[np.float32], sampling: Sampling) -> tuple[npt.NDArray[np.int64],
                                                                               npt.NDArray[np.float64]]:
    """(candidate token ids, their probabilities): llama.cpp's chain as llama-cpp-python builds it, top-k, then
    top-p and min-p on the unscaled probabilities, then the temperature on what is left."""
    k = max(1, min(sampling.top_k, logits.shape[0]))
    ids = np.argpartition(logits, -k)[-k:]
    order = np.argsort(logits[ids])[::-1]
    ids = ids[order]
    raw = logits[ids].astype(np.float64)
    probs = np.exp(raw - raw[0])
    probs /= probs.sum()
    # top-p: the smallest head whose mass reaches top_p (at least one token).
    keep = int(np.searchsorted(np.cumsum(probs), sampling.top_p) + 1)
    # min-p: drop tokens less likely than min_p times the most likely one.
    keep = min(keep, int(np.count_nonzero(probs >= sampling.min_p * probs[0])) or 1)
    ids, raw = ids[:keep], raw[:keep]
    scaled = raw / max(sampling.temperature, 1e-6)
    probs = np.exp(scaled - scaled[0])
    return ids, probs / probs.sum()


def sample(logits: npt.NDArray[np.float32], sampling: Sampling, rng: np.random.Generator,
           exclude: int | None = None) -> int:
    """One token from ``logits``; ``exclude`` (a rejected guess) is removed from the distribution first."""
    if sampling.greedy:
        if exclude is None:
            return int(np.argmax(logits))
        masked = logits.copy()
        masked[exclude] = -np.inf
        return int(np.argmax(masked))
    ids, probs = distribution(logits, sampling)
    if exclude is not None:
        probs = np.where(ids == exclude, 0.0, probs)
        total = probs.sum()
        if total <= 0.0:  # the guess was the only candidate: never here, since then it is accepted
            return int(ids[0])
        probs = probs / total
    return int(ids[rng.choice(len(ids), p=probs)])


def accepts(logits: npt.NDArray[np.float32], guess: int, sampling: Sampling, rng: np.random.Generator) -> bool:
    """Whether the model keeps ``guess`` at this position: the argmax when greedy, else with probability
    ``p(guess)``."""
    if sampling.greedy:
        return int(np.argmax(logits)) == guess
    ids, probs = distribution(logits, sampling)
    hit = np.nonzero(ids == guess)[0]
    return bool(hit.size) and bool(rng.random() < float(probs[hit[0]]))


def verify(rows: Sequence[npt.NDArray[np.float32]], draft: Sequence[int], sampling: Sampling,
           rng: np.random.Generator) -> list[int]:
    """The tokens one pass yields: ``rows[i]`` are the logits after the pass's i-th token (the last accepted
    token, then each guess).  Returns the accepted guesses followed by one token drawn by the model (the
    correction at the first rejection, or the next token after a fully accepted guess)."""
    out: list[int] = []
    for i, guess in enumerate(draft):
        if accepts(rows[i], guess, sampling, rng):
            out.append(int(guess))
            continue
        out.append(sample(rows[i], sampling, rng, exclude=guess))
        return out
    out.append(sample(rows[len(draft)], sampling, rng))
    return out
