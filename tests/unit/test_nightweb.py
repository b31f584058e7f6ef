"""The night's status page: what it shows and links besides the table."""

from __future__ import annotations

from datetime import date

from osa_grid.services.nightweb import render_page

NIGHT = date(2025, 11, 20)


def test_published_datacheck_pages_are_linked() -> None:
    page = render_page(
        NIGHT,
        [],
        ["DL1%"],
        True,
        ["../datacheck/20251120/v0.1/datacheck_dl1_LST-1.Run01807.png"],
        pages=["../datacheck/20251120/v0.1/DL1_datacheck_20251120.html", "/web/a&b.html"],
    )
    assert (
        '<ul id="datacheck-pages"><li><a href="../datacheck/20251120/v0.1/DL1_datacheck_20251120.html">'
        "DL1_datacheck_20251120.html</a></li><li>"
        '<a href="/web/a&amp;b.html">a&amp;b.html</a></li></ul>'
    ) in page
    assert '<img src="../datacheck/20251120/v0.1/datacheck_dl1_LST-1.Run01807.png"' in page


def test_no_list_without_pages() -> None:
    assert "datacheck-pages" not in render_page(NIGHT, [], [], False, [])
