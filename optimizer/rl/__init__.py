"""Online configuration of multi-model inference pipelines (the pipeline paper's OPD).

``space`` (options, exact masks, placement), ``model`` (analytic pipeline
metrics), ``baselines`` (Random, Greedy, IPA-style CP-SAT solver),
``predictor`` (LSTM load predictor) and ``traces`` (its training data),
``backends`` (twin / analytic), ``env`` (the gymnasium environment),
``extractor`` (residual features extractor), ``agent`` (MaskablePPO with
expert guidance), ``experiments`` (policy comparison, decision time) and
``cli`` (``mlops-twin rl``; ``rl control``, a policy steering the live testbed, is the
lab's: :mod:`lab.control`).
"""

from optimizer.rl.baselines import GreedyPolicy, IPAPolicy, RandomPolicy, exhaustive
from optimizer.rl.space import ConfigSpace, Option

__all__ = [
    "ConfigSpace",
    "GreedyPolicy",
    "IPAPolicy",
    "Option",
    "RandomPolicy",
    "exhaustive",
]
