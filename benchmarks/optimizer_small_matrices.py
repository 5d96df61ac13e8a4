"""NSGA-II over all three decision matrices against the true Pareto front of a small instance.

Run: flock /work/bench.lock .venv/bin/python benchmarks/optimizer_small_matrices.py [--seeds 5]

The placement paper's decisions are the allocation matrix, the computation
alignment (how many instances a step is split over) and the constant run
decision (which components stay up; the others start on demand and cost
only while they run). ``examples/small-matrices.yaml`` (4 components × 2
machines, 2 splittable steps, 3 components whose constant-run choice is
open) is small enough to simulate every feasible, canonical combination of
the three (:func:`optimizer.matrices.enumerate_decisions`): the true front.
Then, with 5 % of the exhaustive evaluations each (distinct simulations):

- NSGA-II on the three-matrix genome with the default operators (lifted
  to the extra genes), and with the first-round matrix operators;
- NSGA-II on the allocation matrix only (alignment 1 and the components'
  own always_on, as before this genome existed): what searching the other
  two matrices adds;
- random feasible search: uniform draws from the feasible set.

Every method uses one evaluation function (same horizon, replication and
seed: common random numbers), so "true front" means true for that function;
the paper's execution cost is the cost criterion. Criteria are normalised
by the true front's ideal and nadir points, reference point 1.1 in each.

The exhaustive scores are cached in runs/bench/ under a key made of the
scenario, the fidelity and the twin's and optimizer's source, filled in
chunks, so an interrupted run resumes where it stopped. Evaluation is a pure
function of (scenario, deployment, fidelity), so the searches read their
candidates' scores from that table instead of simulating them again (a
search's cost is still the number of distinct candidates it asks for);
``--check`` random table entries are re-simulated first and must match
exactly.
"""

from __future__ import annotations

import argparse
import hashlib
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from rich.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, markdown_table, write_result

from optimizer.distributed import evaluation_client
from optimizer.evaluation import Evaluator, Fidelity, Score, evaluate_deployment
from optimizer.ga import (
    Search,
    SearchConfig,
    budget_pop,
    default_config,
    hypervolume,
    non_dominated,
)
from optimizer.genome import Genome
from optimizer.matrices import DecisionGenome, count_decisions, enumerate_decisions
from optimizer.multifidelity import (
    MultiFidelity,
    MultiFidelityEvaluator,
    confirm_front,
    end_game,
    polish,
    polish_extremes,
    search_budget,
)
from twin.criteria import CRITERIA
from twin.deployment import allocation_matrix, is_always_on
from twin.load import load_scenario
from twin.spec import Deployment, Scenario

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "examples" / "small-matrices.yaml"
FIDELITY = Fidelity(workload=None, horizon_s=480.0, replications=1, seed=1)
BUDGET_SHARE = 0.05
CHUNK = 250


def cache_key() -> str:
    h = hashlib.sha1(SCENARIO.read_bytes())
    h.update(repr(FIDELITY).encode())
    for p in sorted([*(ROOT / "twin").glob("*.py"), ROOT / "optimizer" / "matrices.py"]):
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


def steal_cores() -> tuple[float, float]:
    """(steal CPU-seconds, wall seconds) counters of the host, to difference over a run."""
    from loadgen.host import CPU_SECONDS, host_samples

    steal = sum(v for m, lab, v in host_samples() if m == CPU_SECONDS and '"steal"' in lab)
    return steal, time.monotonic()


def exhaustive(genome: DecisionGenome, client: object) -> tuple[np.ndarray, np.ndarray, float]:
    """Every feasible canonical vector and its criteria; (X, F, simulation wall seconds)."""
    path = ROOT / "runs" / "bench" / f"small_matrices_exhaustive_{cache_key()}.parquet"
    X = enumerate_decisions(genome)
    done = pd.read_parquet(path) if path.is_file() else pd.DataFrame()
    path.parent.mkdir(parents=True, exist_ok=True)
    with Progress(transient=True) as progress:
        task = progress.add_task("exhaustive", total=len(X), completed=len(done))
        while len(done) < len(X):
            part = X[len(done) : len(done) + CHUNK]
            started = time.perf_counter()
            F, _ = Evaluator(genome, FIDELITY, client).evaluate(part)
            wall = time.perf_counter() - started
            chunk = pd.DataFrame(F, columns=list(CRITERIA)).assign(wall_s=wall / len(part))
            done = pd.concat([done, chunk], ignore_index=True)
            tmp = path.with_suffix(".tmp")
            done.to_parquet(tmp)
            tmp.replace(path)  # nothing lost when the lock's time runs out mid-way
            progress.update(task, completed=len(done))
    return X, done[list(CRITERIA)].to_numpy(), float(done["wall_s"].sum())


class TableEvaluator(Evaluator):
    """An evaluator whose simulations are looked up in the exhaustive table."""

    def __init__(self, genome: Genome, table: dict[bytes, np.ndarray]) -> None:
        super().__init__(genome, FIDELITY)
        self.table = table

    def _run(self, vectors: list[np.ndarray]) -> list[Score]:
        out = []
        for v in vectors:
            dep = self.genome.deployment(np.asarray(v).reshape(-1))
            f = self.table[_deployment_key(self.genome.scenario, dep)]
            out.append(Score(mean=tuple(float(c) for c in f), ci=(0.0,) * len(f), wall_s=0.0))
        return out


class TableMultiFidelity(MultiFidelityEvaluator):
    """Multi-fidelity on the table: DES runs read the exhaustive table, screens run the
    screening twin on each deployment (alignment and constant run included)."""

    def __init__(
        self, genome: Genome, table: dict[bytes, np.ndarray], settings: MultiFidelity
    ) -> None:
        super().__init__(genome, FIDELITY, settings, None)
        self.table = table

    def _run(self, vectors: list[np.ndarray]) -> list[Score]:
        return TableEvaluator._run(self, vectors)  # type: ignore[arg-type]


def _deployment_key(sc: Scenario, dep: Deployment) -> bytes:
    """What the twin runs, whichever genome made the deployment: the allocation matrix,
    every step's effective split and every component's constant-run choice."""
    x = allocation_matrix(sc, dep)
    inst = dict(zip([c.name for c in sc.components], x.sum(axis=1), strict=True))
    split = [
        min(dep.parallelism.get(f"{p.name}.{s.name}", 1), s.max_parallel, inst[s.component])
        for p in sc.processes
        for s in p.steps
    ]
    on = [is_always_on(c, dep) for c in sc.components]
    return x.tobytes() + np.array(split + on, dtype=np.int64).tobytes()


def check_table(genome: DecisionGenome, X: np.ndarray, F: np.ndarray, n: int) -> int:
    """Re-simulate ``n`` random table entries; raise if one differs. Returns how many checked."""
    rng = np.random.default_rng(0)
    for i in rng.choice(len(X), size=min(n, len(X)), replace=False):
        got = evaluate_deployment(genome.scenario, genome.deployment(X[i]), FIDELITY).mean
        if not np.allclose(got, F[i], rtol=1e-9, atol=1e-12):
            raise RuntimeError(f"table entry {i} differs from a fresh simulation: {got} vs {F[i]}")
    return min(n, len(X))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=0, help="local Dask workers (0: inline)")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--check", type=int, default=40, help="table entries to re-simulate")
    ap.add_argument(
        "--search-share",
        type=float,
        default=0.7,
        help="shortlist row: share of the DES budget the search may spend (the end game's "
        "confirmations get the rest)",
    )
    ap.add_argument(
        "--only",
        default=None,
        help="run only the methods whose label contains this text; the result goes to "
        "optimizer_small_matrices_<text>.md (the full table stays as it is)",
    )
    args = ap.parse_args()
    with evaluation_client(args.workers) as client:
        run(args, client)


def run(args: argparse.Namespace, client: object) -> None:
    """Exhaustive front, then every method on the same budget."""
    sc = load_scenario(SCENARIO)
    genome = DecisionGenome(sc)
    X, F, wall = exhaustive(genome, client)
    n = len(X)
    index = {x.tobytes(): i for i, x in enumerate(X)}
    table = {_deployment_key(sc, genome.deployment(x)): f for x, f in zip(X, F, strict=True)}
    checked = check_table(genome, X, F, args.check)
    front = non_dominated(F)
    lo, hi = F[front].min(axis=0), F[front].max(axis=0)
    hv_true = hypervolume(F[front], lo, hi)
    budget = int(BUDGET_SHARE * n)
    pop = budget_pop(budget)
    on_front = X[front]
    split = [genome.split(x) for x in on_front]
    run_choices = sorted({tuple(int(b) for b in r) for _, _, r in split})
    align_choices = sorted({tuple(int(v) for v in a) for _, a, _ in split})

    methods = [
        (f"NSGA-II, 3 matrices, placement operators, pop {pop} (default)", "placement", pop, True),
        ("NSGA-II, 3 matrices, first-round matrix operators, pop 20", "custom", 20, True),
        (
            f"NSGA-II, allocation matrix only, placement operators, pop {pop}",
            "placement",
            pop,
            False,
        ),
        ("random feasible search (uniform over the feasible set)", None, 0, True),
    ]
    # Beyond the acceptance budget: how much the default needs (learning curve).
    methods += [
        (f"NSGA-II, 3 matrices, default, {share:.0%} budget", "placement", pop, True, share)
        for share in (0.10, 0.20)
    ]
    # Multi-fidelity (as on the generated instances): the search stops at 70 % of the DES
    # budget or 4 × budget screens, at most a quarter of each generation DES-scored; the end
    # game screens 1 × budget random one-move neighbours of the front and 1 × budget whole
    # neighbourhoods of its top hypervolume contributors, then DES-scores the final front:
    # every member of it ("confirm all", may pass the budget), or a shortlist of its largest
    # hypervolume contributors with what the search left of the DES budget.
    methods += [
        (
            f"NSGA-II, 3 matrices, default + screening + extreme polish, pop {pop}, "
            "confirm every final-front member",
            "placement",
            pop,
            True,
            BUDGET_SHARE,
            "mf-all",
        ),
        (
            f"NSGA-II, 3 matrices, default + screening + extreme polish, pop {pop}, "
            "shortlist confirmation within the 5 % DES budget"
            + (f", search to {args.search_share:.0%} of it" if args.search_share != 0.7 else ""),
            "placement",
            pop,
            True,
            BUDGET_SHARE,
            "mf-shortlist",
        ),
    ]
    # What `mlops-twin optimize --max-evals B` runs (--decisions all is its default): the
    # settings derived from B alone (MultiFidelity.for_budget), search to search_budget(B),
    # then end_game (polish, row sweep, extreme polish, confirmation within B).
    methods.append(
        (
            "default (`mlops-twin optimize`): screening + row sweep + extreme polish, "
            "end game within the budget",
            "placement",
            pop,
            True,
            BUDGET_SHARE,
            "mf-default",
        )
    )
    # The same at a smaller B, so that DES runs plus screens at their cost (0.07-0.13 of a DES
    # run each) stay within 5 % of the exhaustive set's simulations: screens counted too.
    methods.append(
        (
            "default (`mlops-twin optimize`) at 2.5 % (B = 0.025 x exhaustive), DES runs plus "
            "screens' cost within 5 %",
            "placement",
            pop,
            True,
            0.025,
            "mf-default",
        )
    )
    if args.only:
        methods = [m for m in methods if args.only in m[0]]
    steal0, t0 = steal_cores()
    rows, summary = [], []
    for label, operators, pop_size, three, *more in methods:
        budget = int((more[0] if more else BUDGET_SHARE) * n)
        mf = len(more) > 1 and more[1].startswith("mf")
        ratios = []
        for seed in range(1, args.seeds + 1):
            g = genome if three else Genome(sc)
            ev = TableEvaluator(g, table)
            started = time.perf_counter()
            if mf and more[1] == "mf-default":
                ev = TableMultiFidelity(g, table, MultiFidelity.for_budget(budget))
                search = Search.start(
                    # as the CLI: population from B, the search stops at search_budget(B)
                    default_config(
                        search_budget(budget), n_gen=100_000, seed=seed, pop_size=pop_size
                    ),
                    ev,
                )
                search.run()
                end_game(search)
            elif mf:
                settings = MultiFidelity(
                    0.0,
                    0.25,
                    polish_screens=budget,
                    max_screens=4 * budget,
                    extreme_screens=budget,
                )
                ev = TableMultiFidelity(g, table, settings)
                config = SearchConfig(
                    operators=operators,
                    pop_size=pop_size,
                    n_gen=10_000,
                    max_evals=int(
                        (args.search_share if more[1] == "mf-shortlist" else 0.7) * budget
                    ),
                    seed=seed,
                )
                search = Search.start(config, ev)
                search.run()
                polish(search, settings.polish_screens, settings.polish_rounds)
                polish_extremes(search, settings.extreme_screens)
                # The shortlist's DES budget: what the search left of the method's budget.
                left = max(0, budget - ev.des_runs) if more[1] == "mf-shortlist" else None
                confirm_front(search, left)
            elif operators is None:
                pick = np.random.default_rng(seed).choice(n, size=budget, replace=False)
                ev.evaluate(X[pick])
            else:
                # A generation ends past the budget: stop one population early so
                # the search never simulates more than the budget.
                config = SearchConfig(
                    operators=operators,
                    pop_size=pop_size,
                    n_gen=10_000,
                    max_evals=budget - pop_size,
                    seed=seed,
                )
                Search.start(config, ev).run()
            secs = time.perf_counter() - started
            Xs, Fs, _ = ev.evaluated()
            if mf:  # only DES-scored candidates count; screens are reported beside them
                des = [i for i, k in enumerate(ev.order) if k in ev.des_keys]
                Xs, Fs = Xs[des], Fs[des]
            outside = sum(x.tobytes() not in index for x in Xs) if three else 0
            found = Fs[non_dominated(Fs)]
            ratio = hypervolume(found, lo, hi) / hv_true
            ratios.append(ratio)
            rows.append(
                [
                    label,
                    seed,
                    ev.simulations,
                    f"{ev.simulations / n:.1%}",
                    getattr(ev, "screened", 0),
                    round(ratio, 4),
                    len(found),
                    outside,
                    round(secs, 1),
                ]
            )
            print(f"{label} seed {seed}: HV ratio {ratio:.4f}", file=sys.stderr)
        summary.append([label, round(float(np.mean(ratios)), 4), round(float(np.min(ratios)), 4)])
    steal1, t1 = steal_cores()
    steal = (steal1 - steal0) / max(t1 - t0, 1e-9)

    text = "\n".join(
        [
            "# NSGA-II over the three decision matrices vs the true Pareto front (small instance)",
            "",
            "Command: `nice -n 19 .venv/bin/python "
            "benchmarks/optimizer_small_matrices.py "
            f"--workers {args.workers} --seeds {args.seeds} --check {args.check}"
            + (f" --only {shlex.quote(args.only)}" if args.only else "")
            + (f" --search-share {args.search_share}" if args.search_share != 0.7 else "")
            + "` "
            "(hypervolume figures, not timings: run without the bench lock)",
            "",
            f"- {machine_line()}; host steal during the searches {steal:.2f} cores",
            f"- instance: {SCENARIO.name}, {genome.shape[0]} components × {genome.shape[1]} "
            f"machines, alignment genes {[a.key for a in genome.align]}, constant-run genes "
            f"{[genome.components[k] for k in genome.open]}; {count_decisions(genome):,} "
            f"candidates within bounds, {n:,} feasible and canonical",
            f"- evaluation: {FIDELITY.describe()} (common random numbers for every candidate); "
            f"cost criterion: {sc.settings.cost_criterion}",
            f"- exhaustive: {n:,} simulations, {wall:.0f} s of simulation wall time; true front "
            f"{len(front)} points, hypervolume {hv_true:.4f} (criteria normalised by the true "
            "front's ideal/nadir, reference point 1.1)",
            f"- the true front uses constant-run choices {run_choices} "
            f"(bits for {[genome.components[k] for k in genome.open]}) and alignments "
            f"{align_choices}: neither matrix is constant along it",
            f"- budget of every method: at most {int(BUDGET_SHARE * n)} distinct simulations "
            f"({BUDGET_SHARE:.0%} of exhaustive; the last rows: more); the searches read the "
            "scores from the "
            f"exhaustive table ({checked} random entries re-simulated first: identical)",
            "",
            "- the multi-fidelity rows screen candidates with the screening twin (which "
            "models cold starts of on-demand components since the fifth session; results "
            "files written before then screened them as always up, so optimistic) and count "
            "only DES-scored candidates in their front. Evaluations are counted as DES runs "
            "('simulations (DES)', the budget); screens are reported beside them ('screened'). "
            "'confirm every final-front member' DES-scores all screening-only members of the "
            "final front (may pass the budget); 'shortlist confirmation' DES-scores only the "
            "members that add the most hypervolume to the DES-scored ones (lazy-greedy "
            "hypervolume subset selection, `optimizer.multifidelity.hv_shortlist`), as many "
            "as the search left of the 5 % DES budget. 'default' is what `mlops-twin optimize "
            f"--max-evals {int(BUDGET_SHARE * n)}` runs (`--decisions all`, screening, "
            "`MultiFidelity.for_budget`: search to `search_budget(B)`, then polish, row sweep, "
            "extreme polish and the confirmation within B), nothing set per instance",
            "",
            "## Hypervolume ratio to the true front (mean and worst over seeds)",
            "",
            markdown_table(["method", "mean HV ratio", "worst HV ratio"], summary),
            "",
            "## Per seed",
            "",
            "'outside' counts simulated vectors that are not in the exhaustive set (should be 0: "
            "repair makes every vector feasible and canonical).",
            "",
            markdown_table(
                [
                    "method",
                    "seed",
                    "simulations (DES)",
                    "of exhaustive",
                    "screened",
                    "HV ratio",
                    "front points",
                    "outside",
                    "wall (s)",
                ],
                rows,
            ),
        ]
    )
    name = "optimizer_small_matrices" + (f"_{_slug(args.only)}" if args.only else "")
    if args.search_share != 0.7:
        name += f"_search{round(100 * args.search_share)}"
    write_result(name, text)


def _slug(text: str) -> str:
    """``text`` as a file-name part (letters, digits and dashes)."""
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


if __name__ == "__main__":
    main()
