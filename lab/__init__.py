"""The main job and its judges: the twin beside the testbed.

The pipeline (:mod:`lab.pipeline`: testbed up → fit runs and held-out workloads →
down → calibration → twin) behind ``mlops-twin experiment`` and ``calibrate
validate``, host noise, the deploy-back of optimizer output and online control on
the live testbed, and their reports. Nothing imports this package but the umbrella
CLI.
"""
