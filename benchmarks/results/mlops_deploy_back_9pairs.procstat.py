"""Host CPU during each locked pair: /proc/stat sampled each second (runs/db5/logs)."""

from pathlib import Path

for f in sorted(Path("runs/db5/logs").glob("procstat-*.log")):
    rows = [line.split() for line in f.read_text().splitlines() if " cpu " in line]
    if len(rows) < 2:
        continue
    first, last = (list(map(int, r[2:10])) for r in (rows[0], rows[-1]))
    d = [y - x for x, y in zip(first, last, strict=True)]
    tot = sum(d)
    user, nice, system, idle, iowait, irq, softirq, steal = (100 * x / tot for x in d)
    secs = float(rows[-1][0]) - float(rows[0][0])
    print(
        f"{f.stem}: {secs:.0f} s, 2 cores: user {user:.1f} %, nice {nice:.1f} %, "
        f"system {system + irq + softirq:.1f} %, idle {idle + iowait:.1f} %, steal {steal:.2f} %"
    )
