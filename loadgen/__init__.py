"""Load generation: open-loop Locust runs whose arrivals are the twin's, and their records.

Importing this package never imports Locust (which monkeypatches the interpreter
with gevent); Locust runs only in ``python -m loadgen.worker`` processes.
"""

from loadgen.metrics import Scraper, parse_samples, prometheus_config
from loadgen.profile import LoadProfile, scale_workload
from loadgen.records import per_second_table, requests_table, run_summary, visits_table
from loadgen.run import LoadResult, LoadRun, LoadRunError, execute, run_to_folder
from loadgen.schedule import arrival_schedule, partition

__all__ = [
    "LoadProfile",
    "LoadResult",
    "LoadRun",
    "LoadRunError",
    "Scraper",
    "arrival_schedule",
    "execute",
    "parse_samples",
    "partition",
    "per_second_table",
    "prometheus_config",
    "requests_table",
    "run_summary",
    "run_to_folder",
    "scale_workload",
    "visits_table",
]
