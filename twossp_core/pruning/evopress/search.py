"""The evolutionary search itself, independent of models: genomes, mutation, multi-step selection.

A genome is the pair (removed attention blocks, removed FFN blocks) with fixed sizes, so every candidate has the
same parameter count. Mutation swaps removed and kept submodules of the same kind. As in the authors' recipe,
the first parent is the fittest of many random candidates; then every generation mutates distinct offspring from
the parent and selects in steps: each step draws a fresh random minibatch of calibration windows, scores the pool
on it and keeps the best few; the parent joins the last step (elitism), so it is replaced only by a child at least
as fit on the same tokens.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

Genome = tuple[tuple[int, ...], tuple[int, ...]]  # (removed attention, removed FFN), sorted
Windows = tuple[int, ...]  # calibration window ids of one minibatch, sorted
Fitness = Callable[[Genome, Windows], float]  # (genome, minibatch) → KL divergence (lower is better)
Step = tuple[int, int]  # (windows drawn, survivors kept)

GENERATIONS_PER_SWAP = 1 / 1.5  # the authors' k(n-k)/1.5 generations, k(n-k) being the number of single swaps
DRAW_ATTEMPTS = 20  # tries per wanted candidate before a small search space is declared exhausted


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


def default_generations(blocks: int, counts: tuple[int, int]) -> int:
    """Single swaps between a removed and a kept module of the same kind, divided by 1.5."""
    swaps = sum(k * (blocks - k) for k in counts)
    return int(swaps * GENERATIONS_PER_SWAP)


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


def distinct(make: Callable[[], Genome], count: int, exclude: set[Genome]) -> list[Genome]:
    """Up to `count` distinct genomes from `make`, none in `exclude` (fewer if the space runs out)."""
    out: dict[Genome, None] = {}
    for _ in range(count * DRAW_ATTEMPTS):
        if len(out) == count:
            break
        genome = make()
        if genome not in exclude:
            out[genome] = None
    return list(out)


@dataclass
class SearchResult:
    best: Genome
    fitness: float  # on `windows`, the minibatch of the last selection
    windows: Windows
    history: list[float] = field(default_factory=list)  # parent fitness on each generation's last minibatch
    evaluations: int = 0


class _Selector:
    def __init__(self, rng: random.Random, fitness: Fitness, available: int) -> None:
        self.rng, self.fitness, self.available = rng, fitness, available
        self.memo: dict[tuple[Genome, Windows], float] = {}

    def draw(self, windows: int) -> Windows:
        return tuple(sorted(self.rng.sample(range(self.available), min(windows, self.available))))

    def score(self, genome: Genome, batch: Windows) -> float:
        key = (genome, batch)
        if key not in self.memo:
            self.memo[key] = self.fitness(genome, batch)
        return self.memo[key]

    def select(
        self, pool: list[Genome], steps: list[Step], elite: Genome | None = None
    ) -> tuple[Genome, float, Windows]:
        """Multi-step selection (ties → earlier in the pool); `elite` joins the last step."""
        for n, (windows, survivors) in enumerate(steps):
            if n == len(steps) - 1 and elite is not None and elite not in pool:
                pool = [*pool, elite]
            batch = self.draw(windows)
            scores = [self.score(g, batch) for g in pool]
            order = sorted(range(len(pool)), key=lambda i: (scores[i], i))[:survivors]
            pool, best = [pool[i] for i in order], scores[order[0]]
        return pool[0], best, batch


def evolve(
    *,
    blocks: int,
    counts: tuple[int, int],
    fitness: Fitness,
    generations: int,
    offspring: int,
    initial: Step,
    steps: list[Step],
    available: int,
    seed: int,
    on_generation: Callable[[int], None] | None = None,
) -> SearchResult:
    """initial = (windows, candidates) of the first parent's selection; steps = (windows, survivors) per
    selection step of a generation; `available` calibration windows are drawn from."""
    rng = random.Random(seed)
    selector = _Selector(rng, fitness, available)
    first = distinct(lambda: random_genome(rng, blocks, counts), initial[1], set())
    parent, score, batch = selector.select(first, [(initial[0], 1)])
    history = []
    for gen in range(generations):
        children = distinct(lambda p=parent: mutate(rng, p, blocks), offspring, {parent})
        if children:
            parent, score, batch = selector.select(children, steps, elite=parent)
        history.append(score)
        if on_generation is not None:
            on_generation(gen + 1)
    return SearchResult(best=parent, fitness=score, windows=batch, history=history, evaluations=len(selector.memo))
