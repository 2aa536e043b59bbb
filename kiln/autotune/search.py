"""Search: evolutionary search guided by a cost model, with epsilon-greedy exploration.

One call of ``EvolutionarySearch.next_batch`` proposes the next candidates of one task to
measure, in the manner of Ansor's sketch-policy search:

1. a population from the best measured candidates (``init_best``) plus random samples;
2. ``generations`` rounds: the model scores the population, parents are drawn with
   probability rising with their rank, and each child is a parent with one or two knobs
   mutated; the best ``population`` distinct candidates survive;
3. the batch is the best-scored candidates not yet measured, with each slot instead a
   fresh random sample with probability ``epsilon`` (5 %): the model never gets the last
   word on what is worth measuring.

``RandomSearch`` proposes unmeasured random samples: the pure random baseline that the
research kit compares against.
"""
from __future__ import annotations

import random

import numpy as np

from kiln.autotune.space import Candidate, DesignSpace, canonical


class EvolutionarySearch:
    def __init__(self, space: DesignSpace, model, *, population: int = 64, generations: int = 3,
                 init_best: int = 16, epsilon: float = 0.05, seed: int = 0):
        self.space, self.model = space, model
        self.population, self.generations, self.init_best = population, generations, init_best
        self.epsilon = epsilon
        self.rng = random.Random(seed)
        self._cache: dict[str, Candidate] = {}

    def candidate(self, decisions: dict) -> Candidate:
        key = canonical(decisions)
        if key not in self._cache:
            self._cache[key] = Candidate.of(self.space, decisions)
        return self._cache[key]

    def _random_unmeasured(self, measured: set[str], tries: int = 50) -> Candidate | None:
        for _ in range(tries):
            d = self.space.sample(self.rng)
            if canonical(d) not in measured:
                return self.candidate(d)
        return None

    def next_batch(self, task, measured: set[str], best: list[dict], size: int) -> list[Candidate]:
        """``measured``: canonical decisions already measured; ``best``: their decisions, best first."""
        pop: dict[str, Candidate] = {}
        for d in best[: self.init_best]:
            c = self.candidate(d)
            pop[c.key] = c
        default = self.space.default()
        if canonical(default) not in measured:
            c = self.candidate(default)
            pop[c.key] = c
        while len(pop) < self.population:
            c = self.candidate(self.space.sample(self.rng))
            pop[c.key] = c
            if len(self._cache) > 20 * self.population and len(pop) >= self.population // 2:
                break  # a tiny space: stop drawing duplicates
        members = list(pop.values())
        scores = np.asarray(self.model.predict(task, members), dtype=np.float64)
        for _ in range(self.generations):
            order = np.argsort(-scores)
            ranked = [members[i] for i in order]
            weights = 1.0 / (np.arange(len(ranked)) + 1.0)  # rank-based selection pressure
            children = {}
            for _ in range(self.population):
                parent = self.rng.choices(ranked, weights=weights)[0]
                d = self.space.mutate(parent.decisions, self.rng)
                if self.rng.random() < 0.3:
                    d = self.space.mutate(d, self.rng)
                k = canonical(d)
                if k not in pop and k not in children:
                    children[k] = self.candidate(d)
            if not children:
                break
            kids = list(children.values())
            kid_scores = np.asarray(self.model.predict(task, kids), dtype=np.float64)
            members = ranked + kids
            scores = np.concatenate([scores[order], kid_scores])
            keep = np.argsort(-scores)[: self.population]
            members = [members[i] for i in keep]
            scores = scores[keep]
            pop = {c.key: c for c in members}
        batch: list[Candidate] = []
        chosen = set(measured)
        ranked = [members[i] for i in np.argsort(-scores)]
        for c in ranked:
            if len(batch) >= size:
                break
            if c.key in chosen:
                continue
            if self.rng.random() < self.epsilon:
                r = self._random_unmeasured(chosen)
                if r is not None:
                    c = r
            batch.append(c)
            chosen.add(c.key)
        return self._fill_random(batch, chosen, size)  # the population ran dry: random samples

    def _fill_random(self, batch: list[Candidate], chosen: set[str], size: int) -> list[Candidate]:
        """``batch`` topped up to ``size`` with random candidates not in ``chosen``."""
        while len(batch) < size:
            c = self._random_unmeasured(chosen)
            if c is None:
                break
            batch.append(c)
            chosen.add(c.key)
        return batch


class RandomSearch(EvolutionarySearch):
    """Unmeasured random samples, no model: the baseline of the search-efficiency benchmark."""

    def next_batch(self, task, measured: set[str], best: list[dict], size: int) -> list[Candidate]:
        return self._fill_random([], set(measured), size)


__all__ = ["EvolutionarySearch", "RandomSearch"]
