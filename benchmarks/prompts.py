"""Prompts the generation benchmarks share: each asks for a story, so that every prompt runs
to its token limit and the work is the same however it is measured."""

from __future__ import annotations

TOPICS = [
    "a lighthouse keeper",
    "a lost robot",
    "the first day of spring",
    "a dragon who bakes bread",
    "a city under the sea",
    "an old map",
    "a talking cat",
    "a journey to Mars",
    "a winter market",
    "a forgotten song",
    "a clockmaker",
    "a desert caravan",
    "the last library",
    "a kite festival",
    "a volcano island",
    "a night train",
    "a garden of glass",
    "a brave mouse",
    "a storm at sea",
    "a secret door",
    "a mountain village",
    "a paper boat",
    "a comet",
    "an empty stadium",
]


def story_prompts(count: int) -> list[str]:
    return [f"Write a story about {TOPICS[i % len(TOPICS)]}." for i in range(count)]
