"""How the document workflow cuts a long text into chunks (conveyor_seed.jobs.documents)."""

import itertools

from conveyor_seed.jobs.documents import chunk_bounds


def test_chunks_cover_the_text_in_order_and_end_at_a_sentence() -> None:
    text = " ".join(f"Sentence number {i} says something about chunks." for i in range(100))
    bounds = chunk_bounds(text, 1000)
    assert bounds[0][0] == 0
    assert bounds[-1][1] == len(text)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))  # no gap
    assert all(0 < end - start <= 1000 for start, end in bounds)
    assert all(text[end - 2] == "." for _, end in bounds[:-1])  # "…chunks. " ends each
    assert "".join(text[a:b] for a, b in bounds) == text


def test_a_text_without_sentence_ends_is_cut_at_a_space_or_at_the_size() -> None:
    words = "word " * 500
    cuts = [end for _, end in chunk_bounds(words, 1000)[:-1]]
    assert cuts
    assert all(words[end - 1] == " " for end in cuts)
    solid = "x" * 2500
    assert chunk_bounds(solid, 1000) == [(0, 1000), (1000, 2000), (2000, 2500)]


def test_a_short_text_is_one_chunk_and_an_empty_one_none() -> None:
    assert chunk_bounds("One sentence.", 1000) == [(0, 13)]
    assert chunk_bounds("", 1000) == []
