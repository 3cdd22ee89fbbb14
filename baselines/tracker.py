"""The bookkeeping every trajectory optimizer shares: the best sequence so far, the history, the
callback and the env-step budget (:class:`Tracker`), and the result (:class:`TrajOptResult`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from diffenvs.baselines.problem import Evaluation, Problem

Callback = Callable[[dict[str, Any], np.ndarray], None]


@dataclasses.dataclass
class TrajOptResult:
    """Outcome of a method.

    Attributes:
        method: The method.
        actions: Best sequence found, shape (horizon, action_dim), judged in the reported setting.
        loss: Its task loss after the last step (reported setting).
        metric: Its metric.
        metric_name: The metric's name (``Problem.metric_name``).
        initial_loss: Task loss of the initial state.
        history: One record per iteration (see :func:`optimize`).
        budget: The budget spent (:meth:`Budget.as_dict`).
        stopped: Why the method ended early, or ``None``.
    """

    method: str
    actions: np.ndarray
    loss: float
    metric: float
    metric_name: str
    initial_loss: float
    history: list[dict[str, Any]]
    budget: dict[str, float]
    stopped: str | None = None


class BudgetSpent(Exception):
    """Raised by :meth:`_Tracker.record` once ``SolverConfig.budget`` env steps are spent."""


class Tracker:
    """The best sequence so far, the history, the callback and the env-step budget."""

    def __init__(self, problem: Problem, callback: Callback | None, budget: int | None = None):
        self.problem = problem
        self.callback = callback
        self.budget = budget
        self.history: list[dict[str, Any]] = []
        self.best_actions = np.zeros(problem.action_shape)
        self.best_loss = math.inf
        self.best_metric = 0.0

    def offer(self, actions: np.ndarray, evaluation: Evaluation) -> int:
        """Consider a batch of evaluated sequences; return the index of the batch's best."""
        index = int(np.argmin(evaluation.loss))
        if evaluation.loss[index] < self.best_loss:
            self.best_loss = float(evaluation.loss[index])
            self.best_metric = float(evaluation.metric[index])
            self.best_actions = np.array(actions[index], dtype=np.float64)
        return index

    def record(self, phase: str, iteration: int, loss: float, metric: float, **extra: Any) -> None:
        record = {"phase": phase, "iteration": iteration, **self.problem.budget.as_dict(),
                  "loss": loss, "metric": metric, "best_loss": self.best_loss, "best_metric": self.best_metric, **extra}
        self.history.append(record)
        if self.callback is not None:
            self.callback(record, self.best_actions)
        if self.budget is not None and record["env_steps"] >= self.budget:
            raise BudgetSpent

    def remaining(self) -> int | None:
        """Env steps left of the budget (``None``: no budget)."""
        return None if self.budget is None else max(self.budget - self.problem.budget.env_steps, 0)

    def afford(self, cost: int) -> None:
        """Raise :class:`BudgetSpent` if an iteration of ``cost`` env steps would exceed the budget
        (unless nothing has run yet: a method always returns a result)."""
        remaining = self.remaining()
        if remaining is not None and cost > remaining and self.history:
            raise BudgetSpent


__all__ = ["BudgetSpent", "Callback", "Tracker", "TrajOptResult"]
