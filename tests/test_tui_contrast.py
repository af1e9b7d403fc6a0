"""Readable everywhere (issue 17): every cell of text on the main screen reaches WCAG AA contrast (4.5:1
between its foreground and background) in the dark and the light theme, at 120x40 and 80x24; at 80x24
the footer keeps `?` (help) and `t` (theme)."""

from __future__ import annotations

from typing import Any

import pytest
from test_tui import generation, make_provider  # noqa: F401 - `generation` is a module-scoped fixture

from llmtop.tui.app import LlmtopApp

AA = 4.5


def _lum(rgb: tuple[int, int, int]) -> float:
    def ch(v: int) -> float:
        x = v / 255
        return x / 12.92 if x <= 0.03928 else ((x + 0.055) / 1.055) ** 2.4

    r, g, b = rgb
    return 0.2126 * ch(r) + 0.7152 * ch(g) + 0.0722 * ch(b)


def contrast(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    hi, lo = sorted((_lum(a), _lum(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_the_contrast_formula() -> None:
    assert contrast((0, 0, 0), (255, 255, 255)) == pytest.approx(21.0)
    assert contrast((118, 118, 118), (255, 255, 255)) == pytest.approx(4.54, abs=0.01)  # the AA grey


def low_contrast_text(app: LlmtopApp) -> dict[tuple[Any, ...], list[str]]:
    """(fg, bg, ratio) -> texts, for every rendered segment with a letter or digit below AA. Bars, plot
    dots and borders are graphics, not text, and are not held to the text ratio."""
    bad: dict[tuple[Any, ...], list[str]] = {}
    for strip in app.screen._compositor.render_strips():
        for seg in strip:
            st = seg.style
            if st is None or st.color is None or st.bgcolor is None or not any(c.isalnum() for c in seg.text):
                continue
            fg, bg = tuple(st.color.get_truecolor()), tuple(st.bgcolor.get_truecolor())
            r = contrast(fg, bg)
            if r < AA:
                bad.setdefault((fg, bg, round(r, 2)), []).append(seg.text.strip())
    return bad


@pytest.mark.parametrize("size", [(120, 40), (80, 24)])
@pytest.mark.parametrize("theme", ["textual-dark", "textual-light"])
async def test_every_text_cell_reaches_aa(generation: Any, theme: str, size: tuple[int, int]) -> None:  # noqa: F811
    app = LlmtopApp(make_provider(generation))
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        if (theme == "textual-light") == app.current_theme.dark:
            await pilot.press("t")  # the app's own toggle, as a user switches
        for _ in range(3):
            await pilot.pause()
        assert app.theme == theme
        assert low_contrast_text(app) == {}


async def test_80x24_keeps_help_and_theme_in_the_footer(generation: Any) -> None:  # noqa: F811
    from textual.widgets import Footer

    app = LlmtopApp(make_provider(generation))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        footer = app.query_one(Footer)
        keys = {fk.key for fk in footer.query("FooterKey")}
        shown = [fk for fk in footer.query("FooterKey") if fk.region.width > 0 and fk.region.right <= 80]
        assert {"question_mark", "t"} <= {fk.key for fk in shown}, keys


async def test_seek_keys_are_replay_only_and_home_still_reaches_the_first_row(generation: Any) -> None:  # noqa: F811
    from textual.widgets import Footer

    from llmtop.tui.panes import KernelTable

    app = LlmtopApp(make_provider(generation))
    async with app.run_test(size=(160, 40)) as pilot:
        await pilot.pause()
        keys = {fk.key for fk in app.query_one(Footer).query("FooterKey")}
        assert not {"left_square_bracket", "right_square_bracket", "home"} & keys  # a live run cannot seek
        table = app.query_one(KernelTable)
        table.focus()
        await pilot.press("end")
        assert table.cursor_row == table.row_count - 1 > 0
        await pilot.press("home")
        assert table.cursor_row == 0


def _waiting_replay() -> Any:
    """Nothing folded yet, a replay position and a source that says what it is doing: the waiting note and
    the footer's position are on screen together."""
    from llmtop.stats.aggregator import Aggregator
    from llmtop.tui.provider import AggregatorProvider

    class P(AggregatorProvider):
        def status(self) -> Any:
            return {**super().status(), "kind": "replay", "position_s": 1.5, "speed": 1.0,
                    "prompt": "python my_script.py (pid 42, no model hooked yet)"}

    return P(Aggregator())


@pytest.mark.parametrize("theme", ["textual-dark", "textual-light"])
async def test_the_waiting_note_and_the_footer_position_reach_aa(theme: str) -> None:
    from llmtop.tui.panes import SourceNote

    app = LlmtopApp(_waiting_replay())
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        if (theme == "textual-light") == app.current_theme.dark:
            await pilot.press("t")
        for _ in range(3):
            await pilot.pause()
        assert app.query_one(SourceNote).display and app.query_one("#footer-position").display
        assert low_contrast_text(app) == {}
