"""The portal's server-drawn SVG charts: escaped labels, axes that read well, "no data"."""

from __future__ import annotations

from xml.etree import ElementTree

from proxy.admin.portal import charts
from proxy.admin.portal.usage_pages import threshold_from_form, threshold_to_form

SVG = "{http://www.w3.org/2000/svg}"


def _parse(markup: str) -> ElementTree.Element:
    return ElementTree.fromstring(str(markup))  # noqa: S314 - our own output


def test_columns_draw_a_bar_per_point_with_its_value_on_hover():
    svg = _parse(charts.columns([("12-01", 0), ("12-02", 300 * 1024)], "Egress per day", charts.size))
    bars = svg.findall(f"{SVG}rect")
    assert len(bars) == 2
    assert [b.find(f"{SVG}title").text for b in bars] == ["12-01: 0 B", "12-02: 300.0 KiB"]
    axis = [t.text for t in svg.findall(f"{SVG}text") if t.get("class") == "axis"]
    assert "500.0 KiB" in axis and "0 B" in axis  # a round top in the unit shown
    assert svg.get("role") == "img" and svg.get("aria-label") == "Egress per day"


def test_labels_are_escaped_and_links_kept():
    svg = _parse(charts.ranking([("<script>alert(1)</script>", 10, "/portal/customers/x?a=1&b=2")], "Top"))
    link = svg.find(f"{SVG}a")
    assert link is not None and link.get("href") == "/portal/customers/x?a=1&b=2"
    assert "<script>" not in str(charts.ranking([("<script>", 1, None)], "Top"))


def test_empty_series_and_unknown_ratio_say_no_data():
    assert "no data" in str(charts.columns([], "Pulls"))
    assert "no data" in str(charts.columns([("12-01", 0)], "Pulls"))
    assert "no data" in str(charts.ranking([], "Top"))
    assert "no data" in str(charts.gauge(None, "Cache hit ratio"))
    full = _parse(charts.gauge(1.5, "Used"))
    assert any("over" in (r.get("class") or "") for r in full.findall(f"{SVG}rect"))


def test_a_count_axis_never_labels_half_a_pull():
    axis = [
        t.text for t in _parse(charts.columns([("d", 1)], "Pulls")).findall(f"{SVG}text") if t.get("class") == "axis"
    ]
    assert axis.count("0") == 1 and "1" in axis


def test_threshold_form_round_trips():
    for limit in (None, 104, 5 * 1024**2, 10 * 1024**3, 3 * 1024**4):
        amount, unit = threshold_to_form(limit)
        assert threshold_from_form(amount, unit) == limit or abs(threshold_from_form(amount, unit) - limit) <= 1
    assert threshold_to_form(10 * 1024**3) == ("10", "GiB")
