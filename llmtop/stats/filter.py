"""The kernel-table filter: `phase:prefill|decode`, `layer:N|none`, `class:NAME`, or name substrings."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmtop.errors import LlmtopError
from llmtop.events import NO_LAYER, OP_CLASSES, PHASES
from llmtop.stats.frozen import Frozen


@dataclass(frozen=True, slots=True)
class Filter:
    """Parsed `filter`: whitespace-separated terms, all of which must match.

    `phase:prefill|decode`, `layer:N|none`, `class:NAME` (alias `op:`) select by field; any other
    term is a case-insensitive substring of the kernel name.
    """

    text: tuple[str, ...] = ()
    phase: int | None = None
    layer: int | None = None
    op_class: int | None = None

    def key_mask(self, fz: Frozen) -> np.ndarray:
        m = np.ones(len(fz.key_name), bool)
        if self.phase is not None:
            m &= fz.key_phase == self.phase
        if self.layer is not None:
            m &= fz.key_layer == self.layer
        if self.op_class is not None:
            m &= fz.key_opc == self.op_class
        if self.text:
            ok = np.array([all(t in n.lower() for t in self.text) for n in fz.names], bool)
            m &= ok[fz.key_name] if len(ok) else False
        return m


def parse_filter(text: str) -> Filter:
    words: list[str] = []
    phase = layer = opc = None
    for term in (text or "").split():
        field_, sep, val = term.partition(":")
        f, v = field_.lower(), val.lower()
        if sep and f == "phase":
            if v not in PHASES:
                raise LlmtopError(f"bad filter term {term!r}: phase is prefill or decode")
            phase = PHASES.index(v)
        elif sep and f == "layer":
            if v == "none":
                layer = NO_LAYER
            else:
                try:
                    layer = int(v)
                except ValueError:
                    raise LlmtopError(f"bad filter term {term!r}: layer must be an integer or none") from None
        elif sep and f in ("class", "op"):
            if v not in OP_CLASSES:
                raise LlmtopError(f"bad filter term {term!r}: class is one of {', '.join(OP_CLASSES)}")
            opc = OP_CLASSES.index(v)
        else:
            words.append(term.lower())
    return Filter(tuple(words), phase, layer, opc)


__all__ = ["Filter", "parse_filter"]
