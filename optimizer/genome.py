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
        return repair(self.scenario, m, self.base, rng).reshape(-1)

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
