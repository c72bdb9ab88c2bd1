"""Racing: candidates scored on growing dev subsamples, the clearly worse dropped at each step, so that a budget of
any size ends with the best candidate found so far and the evidence for it.

The dev split is put in a fixed order that interleaves its labels (every prefix is close to stratified) and cut
into rungs that double, e.g. 15, 30, 60, 120 and all 231 examples of a 231-row dev split. Each rung scores every
candidate still in the race on the rung's new examples, cheapest first (by its measured seconds per request),
then drops each candidate that is worse than the leader on the rung's examples by a paired permutation test at
`alpha`. The baseline races like any candidate: it is scored on the first rung whatever it costs (a decision
needs it) and may be dropped after that; once the race is over it is scored on the deepest rung a candidate
completed (`settle`, if the time left allows), so that the decision compares them on the same examples.

Candidates that send the same requests (the same demos and label decoding, differing only in how their answers
are read, e.g. the weight of the neighbours' vote) form a group whose requests are made once for all of them.

With a time budget each rung gets a share of the time left: the first a third, each later one the time left
divided by the rungs left. On the first rung, candidates whose expected time would overrun the share are not
raced; on later rungs only the best-scoring groups that fit go on. A budget that ends in the middle of a rung
ends the race; what was scored stays, and the decision compares what there is.

The race is pure bookkeeping: scoring (model calls, trial records) is the caller's `score` function.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ['Entrant', 'Group', 'Race', 'Score', 'interleaved', 'rung_sizes']

#: Share of the time left that the first rung may use.
FIRST_SHARE = 1 / 3


@dataclass
class Entrant:
    """One candidate in the race: its predictions so far, the last rung it completed, and why it left, if it did."""

    number: int
    name: str
    group: str
    baseline: bool = False
    predictions: dict[str, Any] = field(default_factory=dict)
    rung: int = -1
    out: str | None = None


@dataclass
class Group:
    """Entrants that send the same requests, scored together; `seconds` is the measured time per request."""

    key: str
    members: list[Entrant]
    scored: list[str] = field(default_factory=list)
    seconds: float | None = None
    _measured: tuple[int, float] = (0, 0.0)

    @property
    def baseline(self) -> bool:
        return any(m.baseline for m in self.members)

    def alive(self) -> list[Entrant]:
        """Return the members still in the race."""
        return [m for m in self.members if m.out is None]

    def measured(self, requests: int, seconds: float) -> None:
        """Add `requests` answered in `seconds` of model time to the running mean."""
        n, total = self._measured
        self._measured = (n + requests, total + seconds)
        if n + requests:
            self.seconds = (total + seconds) / (n + requests)


#: Score a group's alive members on new example ids: (group, new ids, rung, the rung's ids) -> None, or the reason
#: the run must stop (a budget spent). It fills each alive member's `predictions` and the group's `scored`.
Score = Callable[[Group, list[str], int, list[str]], str | None]


def interleaved(expected: Mapping[str, Any], seed: int, *, stratify: bool = True) -> list[str]:
    """Return the example ids in a fixed order whose every prefix is close to stratified: shuffled within each
    expected label, then one of each label in turn (labels in a shuffled order).

    >>> interleaved({'a': 'x', 'b': 'x', 'c': 'y'}, 0)[:2] in (['a', 'c'], ['b', 'c'], ['c', 'a'], ['c', 'b'])
    True
    """
    rng = random.Random(seed)
    by_label: dict[str, list[str]] = {}
    for ex, value in sorted(expected.items()):
        by_label.setdefault(str(value) if stratify else '', []).append(ex)
    queues = [by_label[label] for label in sorted(by_label)]
    rng.shuffle(queues)
    for queue in queues:
        rng.shuffle(queue)
    order: list[str] = []
    while any(queues):
        for queue in queues:
            if queue:
                order.append(queue.pop())
    return order


def rung_sizes(n: int) -> list[int]:
    """Return the rung sizes for `n` dev examples: from max(8, n / 16) doubling, then all of them.

    >>> rung_sizes(231), rung_sizes(6)
    ([15, 30, 60, 120, 231], [6])
    """
    size = min(n, max(8, math.ceil(n / 16)))
    sizes = []
    while size < n:
        sizes.append(size)
        size *= 2
    return [*sizes, n]


@dataclass
class Race:
    """The race of `groups` over the examples in `order`, cut at `rungs`.

    `value(entrant, ids)` is an entrant's metric on those examples; `p_better(a, b, ids)` the p-value that `a` is
    better than `b` there (1.0 if it is not better); `may_lead(entrant, ids)` whether an entrant may lead (a
    degenerate one may not); `seconds_left()` the time budget left, or None without one.
    """

    groups: list[Group]
    order: list[str]
    rungs: list[int]
    value: Callable[[Entrant, Sequence[str]], float]
    p_better: Callable[[Entrant, Entrant, Sequence[str]], float]
    may_lead: Callable[[Entrant, Sequence[str]], bool] = lambda entrant, ids: True
    seconds_left: Callable[[], float | None] = lambda: None
    alpha: float = 0.05
    stop: str | None = None
    events: list[str] = field(default_factory=list)

    @property
    def entrants(self) -> list[Entrant]:
        return sorted((m for g in self.groups for m in g.members), key=lambda m: m.number)

    def alive(self) -> list[Entrant]:
        """Return the entrants still in the race."""
        return [m for m in self.entrants if m.out is None]

    def probe(self, score: Score) -> bool:
        """Score every group on the first example, to measure its seconds per request; return False if a budget
        ended it."""
        first = self.order[:1]
        for group in self.groups:
            if group.alive() and first[0] not in group.scored:
                self.stop = score(group, first, 0, self.order[: self.rungs[0]])
                if self.stop:
                    return False
        return True

    def run(self, score: Score) -> None:
        """Run the rungs until one entrant is left, the last rung is done, or a budget ends the race."""
        for rung, size in enumerate(self.rungs):
            ids = self.order[:size]
            scheduled = self._first_rung(ids) if rung == 0 else self._later_rung(rung, ids)
            share = self._share(rung)
            start = self.seconds_left()
            for group in scheduled:
                new = [ex for ex in ids if ex not in set(group.scored)]
                if rung == 0 and self._overruns(group, new, share, start):
                    continue
                if new:
                    self.stop = score(group, new, rung, ids)
                    if self.stop:
                        return
                for member in group.alive():
                    member.rung = rung
            self._drop(rung, ids)
            if len(self.alive()) <= 1:
                return

    def settle(self, score: Score) -> None:
        """After the rungs: score a baseline dropped early on the examples of the deepest rung a candidate
        completed, so that the decision compares the two on the same examples. Dropped on a small rung, the baseline
        left the decision that rung's few examples: on poem_sentiment a candidate 29 points better on 105 dev rows
        was refused on the 16 it shared with the baseline (p = 0.37). The baseline is usually the cheapest entrant;
        with a time budget it is scored only if the time left covers it."""
        if self.stop:
            return
        group = next((g for g in self.groups if g.baseline), None)
        deepest = max((m.rung for m in self.entrants if not m.baseline and m.predictions), default=-1)
        if group is None or deepest < 0:
            return
        ids = self.order[: self.rungs[deepest]]
        new = [ex for ex in ids if ex not in set(group.scored)]
        left = self.seconds_left()
        if not new:
            return
        if left is not None and self._cost(group, len(new)) > left:
            self.events.append(f'baseline: not scored on the {len(ids)} examples of rung {deepest + 1}: no time left')
            return
        dropped = {m.number: m.out for m in group.members}
        for member in group.members:  # scored as if in the race, then out again with its reason
            member.out = None
        try:
            self.stop = score(group, new, deepest, ids)
        finally:
            for member in group.members:
                member.out = dropped[member.number]
        if not self.stop:
            for member in group.members:
                member.rung = deepest
            self.events.append(f'baseline: scored on the {len(ids)} examples of rung {deepest + 1} for the decision')

    def _share(self, rung: int) -> float | None:
        left = self.seconds_left()
        if left is None:
            return None
        return left * FIRST_SHARE if rung == 0 else left / (len(self.rungs) - rung)

    def _cost(self, group: Group, n: int) -> float:
        return (group.seconds or 0.0) * n

    def _first_rung(self, ids: list[str]) -> list[Group]:
        live = [g for g in self.groups if g.alive()]
        return sorted(live, key=lambda g: (g.seconds if g.seconds is not None else math.inf, g.members[0].number))

    def _overruns(self, group: Group, new: list[str], share: float | None, start: float | None) -> bool:
        """On the first rung: leave a group out if its expected time would overrun the rung's share (never the
        baseline, which the decision needs, nor the first group)."""
        left = self.seconds_left()
        if share is None or start is None or left is None or group.baseline or not new:
            return False
        raced = [g for g in self.groups if not g.baseline and g.alive() and g.scored and len(g.scored) > 1]
        if not raced or (start - left) + self._cost(group, len(new)) <= share:
            return False
        if group.seconds is None:  # no request of its own was timed (its answers came from the store)
            reason = "not raced: the first rung had spent its share of the time budget before this candidate's turn"
        else:
            reason = (
                f'not raced: about {group.seconds:.2f} s a request, {self._cost(group, len(new)):.0f} s for the '
                'first rung, more than its share of the time budget'
            )
        for member in group.alive():
            member.out = reason
        self.events.append(f'{", ".join(m.name for m in group.members)}: {reason}')
        return True

    def _later_rung(self, rung: int, ids: list[str]) -> list[Group]:
        """Return the groups to score on a later rung, cheapest first: all of them, or with a time budget the
        best-scoring ones that fit the rung's share (at least one)."""
        live = [g for g in self.groups if g.alive()]
        share = self._share(rung)
        previous = self.order[: self.rungs[rung - 1]]

        def best(group: Group) -> float:
            return max(self.value(m, previous) for m in group.alive())

        costs = {g.key: self._cost(g, len([ex for ex in ids if ex not in set(g.scored)])) for g in live}
        if share is not None and sum(costs.values()) > share:
            kept: list[Group] = []
            used = 0.0
            for group in sorted(live, key=lambda g: (-best(g), costs[g.key])):
                if not kept or used + costs[group.key] <= share:
                    kept.append(group)
                    used += costs[group.key]
                    continue
                for member in group.alive():
                    member.out = f'out of time before rung {rung + 1} ({len(ids)} examples)'
                self.events.append(f'{", ".join(m.name for m in group.members)}: out of time before rung {rung + 1}')
            live = kept
        return sorted(live, key=lambda g: (g.seconds or 0.0, g.members[0].number))

    def _drop(self, rung: int, ids: list[str]) -> None:
        """Drop every entrant worse than the leader on this rung's examples by the paired test at `alpha`."""
        alive = self.alive()
        leaders = [m for m in alive if self.may_lead(m, ids)] or alive
        if len(alive) < 2:
            return
        seconds = {m.number: g.seconds or 0.0 for g in self.groups for m in g.members}
        leader = max(leaders, key=lambda m: (self.value(m, ids), -seconds[m.number], -m.number))
        for member in alive:
            if member is leader:
                continue
            p = self.p_better(leader, member, ids)
            if p < self.alpha:
                member.out = (
                    f'dropped after rung {rung + 1} ({len(ids)} examples): {leader.name} is better, p = {p:.3f}'
                )
                self.events.append(f'{member.name}: {member.out}')
