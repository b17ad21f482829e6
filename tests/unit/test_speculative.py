"""Prompt-lookup speculative decoding, the pure part (voicebot.llm.speculative): what is guessed, and that
checking guesses never changes what the model says (greedy: the same tokens; sampling: the same distribution)."""

from __future__ import annotations

from collections import Counter

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from voicebot.llm.speculative import MAX_DRAFT, PromptLookup, Sampling, distribution, sample, verify

VOCAB = 12


def one_hot(token: int, vocab: int = VOCAB) -> np.ndarray:
    logits = np.full(vocab, -5.0, dtype=np.float32)
    logits[token] = 5.0
    return logits


def test_the_tokens_after_the_latest_earlier_occurrence_are_guessed() -> None:
    # "... 9 am to 6 pm ..." in the knowledge; the reply has just written "9 am".
    lookup = PromptLookup([1, 2, 9, 3, 4, 6, 5, 7, 8, 9, 3])
    assert lookup.draft() == [4, 6, 5, 7]
    assert lookup.draft(2) == [4, 6]
    lookup.extend([4, 6])
    assert lookup.draft() == [5, 7, 8, 9]


def test_the_longest_matching_suffix_wins() -> None:
    # (2, 3) is followed by 10 at its latest occurrence, but (1, 2, 3) by 20.
    lookup = PromptLookup([1, 2, 3, 20, 21, 5, 2, 3, 10, 1, 2, 3])
    assert lookup.draft(1) == [20]


def test_nothing_is_guessed_without_a_repeated_run() -> None:
    assert PromptLookup([1, 2, 3, 4, 5]).draft() == []
    assert PromptLookup([7]).draft() == []
    assert PromptLookup([]).draft() == []
    # A single repeated token is not enough (MIN_NGRAM is 2).
    assert PromptLookup([5, 1, 2, 5]).draft() == []
    assert PromptLookup([1, 2, 3, 1, 2]).draft(0) == []


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 6), max_size=60), st.integers(0, 8))
def test_a_guess_is_always_what_followed_an_earlier_copy_of_the_suffix(tokens: list[int], limit: int) -> None:
    guess = PromptLookup(tokens).draft(limit)
    assert len(guess) <= limit
    if guess:
        # Some earlier position j has the same n tokens before it as the end, and the guess follows it.
        assert any(tokens[j - n:j] == tokens[len(tokens) - n:] and tokens[j:j + len(guess)] == guess
                   for n in range(2, 5) for j in range(n, len(tokens)))


def test_greedy_keeps_guesses_the_model_agrees_with_then_adds_its_own_token() -> None:
    greedy = Sampling(temperature=0.0)
    rng = np.random.default_rng(0)
    # The model would say 4, 6, 5 after the last token: guesses 4, 6, 9 keep 4 and 6, then 5 replaces 9.
    rows = [one_hot(4), one_hot(6), one_hot(5), one_hot(7)]
    assert verify(rows, [4, 6, 9], greedy, rng) == [4, 6, 5]
    # All guesses right: one more token comes free from the last row.
    assert verify(rows, [4, 6, 5], greedy, rng) == [4, 6, 5, 7]
    # No guess: plain decoding.
    assert verify(rows[:1], [], greedy, rng) == [4]
    # First guess wrong: exactly the token plain decoding gives.
    assert verify(rows, [3, 6, 5], greedy, rng) == [4]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=MAX_DRAFT + 1),
       st.lists(st.integers(0, VOCAB - 1), max_size=MAX_DRAFT), st.integers(0, 2**32 - 1))
def test_greedy_verification_equals_token_by_token_greedy_decoding(model: list[int], draft: list[int],
                                                                  seed: int) -> None:
    """Whatever is guessed, the tokens kept are the prefix of what greedy decoding would have produced."""
    draft = draft[:len(model) - 1]
    rows = [one_hot(t) for t in model]
    out = verify(rows, draft, Sampling(temperature=0.0), np.random.default_rng(seed))
    assert out == model[:len(out)]
    agreed = next((i for i, (d, m) in enumerate(zip(draft, model, strict=False)) if d != m), len(draft))
    assert len(out) == agreed + 1


def test_sampling_with_guesses_has_the_models_distribution() -> None:
    """Speculative sampling is exact: the first token kept is distributed as plain sampling of the model's
    filtered distribution, whatever the guess (a likely one, an unlikely one, one outside the candidates)."""
    rng = np.random.default_rng(1234)
    logits = np.array([2.0, 1.6, 1.2, 0.4, -1.0, -3.0, -8.0, -9.0, -9.0, -9.0, -9.0, -9.0], dtype=np.float32)
    sampling = Sampling(temperature=0.8)
    ids, probs = distribution(logits, sampling)
    expected = dict(zip(ids.tolist(), probs.tolist(), strict=True))
    assert abs(sum(expected.values()) - 1.0) < 1e-9 and 6 not in expected  # min-p cut the tail
    n = 20_000
    for guess in (0, 2, 6):
        counts = Counter(verify([logits, logits], [guess], sampling, rng)[0] for _ in range(n))
        for token, p in expected.items():
            # Five standard deviations: a wrong distribution fails, a right one practically never does.
            assert abs(counts[token] / n - p) <= 5 * (p * (1 - p) / n) ** 0.5 + 1e-9, (guess, token, counts)
        assert set(counts) <= set(expected)


def test_filters_match_llama_cpp_defaults() -> None:
    logits = np.linspace(0.0, 10.0, 100, dtype=np.float32)  # token 99 most likely
    ids, probs = distribution(logits, Sampling(temperature=1.0))
    assert ids[0] == 99 and len(ids) <= 40  # top-k 40
    assert probs[-1] >= 0.05 * probs[0]  # min-p 0.05
    assert sample(logits, Sampling(temperature=0.0), np.random.default_rng(0)) == 99
    assert sample(logits, Sampling(temperature=0.0), np.random.default_rng(0), exclude=99) == 98
