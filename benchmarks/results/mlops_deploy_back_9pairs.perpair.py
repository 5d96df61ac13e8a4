"""Per-pair testbed criteria and each criterion's decision statistics, from a report folder."""

import sys

import pandas as pd

from lab.mlops_deploy_back import TIE_WITHIN
from lab.paired_test import paired_test

out = sys.argv[1]
tb = pd.read_csv(f"{out}/testbed.csv")
tw = pd.read_csv(f"{out}/twin.csv")
crit = ["time_mean_s", "time_var_s2", "overruns", "cost"]
p = tb.pivot(index="pair", columns="deployment", values=crit)
for c in crit:
    pairs = zip(p[(c, "chosen")], p[(c, "greedy")], strict=True)
    print(c, " ".join(f"{a:.3g}/{b:.3g}" for a, b in pairs))
for c in crit:
    t = paired_test(p[(c, "chosen")].to_numpy(), p[(c, "greedy")].to_numpy(), TIE_WITHIN)
    q = tw.pivot(index="replication", columns="deployment", values=c)
    u = paired_test(q["chosen"].to_numpy(), q["greedy"].to_numpy(), TIE_WITHIN)
    print(
        f"{c}: testbed {t.mean:+.4g} ± {t.half_width:.3g} "
        f"(t excludes 0: {abs(t.mean) > t.half_width}), W p={t.p_wilcoxon:.3g}, "
        f"sign p={t.p_sign:.3g}, {t.positive}+/{t.negative}-, HL {t.hodges_lehmann:+.3g}, "
        f"order {t.order} | twin {u.mean:+.4g} ± {u.half_width:.3g}, "
        f"W p={u.p_wilcoxon:.2g}, order {u.order}"
    )
