"""NSGA-II on examples/edge-cloud.yaml: wall time inline vs Dask; chosen deployment vs greedy.

Run: .venv/bin/python benchmarks/optimizer_edge_cloud.py [--pop 100 --gens 50 --workers 2]

1. The same search (seed, population, generations, search fidelity) runs
   inline and on a local Dask cluster of ``--workers`` processes; wall times
   and their ratio are reported, and the two fronts must be identical.
2. The front is re-scored at the final fidelity, the point closest to the
   ideal is chosen, and it is compared with greedy best-fit and first-fit
   decreasing packings scored at the same final fidelity: is it dominated,
   and where does it win and by how much.

Stage variants, batch sizes and parallelism come from the hand-made
deployment (examples/edge-cloud.deployment.yaml); only the allocation is
searched.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, markdown_table, write_result

from optimizer.baselines import greedy
from optimizer.distributed import evaluation_client
from optimizer.evaluation import Evaluator, Fidelity
from optimizer.ga import SearchConfig
from optimizer.genome import Genome
from optimizer.report import comparison_rows
from optimizer.run import RunResult, finish, start_or_resume
from twin.criteria import CRITERIA
from twin.load import load_deployment, load_scenario

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "examples" / "edge-cloud.yaml"
BASE = ROOT / "examples" / "edge-cloud.deployment.yaml"


def timed_search(genome: Genome, config: SearchConfig, fid: Fidelity, client: object):
    """Run a search; returns it, its wall time (s) and this process's CPU time (s)."""
    started, cpu0 = time.perf_counter(), time.process_time()
    search = start_or_resume(genome, config, fid, None, False, client)
    search.run(
        lambda g: print(
            f"  gen {g.gen}: {g.simulations} sims, HV {g.hv:.4f}, {g.time_s:.0f} s",
            file=sys.stderr,
        )
    )
    return search, time.perf_counter() - started, time.process_time() - cpu0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pop", type=int, default=100)
    ap.add_argument("--gens", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--horizon", type=float, default=600.0)
    ap.add_argument("--replications", type=int, default=1)
    ap.add_argument("--final-horizon", type=float, default=3600.0)
    ap.add_argument("--final-replications", type=int, default=3)
    ap.add_argument("--final-max", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    sc = load_scenario(SCENARIO)
    genome = Genome(sc, load_deployment(BASE))
    config = SearchConfig(pop_size=args.pop, n_gen=args.gens, seed=args.seed)
    fid = Fidelity(None, args.horizon, args.replications, args.seed)
    final = Fidelity(None, args.final_horizon, args.final_replications, args.seed)

    print(f"Dask search, {args.workers} workers", file=sys.stderr)
    with evaluation_client(args.workers) as client:
        started = time.perf_counter()
        dask, t_dask, cpu_dask = timed_search(genome, config, fid, client)
        print("re-scoring the front and greedy at final fidelity", file=sys.stderr)
        result: RunResult = finish(dask, final, client, "ideal", final_max=args.final_max)
        first_fit = greedy(genome, "first_fit").reshape(-1)
        F_ff, CI_ff = Evaluator(genome, final, client).evaluate(first_fit[None])
        t_dask_total = time.perf_counter() - started
    # Written now and again after the inline run, which takes longest.
    times = {"dask": (t_dask, cpu_dask), "inline": None, "dask_total": t_dask_total}
    report(args, genome, fid, final, None, dask, times, result, F_ff, CI_ff)
    print(f"inline search ({args.gens} × {args.pop})", file=sys.stderr)
    inline, t_inline, cpu_inline = timed_search(genome, config, fid, None)
    times["inline"] = (t_inline, cpu_inline)
    report(args, genome, fid, final, inline, dask, times, result, F_ff, CI_ff)


def report(args, genome, fid, final, inline, dask, times, result, F_ff, CI_ff) -> None:
    """Write the markdown table (``inline`` None: that run has not finished yet).

    Besides wall time, the CPU time of the simulations is summed (measured in
    the process that ran each): on a shared machine it shows what the search
    would take on idle cores — simulation CPU ÷ workers, or the main
    process's own CPU if that is larger.
    """
    t_dask, cpu_dask = times["dask"]
    t_dask_total = times["dask_total"]
    same = inline is not None and (
        np.array_equal(inline.front()[0], dask.front()[0])
        and np.array_equal(inline.front()[1], dask.front()[1])
    )
    de = dask.evaluator
    idle_dask = max(cpu_dask, de.sim_cpu_s / args.workers)
    timing = [
        [
            f"Dask, {args.workers} workers",
            round(t_dask, 1),
            de.simulations,
            de.lookups,
            round(de.sim_cpu_s, 1),
            round(de.sim_cpu_s / max(de.simulations, 1), 3),
            round(cpu_dask, 1),
            round(idle_dask, 1),
            "1.00",
        ],
    ]
    if inline is not None:
        t_inline, cpu_inline = times["inline"]
        ev = inline.evaluator
        timing.append(
            [
                "inline",
                round(t_inline, 1),
                ev.simulations,
                ev.lookups,
                round(ev.sim_cpu_s, 1),
                round(ev.sim_cpu_s / max(ev.simulations, 1), 3),
                round(cpu_inline, 1),
                round(cpu_inline, 1),
                f"{t_inline / t_dask:.2f}",
            ]
        )
    i = result.chosen
    chosen = result.F[i]
    versus = []
    for label, other in (("best-fit", result.greedy_F), ("first-fit", F_ff[0])):
        dominated = bool(np.all(other <= chosen) and np.any(other < chosen))
        for name, a, b, verdict in comparison_rows(chosen, other):
            versus.append([label, name, f"{a:.4g}", f"{b:.4g}", verdict])
        versus.append([label, "**greedy dominates chosen?**", "", "", "yes" if dominated else "no"])
    ci_rows = [
        [
            c,
            f"{result.F[i, k]:.4g} ± {result.CI[i, k]:.3g}",
            f"{result.greedy_F[k]:.4g} ± {result.greedy_CI[k]:.3g}",
            f"{F_ff[0, k]:.4g} ± {CI_ff[0, k]:.3g}",
        ]
        for k, c in enumerate(CRITERIA)
    ]
    text = "\n".join(
        [
            "# Optimizer on edge-cloud: wall time and chosen vs greedy",
            "",
            f"Command: `.venv/bin/python benchmarks/optimizer_edge_cloud.py --pop {args.pop} "
            f"--gens {args.gens} --workers {args.workers} --horizon {args.horizon:g} "
            f"--replications {args.replications} --final-horizon {args.final_horizon:g} "
            f"--final-replications {args.final_replications} --final-max {args.final_max}`",
            "",
            f"- {machine_line()} (the machine is shared: wall times move with its load)",
            f"- NSGA-II, matrix operators, population {args.pop}, {args.gens} generations, "
            f"seed {args.seed}; {genome.shape[0]} components × {genome.shape[1]} machines",
            f"- search fidelity: {fid.describe()}; final fidelity: {final.describe()}",
            "- identical fronts inline and on Dask: "
            + ("(inline run pending)" if inline is None else f"**{'yes' if same else 'NO'}**"),
            "",
            "## Wall time of the search",
            "",
            markdown_table(
                [
                    "mode",
                    "search wall (s)",
                    "simulations",
                    "individuals",
                    "simulation CPU (s)",
                    "CPU s / simulation",
                    "main process CPU (s)",
                    "projected wall on idle cores (s)",
                    "wall ÷ Dask wall",
                ],
                timing,
            ),
            "",
            f"Goal: ≤ 300 s for {args.gens} × {args.pop}. Dask total including cluster start "
            f"and re-scoring: {t_dask_total:.0f} s.",
            "",
            "## Chosen (closest to ideal) vs greedy, final fidelity",
            "",
            markdown_table(["criterion", "chosen", "greedy best-fit", "greedy first-fit"], ci_rows),
            "",
            markdown_table(["greedy", "criterion", "chosen", "greedy", "who wins"], versus),
            "",
            f"Front after re-scoring: {int(result.final_front.sum())} non-dominated of "
            f"{len(result.X)} re-scored allocations.",
        ]
    )
    write_result("optimizer_edge_cloud", text)


if __name__ == "__main__":
    main()
