"""One optimisation run end to end: search → re-score the front → decide → compare with greedy.

The search scores candidates at a cheap *search fidelity* (short horizon,
few replications, common random numbers); the allocations on the front
found are then re-simulated at the *final fidelity* (longer horizon, more
replications) and the front is recomputed on those numbers before a
decision method picks one. Writing the run folder is :mod:`optimizer.report`'s job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from optimizer.baselines import greedy
from optimizer.decide import choose, normalise, per_criterion_optima
from optimizer.evaluation import Evaluator, Fidelity
from optimizer.ga import Generation, Search, SearchConfig, non_dominated
from optimizer.genome import Genome
from optimizer.matrices import make_genome
from optimizer.multifidelity import MultiFidelity, MultiFidelityEvaluator, end_game
from twin.spec import Deployment, Scenario


@dataclass
class RunResult:
    """Everything a run folder reports."""

    genome: Genome
    search: Search
    search_fidelity: Fidelity
    final_fidelity: Fidelity
    X: np.ndarray  # front allocations (flat), search-fidelity front
    F_search: np.ndarray
    F: np.ndarray  # final fidelity means
    CI: np.ndarray  # final fidelity 95% CI half-widths
    final_front: np.ndarray  # bool: non-dominated at final fidelity
    chosen: int  # index into X
    method: str
    weights: list[float] | None
    optima: dict[str, int]
    greedy_X: np.ndarray
    greedy_F: np.ndarray
    greedy_CI: np.ndarray

    def chosen_deployment(self, name: str) -> Deployment:
        """The chosen allocation as a deployment (base settings kept)."""
        return self.genome.deployment(self.X[self.chosen], name=name)


def checkpoint_path(out: Path) -> Path:
    """Where an unfinished run keeps its checkpoint (beside the run folder)."""
    return out.parent / f".{out.name}.checkpoint.pkl"


def start_or_resume(
    genome: Genome,
    config: SearchConfig,
    fidelity: Fidelity,
    out: Path | None,
    resume: bool,
    client: Any | None,
    reference_F: np.ndarray | None = None,
    multifidelity: MultiFidelity | None = None,
) -> Search:
    """A new search, or the one checkpointed for ``out`` extended to ``config``'s budget.

    ``multifidelity`` screens every candidate and DES-scores only those that
    could enter the front (:mod:`optimizer.multifidelity`).
    """
    if not resume:
        ck = checkpoint_path(out) if out is not None else None
        ev = (
            Evaluator(genome, fidelity, client)
            if multifidelity is None
            else MultiFidelityEvaluator(genome, fidelity, multifidelity, client)
        )
        return Search.start(config, ev, reference_F, ck)
    if out is None:
        raise ValueError("--resume needs --out (the run folder to continue)")
    candidates = [checkpoint_path(out), out / "checkpoint.pkl"]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise ValueError(f"nothing to resume: neither {candidates[0]} nor {candidates[1]} exists")
    search = Search.resume(found, client)
    if search.evaluator.fidelity != fidelity or search.config.seed != config.seed:
        raise ValueError(
            "the checkpoint was made with another seed or search fidelity "
            f"({search.evaluator.fidelity.describe()}, seed {search.config.seed}); "
            "resume with the same --seed/--horizon/--replications/--workload"
        )
    search.checkpoint = checkpoint_path(out)
    if multifidelity is not None and isinstance(search.evaluator, MultiFidelityEvaluator):
        # A larger budget brings larger screen caps and end game (MultiFidelity.for_budget)
        search.evaluator.settings = multifidelity
    search.extend(n_gen=config.n_gen, max_evals=config.max_evals, max_time_s=config.max_time_s)
    return search


def finish(
    search: Search,
    final_fidelity: Fidelity,
    client: Any | None,
    method: str = "ideal",
    weights: list[float] | None = None,
    greedy_strategy: str = "best_fit",
    final_max: int | None = None,
) -> RunResult:
    """Re-score the search's front at final fidelity, choose one, score greedy beside it.

    ``final_max`` caps how many front allocations are re-simulated (see
    :func:`shortlist`); None re-scores them all.
    """
    genome = search.evaluator.genome
    end_game(search)  # multi-fidelity: polish (if asked), then an all-DES front from here on
    X, F_search, _ = search.front()
    if final_max is not None and len(X) > final_max:
        keep = shortlist(F_search, final_max)
        X, F_search = X[keep], F_search[keep]
    final = Evaluator(genome, final_fidelity, client)
    g = genome.encode(greedy(genome, greedy_strategy))  # a DecisionGenome adds base decisions
    F_all, CI_all = final.evaluate(np.vstack([X, g[None, :]]))
    F, CI = F_all[:-1], CI_all[:-1]
    mask = np.zeros(len(X), dtype=bool)
    mask[non_dominated(F)] = True
    idx = np.flatnonzero(mask)
    chosen = int(idx[choose(F[idx], method, weights)])
    optima = {c: int(idx[i]) for c, i in per_criterion_optima(F[idx]).items()}
    return RunResult(
        genome=genome,
        search=search,
        search_fidelity=search.evaluator.fidelity,
        final_fidelity=final_fidelity,
        X=X,
        F_search=F_search,
        F=F,
        CI=CI,
        final_front=mask,
        chosen=chosen,
        method=method,
        weights=weights,
        optima=optima,
        greedy_X=g,
        greedy_F=F_all[-1],
        greedy_CI=CI_all[-1],
    )


def shortlist(F: np.ndarray, n: int) -> np.ndarray:
    """Indices of ``n`` front points to re-score: each criterion's optimum, then nearest the ideal.

    Nearness is Euclidean on criteria normalised over the front, so the
    shortlist is the front's compromise region plus its extremes.
    """
    Fn, _ = normalise(F)
    keep = list(dict.fromkeys(int(np.argmin(Fn[:, c])) for c in range(Fn.shape[1])))
    for i in np.argsort(np.linalg.norm(Fn, axis=1), kind="stable"):
        if len(keep) >= n:
            break
        if int(i) not in keep:
            keep.append(int(i))
    return np.array(sorted(keep[:n]), dtype=int)


def optimize(
    scenario: Scenario,
    base: Deployment | None,
    config: SearchConfig,
    search_fidelity: Fidelity,
    final_fidelity: Fidelity,
    *,
    out: Path | None = None,
    resume: bool = False,
    client: Any | None = None,
    method: str = "ideal",
    weights: list[float] | None = None,
    on_generation: Callable[[Generation], None] | None = None,
    final_max: int | None = None,
    reference_F: np.ndarray | None = None,
    multifidelity: MultiFidelity | None = None,
    decisions: str = "all",
) -> RunResult:
    """Search, re-score and decide (no files written except the checkpoint).

    ``reference_F`` (raw criteria of a known front, e.g. exhaustive) adds IGD
    to the history. ``decisions``: 'all' searches the allocation, alignment and
    constant-run matrices (:mod:`optimizer.matrices`); 'allocation' the
    allocation matrix only, the others copied from ``base``.
    """
    genome = make_genome(scenario, base, decisions)
    search = start_or_resume(
        genome, config, search_fidelity, out, resume, client, reference_F, multifidelity
    )
    search.run(on_generation)
    return finish(search, final_fidelity, client, method, weights, final_max=final_max)
