"""llmtop.stats: streaming statistics over EventBatches (pure Python + numpy; no Textual, no torch).

`Aggregator` folds batches; `Aggregator.snapshot()` returns an immutable `Snapshot` whose `report`
is the JSON of `llmtop report --format json` (keys: docs/REPORT.md) and whose `series` feeds plots.
"""

from llmtop.stats.aggregator import Aggregator
from llmtop.stats.buckets import ALPHA
from llmtop.stats.filter import Filter, parse_filter
from llmtop.stats.snapshot import PhaseSteps, Series, Snapshot
from llmtop.stats.views import GROUPS, MODES, SORTS

__all__ = ["ALPHA", "GROUPS", "MODES", "SORTS", "Aggregator", "Filter", "PhaseSteps", "Series", "Snapshot",
           "parse_filter"]
