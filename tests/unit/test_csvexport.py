"""CSV cells: quoting as RFC 4180 wants, and no formula a spreadsheet would run."""

from __future__ import annotations

import csv
import io

from proxy.admin import csvexport


def test_formula_cells_are_defused_and_quoting_round_trips():
    rows = [
        ['=HYPERLINK("http://x")', "+1", "-2", "@SUM(A1)", "\tcmd", "\r=1", "plain", 'a,"b"\nc', None, True, -5, 0],
    ]
    text = csvexport.encode(rows).decode()
    back = list(csv.reader(io.StringIO(text)))
    assert back == [
        ["'=HYPERLINK(\"http://x\")", "'+1", "'-2", "'@SUM(A1)", "'\tcmd", "'\r=1", "plain", 'a,"b"\nc', "", "true",
         "-5", "0"],
    ]  # fmt: skip
    assert text.endswith("\r\n")


def test_egress_columns_follow_the_grouping():
    assert [c for c, _ in csvexport.egress_columns("image")] == ["registry", "image", "bytes", "pulls", "requests"]
    assert [t for _, t in csvexport.egress_columns("customer")][:3] == ["customer_id", "customer_name", "app"]
