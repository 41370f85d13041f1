"""Mixing response records: dedupe, per-prompt selection, exact quotas, seeded order.

The order of operations, per record as it arrives and then once at the end:

1. **Dedupe**: a record whose ``id`` was seen before (``duplicate_id``), or whose
   normalized prompt + response was seen before (``duplicate_content``), is dropped;
   the first one read wins.
2. **Pool**: each record belongs to one pool. A ``FILE:COUNT`` input is a pool of its
   own, whatever the domains inside; the records of the other inputs go to the pool of
   their ``domain`` when ``--quota`` is given (a domain without a quota: ``no_quota``),
   else to one pool that keeps everything.
3. **Select per prompt** (``--select``): within a pool, candidates are grouped by
   ``prompt_id`` (falling back to ``id``) and the best K are kept as they arrive
   (``not_selected`` for the rest). ``das`` ranks by ``das.score``, then
   ``das.p_teacher``, then smaller ``id``; ``random`` ranks by a seeded random key,
   which makes the kept K a uniform sample without replacement (a reservoir).
4. **Fill quotas**: a pool with a count keeps exactly that many (``over_quota`` for the
   rest). With selection, prompts are taken in a seeded random order, first every
   prompt's best candidate, then every prompt's second best, and so on, so that a quota
   covers as many prompts as it can. Without selection it keeps a uniform seeded sample
   of records, held in a bounded reservoir. Too few records is a :class:`DasdError`
   saying how many are missing, unless ``allow_short`` (then it is reported).
5. **Order**: kept records are shuffled with the seed, or keep their input order.

The mixer keeps whatever the caller hands it as ``item`` (the record itself by default).
``dasd mix`` hands it a small handle into an on-disk spill instead, so memory grows with
per-record metadata only: the handle, the rank, a 16-byte digest and the id of every
record read (for dedupe), never with record bodies.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

from dasd_cli.core.chat import prompt_messages
from dasd_cli.errors import DasdError, RecordError

SELECT_CHOICES = ("random", "das")
_SPACE = re.compile(r"\s+")

Item = TypeVar("Item")  # what the caller hands the mixer for each record (the record itself by default)
Rank = tuple[float | str, ...]  # a candidate's sort key under --select, best (smallest) first


@dataclass(slots=True)
class Drop(Generic[Item]):
    """A record the mix leaves out (its ``item``, see :meth:`Mixer.add`), with its reason code."""

    record: Item
    reason: str
    detail: str = ""


@dataclass(slots=True)
class Quota:
    """One pool's count: how many were wanted, available and kept."""

    name: str
    target: int | None
    available: int = 0
    kept: int = 0

    @property
    def short(self) -> int:
        return 0 if self.target is None else max(0, self.target - self.available)


def content_digest(record: dict[str, Any]) -> bytes:
    """16-byte hash of the normalized prompt + response (whitespace runs collapsed)."""
    try:
        messages = prompt_messages(record)
    except RecordError:
        messages = []
    parts = [f"{m['role']}\x1f{_SPACE.sub(' ', m['content']).strip()}" for m in messages]
    response = record.get("response")
    parts.append(_SPACE.sub(" ", response).strip() if isinstance(response, str) else "")
    return hashlib.blake2b("\x1e".join(parts).encode("utf-8"), digest_size=16).digest()


def prompt_key(record: dict[str, Any]) -> str:
    """The group a candidate belongs to: ``prompt_id``, falling back to ``id``."""
    key = record.get("prompt_id", record.get("id"))
    if key is None:
        raise RecordError("record has neither 'prompt_id' nor 'id'", reason="missing_field",
                          hint="per-prompt selection groups candidates by prompt_id")
    return str(key)


def das_rank(record: dict[str, Any]) -> tuple[float, float, str]:
    """Sort key, best first: higher das.score, then higher das.p_teacher, then smaller id."""
    das = record.get("das")
    if not isinstance(das, dict):
        raise RecordError("record has no 'das' object", reason="missing_das",
                          hint="--select das needs records scored by `dasd score`")
    score, p_teacher = (_das_number(das, name) for name in ("score", "p_teacher"))
    return (-score, -p_teacher, str(record.get("id", "")))


def _das_number(das: dict[str, Any], name: str) -> float:
    value = das.get(name)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise RecordError(f"'das.{name}' is missing or not a number", reason="bad_das",
                          hint="--select das needs records scored by `dasd score`")
    return float(value)


@dataclass
class _Pool(Generic[Item]):
    """The records of one pool while they arrive (see the module docstring)."""

    quota: Quota
    select: str | None
    per_prompt: int
    rng: random.Random
    # with selection: prompt -> sorted [(rank, seq, item)], best first, at most K long
    groups: dict[str, list[tuple[Rank, int, Item]]] = field(default_factory=dict)
    # without selection, with a count: a max-heap on the random key (negated)
    reservoir: list[tuple[float, int, Item]] = field(default_factory=list)
    # without selection or count: everything
    kept: list[tuple[int, Item]] = field(default_factory=list)

    def add(self, record: dict[str, Any], seq: int, rank: Rank, item: Item) -> Drop[Item] | None:
        if self.select is not None:
            prompt = prompt_key(record)
            group = self.groups.setdefault(prompt, [])
            entry = (rank, seq, item)
            bisect.insort(group, entry, key=lambda e: (e[0], e[1]))
            if len(group) > self.per_prompt:
                _, _, loser = group.pop()
                return Drop(loser, "not_selected", f"not among the best {self.per_prompt} "
                            f"of prompt {prompt} by {self.select}")
            return None
        self.quota.available += 1
        if self.quota.target is None:
            self.kept.append((seq, item))
            return None
        key = self.rng.random()
        if len(self.reservoir) < self.quota.target:
            heapq.heappush(self.reservoir, (-key, seq, item))
            return None
        if self.quota.target and -self.reservoir[0][0] > key:
            _, _, loser = heapq.heapreplace(self.reservoir, (-key, seq, item))
        else:
            loser = item
        return Drop(loser, "over_quota", f"not drawn for quota {self.quota.name}={self.quota.target}")

    def finish(self) -> tuple[list[tuple[int, Item]], list[Drop[Item]]]:
        """The kept (seq, item) pairs and the records the quota leaves out."""
        if self.select is None:
            chosen = self.kept if self.quota.target is None else [(s, r) for _, s, r in self.reservoir]
            self.quota.kept = len(chosen)
            return chosen, []
        prompts = list(self.groups)
        self.rng.shuffle(prompts)
        ranked = []  # every prompt's best, then every prompt's second best, ...
        for depth in range(self.per_prompt):
            for prompt in prompts:
                group = self.groups[prompt]
                if depth < len(group):
                    ranked.append(group[depth])
        self.quota.available = len(ranked)
        target = len(ranked) if self.quota.target is None else self.quota.target
        chosen = [(seq, item) for _, seq, item in ranked[:target]]
        drops = [Drop(item, "over_quota", f"not drawn for quota {self.quota.name}={target}")
                 for _, _, item in ranked[target:]]
        self.quota.kept = len(chosen)
        return chosen, drops


class Mixer(Generic[Item]):
    """Feed records with :meth:`add`, then call :meth:`finish` once.

    ``inputs[i]`` is (name, COUNT) of input i (COUNT None: no count); ``quotas`` maps a
    domain to its count and applies to the inputs without a COUNT. Every counted pool
    exists from the start, so an input without records still counts as short.
    """

    def __init__(self, *, inputs: Sequence[tuple[str, int | None]], quotas: dict[str, int] | None = None,
                 select: str | None = None, per_prompt: int = 1, seed: int = 0,
                 keep_order: bool = False, allow_short: bool = False) -> None:
        if select is not None and select not in SELECT_CHOICES:
            raise ValueError(f"select must be one of {SELECT_CHOICES}")
        if per_prompt < 1:
            raise ValueError("per_prompt must be at least 1")
        self.select = select
        self.seed = seed
        self.keep_order = keep_order
        self.allow_short = allow_short
        self.inputs = list(inputs)
        self.quotas = dict(quotas or {})
        self.per_prompt = per_prompt
        self._pools: dict[str, _Pool[Item]] = {}
        self._seen_ids: set[str] = set()
        self._seen_content: set[bytes] = set()
        self._rank_rng = random.Random(f"{seed}:rank")
        self._seq = 0
        for source, (name, count) in enumerate(self.inputs):
            if count is not None:
                self._pool(f"input {source}", f"{name}:{count}", count)
        if any(count is None for _, count in self.inputs):
            for domain, count in self.quotas.items():
                self._pool(f"domain {domain}", domain, count)

    def _pool(self, key: str, name: str, target: int | None) -> _Pool[Item]:
        pool = self._pools.get(key)
        if pool is None:
            pool = _Pool[Item](Quota(name, target), self.select, self.per_prompt,
                         random.Random(f"{self.seed}:pool:{key}"))
            self._pools[key] = pool
        return pool

    def _pool_of(self, record: dict[str, Any], source: int) -> _Pool[Item] | None:
        name, count = self.inputs[source]
        if count is not None:
            return self._pool(f"input {source}", f"{name}:{count}", count)
        if not self.quotas:
            return self._pool("all", "all", None)
        domain = str(record.get("domain") or "other")
        if domain not in self.quotas:
            return None
        return self._pool(f"domain {domain}", domain, self.quotas[domain])

    def add(self, record: dict[str, Any], source: int = 0, item: Item | None = None) -> Drop[Item] | None:
        """Take one record from input ``source``; returns what it drops, if any.

        The mixer keeps ``item`` (default: the record) and hands items back from
        :meth:`finish` and in every :class:`Drop`; it reads ``record`` only here.
        Raises :class:`RecordError` (before changing any state) for a record that
        selection cannot rank.
        """
        if item is None:
            item = cast(Item, record)  # a Mixer fed no items is a Mixer[dict[str, Any]]
        rank: Rank = ()
        if self.select is not None:
            prompt_key(record)
            rank = das_rank(record) if self.select == "das" else (self._rank_rng.random(),)
        record_id = record.get("id")
        if record_id is not None:
            if str(record_id) in self._seen_ids:
                return Drop(item, "duplicate_id", f"id {record_id} seen before")
        digest = content_digest(record)
        if digest in self._seen_content:
            return Drop(item, "duplicate_content", "same prompt and response as an earlier record")
        if record_id is not None:
            self._seen_ids.add(str(record_id))
        self._seen_content.add(digest)
        pool = self._pool_of(record, source)
        if pool is None:
            return Drop(item, "no_quota", f"domain {record.get('domain') or 'other'} has no --quota")
        self._seq += 1
        return pool.add(record, self._seq, rank, item)

    def finish(self) -> tuple[list[Item], list[Drop[Item]], list[Quota]]:
        """Kept items in output order, the items quotas leave out, and each pool's counts.

        Raises :class:`DasdError` when a count cannot be met and short is not allowed.
        """
        kept: list[tuple[int, Item]] = []
        drops: list[Drop[Item]] = []
        quotas: list[Quota] = []
        for pool in self._pools.values():
            chosen, left_out = pool.finish()
            kept.extend(chosen)
            drops.extend(left_out)
            quotas.append(pool.quota)
        short = [q for q in quotas if q.short]
        if short and not self.allow_short:
            q = short[0]
            more = f" (and {len(short) - 1} more quotas short)" if len(short) > 1 else ""
            raise DasdError(
                f"quota {q.name}={q.target} cannot be met: only {q.available} records "
                f"available, {q.short} missing{more}",
                hint="lower the count, add input, or pass --allow-short to keep what there is")
        kept.sort(key=lambda pair: pair[0])
        items = [item for _, item in kept]
        if not self.keep_order:
            random.Random(f"{self.seed}:order").shuffle(items)
        return items, drops, quotas
