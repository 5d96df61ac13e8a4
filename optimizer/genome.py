"""The genome codec: a K×S allocation matrix ↔ pymoo's flat integer vector.

Rows K are the scenario's components, columns S its machines (both in file
order, as in ``twin.deployment``). The vector is the matrix in row-major
order, so row k occupies ``x[k*S:(k+1)*S]``. The same codec serves the pymoo
problem and the RL environment. Constraint checks and repair are the twin's
(``twin.deployment``); this module only adapts shapes and bounds.
"""

from __future__ import annotations

import numpy as np

from twin.deployment import (
    capacity_vectors,
    demand_vectors,
    is_feasible_matrix,
    repair,
    with_matrix,
)
from twin.spec import Deployment, Scenario

EPS = 1e-9


class Genome:
    """Shapes, bounds and feasibility of allocation matrices of one scenario.

    ``base`` supplies everything a deployment holds besides the allocation
    (stage variants and batch sizes, per-step parallelism); stage variants
    change what an instance reserves, so bounds and feasibility depend on it.
    """

    def __init__(self, scenario: Scenario, base: Deployment | None = None) -> None:
        self.scenario = scenario
        self.base = base if base is not None else Deployment(name="base", allocation={})
        self.components = [c.name for c in scenario.components]
        self.machines = scenario.server_instances()
        self.shape = (len(self.components), len(self.machines))
        self.n_var = self.shape[0] * self.shape[1]
        self.cpu, self.ram = demand_vectors(scenario, self.base)
        self.cap_cpu, self.cap_ram = capacity_vectors(scenario)
        self.max_replicas = np.array([c.max_replicas for c in scenario.components])

    # ------------------------------------------------------------------ codec

    def encode(self, matrix: np.ndarray) -> np.ndarray:
        """K×S matrix → flat int64 vector of length K·S (row-major)."""
        m = np.asarray(matrix)
        if m.shape != self.shape:
            raise ValueError(f"matrix shape {m.shape} != (components, machines) {self.shape}")
        return m.astype(np.int64).reshape(-1)

    def decode(self, x: np.ndarray) -> np.ndarray:
        """Flat vector (ints or floats from a real-coded operator) → K×S int64 matrix.

        Floats are rounded to the nearest integer; the length must be K·S.
        """
        v = np.asarray(x)
        if v.size != self.n_var:
            raise ValueError(f"vector has {v.size} entries, expected K·S = {self.n_var}")
        return np.rint(v).astype(np.int64).reshape(self.shape)

    def decode_many(self, X: np.ndarray) -> np.ndarray:
        """n×(K·S) array → n×K×S int64 array."""
        X = np.atleast_2d(np.asarray(X))
        return np.rint(X).astype(np.int64).reshape((X.shape[0], *self.shape))

    def key(self, x: np.ndarray) -> bytes:
        """A hashable identity of an allocation (same matrix ⇒ same key)."""
        return self.decode(x).tobytes()

    # ----------------------------------------------------------------- bounds

    def cell_bounds(self) -> np.ndarray:
        """K×S upper bounds: most instances of component k that machine s can hold alone.

        The minimum of ``max_replicas`` and what the machine's CPU and RAM fit;
        0 where not even one instance fits (such cells stay 0 forever).
        """
        with np.errstate(divide="ignore", invalid="ignore"):
            by_cpu = np.where(
                self.cpu[:, None] > 0,
                np.floor((self.cap_cpu[None, :] + EPS) / self.cpu[:, None]),
                np.inf,
            )
            by_ram = np.where(
                self.ram[:, None] > 0,
                np.floor((self.cap_ram[None, :] + EPS) / self.ram[:, None]),
                np.inf,
            )
        fit = np.minimum(by_cpu, by_ram)
        return np.minimum(fit, self.max_replicas[:, None]).astype(np.int64)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Lower (zeros) and upper bounds of the flat vector, as pymoo wants them."""
        xu = self.cell_bounds().reshape(-1)
        return np.zeros(self.n_var, dtype=np.int64), xu

    # ------------------------------------------------------------ feasibility

    def is_feasible(self, x: np.ndarray) -> bool:
        """Capacity, ≥ 1 instance and max-replica rules (``twin.deployment``)."""
        return is_feasible_matrix(self.scenario, self.decode(x), self.base)

    def repair(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The nearest feasible vector (twin's repair); feasible input is returned as is."""
        m = self.decode(x)
        if is_feasible_matrix(self.scenario, m, self.base):
            return m.reshape(-1)
        try:
            return repair(self.scenario, m, self.base, rng).reshape(-1)
        except ValueError:
            # The twin's repair only drops replicas that have siblings; on a tight
            # instance one instance of everything can be packed so that the last
            # component fits nowhere. Re-packing then finds a feasible placement.
            return self.repack(m, rng).reshape(-1)

    def repair_unbiased(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Feasible vector near ``x`` without preferring whom to evict.

        The twin's repair evicts the largest CPU demand first, so an
        allocation with many instances of a heavy component — the low-time,
        low-variance end of many fronts — is undone every time a variation
        operator produces it. Here an overloaded machine evicts a uniformly
        drawn instance (of a component with siblings, when there is one),
        which moves to a random machine with room or, if it has siblings and
        a coin says so, is dropped. Components left without instances and
        anything still infeasible go through :meth:`repack`.
        """
        m = self.decode(x)
        if is_feasible_matrix(self.scenario, m, self.base):
            return m.reshape(-1)
        y = np.clip(m, 0, self.cell_bounds())
        for k in range(self.shape[0]):
            while y[k].sum() > self.max_replicas[k]:
                y[k, rng.choice(np.flatnonzero(y[k]))] -= 1
        S = self.shape[1]
        for j in rng.permutation(S):
            while (
                self.cpu @ y[:, j] > self.cap_cpu[j] + EPS
                or self.ram @ y[:, j] > self.cap_ram[j] + EPS
            ):
                here = np.flatnonzero(y[:, j])
                shared = here[y[here].sum(axis=1) > 1]
                k = int(rng.choice(shared if shared.size else here))
                y[k, j] -= 1
                if y[k].sum() > 0 and rng.random() < 0.5:
                    continue
                free_cpu = self.cap_cpu - self.cpu @ y
                free_ram = self.cap_ram - self.ram @ y
                room = [
                    t
                    for t in rng.permutation(S)
                    if t != j
                    and free_cpu[t] + EPS >= self.cpu[k]
                    and free_ram[t] + EPS >= self.ram[k]
                ]
                if room:
                    y[k, room[0]] += 1
        if is_feasible_matrix(self.scenario, y, self.base):
            return y.reshape(-1)
        return self.repack(y if y.sum(axis=1).min() > 0 else m, rng).reshape(-1)

    def repack(
        self, m: np.ndarray, rng: np.random.Generator, max_nodes: int = 100_000
    ) -> np.ndarray:
        """A feasible matrix close to ``m``: its instances re-packed.

        First one instance of every component, largest CPU demand first, by a
        backtracking search that tries the machines ``m`` had the component on
        first and the others in random order (complete on small instances;
        at most ``max_nodes`` placements tried). Extra instances then stay
        where ``m`` had them when they fit and are dropped otherwise. Raises
        ValueError when no placement of one instance each is found.
        """
        want = np.clip(np.asarray(m, dtype=np.int64), 0, self.cell_bounds())
        order = [int(k) for k in np.lexsort((-self.ram, -self.cpu))]
        S = self.shape[1]
        prefs = [
            [j for j in rng.permutation(S) if want[k, j] > 0]
            + [j for j in rng.permutation(S) if want[k, j] == 0]
            for k in range(self.shape[0])
        ]
        x = np.zeros(self.shape, dtype=np.int64)
        free_cpu, free_ram = self.cap_cpu.copy(), self.cap_ram.copy()
        nodes = 0

        def fits(k: int, j: int) -> bool:
            return free_cpu[j] + EPS >= self.cpu[k] and free_ram[j] + EPS >= self.ram[k]

        def place(k: int, j: int, n: int) -> None:
            x[k, j] += n
            free_cpu[j] -= n * self.cpu[k]
            free_ram[j] -= n * self.ram[k]

        def search(i: int) -> bool:
            nonlocal nodes
            if i == len(order):
                return True
            k = order[i]
            for j in prefs[k]:
                nodes += 1
                if nodes > max_nodes:
                    return False
                if fits(k, j):
                    place(k, j, 1)
                    if search(i + 1):
                        return True
                    place(k, j, -1)
            return False

        if not search(0):
            raise ValueError(
                "cannot repair the allocation: no placement of one instance of every "
                "component fits the machines"
            )
        for k in order:
            for j in range(S):
                while x[k, j] < want[k, j] and x[k].sum() < self.max_replicas[k] and fits(k, j):
                    place(k, j, 1)
        return x

    def deployment(self, x: np.ndarray, name: str = "candidate") -> Deployment:
        """The full deployment: this allocation plus the base's other settings."""
        dep = with_matrix(self.scenario, self.decode(x), self.base)
        return dep.model_copy(update={"name": name})

    def allocation(self, x: np.ndarray) -> dict[str, dict[str, int]]:
        """The allocation as ``{component: {machine: instances}}`` (non-zero cells)."""
        m = self.decode(x)
        return {
            c: {self.machines[j]: int(m[i, j]) for j in np.flatnonzero(m[i])}
            for i, c in enumerate(self.components)
        }
