"""Which model produced which numbers in a response record (DESIGN.md "Records").

- ``sampler``: the model that wrote ``response`` (or, for a mixed-policy continuation,
  the part after ``prefix_chars``), with its sampling settings and the raw log-prob and
  start character of every token it generated. In DAS's pipeline the sampler is the
  teacher; in on-policy distillation it is the student.
- ``teacher_scores``: a teacher's teacher-forced log-prob of every token of a response
  another model sampled (``dasd score --role teacher``), with the model's name, content
  key and tokenizer fingerprint.
- ``das``: a student's scores of a teacher-sampled response (``dasd score``).

Files written before on-policy distillation existed name the sampler block ``teacher``;
every reader takes it from there when a record has no ``sampler`` (:func:`sampler_block`).
No command writes that name any more.
"""

from __future__ import annotations

from typing import Any

SAMPLER = "sampler"
LEGACY_SAMPLER = "teacher"  # the sampler block's name in files of earlier versions
TEACHER_SCORES = "teacher_scores"


def sampler_name(record: dict[str, Any]) -> str | None:
    """The field that holds the record's sampler block: ``sampler``, else the legacy
    ``teacher``, else None."""
    for name in (SAMPLER, LEGACY_SAMPLER):
        if isinstance(record.get(name), dict):
            return name
    return None


def sampler_block(record: dict[str, Any]) -> dict[str, Any] | None:
    """The record's sampler block (see :func:`sampler_name`), or None when it has none."""
    name = sampler_name(record)
    return record[name] if name is not None else None
