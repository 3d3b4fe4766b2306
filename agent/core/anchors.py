"""The anchors of one memory in time order, and the budget merges among them.

:class:`AnchorChain` owns the bookkeeping that keeps a memory's ``add`` at
O(d*k + log B): anchors form a doubly linked list (merges unlink in O(1));
closed adjacent pairs sit in a heap keyed by (crosses a gap, cost) with lazy
invalidation (each node's version is bumped whenever its right pair changes;
stale entries are skipped when popped, and the heap is rebuilt when they pile
up, so it stays O(B)); the pair ending at the open (newest) anchor changes on
every join, so it is scored on demand. The merge rule and the representative
are those of :mod:`agent.core.svd`; a merge offers the anchor that loses its
identity to the finer level (:mod:`agent.core.detail`) when that level is on.

Under ``"ward-context"`` a pair's cost also reads the anchors either side of it
(:func:`fold_cost`), so a merge re-keys two more pairs and closing the open
anchor re-keys one more: still O(d + log B) each.

Under ``"ward-young"`` a pair's cost reads whether each side is *young* (begun
within the last ``floor`` members, ``floor`` the members per token): the young
anchors are a suffix of the chain, tracked by a pointer to its oldest; an anchor
that settles below the floor re-keys its two pairs (O(log B) each, once per
anchor), and a step of the floor (every 9 % of growth) rebuilds the heap.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from agent.core.detail import DetailLevel
from agent.core.runs import Runs
from agent.core.slots import SlotStacks
from agent.core.svd import F32, F64, MergeRule, Representative, TruncatedSVD, merge_cost

_HEAP_SLACK = 4
"""Rebuild the pair heap when it holds more than this many entries per token."""
ENTRY_BYTES = 40
"""Payload of one heap entry (five 8-byte numbers), for byte accounting."""
FOLD_MEMBERS = 3
"""Under ``"ward-context"``, anchors of at most this many members may fold at their residual
off the neighbours: a haystack dissolve is 1-3 frames at 2 fps, one item at grid >= 2."""


def _off_segment(x: F64, a: F64, c: F64) -> float:
    """Squared distance (O(d)) of ``x`` from the segment between ``a`` and ``c`` (all (d,))."""
    span = c - a
    den = float(span @ span)
    t = min(max(float((x - a) @ span) / den, 0.0), 1.0) if den > 0 else 0.0
    off = x - a - t * span
    return float(off @ off)


def fold_cost(
    before: TruncatedSVD | None, a: TruncatedSVD, b: TruncatedSVD, after: TruncatedSVD | None
) -> float:
    """Cost of merging adjacent ``a``, ``b`` under ``"ward-context"`` (O(d); lower merges first).

    Ward's weight ``n_a n_b / (n_a + n_b)`` times a squared distance: Ward's
    ``|mean_a - mean_b|^2``, or, when one side is short (<= :data:`FOLD_MEMBERS`
    members) and the other is its nearer neighbour, that short side's squared
    distance from the segment between its two neighbours' means (``before``
    is a's left neighbour, ``after`` b's right one; None at an end or across a
    gap). A dissolve or a frame mixing two scenes lies near that segment and
    folds cheaply into the nearer scene; a short needle distinct from both
    stays far from it, as dear as under Ward (by at most the segment's reach).
    """
    mean_a, mean_b = a.mean(), b.mean()
    diff = mean_a - mean_b
    dist = float(diff @ diff)
    best = dist
    if b.count <= FOLD_MEMBERS and after is not None:
        mean_c = after.mean()
        if dist <= float((mean_b - mean_c) @ (mean_b - mean_c)):
            best = min(best, _off_segment(mean_b, mean_a, mean_c))
    if a.count <= FOLD_MEMBERS and before is not None:
        mean_z = before.mean()
        if dist <= float((mean_a - mean_z) @ (mean_a - mean_z)):
            best = min(best, _off_segment(mean_a, mean_z, mean_b))
    return a.count * b.count / (a.count + b.count) * best


@dataclass(eq=False)
class Anchor:
    """A contiguous time span of the memory and its SVD summary."""

    start: float
    end: float
    svd: TruncatedSVD
    rep: F32
    """(d,) unit float32 token; recomputed whenever ``svd`` changes."""
    runs: Runs | None = None
    """Sub-runs on the SVD's basis (:mod:`agent.core.runs`) when the memory localises inside anchors."""
    slot: int = -1
    """Its row in the chain's :class:`~agent.core.slots.SlotStacks` (-1: none yet)."""

    def update(self, start: float, vec: F64, representative: Representative, cap: int) -> None:
        """Fold one more member ``vec`` (d,) starting at ``start`` into the SVD, token and runs."""
        old = self.svd.basis
        self.svd.update(vec)
        self.rep = self.svd.representative(representative)
        if self.runs is not None:
            fresh = Runs.single(start, vec, self.svd.basis)
            self.runs = self.runs.rebased(old, self.svd.basis).joined(fresh, cap)

    @property
    def duration(self) -> float:
        return self.end - self.start


class _Node:
    """A linked-list cell around an anchor; ``version`` guards its right pair in the heap."""

    __slots__ = ("alive", "anchor", "first", "next", "prev", "version")

    def __init__(self, anchor: Anchor, prev: _Node | None, first: int = 0) -> None:
        self.anchor = anchor
        self.first = first
        self.prev = prev
        self.next: _Node | None = None
        self.version = 0
        self.alive = True


_Entry = tuple[int, float, int, int, _Node]
"""(crosses a gap, merge cost, first member of left node, its version, left node)."""


class AnchorChain:
    """Time-ordered anchors; :meth:`enforce_budget` merges the cheapest adjacent pairs down to ``budget``."""

    def __init__(
        self,
        budget: int,
        rank: int,
        merge: MergeRule,
        representative: Representative,
        detail: DetailLevel,
        runs: int = 0,
        *,
        dim: int,
    ) -> None:
        self.budget = budget
        # An SVD of d-dim members has at most d rows: a rank above d pads nothing more (a
        # snapshot's rank 10**6 would otherwise reserve, and zero-fill, rank x d per slot).
        self.slots = SlotStacks(min(rank, dim), dim)
        """Every live anchor's SVD and token, in the stacks queries score (:mod:`agent.core.slots`)."""
        self.runs = runs
        """Sub-runs kept per anchor (0: anchors keep none)."""
        self.rank = rank
        self.merge: MergeRule = merge
        self.representative: Representative = representative
        self.detail = detail
        self._head: _Node | None = None
        self._tail: _Node | None = None
        self._count = 0
        self._heap: list[_Entry] = []
        self._members = 0
        """Members of every anchor (embeddings added since the memory began)."""
        self.floor = 1.0
        """Under ``"ward-young"``: the memory's members per token, rounded down to a step of
        2^(1/8) (1 until the members exceed the budget); a young anchor is priced at least at this
        size."""
        self._young: _Node | None = None
        """Under ``"ward-young"``: the oldest young anchor (None: none). A pointer, not a queue of
        the young: that held up to ``floor`` nodes, merged-away ones too, growing with the stream."""

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Anchor]:
        node = self._head
        while node is not None:
            yield node.anchor
            node = node.next

    @property
    def newest(self) -> Anchor | None:
        """The open anchor (the one new embeddings may join), or None when empty."""
        return None if self._tail is None else self._tail.anchor

    @property
    def heap_entries(self) -> int:
        """Entries in the pair heap, stale ones included."""
        return len(self._heap)

    def append(self, start: float, end: float, vec: F64) -> None:
        """Open a new anchor of one member ``vec`` (d,) spanning [start, end]."""
        svd = TruncatedSVD.from_vector(vec, self.rank)
        runs = Runs.single(start, vec, svd.basis) if self.runs else None
        anchor = Anchor(start, end, svd, svd.representative(self.representative), runs)
        self.slots.put(anchor)
        # ``first``: the members before this anchor, a prefix sum that merges never change.
        node = _Node(anchor, self._tail, self._members)
        old_tail, self._tail = self._tail, node
        self._count += 1
        if old_tail is None:
            self._head = node
        else:
            old_tail.next = node
        if self.merge == "ward-young" and self._young is None:
            self._young = node
        self._grown(1)  # after linking: settling walks the young suffix on to the new node
        if old_tail is not None and old_tail.prev is not None:
            # The pair ending at the old tail stops changing now: it can enter the heap.
            self._push(old_tail.prev)
            if self.merge == "ward-context" and old_tail.prev.prev is not None:
                # The pair before it read the old tail (then open) as its right context.
                self._push(old_tail.prev.prev)

    def refresh(self, anchor: Anchor) -> None:
        """Store a changed anchor (a join: :meth:`Anchor.update`) back into its slot."""
        self.slots.put(anchor)

    def restore(self, anchors: Sequence[Anchor]) -> None:
        """Fill an empty chain with anchors already in time order."""
        members = 0
        for a in anchors:
            a.slot = -1  # restored anchors own their arrays until they take a slot of this chain
            self.slots.put(a)
            node = _Node(a, self._tail, members)
            members += a.svd.count
            if self._tail is None:
                self._head = node
            else:
                self._tail.next = node
            self._tail = node
        self._count = len(anchors)
        self._members = members
        self.floor = self._floor_for(members)
        self._young = self._oldest_young()
        self._rebuild_heap()

    def joined(self) -> None:
        """Count one embedding that joined the open anchor (a join adds a member, not an anchor)."""
        self._grown(1)

    # ---------------------------------------------------------------- budget

    def _floor_for(self, members: int) -> float:
        # Members per token, rounded down to a step of 2^(1/8): it changes (and the heap is
        # re-keyed, O(B log B)) only when the stream has grown by 9 %, amortised O(log B / ratio)
        # per embedding; a pure function of ``members`` so that a restored chain agrees.
        if self.merge != "ward-young" or members <= self.budget:
            return 1.0
        return float(2.0 ** (math.floor(8.0 * math.log2(members / self.budget)) / 8.0))

    def _grown(self, n: int) -> None:
        self._members += n
        if self.merge != "ward-young":
            return
        floor = self._floor_for(self._members)
        if floor != self.floor:
            self.floor = floor
            self._young = self._oldest_young()
            self._rebuild_heap()
            return
        node = self._young
        while node is not None and not self._is_young(node):
            if node.anchor.svd.count < self.floor:
                # Settled below the floor: its pairs are priced at its own size from now on
                # (at or above the floor, the price is the same and the keys stay valid).
                if node.prev is not None:
                    self._push(node.prev)
                self._push(node)
            node = node.next
        self._young = node
        self._trim_heap()  # a join settles anchors (and pushes) without a merge

    def _is_young(self, node: _Node) -> bool:
        return node.first + self.floor > self._members

    def _oldest_young(self) -> _Node | None:
        """The first node of the young suffix (O(budget)); None when not ward-young."""
        if self.merge != "ward-young":
            return None
        oldest, node = None, self._tail
        while node is not None and self._is_young(node):
            oldest, node = node, node.prev
        return oldest

    def _push(self, left: _Node) -> None:
        """(Re)score the pair (left, left.next), invalidating its older entries."""
        left.version += 1
        right = left.next
        if right is None or right is self._tail:
            return
        gap, cost = self._pair_key(left, right)
        # Ties go to the earlier pair (``first`` is unique per node): the order is the chain's own,
        # so a restored chain, whose heap is rebuilt, merges the pairs the original would.
        heapq.heappush(self._heap, (gap, cost, left.first, left.version, left))

    def _pair_key(self, left: _Node, right: _Node) -> tuple[int, float]:
        """(crosses a gap, cost): pairs across a gap merge last, then the cheapest first."""
        a, b = left.anchor, right.anchor
        gap = int(a.end < b.start)
        if self.merge == "cosine":
            return gap, -float(a.rep @ b.rep)
        if self.merge == "ward-context":
            before, after = left.prev, right.next
            return gap, fold_cost(
                None if before is None or before.anchor.end < a.start else before.anchor.svd,
                a.svd,
                b.svd,
                None if after is None or b.end < after.anchor.start else after.anchor.svd,
            )
        if self.merge == "ward-young":
            # Online, a young anchor is a scene whose later frames have not arrived yet, not a
            # short one: priced at its own size, every new frame would fold into the newest
            # anchor (|x - mean|^2, against n/2 |d|^2 for any settled pair) and the newest
            # footage would pool into one anchor once the memory is compressed enough.
            return gap, merge_cost(
                a.svd,
                b.svd,
                "ward",
                self.floor if self._is_young(left) else 1.0,
                self.floor if self._is_young(right) else 1.0,
            )
        return gap, merge_cost(a.svd, b.svd, self.merge)

    def _valid(self, entry: _Entry) -> bool:
        node = entry[4]
        return (
            node.alive and node.version == entry[3] and node.next is not None and node.next is not self._tail
        )

    def enforce_budget(self) -> None:
        """Merge the cheapest adjacent pairs until at most ``budget`` anchors remain."""
        while self._count > self.budget:
            while self._heap and not self._valid(self._heap[0]):
                heapq.heappop(self._heap)
            self._merge(self._pick())
        self._trim_heap()

    def _trim_heap(self) -> None:
        """Rebuild the heap once stale entries pile up past its bound (amortised O(1) per push)."""
        if len(self._heap) > _HEAP_SLACK * self.budget + 64:
            self._rebuild_heap()

    def _pick(self) -> _Node:
        """The left node of the best pair: the heap's top or the open pair at the tail."""
        tail = self._tail
        assert tail is not None and tail.prev is not None  # count > budget >= 1
        open_key = self._pair_key(tail.prev, tail)
        if self._heap and self._heap[0][:2] <= open_key:
            return heapq.heappop(self._heap)[4]
        return tail.prev

    def _merge(self, left: _Node) -> None:
        right = left.next
        assert right is not None
        a, b = left.anchor, right.anchor
        if self.detail.bound:
            # The shorter side loses its identity; its SVD is no longer changed after this merge.
            # Distinctiveness is the squared distance of the means, blind to length: Ward's cost
            # (length x distance) is what made the merge cheap, and a needle is short by nature.
            short = a if a.svd.count <= b.svd.count else b
            diff = a.svd.mean() - b.svd.mean()
            self.detail.offer(float(diff @ diff), short.start, short.end, short.svd)
        merged = a.svd.merge(b.svd)
        if a.runs is not None and b.runs is not None:
            a.runs = a.runs.rebased(a.svd.basis, merged.basis).joined(
                b.runs.rebased(b.svd.basis, merged.basis), self.runs
            )
        a.svd = merged
        a.rep = a.svd.representative(self.representative)
        a.end = max(a.end, b.end)
        self.slots.release(b)  # after every read of b's views (the runs, the finer level's copy)
        self.slots.put(a)
        right.alive = False
        if right is self._young:
            # Its left neighbour began earlier and is not young: the young suffix starts after it.
            self._young = right.next
        left.next = right.next
        if right.next is None:
            self._tail = left
        else:
            right.next.prev = left
        self._count -= 1
        # Stale heap entries still name the dead node until they are popped or the heap is
        # rebuilt (up to _HEAP_SLACK x budget of them): it must not keep its anchor's arrays
        # (~14 KB) or its neighbours alive meanwhile. A dead node is never read again.
        del right.anchor
        right.prev = right.next = None
        self._push(left)
        if left.prev is not None:
            self._push(left.prev)
        if self.merge == "ward-context":
            # The pairs one further out read the merged anchor as their context.
            if left.prev is not None and left.prev.prev is not None:
                self._push(left.prev.prev)
            if left.next is not None:
                self._push(left.next)

    def _rebuild_heap(self) -> None:
        self._heap = []
        node = self._head
        while node is not None:
            self._push(node)
            node = node.next
