"""What every step returns: its run's id, and (subclasses) what it holds in memory for the
step after it when ``main`` chains them in one process."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StepResult:
    run_id: str
