"""Number formatting for every view of the statistics: the headless report and the TUI panes.

One definition per kind of number, so the same value reads the same in `llmtop report` and on screen:
milliseconds (three significant digits, fixed point), durations with their unit, percentages, rates,
counts (exact or compact), byte sizes, the one-line WebGPU adapter summary, and long kernel names cut
to a column (`shorten_middle`, `shorten_names`). Where the two views
legitimately differ (the plain-text report writes a missing value as "-" and keeps two decimals on
percentages and rates) they pass `missing=` / `decimals=`; the rules themselves live only here.

The bottom layer: nothing from llmtop is imported, so any module may use it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

DASH = "–"  # a missing value (the report passes its ASCII "-")


def num(x: Any) -> float | None:
    """A finite float, or None (None, bools, non-numbers, NaN and infinities)."""
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def fmt_ms(x: Any, missing: str = DASH) -> str:
    """Milliseconds to three significant digits, fixed point (table cells: the unit is in the header).

    1,234 · 123 · 12.3 · 1.23 · 0.123 · 0.0123 · 0.00123; below 1 µs five decimals (10 ns), so a cell
    never takes an exponent and never grows past seven characters under 1,000,000 ms.
    """
    v = num(x)
    if v is None:
        return missing
    a = abs(v)
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    if a >= 0.1 or a == 0:
        return f"{v:.3f}"
    if a >= 0.01:
        return f"{v:.4f}"
    return f"{v:.5f}"


def fmt_duration_ms(x: Any, missing: str = DASH) -> str:
    """A duration given in ms with its unit chosen for reading (µs / ms / s)."""
    v = num(x)
    if v is None:
        return missing
    a = abs(v)
    if a >= 1000:
        return f"{v / 1000:.2f} s"
    if a >= 1:
        return f"{fmt_ms(v)} ms"
    return f"{v * 1000:.0f} µs" if a >= 0.01 else f"{v * 1000:.1f} µs"


def fmt_pct(x: Any, decimals: int = 1, missing: str = DASH) -> str:
    """A percentage with `decimals` decimals; from 100 % up whole numbers (100%, 1234%)."""
    v = num(x)
    if v is None:
        return missing
    if abs(v) >= 100 - 0.5 * 10.0**-decimals:  # would print as 100.0 or more
        return f"{v:.0f}%"
    return f"{v:.{decimals}f}%"


def fmt_rate(x: Any, decimals: int = 1, missing: str = DASH) -> str:
    """A rate (tok/s, W, °C, µs per 1k tokens): whole numbers from 100 up, else `decimals` decimals."""
    v = num(x)
    if v is None:
        return missing
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.{decimals}f}"


def fmt_int(x: Any, missing: str = DASH) -> str:
    """An exact count with thousands separators (report tables)."""
    v = num(x)
    return missing if v is None else f"{round(v):,}"


def fmt_count(x: Any, missing: str = DASH) -> str:
    """A count in at most about six characters (panes): exact below 100,000, then k, then M."""
    v = num(x)
    if v is None:
        return missing
    n = round(v)
    if abs(n) >= 10_000_000:
        return f"{n / 1e6:.0f}M"
    if abs(n) >= 100_000:
        return f"{n / 1e3:.0f}k"
    return f"{n:,}"


def fmt_bytes(x: Any, missing: str = DASH) -> str:
    """Binary units: 512 B, 12 KiB, 3.2 MiB, 7.5 GiB (GiB is the largest)."""
    v = num(x)
    if v is None:
        return missing
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(v) < 1024 or unit == "GiB":
            return f"{v:.0f} {unit}" if unit in ("B", "KiB") else f"{v:.1f} {unit}"
        v /= 1024
    return missing  # unreachable


# Short names for the WebGPU features the wgpu backend enables.
_FEATURE_ABBREV = {"timestamp-query": "ts", "timestamp-query-inside-passes": "ts-in-pass",
                   "timestamp-query-inside-encoders": "ts-in-encoder", "shader-f16": "f16"}


def adapter_line(a: Mapping[str, Any]) -> str:
    """One strip line for a WebGPU adapter: name, backend, features, limits and the weight read path."""
    kind = ", ".join(str(v) for v in (a.get("backend"), a.get("type")) if v) or "?"
    name = f"{a.get('name') or '?'} ({kind})"
    feats = ",".join(_FEATURE_ABBREV.get(f, f) for f in a.get("features") or []) or "none"
    lim = a.get("limits") or {}
    parts = [name]
    if a.get("weight_read"):  # first after the name: it changes what the matmul times mean
        parts.append(f"weights {a['weight_read']}")
    chk = a.get("self_check")
    if isinstance(chk, Mapping) and isinstance(chk.get("seconds"), (int, float)):
        parts.append(f"self-check ok {chk['seconds']:.2f} s")  # the start-up proof of correct results
    parts.append(f"features {feats}")
    if lim.get("max-buffer-size"):
        parts.append(f"buf ≤ {fmt_bytes(lim['max-buffer-size'])}")
    if lim.get("max-texture-dimension-2d"):
        parts.append(f"tex ≤ {lim['max-texture-dimension-2d']}")
    return "  ".join(parts)


ELLIPSIS = "…"
_CUT_AFTER = " ,<>:_(/.-"  # a kept tail starts after one of these when one is near


def _params_start(name: str) -> int:
    """Where the parameter list of a demangled function name starts (`foo<T>(int, float)` -> 6), or -1."""
    if not name.endswith(")"):
        return -1
    depth = 0
    for i in range(len(name) - 1, -1, -1):
        c = name[i]
        if c == ")":
            depth += 1
        elif c == "(":
            depth -= 1
            if depth == 0:
                return i if i > 0 else -1
    return -1


def _split(name: str, width: int) -> tuple[str, str, int]:
    """(base, suffix, characters dropped before base) of a name too long for `width`: without a leading
    "void " (the return type says nothing), and a parameter list cut to what fits, at least "(…)" (the
    template arguments, in the base, say more than the parameters they determine)."""
    cut = 0
    if name.startswith("void ") and len(name) > width:
        name, cut = name[5:], 5
    p = _params_start(name)
    if p <= 0 or len(name) <= width or name[p:] == "()":
        return name, "", cut
    keep = width - p - 3  # characters of the parameters kept between "(" and "…)"
    if keep > 0:
        return name[:p], name[p : p + 1 + keep].rstrip() + ELLIPSIS + ")", cut
    return name[:p], "(" + ELLIPSIS + ")", cut


def _tail(base: str, n: int) -> str:
    """The last `n` characters of base, started after a separator when one is in their first half."""
    if n <= 0:
        return ""
    t = base[-n:]
    for i, c in enumerate(t[: n // 2]):
        if c in _CUT_AFTER:
            return t[i + 1 :] if c != "<" else t[i:]
    return t


_QUALIFIER = re.compile(r"(?:\(anonymous namespace\)|\b[A-Za-z_][A-Za-z0-9_]*)::")


def compact_name(name: str) -> str:
    """A C++ kernel name without what a narrow column can spare first: the `void` return type and the
    namespace qualifiers (`at::native::`, `(anonymous namespace)::`, `std::`)."""
    return _QUALIFIER.sub("", name.removeprefix("void "))


def shorten_middle(name: str, width: int) -> str:
    """`name` in at most `width` characters: whole when it fits; else without its namespaces and return
    type (compact_name) when that fits; else its start, "…", and its tail (the end of the template
    arguments of a C++ name, whose parameter list is cut to what fits, at least "(…)").

    "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>, ...> >(int, ...)"
    -> "vectorized_elementwise_kernel<4, CUDAFunctor_add<float>, array<char*, 3ul> >(int, …)" (or shorter)
    """
    if len(name) <= width:
        return name
    if width <= 2:
        return name[:width]
    name = compact_name(name) or name
    if len(name) <= width:
        return name
    base, suffix, _ = _split(name, width)
    if len(base) + len(suffix) <= width:
        return base + suffix
    room = width - len(suffix) - 1
    if room < 4:  # no room for the parameter ellipsis too
        base, suffix, room = name, "", width - 1
    tail = _tail(base, room // 3)
    return base[: room - len(tail)] + ELLIPSIS + tail + suffix


def _shorten_at(name: str, width: int, at: int) -> str:
    """Like shorten_middle, but keeping the characters around `at` (where the name differs from another)."""
    base, suffix, cut = _split(name, width)
    at -= cut
    room = width - len(suffix) - 2  # two ellipses
    if room < 9 or at >= len(base):
        return shorten_middle(name, width)
    tail = _tail(base, room // 5)
    win_n = max(8, 2 * room // 5)
    head_n = room - win_n - len(tail)
    lo = max(head_n, min(at - min(4, win_n // 4), len(base) - len(tail) - win_n))
    if lo <= head_n:  # the window reaches back to the head: one ellipsis is enough
        return base[: room + 1 - len(tail)] + ELLIPSIS + tail + suffix
    return base[:head_n] + ELLIPSIS + base[lo : lo + win_n] + ELLIPSIS + tail + suffix


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def shorten_names(names: list[str], width: int) -> list[str]:
    """Each name in at most `width` characters (shorten_middle); different names that would read the same
    keep, between their start and tail, the part where they differ."""
    out = [shorten_middle(n, width) for n in names]
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(out):
        groups.setdefault(s, []).append(i)
    for idx in groups.values():
        distinct = {names[i] for i in idx}
        if len(distinct) < 2:
            continue
        # compare the compact forms, unless they are what is alike (names apart only by namespace)
        form = {n: compact_name(n) or n for n in distinct}
        if len(set(form.values())) < len(distinct):
            form = {n: n for n in distinct}
        for i in idx:
            mine = form[names[i]]
            at = max(_common_prefix(mine, form[o]) for o in distinct if o != names[i])
            out[i] = _shorten_at(mine, width, at)
    return out


# C0 and C1 control characters (ESC, CSI, BEL, ...) that a hostile trace, metrics page or model name could
# use to drive the terminal: shown as \xNN instead.
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}


def printable(x: Any) -> Any:
    """`x` with every control character of every string in it escaped (dicts and lists walked)."""
    if isinstance(x, str):
        return x.translate(_CONTROLS)
    if isinstance(x, Mapping):
        return {printable(k): printable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [printable(v) for v in x]
    return x


__all__ = [
    "DASH",
    "ELLIPSIS",
    "adapter_line",
    "compact_name",
    "fmt_bytes",
    "fmt_count",
    "fmt_duration_ms",
    "fmt_int",
    "fmt_ms",
    "fmt_pct",
    "fmt_rate",
    "num",
    "printable",
    "shorten_middle",
    "shorten_names",
]
