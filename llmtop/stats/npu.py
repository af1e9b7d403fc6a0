"""The report's `npu` section: XRT invocations split into BO write / NPU run / BO read, CPU host ops and the
wall-time attribution (NPU XRT / CPU host / python scheduling), from the `npu`-class events named as
llmtop/events.py describes (`xrt:<kernel>/<part>`, bytes in m, buffers in n). None without such events.

Every key is documented in docs/REPORT.md. Like `attribution` and `trend`, the section ignores the kernel
filter. MB are MiB (2**20 bytes), as mlir-air's profile prints its "MB".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from llmtop.events import OP_CLASS_ID, OP_CLASSES, PHASES, XRT_LOAD, XRT_PARTS, parse_xrt_name
from llmtop.stats.frozen import Frozen
from llmtop.stats.plain import pct
from llmtop.stats.store import S_HOST, S_KERNEL, S_N, S_OVERLAP, S_TIMED_N, S_TIMED_WALL

_NPU = OP_CLASS_ID["npu"]
MIB = float(1 << 20)


def _row(name: str, acc: dict[str, list[float]]) -> dict[str, Any]:
    """acc: part -> [events, ns, bytes, buffers]."""
    w, r, rd = (acc.get(p, [0.0, 0.0, 0.0, 0.0]) for p in XRT_PARTS)
    count = int(max(r[0], w[0], rd[0]))
    total = (w[1] + r[1] + rd[1]) / 1e6
    return {
        "name": name,
        "count": count,
        "bo_write_ms": w[1] / 1e6,
        "npu_run_ms": r[1] / 1e6,
        "bo_read_ms": rd[1] / 1e6,
        "total_ms": total,
        "mean_ms": total / count if count else None,
        "mb_written": w[2] / MIB,
        "mb_read": rd[2] / MIB,
        "buffers_written_per_call": w[3] / count if count else None,
        "buffers_read_per_call": rd[3] / count if count else None,
    }


def _totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("count", "bo_write_ms", "npu_run_ms", "bo_read_ms", "total_ms", "mb_written", "mb_read")
    t: dict[str, Any] = {k: sum(r[k] for r in rows) for k in keys}
    t["count"] = int(t["count"])
    for part in XRT_PARTS:
        t[f"{part}_pct"] = pct(t[f"{part}_ms"], t["total_ms"])
    return t


def npu_section(fz: Frozen) -> dict[str, Any] | None:
    st = fz.store
    nk = len(fz.key_name)
    kc = st.kc[:nk]
    live = kc > 0
    npu_keys = np.flatnonzero(live & (fz.key_opc[:nk] == _NPU))
    if not len(npu_keys):
        return None
    kernels: dict[str, dict[str, list[float]]] = {}
    setup: dict[str, dict[str, list[float]]] = {}
    load: dict[str, list[float]] = {}  # call -> [calls, ns]
    npu_ns = np.zeros(len(PHASES))  # in-step XRT time per phase (set-up calls included, set-up rows not)
    for key in npu_keys.tolist():
        name = fz.names[int(fz.key_name[key])]
        parsed = parse_xrt_name(name)
        kernel, part, is_setup = parsed if parsed is not None else (name, "npu_run", False)
        c, ns = float(kc[key]), float(st.ks[key])
        if not is_setup:
            npu_ns[min(int(fz.key_phase[key]), len(PHASES) - 1)] += ns
        if kernel == XRT_LOAD:
            a = load.setdefault(part, [0.0, 0.0])
            a[0] += c
            a[1] += ns
            continue
        if part not in XRT_PARTS:  # an npu-class event named outside the scheme: its time is a run's
            part = "npu_run"
        acc = (setup if is_setup else kernels).setdefault(kernel, {}).setdefault(part, [0.0, 0.0, 0.0, 0.0])
        acc[0] += c
        acc[1] += ns
        acc[2] += float(st.kb[key]) if key < len(st.kb) else 0.0
        acc[3] += float(st.kn[key]) if key < len(st.kn) else 0.0
    rows = sorted((_row(n, a) for n, a in kernels.items()), key=lambda r: (-r["total_ms"], r["name"]))
    tot = _totals(rows)
    for r in rows:
        r["pct"] = pct(r["total_ms"], tot["total_ms"])
    srows = sorted((_row(n, a) for n, a in setup.items()), key=lambda r: (-r["total_ms"], r["name"]))

    host = np.flatnonzero(live & (fz.key_opc[:nk] != _NPU))
    hosts: dict[str, list[Any]] = {}
    for key in host.tolist():
        h = hosts.setdefault(fz.names[int(fz.key_name[key])], [OP_CLASSES[min(int(fz.key_opc[key]),
                                                                               len(OP_CLASSES) - 1)], 0, 0.0])
        h[1] += int(kc[key])
        h[2] += float(st.ks[key])
    host_rows = sorted(({"name": n, "op_class": c, "count": k, "total_ms": t / 1e6, "mean_ms": t / 1e6 / k}
                        for n, (c, k, t) in hosts.items()), key=lambda r: (-r["total_ms"], r["name"]))

    attribution: dict[str, Any] = {}
    for p, pname in enumerate(PHASES):
        s = st.steps[p]
        n, tn = int(s[S_N]), int(s[S_TIMED_N])
        wall, kern = float(s[S_TIMED_WALL]) / 1e6, float(s[S_KERNEL]) / 1e6
        npu = float(npu_ns[p]) / 1e6
        hst = max(0.0, kern - npu)  # the steps' other kernels: CPU host ops (and any other timed kernel)
        py = float(s[S_HOST]) / 1e6  # Σ per step of wall - kernels: python scheduling, untimed work
        attribution[pname] = {
            "steps": n,
            "timed_steps": tn,
            "wall_ms": wall,
            "npu_ms": npu,
            "host_ms": hst,
            "python_ms": py,
            "npu_pct": pct(npu, wall),
            "host_pct": pct(hst, wall),
            "python_pct": pct(py, wall),
            "wall_ms_per_step": wall / tn if tn else None,
            "npu_ms_per_step": npu / tn if tn else None,
            "host_ms_per_step": hst / tn if tn else None,
            "python_ms_per_step": py / tn if tn else None,
            "clamped": bool(s[S_OVERLAP] > 0),
        }

    extra = fz.source.get("extra") if isinstance(fz.source, dict) else None
    info = extra.get("npu") if isinstance(extra, dict) else None
    info = info if isinstance(info, dict) else {}
    notes = []
    n_layers = int(fz.source.get("n_layers") or 0) if isinstance(fz.source, dict) else 0
    if info.get("steps") == "inferred":
        notes.append("steps inferred from the repeating sequence of XRT calls (no agent.step marks)")
    if info.get("layers") == "inferred":
        notes.append(f"{n_layers} layers inferred from the repeating XRT call pattern (no agent.layer marks)")
    if info.get("steps") == "synthetic":
        notes.append("replayed from a profile of averages: every call is its kernel's average (synthetic)")
    if info.get("unpatched"):
        notes.append("pyxrt calls that could not be wrapped: " + ", ".join(map(str, info["unpatched"])))
    return {
        "kernels": rows,
        "totals": tot,
        "setup": {"kernels": srows, **{k: v for k, v in _totals(srows).items() if not k.endswith("_pct")}},
        "load": {"calls": int(sum(a[0] for a in load.values())), "ms": sum(a[1] for a in load.values()) / 1e6,
                 "by_call": {c: {"calls": int(a[0]), "ms": a[1] / 1e6} for c, a in sorted(load.items())}},
        "host_ops": host_rows,
        "attribution": attribution,
        "steps_source": info.get("steps"),
        "layers_source": info.get("layers"),
        "notes": notes,
    }


__all__ = ["npu_section"]
