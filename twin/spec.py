"""The scenario specification: the single source of truth for every input.

Everything MLOps Twin reads — servers, components, processes, inference
pipelines, workloads, deployments — is one of these frozen pydantic models.
This module imports nothing from the project; every other module imports it.

Units are in the field names: ``_s`` seconds, ``_ms`` milliseconds, ``_gb``
gigabytes, ``_mb`` megabytes, ``_mbps`` megabits per second, ``_per_s`` per
second. A service time is the time one batch takes on one instance of the
component on a server of ``cpu_speed`` 1.0; the simulator divides it by the
server's speed.
"""

from __future__ import annotations

import itertools
import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator


def _number(value: object) -> object:
    # YAML reads `yes`/`no`/`on` as booleans and quoted digits as strings; in
    # pydantic's lax mode `count: yes` would quietly become one machine.
    if isinstance(value, bool | str):
        raise ValueError(f"expected a number, got {type(value).__name__} {value!r}")
    return value


NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=64)]
Int = Annotated[int, BeforeValidator(_number)]
Float = Annotated[float, BeforeValidator(_number), Field(allow_inf_nan=False)]
PositiveFloat = Annotated[Float, Field(gt=0)]
# Most servers, components, processes, steps per process, ... a scenario may
# list: far above any real system, low enough that checks stay instant.
MAX_ITEMS = 1000
NonNegFloat = Annotated[Float, Field(ge=0)]
# Physical sizes far above any real machine, so a typo such as 2**80 cores is refused
# with its field named instead of simulated as a meaningless system.
MAX_CORES = 1e6
MAX_RAM_GB = 1e9
MAX_PERIOD_S = 1e9  # a period longer than 30 years never fires in a run


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


# --------------------------------------------------------------------------- service time


class _ServiceTimeBase(Frozen):
    per_item_ms: NonNegFloat = Field(
        0.0, description="Extra mean time per item beyond the first in a batch (ms)."
    )

    def batch_mean_ms(self, batch: int = 1) -> float:
        """Mean time of one batch of ``batch`` items at cpu_speed 1 (ms)."""
        return self._base_ms() + self.per_item_ms * (batch - 1)

    def batch_cv(self, batch: int = 1) -> float:
        """Coefficient of variation of the time of one batch."""
        return 0.0

    def _base_ms(self) -> float:
        raise NotImplementedError


class ConstantServiceTime(_ServiceTimeBase):
    """Deterministic: every batch of size b takes ``ms + per_item_ms·(b−1)``."""

    kind: Literal["constant"]
    ms: NonNegFloat = Field(description="Time of a batch of one (ms).")

    def _base_ms(self) -> float:
        return self.ms


class ExponentialServiceTime(_ServiceTimeBase):
    """Exponentially distributed with mean ``mean_ms + per_item_ms·(b−1)``."""

    kind: Literal["exponential"]
    mean_ms: PositiveFloat = Field(description="Mean time of a batch of one (ms).")

    def _base_ms(self) -> float:
        return self.mean_ms

    def batch_cv(self, batch: int = 1) -> float:
        return 1.0


class _ShapedServiceTime(_ServiceTimeBase):
    mean_ms: PositiveFloat = Field(description="Mean time of a batch of one (ms).")
    cv: NonNegFloat = Field(0.25, description="Coefficient of variation (sd / mean).")

    def _base_ms(self) -> float:
        return self.mean_ms

    def batch_cv(self, batch: int = 1) -> float:
        return self.cv


class LognormalServiceTime(_ShapedServiceTime):
    """Lognormal with the given mean and coefficient of variation."""

    kind: Literal["lognormal"]


class GammaServiceTime(_ShapedServiceTime):
    """Gamma with the given mean and coefficient of variation."""

    kind: Literal["gamma"]


class TablePoint(Frozen):
    mean_ms: PositiveFloat
    cv: NonNegFloat = 0.0


class TableServiceTime(Frozen):
    """Fitted table by batch size; linear interpolation between measured sizes.

    Outside the measured sizes the nearest segment is extended; a one-point
    table scales its mean in proportion to the batch size.
    """

    kind: Literal["table"]
    dist: Literal["constant", "lognormal", "gamma"] = "lognormal"
    points: dict[Int, TablePoint] = Field(
        min_length=1, description="Batch size → mean (ms) and cv at cpu_speed 1."
    )

    @model_validator(mode="after")
    def _check_points(self) -> TableServiceTime:
        bad = [b for b in self.points if b < 1]
        if bad:
            raise ValueError(f"points: batch sizes must be ≥ 1, got {bad}")
        return self

    def _interp(self, batch: int) -> tuple[float, float]:
        keys = sorted(self.points)
        if len(keys) == 1:
            p = self.points[keys[0]]
            return p.mean_ms * batch / keys[0], p.cv
        lo, hi = keys[0], keys[1]
        for lo, hi in itertools.pairwise(keys):  # noqa: B007 - the last pair extrapolates
            if batch <= hi:
                break
        w = (batch - lo) / (hi - lo)
        a, b = self.points[lo], self.points[hi]
        return a.mean_ms + w * (b.mean_ms - a.mean_ms), a.cv + w * (b.cv - a.cv)

    def batch_mean_ms(self, batch: int = 1) -> float:
        """Mean time of one batch of ``batch`` items at cpu_speed 1 (ms)."""
        return max(self._interp(batch)[0], 1e-6)

    def batch_cv(self, batch: int = 1) -> float:
        """Coefficient of variation of the time of one batch."""
        return 0.0 if self.dist == "constant" else max(self._interp(batch)[1], 0.0)


ServiceTime = Annotated[
    ConstantServiceTime
    | ExponentialServiceTime
    | LognormalServiceTime
    | GammaServiceTime
    | TableServiceTime,
    Field(discriminator="kind"),
]


# --------------------------------------------------------------------------- servers


class Server(Frozen):
    """A server type; ``count`` identical machines of it exist."""

    name: Name
    count: Int = Field(1, ge=1, le=1000, description="Identical machines of this type.")
    cpu_cores: PositiveFloat = Field(le=MAX_CORES, description="Cores per machine.")
    cpu_speed: PositiveFloat = Field(1.0, description="Core speed relative to the reference.")
    gpus: Int = Field(0, ge=0, description="GPUs per machine.")
    gpu_speed: PositiveFloat = Field(1.0, description="GPU speed relative to the reference.")
    ram_gb: PositiveFloat = Field(le=MAX_RAM_GB, description="Memory per machine (GB).")
    bandwidth_mbps: PositiveFloat = Field(1000.0, description="Network bandwidth (Mbit/s).")
    price_per_hour: NonNegFloat = Field(0.0, description="Rental price per machine-hour.")
    zone: Name = Field("default", description="Network zone; crossing zones adds latency.")
    cpu_quota_cores: PositiveFloat | None = Field(
        None,
        description="A CPU bandwidth quota (Linux CFS, as a container's CPU limit): the "
        "machine's instances together run at most this many cores' worth of time per "
        "settings.cpu_period_ms period, at full core speed while the period's quota lasts, "
        "stalled to the next period after. None: no quota (cpu_cores are the limit).",
    )

    def instance_names(self) -> list[str]:
        """Names of the machines of this type: ``name`` or ``name-1 … name-count``."""
        if self.count == 1:
            return [self.name]
        return [f"{self.name}-{i}" for i in range(1, self.count + 1)]


# --------------------------------------------------------------------------- components


class ModelFile(Frozen):
    """A user's own ONNX model for a stage variant, served by the testbed as it is."""

    file: str = Field(description="Path of the .onnx file (relative to the working directory).")
    input_name: str = Field("x", description="Name of the model's input.")
    input_shape: list[Int] = Field(
        description="Shape of one item, without the batch axis, e.g. [1, 32, 32]."
    )
    dtype: Literal["float32"] = Field("float32", description="Element type of the input.")


class Variant(Frozen):
    """One model variant of an inference stage (pipeline paper: z_i of task n)."""

    name: Name
    accuracy: Float = Field(ge=0, le=1, description="Measured accuracy v_n(z) in [0, 1].")
    cpu_cores: PositiveFloat = Field(
        le=MAX_CORES, description="Resource use w_n(z) per replica (cores)."
    )
    cost: NonNegFloat | None = Field(
        None, description="Cost c_n(z) per replica; defaults to cpu_cores as in the paper."
    )
    ram_gb: NonNegFloat = Field(0.25, le=MAX_RAM_GB, description="Memory per replica (GB).")
    service_time: ServiceTime = Field(description="Time of one batch at cpu_speed 1.")
    model: ModelFile | None = Field(
        None, description="The user's ONNX model for this variant; None: the testbed's zoo."
    )

    @property
    def replica_cost(self) -> float:
        return self.cpu_cores if self.cost is None else self.cost


class ServerOverhead(Frozen):
    """CPU a stage's server spends outside the model (HTTP parse, (de)serialisation,
    batching), at cpu_speed 1. It comes from the same CPU as the model, so the twin
    adds it to every batch's service time: it counts against the stage's capacity."""

    per_call_ms: NonNegFloat = Field(0.0, description="CPU per batch executed (ms).")
    per_item_ms: NonNegFloat = Field(0.0, description="CPU per item (a stage visit) (ms).")
    concurrent: bool = Field(
        False,
        description="The server does this work in its own thread, beside the model (a "
        "stage server whose model runs in a worker thread): each visit's CPU "
        "(per_call_ms + per_item_ms) is spent as it arrives, before it joins the queue, "
        "drawing on the machine's CPU quota (Server.cpu_quota_cores) but not holding the "
        "model. False: added to every batch's service time. Shared-queue stages always add it.",
    )
    handoff: ServiceTime | None = Field(
        None,
        description="Hand-off between jobs (ms): after a batch ends while the next one "
        "already waits, the instance takes this long before it starts it. It holds the "
        "instance (no job starts) but neither the machine's cores nor its CPU quota: the "
        "server's CPU is per_call_ms/per_item_ms, this is the serial time around it (the "
        "answer going out, the next call's dispatch on the server's event loop). None: "
        "the next job starts when the batch ends.",
    )
    handoff_cpu: bool = Field(
        False,
        description="The hand-off is CPU on the model's own thread (an inline server's event "
        "loop between model runs): at the machine's speed, drawing on its CPU quota, so a "
        "quota that runs out stalls the hand-off and the stall lands between jobs. False: "
        "it takes no CPU (only the instance).",
    )
    answer_ms: NonNegFloat = Field(
        0.0,
        description="Serial time per answer of a batch (ms): the server sends a batch's "
        "answers one by one, so the k-th (0-based) reaches the caller k × answer_ms after "
        "the batch ends, and a visit's HTTP hop grows with its batch (the first answer's "
        "hop is in the request's overhead). It holds neither the instance nor CPU. 0: all "
        "answers leave when the batch ends.",
    )
    timer_late_ms: NonNegFloat = Field(
        0.0,
        description="How late the server's batch timer fires (ms): a batch that is not "
        "full starts once its oldest item has waited batch_timeout_ms + timer_late_ms "
        "(an event loop's timer fires after its due time). 0: on time.",
    )
    answers_onward: bool = Field(
        False,
        description="With answer_ms: the caller reads all of a batch's answers (answer_ms "
        "each) in one turn of its event loop before it sends their items on, so the items "
        "whose request goes on to another step leave together, (n − 1) × answer_ms after "
        "the batch of n ends, and reach their next stage at one instant (in one call); a "
        "last step's k-th answer still goes back k × answer_ms after it. False: every "
        "answer k × answer_ms after the batch ends.",
    )
    call_window_ms: NonNegFloat = Field(
        0.0,
        description="The caller's call layer (ms): items sent to one replica within this "
        "long of a call's first item (one turn of the gateway's event loop) travel in that "
        "call, up to the stage's batch. A call's items are answered together, once its last "
        "item is computed (one answer: a batch's answers leave one call at a time, "
        "answer_ms per item before it), and the server's CPU per call (per_call_ms, with "
        "concurrent) is spent once per call. Items answered together reach the next stage "
        "together, so they share a call there too. Balanced dispatch only. 0: every item "
        "is a call of its own.",
    )


class Component(Frozen):
    """A deployable component: a service, a batch worker or an inference stage."""

    name: Name
    keepalive_cpu_cores: NonNegFloat = Field(
        0.0, le=MAX_CORES, description="CPU an idle instance uses to stay up (cores)."
    )
    keepalive_ram_gb: NonNegFloat = Field(
        0.0, le=MAX_RAM_GB, description="Memory of an idle instance (GB)."
    )
    always_on: bool = Field(
        True,
        description="Instances run all the time (keep-alive load counts) vs on demand; the "
        "default of the constant-run decision, which a deployment's always_on may change.",
    )
    always_on_required: bool = Field(
        False,
        description="The component must run all the time (a model registry, a feature "
        "store): deployments may not make it on-demand, so the optimizer does not search it.",
    )
    startup_s: NonNegFloat = Field(
        0.0,
        description="Cold start of an on-demand instance (s): an instance started for work "
        "that arrives while it is stopped serves only after this delay, and stops again "
        "when it has nothing left to do. Constant-run instances are always warm.",
    )
    cpu_cores: PositiveFloat = Field(
        1.0, le=MAX_CORES, description="Cores one instance uses while it works on a step."
    )
    variants: list[Variant] = Field(
        default_factory=list,
        max_length=MAX_ITEMS,
        description="Model variants; non-empty for inference stages.",
    )
    dispatch: Literal["balanced", "shared_queue"] = Field(
        "balanced",
        description="'balanced': a load balancer sends each part to one instance's own queue; "
        "'shared_queue': idle instances pull from one FIFO queue (a broker-fed worker pool), "
        "fetching their input when they start.",
    )
    max_batch: Int = Field(1, ge=1, le=4096, description="Largest batch an instance forms.")
    max_replicas: Int = Field(64, ge=1, le=10000, description="Most instances allowed (F_max).")
    server_overhead: ServerOverhead | None = Field(
        None, description="Stage server CPU outside the model, added to each batch's service."
    )

    @model_validator(mode="after")
    def _unique_variants(self) -> Component:
        _require_unique([v.name for v in self.variants], "variants")
        if self.always_on_required and not self.always_on:
            raise ValueError("always_on: false contradicts always_on_required: true")
        return self

    @property
    def is_stage(self) -> bool:
        return bool(self.variants)

    def variant(self, name: str | None) -> Variant:
        """The named variant, or the first when ``name`` is None."""
        if not self.variants:
            raise ValueError(f"component {self.name!r} has no model variants")
        if name is None:
            return self.variants[0]
        for v in self.variants:
            if v.name == name:
                return v
        known = ", ".join(v.name for v in self.variants)
        raise ValueError(f"component {self.name!r} has no variant {name!r} (known: {known})")


# --------------------------------------------------------------------------- processes


class PoissonArrivals(Frozen):
    kind: Literal["poisson"]
    rate_per_s: PositiveFloat


class PeriodicArrivals(Frozen):
    kind: Literal["periodic"]
    period_s: PositiveFloat = Field(le=MAX_PERIOD_S)
    offset_s: NonNegFloat = 0.0


class TraceArrivals(Frozen):
    """Per-second arrival rates read from a CSV column; Poisson within each second."""

    kind: Literal["trace"]
    path: str = Field(max_length=4096, description="CSV file, relative to the scenario file.")
    column: str = Field("rate_per_s", max_length=256)
    scale: PositiveFloat = 1.0


Arrivals = Annotated[
    PoissonArrivals | PeriodicArrivals | TraceArrivals, Field(discriminator="kind")
]


class Step(Frozen):
    """One step of a process, run by instances of ``component``."""

    name: Name
    component: Name
    cpu_work: ServiceTime | None = Field(
        None,
        description="CPU time of the whole step at cpu_speed 1; ignored on inference stages, "
        "whose chosen variant gives the service time.",
    )
    gpu_work: ServiceTime | None = Field(
        None, description="GPU time of the whole step at gpu_speed 1."
    )
    wait: ServiceTime | None = Field(
        None,
        description="Time each part of the step waits on something off its machine (a "
        "feature store's or registry's server elsewhere, a remote API), in ms like "
        "cpu_work: it elapses at any machine speed and holds neither the machine's cores "
        "nor its CPU quota, though the instance stays busy (and on-demand, paid) through "
        "it. Drawn once per execution of the step; a step split over parts does not wait "
        "less. None: no wait (all of the step's time is cpu_work/gpu_work). Batch steps "
        "only: an inference stage's time comes from its variant.",
    )
    part_cpu_work: ServiceTime | None = Field(
        None,
        description="CPU time each part of the step takes whatever the split, at cpu_speed 1, "
        "beside its share of cpu_work: a job's start-up, reading the step's whole input. "
        "Drawn once per execution (every part the same); it runs on the part's machine "
        "under its quota like cpu_work. None: the step's CPU time is all cpu_work, which its "
        "parts share evenly. Batch steps only.",
    )
    ram_gb: NonNegFloat = Field(
        0.0, le=MAX_RAM_GB, description="Working memory of the step per instance (GB)."
    )
    data_out_mb: NonNegFloat = Field(0.0, description="Data passed on to dependent steps (MB).")
    max_parallel: Int = Field(
        1, ge=1, le=1024, description="Most instances the step's work may be split across."
    )
    depends_on: list[Name] = Field(default_factory=list, max_length=MAX_ITEMS)


V2_DATATYPES = ("BOOL", "UINT8", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64")


class TensorInput(Frozen):
    """One input tensor of a request to an Open Inference Protocol (V2) server."""

    name: str = Field(min_length=1, max_length=256, description="The model's input name.")
    datatype: Literal[V2_DATATYPES] = Field("FP32", description="V2 datatype.")  # type: ignore[valid-type]
    shape: list[Int] = Field(
        min_length=1, description="Shape of one request's tensor, batch dimension first."
    )
    data_file: str | None = Field(
        None,
        description=".npy file (relative to the scenario) of example tensors, one per row of "
        "its first axis, each of shape[1:]; requests cycle through them. None: generated.",
    )
    low: Float = Field(0.0, description="Generated data: uniform from low …")
    high: Float = Field(1.0, description="… to high.")

    @model_validator(mode="after")
    def _check(self) -> TensorInput:
        if any(d < 1 for d in self.shape):
            raise ValueError(f"shape: every dimension must be ≥ 1, got {self.shape}")
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) is below low ({self.low})")
        return self


class Serving(Frozen):
    """How a request pipeline is served over the Open Inference Protocol (V2)."""

    model: str = Field(min_length=1, max_length=256, description="V2 model name.")
    version: str | None = Field(None, description="Model version; None: the server's default.")
    inputs: list[TensorInput] = Field(min_length=1, description="The request's input tensors.")


class Process(Frozen):
    """A DAG of steps. A request pipeline is a process whose steps are stages."""

    name: Name
    kind: Literal["batch", "request"] = Field(
        "batch", description="'request' marks an inference pipeline driven by workloads."
    )
    steps: list[Step] = Field(min_length=1, max_length=MAX_ITEMS)
    deadline_s: PositiveFloat | None = Field(None, description="Time limit of one execution.")
    arrivals: Arrivals | None = Field(
        None, description="Own arrivals; workloads override them for request pipelines."
    )
    weight: NonNegFloat = Field(1.0, description="Weight of this process in the criteria.")
    resource_budget_cores: PositiveFloat | None = Field(
        None, description="W_max: bound on Σ w·f over the pipeline's stages (cores)."
    )
    request_overhead: ServiceTime | None = Field(
        None,
        description="Time each execution spends outside its steps, at batch size 1 (ms): "
        "client↔gateway transfer, (de)serialisation, the HTTP hop to each stage. Drawn "
        "once per execution and spent before its first step; it holds no capacity.",
    )
    serving: Serving | None = Field(
        None,
        description="The V2 model and input tensors of a request pipeline, for load runs and "
        "profiles against an Open Inference Protocol server (load run --protocol v2).",
    )

    @model_validator(mode="after")
    def _check_dag(self) -> Process:
        names = [s.name for s in self.steps]
        _require_unique(names, "steps")
        known = set(names)
        for i, s in enumerate(self.steps):
            for d in s.depends_on:
                if d not in known:
                    raise ValueError(
                        f"steps[{i}].depends_on: unknown step {d!r} (steps: {', '.join(names)})"
                    )
                if d == s.name:
                    raise ValueError(f"steps[{i}].depends_on: step {s.name!r} depends on itself")
        order = topological_order(self)
        if order is None:
            raise ValueError("steps: the dependencies contain a cycle")
        return self

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

    def is_chain(self) -> bool:
        """True when steps run one after another in list order."""
        return all(
            (i == 0 and not s.depends_on) or s.depends_on == [self.steps[i - 1].name]
            for i, s in enumerate(self.steps)
        )


def topological_order(process: Process) -> list[str] | None:
    """Step names in an order that respects dependencies, or None on a cycle.

    Kahn's algorithm, linear in steps + dependencies, in the order the old
    wave-by-wave scan gave: each wave of ready steps in list order.
    """
    waiting = {s.name: len(set(s.depends_on)) for s in process.steps}
    users: dict[str, list[str]] = {n: [] for n in waiting}
    for s in process.steps:
        for d in set(s.depends_on):
            users[d].append(s.name)
    position = {s.name: i for i, s in enumerate(process.steps)}
    wave = [n for n, k in waiting.items() if k == 0]
    order: list[str] = []
    while wave:
        order.extend(wave)
        following: list[str] = []
        for n in wave:
            for u in users[n]:
                waiting[u] -= 1
                if waiting[u] == 0:
                    following.append(u)
        wave = sorted(following, key=position.__getitem__)
    return order if len(order) == len(waiting) else None


# --------------------------------------------------------------------------- workloads


class Burst(Frozen):
    at_s: NonNegFloat
    duration_s: PositiveFloat
    extra_per_s: Float = Field(description="Rate added during the burst (may be negative).")


class SteadyWorkload(Frozen):
    """Constant rate: the paper's steady-low and steady-high loads."""

    kind: Literal["steady"]
    name: Name
    rate_per_s: PositiveFloat
    processes: list[Name] = Field(default_factory=list, description="Empty: all request ones.")


class FluctuatingWorkload(Frozen):
    """base + amplitude·sin(2πt/period) + Gaussian noise + bursts, floored at min_rate."""

    kind: Literal["fluctuating"]
    name: Name
    base_per_s: PositiveFloat
    amplitude_per_s: NonNegFloat
    period_s: PositiveFloat = Field(600.0, le=MAX_PERIOD_S)
    noise_sd_per_s: NonNegFloat = 0.0
    bursts: list[Burst] = Field(default_factory=list, max_length=MAX_ITEMS)
    min_rate_per_s: NonNegFloat = 0.1
    seed: Int = Field(0, description="Seed of the noise, so twin and testbed see one curve.")
    processes: list[Name] = Field(default_factory=list)


class StepWorkload(Frozen):
    """Piecewise-constant levels: ``levels[i]`` from ``i·step_s`` (last level holds)."""

    kind: Literal["step"]
    name: Name
    levels_per_s: list[NonNegFloat] = Field(min_length=1, max_length=100_000)
    step_s: PositiveFloat
    processes: list[Name] = Field(default_factory=list)


class TraceWorkload(Frozen):
    """Replay of a per-second rate trace from CSV (relative to the scenario file)."""

    kind: Literal["trace"]
    name: Name
    path: str = Field(max_length=4096, description="CSV file, relative to the scenario file.")
    column: str = Field("rate_per_s", max_length=256)
    scale: PositiveFloat = 1.0
    loop: bool = True
    processes: list[Name] = Field(default_factory=list)


Workload = Annotated[
    SteadyWorkload | FluctuatingWorkload | StepWorkload | TraceWorkload,
    Field(discriminator="kind"),
]


# --------------------------------------------------------------------------- settings


class NetworkSettings(Frozen):
    intra_zone_latency_ms: NonNegFloat = Field(0.2, description="Between machines of a zone.")
    inter_zone_latency_ms: NonNegFloat = Field(20.0, description="Between zones.")


class QoSWeights(Frozen):
    """Weights of the pipeline paper's QoS (eq. 3), objective (eq. 4) and reward (eq. 7)."""

    alpha: NonNegFloat = Field(10.0, description="Weight of accuracy V.")
    beta: NonNegFloat = Field(0.05, description="Weight of throughput T (per req/s).")
    gamma: NonNegFloat = Field(0.5, description="Penalty per req/s of unmet load E > 0.")
    delta: NonNegFloat = Field(0.01, description="Penalty per req/s of spare capacity −E.")
    latency_weight: NonNegFloat = Field(1.0, description="Weight of latency L (per second).")
    lambda_cost: NonNegFloat = Field(0.1, description="λ of the objective Q − λC.")
    reward_cost: NonNegFloat = Field(0.1, description="β' of the reward r = Q − β'C − γ'B.")
    reward_batch: NonNegFloat = Field(0.01, description="γ' of the reward.")


class Settings(Frozen):
    cpu_overcommit: Annotated[Float, Field(ge=1.0, le=100.0)] = Field(
        1.0,
        description="Reserved cores may exceed a machine's cores by this factor; above 1 the "
        "instances then contend for cores in the simulator.",
    )
    load_balancing: Literal["least_outstanding", "round_robin", "random"] = "least_outstanding"
    batch_timeout_ms: NonNegFloat = Field(5.0, description="Default dynamic-batching wait.")
    gpu_fallback_slowdown: PositiveFloat = Field(
        20.0, description="GPU work on a machine without GPU runs this much slower on CPU."
    )
    cpu_period_ms: PositiveFloat = Field(
        10.0, description="Period of the servers' CPU quotas (Server.cpu_quota_cores), ms."
    )
    cpu_quota_carry_ms: NonNegFloat = Field(
        0.0,
        description="Running time a CPU quota left unused in one period that the next period "
        "may still use, at most (ms). Linux keeps up to 1 ms per CPU of a group's runtime "
        "on that CPU across periods (min_cfs_rq_runtime), so a group that was idle can run "
        "a little beyond its quota in the next period.",
    )
    cpu_quota_tick_ms: NonNegFloat = Field(
        0.0,
        description="Scheduler tick (ms) at which a CPU quota is enforced; 0: at once. Linux "
        "checks a running thread's group runtime at its ticks (4 ms at HZ=250), so a thread "
        "that used up the period's quota runs on until the next tick, and the next period's "
        "quota pays the overrun back.",
    )
    network: NetworkSettings = NetworkSettings()
    qos: QoSWeights = QoSWeights()
    cost_criterion: Literal["execution", "rental"] = Field(
        "execution",
        description="The placement cost criterion. 'execution' (the placement paper's total "
        "cost of executing the processes): each instance pays its machine's price times its "
        "share of the machine (the larger of its CPU and RAM shares), constant-run instances "
        "over the whole horizon, on-demand ones only while they run (start-up included). "
        "'rental': every machine holding any instance, over the whole horizon.",
    )


# --------------------------------------------------------------------------- scenario


class Scenario(Frozen):
    """Servers, components, processes and workloads of one MLOps system."""

    name: Name
    description: str = Field("", max_length=100_000)
    servers: list[Server] = Field(min_length=1, max_length=MAX_ITEMS)
    components: list[Component] = Field(min_length=1, max_length=MAX_ITEMS)
    processes: list[Process] = Field(min_length=1, max_length=MAX_ITEMS)
    workloads: list[Workload] = Field(default_factory=list, max_length=MAX_ITEMS)
    settings: Settings = Settings()

    @model_validator(mode="after")
    def _check_references(self) -> Scenario:
        _require_unique([s.name for s in self.servers], "servers")
        _require_unique(self.server_instances(), "servers (expanded machine names)")
        _require_unique([c.name for c in self.components], "components")
        _require_unique([p.name for p in self.processes], "processes")
        _require_unique([w.name for w in self.workloads], "workloads")
        comps = {c.name: c for c in self.components}
        for i, p in enumerate(self.processes):
            for j, s in enumerate(p.steps):
                where = f"processes[{i}].steps[{j}]"
                c = comps.get(s.component)
                if c is None:
                    raise ValueError(
                        f"{where}.component: unknown component {s.component!r} "
                        f"(known: {', '.join(comps)})"
                    )
                if c.is_stage and s.wait is not None:
                    raise ValueError(
                        f"{where}.wait: step on inference stage {c.name!r} cannot wait "
                        "(a stage's time comes from its variant's service_time; wait is "
                        "for batch steps)"
                    )
                if c.is_stage and s.part_cpu_work is not None:
                    raise ValueError(
                        f"{where}.part_cpu_work: step on inference stage {c.name!r} has no "
                        "work of its own (a stage's time comes from its variant's "
                        "service_time; part_cpu_work is for batch steps)"
                    )
                if not c.is_stage and s.cpu_work is None and s.gpu_work is None:
                    raise ValueError(
                        f"{where}: step on {c.name!r} needs cpu_work or gpu_work "
                        "(only inference stages take their time from a variant)"
                    )
            if p.kind == "batch" and p.arrivals is None:
                raise ValueError(f"processes[{i}].arrivals: a batch process needs arrivals")
        requests = {p.name for p in self.processes if p.kind == "request"}
        for i, w in enumerate(self.workloads):
            for name in w.processes:
                if name not in requests:
                    raise ValueError(
                        f"workloads[{i}].processes: {name!r} is not a request process "
                        f"(request processes: {', '.join(sorted(requests)) or 'none'})"
                    )
        return self

    def server_instances(self) -> list[str]:
        """Every machine, in order: the columns S of the allocation matrix."""
        return [n for s in self.servers for n in s.instance_names()]

    def server_of(self) -> dict[str, Server]:
        """Machine name → its server type."""
        return {n: s for s in self.servers for n in s.instance_names()}

    def component(self, name: str) -> Component:
        for c in self.components:
            if c.name == name:
                return c
        raise KeyError(name)

    def process(self, name: str) -> Process:
        for p in self.processes:
            if p.name == name:
                return p
        raise KeyError(name)

    def workload(self, name: str) -> Workload:
        for w in self.workloads:
            if w.name == name:
                return w
        known = ", ".join(w.name for w in self.workloads) or "none"
        raise KeyError(f"no workload {name!r} in scenario {self.name!r} (known: {known})")

    def used_components(self) -> list[str]:
        """Components that some step runs on, in component order."""
        used = {s.component for p in self.processes for s in p.steps}
        return [c.name for c in self.components if c.name in used]


# --------------------------------------------------------------------------- deployment


class StageConfig(Frozen):
    """Per-stage configuration: the variant and the batching of its replicas."""

    variant: Name | None = Field(None, description="Variant name; None: the first one.")
    batch: Int = Field(1, ge=1, le=4096, description="Batch size b_n.")
    batch_timeout_ms: NonNegFloat | None = Field(
        None, description="Most time the first item waits for a batch to fill."
    )


class Deployment(Frozen):
    """Where component instances run and how stages are configured.

    ``allocation[component][machine]`` is the number of instances — one row
    of the K×S allocation matrix per component. Replicas of a stage are all
    its instances across machines.
    """

    name: Name = "deployment"
    allocation: dict[Name, dict[Name, Annotated[Int, Field(ge=0, le=10000)]]] = Field(
        description="component → machine → instances"
    )
    parallelism: dict[str, Annotated[Int, Field(ge=1, le=1024)]] = Field(
        default_factory=dict, description="'process.step' → instances the step is split over."
    )
    stages: dict[Name, StageConfig] = Field(
        default_factory=dict, description="Inference stage → variant and batch."
    )
    always_on: dict[Name, bool] = Field(
        default_factory=dict,
        description="Constant-run decision: component → runs all the time (true) or on "
        "demand (false); a component not named keeps its own always_on.",
    )
    load_balancing: Literal["least_outstanding", "round_robin", "random"] | None = None

    @model_validator(mode="after")
    def _check_keys(self) -> Deployment:
        for key in self.parallelism:
            if not re.fullmatch(r"[^.]+\.[^.]+", key):
                raise ValueError(f"parallelism: key {key!r} must be 'process.step'")
        return self

    def instances(self, component: str) -> int:
        return sum(self.allocation.get(component, {}).values())


def _require_unique(names: list[str], what: str) -> None:
    seen: set[str] = set()
    dup = sorted({n for n in names if n in seen or seen.add(n)})  # type: ignore[func-returns-value]
    if dup:
        raise ValueError(f"{what}: duplicate names {', '.join(map(repr, dup))}")
