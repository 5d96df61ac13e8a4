"""``python -m mlops_twin``: the same as the ``mlops-twin`` console script."""

from mlops_twin.cli import main

main()
