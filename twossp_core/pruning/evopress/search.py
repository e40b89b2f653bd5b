"""The evolutionary search itself, independent of models: genomes, mutation, multi-step selection.

A genome is the pair (removed attention blocks, removed FFN blocks) with fixed sizes, so every candidate has the
same parameter count. Mutation swaps removed and kept submodules of the same kind. Selection evaluates all
offspring on a small token budget, keeps the best few, re-evaluates them on a larger budget, and so on; the
winner replaces the parent only if it is at least as fit on the largest budget (elitism).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

Genome = tuple[tuple[int, ...], tuple[int, ...]]  # (removed attention, removed FFN), sorted
Fitness = Callable[[Genome, int], float]  # (genome, windows) → KL divergence (lower is better)


def plan_counts(blocks: int, attn_cost: int, mlp_cost: int, target: int) -> tuple[int, int]:
    """(attention, FFN) removal counts whose parameters are closest to target; ties → more attention."""
    best: tuple[int, int, int] | None = None
    for n_mlp in range(blocks + 1):
        for n_attn in range(blocks + 1):
            err = abs(n_attn * attn_cost + n_mlp * mlp_cost - target)
            key = (err, -n_attn, n_mlp)
            if best is None or key < best:
                best = key
    assert best is not None
    return -best[1], best[2]


def random_genome(rng: random.Random, blocks: int, counts: tuple[int, int]) -> Genome:
    return (tuple(sorted(rng.sample(range(blocks), counts[0]))), tuple(sorted(rng.sample(range(blocks), counts[1]))))


def mutate(rng: random.Random, genome: Genome, blocks: int) -> Genome:
    """Swap a removed and a kept submodule of one kind, min(U{1,3}, U{1,3}) times."""
    parts = [set(genome[0]), set(genome[1])]
    movable = [k for k in (0, 1) if 0 < len(parts[k]) < blocks]
    if not movable:
        return genome
    for _ in range(min(rng.randint(1, 3), rng.randint(1, 3))):
        k = rng.choice(movable)
        out = rng.choice(sorted(parts[k]))
        into = rng.choice(sorted(set(range(blocks)) - parts[k]))
        parts[k].remove(out)
        parts[k].add(into)
    return (tuple(sorted(parts[0])), tuple(sorted(parts[1])))


@dataclass
class SearchResult:
    best: Genome
    fitness: float
    history: list[float] = field(default_factory=list)  # parent fitness (largest budget) after each generation
    evaluations: int = 0


def select(candidates: list[Genome], steps: list[tuple[int, int]], fitness: Fitness) -> Genome:
    """Multi-step selection: per (windows, survivors) step, keep the best `survivors` (ties → earlier)."""
    pool = list(dict.fromkeys(candidates))
    for windows, survivors in steps:
        scored = sorted(range(len(pool)), key=lambda i: (fitness(pool[i], windows), i))
        pool = [pool[i] for i in scored[:survivors]]
    return pool[0]


def evolve(
    *,
    blocks: int,
    counts: tuple[int, int],
    fitness: Fitness,
    generations: int,
    offspring: int,
    steps: list[tuple[int, int]],
    seed: int,
    on_generation: Callable[[int], None] | None = None,
) -> SearchResult:
    rng = random.Random(seed)
    memo: dict[tuple[Genome, int], float] = {}

    def cached(genome: Genome, windows: int) -> float:
        key = (genome, windows)
        if key not in memo:
            memo[key] = fitness(genome, windows)
        return memo[key]

    final = steps[-1][0]
    parent = select([random_genome(rng, blocks, counts) for _ in range(offspring)], steps, cached)
    history = []
    for gen in range(generations):
        child = select([mutate(rng, parent, blocks) for _ in range(offspring)], steps, cached)
        if cached(child, final) <= cached(parent, final):
            parent = child
        history.append(cached(parent, final))
        if on_generation is not None:
            on_generation(gen + 1)
    return SearchResult(best=parent, fitness=cached(parent, final), history=history, evaluations=len(memo))
