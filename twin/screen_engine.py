"""The screening fidelity's engine: the twin's queueing network as one compiled event loop.

Same model as :mod:`twin.sim` — executions walk their process DAG, each step
split over up to ``parallelism`` instances chosen by the load-balancing
policy, FIFO queues with dynamic batching (own queue under balanced dispatch,
one per component under shared-queue dispatch), a network transfer before a
part whose input was produced elsewhere, a GPU pool per machine, cold starts of
on-demand instances — but every
random number is drawn beforehand in numpy blocks and the event loop runs in
numba over flat arrays, so it costs tens of nanoseconds per event instead of
SimPy's microseconds. What it leaves out (see :mod:`twin.screen`): the
machine core pool (never built for a feasible deployment, whose working
cores fit beside its keep-alive load; an overcommitted machine is slowed by
its overcommit ratio instead) and mid-run reconfiguration.

Events are (time, sequence, kind, id) rows of a binary heap kept in four
arrays; the sequence number makes equal-time events run in the order they
were scheduled, as in SimPy. Executions start from their own sorted array,
merged with the heap, so the heap holds only what is in flight (a heap of
every arrival made the loop 7× slower).
"""

from __future__ import annotations

import numpy as np
from numba import njit

EV_START, EV_ROOTS, EV_ARRIVE, EV_CPU_DONE, EV_DONE, EV_TIMER = 0, 1, 2, 3, 4, 5
POLICY_LEAST, POLICY_RR, POLICY_RANDOM = 0, 1, 2
FACTOR_CONST, FACTOR_LOGNORMAL, FACTOR_DRAWN = 0, 1, 2


@njit(cache=True, inline="always")
def _less(ht, hs, a, b):
    return ht[a] < ht[b] or (ht[a] == ht[b] and hs[a] < hs[b])


@njit(cache=True)
def _push(ht, hs, hk, hx, st, t, kind, x):
    """Push event (t, kind, x); st = [size, next sequence number]."""
    i = st[0]
    st[0] += 1
    ht[i], hs[i], hk[i], hx[i] = t, st[1], kind, x
    st[1] += 1
    while i > 0:
        parent = (i - 1) >> 1
        if not _less(ht, hs, i, parent):
            break
        ht[i], ht[parent] = ht[parent], ht[i]
        hs[i], hs[parent] = hs[parent], hs[i]
        hk[i], hk[parent] = hk[parent], hk[i]
        hx[i], hx[parent] = hx[parent], hx[i]
        i = parent


@njit(cache=True)
def _pop(ht, hs, hk, hx, st):
    """Remove the earliest event; returns (t, kind, x)."""
    t, kind, x = ht[0], hk[0], hx[0]
    st[0] -= 1
    n = st[0]
    ht[0], hs[0], hk[0], hx[0] = ht[n], hs[n], hk[n], hx[n]
    i = 0
    while True:
        left = 2 * i + 1
        if left >= n:
            break
        c = left
        if left + 1 < n and _less(ht, hs, left + 1, left):
            c = left + 1
        if not _less(ht, hs, c, i):
            break
        ht[i], ht[c] = ht[c], ht[i]
        hs[i], hs[c] = hs[c], hs[i]
        hk[i], hk[c] = hk[c], hk[i]
        hx[i], hx[c] = hx[c], hx[i]
        i = c
    return t, kind, x


@njit(cache=True)
def _transfer(
    e,
    s,
    dst,
    parts,
    es_off,
    ps_first,
    job_first,
    job_count,
    job_machine,
    step_dep_ptr,
    step_deps,
    step_data_mb,
    m_zone,
    m_bw,
    intra_s,
    inter_s,
):
    """Seconds before a part of step ``s`` of execution ``e`` has its inputs on ``dst``."""
    delay = 0.0
    for q in range(step_dep_ptr[s], step_dep_ptr[s + 1]):
        d = step_deps[q]
        es = es_off[e] + d - ps_first
        n = job_count[es]
        if n == 0:
            continue
        mb = step_data_mb[d] / n
        for j in range(job_first[es], job_first[es] + n):
            src = job_machine[j]
            if src == dst:
                continue
            lat = intra_s if m_zone[src] == m_zone[dst] else inter_s
            bw = min(m_bw[src], m_bw[dst])
            t = lat + (mb / parts) * 8.0 / bw
            if t > delay:
                delay = t
    return delay


@njit(cache=True)
def run_engine(
    # machines
    m_speed,
    m_gpu_speed,
    m_gpus,
    m_zone,
    m_bw,
    m_slow,
    gpu_fallback,
    intra_s,
    inter_s,
    # components and instances
    c_inst_ptr,
    c_inst,
    c_shared,
    c_stage,
    c_kind,
    c_mean_b,
    c_sigma_b,
    c_factors,
    i_machine,
    i_batch,
    i_timeout,
    i_startup,
    i_queue,
    n_queues,
    q_inst_ptr,
    q_inst,
    q_comp,
    # processes and steps
    p_step_first,
    step_comp,
    step_parallel,
    step_data_mb,
    step_dep_ptr,
    step_deps,
    step_next_ptr,
    step_next,
    p_roots_ptr,
    p_roots,
    # executions
    e_proc,
    e_arrive,
    e_overhead,
    es_off,
    es_cpu,
    es_gpu,
    policy,
    rand_seed,
    end_s,
    max_jobs,
    max_batch,
):
    """Run one replication; returns per-execution end times and per-job records.

    Arrays are as built by :func:`twin.screen.build`; times are seconds.
    """
    np.random.seed(rand_seed)
    n_exec = e_proc.size
    n_inst = i_machine.size
    n_comp = c_shared.size
    n_es = es_cpu.size
    e_end = np.full(n_exec, np.nan)
    e_steps_left = np.zeros(n_exec, np.int64)
    es_deps_left = np.zeros(n_es, np.int64)
    es_parts_left = np.zeros(n_es, np.int64)
    job_first = np.zeros(n_es, np.int64)
    job_count = np.zeros(n_es, np.int64)
    # jobs
    job_exec = np.zeros(max_jobs, np.int64)
    job_step = np.zeros(max_jobs, np.int64)
    job_part = np.zeros(max_jobs, np.int64)
    job_machine = np.full(max_jobs, -1, np.int64)
    job_inst = np.full(max_jobs, -1, np.int64)
    job_cpu = np.zeros(max_jobs)
    job_gpu = np.zeros(max_jobs)
    job_t_arrive = np.full(max_jobs, np.nan)
    job_t_start = np.full(max_jobs, np.nan)
    job_t_end = np.full(max_jobs, np.nan)
    job_batch = np.zeros(max_jobs, np.int64)
    job_next = np.full(max_jobs, -1, np.int64)
    n_jobs = 0
    # queues: singly linked FIFOs of jobs
    q_head = np.full(n_queues, -1, np.int64)
    q_tail = np.full(n_queues, -1, np.int64)
    q_len = np.zeros(n_queues, np.int64)
    q_timer = np.full(n_queues, np.nan)
    # instances
    i_idle = np.ones(n_inst, np.bool_)
    # On-demand instances with a start-up time start cold, and go cold again whenever
    # they finish with nothing to take at once (as twin.sim's instances do).
    i_cold = i_startup > 0
    # Order in which instances went idle (first: in creation order, as twin.sim's)
    i_idle_seq = np.arange(n_inst)
    idle_seq = n_inst
    i_out = np.zeros(n_inst, np.int64)
    i_cur = np.zeros((n_inst, max_batch), np.int64)
    i_ncur = np.zeros(n_inst, np.int64)
    i_gpu_s = np.zeros(n_inst)
    i_gpu_next = np.full(n_inst, -1, np.int64)
    # machine GPU pools: free count and a FIFO of waiting instances
    g_free = m_gpus.copy()
    g_head = np.full(m_speed.size, -1, np.int64)
    g_tail = np.full(m_speed.size, -1, np.int64)
    c_rr = np.zeros(n_comp, np.int64)
    c_draw = np.zeros(n_comp, np.int64)
    n_factors = c_factors.shape[1]

    cap = n_exec + 2 * max_jobs + n_queues + 2 * n_inst + 16
    ht = np.empty(cap)
    hs = np.empty(cap, np.int64)
    hk = np.empty(cap, np.int64)
    hx = np.empty(cap, np.int64)
    st = np.zeros(2, np.int64)
    next_e = 0  # executions start in arrival order, merged with the heap
    pend_e = np.empty((max_batch + 1) * (step_comp.size + 1), np.int64)
    tq = np.empty(
        n_queues + 4 + (max_batch + 1) * (step_comp.size + 1) * (step_parallel.max() + 1), np.int64
    )
    pend_s = np.empty((max_batch + 1) * (step_comp.size + 1), np.int64)
    events = 0
    now = 0.0
    done = 0
    while st[0] > 0 or next_e < n_exec:
        if next_e < n_exec and (st[0] == 0 or e_arrive[next_e] <= ht[0]):
            t, kind, x = e_arrive[next_e], EV_START, next_e
            next_e += 1
        else:
            t, kind, x = _pop(ht, hs, hk, hx, st)
        npend = 0
        ntq = 0
        if t > end_s:
            now = end_s
            break
        now = t
        events += 1
        launch_e = -1
        launch_s = -1
        if kind == EV_START:
            if e_overhead[x] > 0:
                _push(ht, hs, hk, hx, st, now + e_overhead[x], EV_ROOTS, x)
                continue
            kind = EV_ROOTS
        if kind == EV_ROOTS:
            p = e_proc[x]
            e_steps_left[x] = p_step_first[p + 1] - p_step_first[p]
            for ls in range(p_step_first[p + 1] - p_step_first[p]):
                s = p_step_first[p] + ls
                es_deps_left[es_off[x] + ls] = step_dep_ptr[s + 1] - step_dep_ptr[s]
            for r in range(p_roots_ptr[p], p_roots_ptr[p + 1]):
                pend_e[npend] = x
                pend_s[npend] = p_roots[r]
                npend += 1
        elif kind == EV_ARRIVE:
            j = x
            q = i_queue[job_inst[j]]
            _enqueue(j, q, now, q_head, q_tail, q_len, job_next, job_t_arrive)
        elif kind == EV_TIMER and q_timer[x] == now:
            q_timer[x] = np.nan
        # Serve: the loop below starts whatever can start now on the touched
        # queue; completions hand work to dependents.
        if kind == EV_CPU_DONE:
            inst = x
            if i_gpu_s[inst] > 0:
                m = i_machine[inst]
                if g_free[m] > 0:
                    g_free[m] -= 1
                    _push(ht, hs, hk, hx, st, now + i_gpu_s[inst] / m_gpu_speed[m], EV_DONE, inst)
                else:
                    if g_tail[m] < 0:
                        g_head[m] = inst
                    else:
                        i_gpu_next[g_tail[m]] = inst
                    g_tail[m] = inst
                    i_gpu_next[inst] = -1
                continue
            kind = EV_DONE
        if kind == EV_DONE:
            inst = x
            if i_gpu_s[inst] > 0:
                m = i_machine[inst]
                i_gpu_s[inst] = 0.0
                w = g_head[m]
                if w >= 0:
                    g_head[m] = i_gpu_next[w]
                    if g_head[m] < 0:
                        g_tail[m] = -1
                    _push(ht, hs, hk, hx, st, now + i_gpu_s[w] / m_gpu_speed[m], EV_DONE, w)
                else:
                    g_free[m] += 1
            nb = i_ncur[inst]
            i_ncur[inst] = 0
            i_out[inst] -= nb
            for b in range(nb):
                j = i_cur[inst, b]
                job_t_end[j] = now
            for b in range(nb):
                j = i_cur[inst, b]
                e = job_exec[j]
                s = job_step[j]
                p = e_proc[e]
                es = es_off[e] + s - p_step_first[p]
                es_parts_left[es] -= 1
                if es_parts_left[es] > 0:
                    continue
                e_steps_left[e] -= 1
                if e_steps_left[e] == 0:
                    e_end[e] = now
                    done += 1
                    continue
                for r in range(step_next_ptr[s], step_next_ptr[s + 1]):
                    d = step_next[r]
                    esd = es_off[e] + d - p_step_first[p]
                    es_deps_left[esd] -= 1
                    if es_deps_left[esd] == 0:
                        pend_e[npend] = e
                        pend_s[npend] = d
                        npend += 1
            i_idle[inst] = True
            i_idle_seq[inst] = idle_seq
            idle_seq += 1
            i_cold[inst] = i_startup[inst] > 0  # unless it takes work again at once (below)
            q = i_queue[inst]
        # launch steps whose dependencies are met
        for pe in range(npend):
            launch_e, launch_s = pend_e[pe], pend_s[pe]
            p = e_proc[launch_e]
            ls = launch_s - p_step_first[p]
            es = es_off[launch_e] + ls
            k = step_comp[launch_s]
            ninst = c_inst_ptr[k + 1] - c_inst_ptr[k]
            n = min(step_parallel[launch_s], ninst)
            job_first[es] = n_jobs
            job_count[es] = n
            es_parts_left[es] = n
            cpu_s = es_cpu[es] / n
            gpu_s = es_gpu[es] / n
            # choose targets (balanced) — least outstanding from a rotating start
            for part in range(n):
                j = n_jobs
                n_jobs += 1
                job_exec[j] = launch_e
                job_step[j] = launch_s
                job_part[j] = part
                job_cpu[j] = cpu_s
                job_gpu[j] = gpu_s
            if c_shared[k]:
                q = i_queue[c_inst[c_inst_ptr[k]]]
                for j in range(job_first[es], job_first[es] + n):
                    _enqueue(j, q, now, q_head, q_tail, q_len, job_next, job_t_arrive)
                tq[ntq] = q
                ntq += 1
                continue
            start = c_rr[k] % ninst
            c_rr[k] += n
            for part in range(n):
                best = -1
                if policy == POLICY_RANDOM:
                    while True:
                        cand = c_inst[c_inst_ptr[k] + np.random.randint(ninst)]
                        already = False
                        for jj in range(job_first[es], job_first[es] + part):
                            if job_inst[jj] == cand:
                                already = True
                        if not already:
                            best = cand
                            break
                elif policy == POLICY_RR:
                    best = c_inst[c_inst_ptr[k] + (start + part) % ninst]
                else:
                    for r in range(ninst):
                        cand = c_inst[c_inst_ptr[k] + (start + r) % ninst]
                        taken = False
                        for jj in range(job_first[es], job_first[es] + part):
                            if job_inst[jj] == cand:
                                taken = True
                        if taken:
                            continue
                        if best < 0 or i_out[cand] < i_out[best]:
                            best = cand
                j = job_first[es] + part
                job_inst[j] = best
                job_machine[j] = i_machine[best]
                i_out[best] += 1
            for part in range(n):
                j = job_first[es] + part
                inst = job_inst[j]
                delay = _transfer(
                    launch_e,
                    launch_s,
                    i_machine[inst],
                    n,
                    es_off,
                    p_step_first[p],
                    job_first,
                    job_count,
                    job_machine,
                    step_dep_ptr,
                    step_deps,
                    step_data_mb,
                    m_zone,
                    m_bw,
                    intra_s,
                    inter_s,
                )
                if delay > 0:
                    _push(ht, hs, hk, hx, st, now + delay, EV_ARRIVE, j)
                else:
                    q = i_queue[inst]
                    _enqueue(j, q, now, q_head, q_tail, q_len, job_next, job_t_arrive)
                    tq[ntq] = q
                    ntq += 1
        if kind in (EV_ARRIVE, EV_TIMER, EV_DONE):
            if kind == EV_ARRIVE:
                q = i_queue[job_inst[x]]
            elif kind == EV_TIMER:
                q = x
            else:
                q = i_queue[x]
            k = q_comp[q]
            tq[ntq] = q
            ntq += 1
        # Start idle instances of every touched queue while there is work they take.
        for ti in range(ntq):
            q = tq[ti]
            k = q_comp[q]
            shared = c_shared[k] == 1
            while q_len[q] > 0:
                # the instance idle longest first, as twin.sim's FIFO of idle instances
                inst = -1
                for r in range(q_inst_ptr[q], q_inst_ptr[q + 1]):
                    cand = q_inst[r]
                    if i_idle[cand] and (inst < 0 or i_idle_seq[cand] < i_idle_seq[inst]):
                        inst = cand
                if inst < 0:
                    break
                batch = i_batch[inst]
                if batch > 1 and q_len[q] < batch and i_timeout[inst] > 0:
                    deadline = job_t_arrive[q_head[q]] + i_timeout[inst]
                    if now < deadline - 1e-12:
                        if not (q_timer[q] <= deadline):
                            q_timer[q] = deadline
                            _push(ht, hs, hk, hx, st, deadline, EV_TIMER, q)
                        break
                n = min(batch, q_len[q])
                cpu_s = 0.0
                gpu_s = 0.0
                m = i_machine[inst]
                fetch = 0.0
                for b in range(n):
                    j = q_head[q]
                    q_head[q] = job_next[j]
                    q_len[q] -= 1
                    if q_head[q] < 0:
                        q_tail[q] = -1
                    job_t_start[j] = now
                    job_batch[j] = n
                    i_cur[inst, b] = j
                    cpu_s += job_cpu[j]
                    gpu_s += job_gpu[j]
                    if shared:
                        job_machine[j] = m
                        job_inst[j] = inst
                        e = job_exec[j]
                        p = e_proc[e]
                        parts = job_count[es_off[e] + job_step[j] - p_step_first[p]]
                        d = _transfer(
                            e,
                            job_step[j],
                            m,
                            parts,
                            es_off,
                            p_step_first[p],
                            job_first,
                            job_count,
                            job_machine,
                            step_dep_ptr,
                            step_deps,
                            step_data_mb,
                            m_zone,
                            m_bw,
                            intra_s,
                            inter_s,
                        )
                        if d > fetch:
                            fetch = d
                i_ncur[inst] = n
                if i_cold[inst] and not (kind == EV_DONE and x == inst):
                    fetch += i_startup[inst]  # off the CPU, like the transfer
                i_cold[inst] = False
                if shared:
                    i_out[inst] += n  # balanced instances counted theirs at dispatch
                if c_stage[k]:
                    mean = c_mean_b[k, n]
                    f = 1.0
                    if c_kind[k] == FACTOR_LOGNORMAL:
                        sg = c_sigma_b[k, n]
                        z = c_factors[k, c_draw[k] % n_factors]
                        c_draw[k] += 1
                        f = np.exp(sg * z - sg * sg / 2)
                    elif c_kind[k] == FACTOR_DRAWN:
                        f = c_factors[k, c_draw[k] % n_factors]
                        c_draw[k] += 1
                    cpu_s = mean * f
                    gpu_s = 0.0
                if gpu_s > 0 and m_gpus[m] == 0:
                    cpu_s += gpu_s * gpu_fallback
                    gpu_s = 0.0
                i_gpu_s[inst] = gpu_s
                i_idle[inst] = False
                _push(
                    ht,
                    hs,
                    hk,
                    hx,
                    st,
                    now + fetch + cpu_s / m_speed[m] * m_slow[m],
                    EV_CPU_DONE,
                    inst,
                )
        if done == n_exec:
            break
    return (
        e_end,
        now,
        events,
        n_jobs,
        job_exec,
        job_step,
        job_part,
        job_machine,
        job_inst,
        job_t_arrive,
        job_t_start,
        job_t_end,
        job_batch,
    )


@njit(cache=True)
def _enqueue(j, q, now, q_head, q_tail, q_len, job_next, job_t_arrive):
    job_t_arrive[j] = now
    job_next[j] = -1
    if q_tail[q] < 0:
        q_head[q] = j
    else:
        job_next[q_tail[q]] = j
    q_tail[q] = j
    q_len[q] += 1
