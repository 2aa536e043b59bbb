"""Search: evolutionary search guided by a cost model, with epsilon-greedy exploration.

One call of ``EvolutionarySearch.next_batch`` proposes the next candidates of one task to
measure, in the manner of Ansor's sketch-policy search:

0. what is known before any measurement comes first: the default rules' decisions
   (``DesignSpace.default()``, the untuned schedule) open the first batch
   (``default_first``), so the search never ends worse than the untuned kernel. While
   the task has no measurements and the model has learnt nothing (``trained`` False),
   ranking by the model would be ranking by noise: the rest of that batch is, half,
   neighbours of the default (one or two knobs changed: the rules are a good prior) and,
   half, random samples spread over the space (farthest-point selection on the knobs).
   With ``default_first=False`` neither the default nor its neighbours are measured
   first (the default is only a member of the evolutionary population, ranked like any);
1. a population from the best measured candidates (``init_best``) plus fresh random samples;
2. ``generations`` rounds: the model scores the population, parents are drawn with
   probability rising with their rank, and each child is a parent with one or two knobs
   mutated (never one already measured); the best ``population`` distinct candidates survive;
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
                 init_best: int = 16, epsilon: float = 0.05, seed: int = 0, default_first: bool = True):
        self.space, self.model = space, model
        self.population, self.generations, self.init_best = population, generations, init_best
        self.epsilon, self.default_first = epsilon, default_first
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

    def initial_population(self, best: list[dict], default: Candidate) -> dict[str, Candidate]:
        """The ``init_best`` best measured candidates and the default, topped up to
        ``population`` with fresh random samples -- in every batch, however many candidates
        the search has built before (the random share keeps the search from collapsing
        around its first good candidates)."""
        pop: dict[str, Candidate] = {}
        for d in best[: self.init_best]:
            c = self.candidate(d)
            pop[c.key] = c
        pop.setdefault(default.key, default)
        misses = 0
        while len(pop) < self.population and misses < 4 * self.population:
            c = self.candidate(self.space.sample(self.rng))
            if c.key in pop:
                misses += 1  # a small space: stop once samples keep repeating
            pop[c.key] = c
        return pop

    def next_batch(self, task, measured: set[str], best: list[dict], size: int) -> list[Candidate]:
        """``measured``: canonical decisions already measured; ``best``: the valid ones' decisions,
        best first."""
        batch: list[Candidate] = []
        chosen = set(measured)
        default = self.candidate(self.space.default())
        if self.default_first and default.key not in chosen and size > 0:
            batch.append(default)
            chosen.add(default.key)
        if not best and not getattr(self.model, "trained", True):  # cold start: nothing to rank by
            if self.default_first:
                self._neighbours(default, batch, chosen, len(batch) + (size - len(batch)) // 2)
            return self._diverse_random(batch, chosen, size)
        pop = self.initial_population(best, default)
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
                if k not in pop and k not in children and k not in chosen:  # no slot for the measured
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

    def _neighbours(self, centre: Candidate, batch: list[Candidate], chosen: set[str], size: int) -> None:
        """``batch`` topped up to ``size`` with unmeasured mutants of ``centre`` (one or two knobs)."""
        for _ in range(20 * max(size - len(batch), 0)):
            if len(batch) >= size:
                return
            d = self.space.mutate(centre.decisions, self.rng)
            if self.rng.random() < 0.3:
                d = self.space.mutate(d, self.rng)
            if canonical(d) not in chosen:
                c = self.candidate(d)
                batch.append(c)
                chosen.add(c.key)

    def _diverse_random(self, batch: list[Candidate], chosen: set[str], size: int, pool: int = 8) -> list[Candidate]:
        """``batch`` topped up to ``size`` with random samples spread over the space: from
        ``pool`` x as many unmeasured samples, repeatedly the one farthest (in knob
        coordinates, ``DesignSpace.coordinates``) from those already in the batch."""
        want = size - len(batch)
        if want <= 0:
            return batch
        drawn: dict[str, dict] = {}
        for _ in range(pool * want * 4):  # decisions only: a Candidate is built for the chosen few
            if len(drawn) >= pool * want:
                break
            d = self.space.sample(self.rng)
            k = canonical(d)
            if k not in chosen:
                drawn[k] = d
        rest = list(drawn.values())
        if not rest:
            return batch
        points = np.array([self.space.coordinates(d) for d in rest])
        if batch:
            taken = np.array([self.space.coordinates(c.decisions) for c in batch])
            dist = np.min(np.linalg.norm(points[:, None, :] - taken[None, :, :], axis=2), axis=1)
        else:  # nothing to be far from yet: the first pick is random
            dist = np.full(len(rest), np.inf)
            dist[self.rng.randrange(len(rest))] = np.finfo(np.float64).max
        while len(batch) < size:
            i = int(np.argmax(dist))
            if dist[i] < 0:
                break  # every sample taken
            c = self.candidate(rest[i])
            batch.append(c)
            chosen.add(c.key)
            dist = np.minimum(dist, np.linalg.norm(points - points[i], axis=1))
            dist[i] = -1.0
        return batch

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
