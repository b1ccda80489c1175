"""The PostgreSQL store's query rewriting, with no server: ? placeholders become $n
outside string literals only (the store against a real cluster: tests/integration/)."""

from __future__ import annotations

from proxy.store.postgres import to_dollar


def test_placeholders_outside_literals_only():
    assert to_dollar("SELECT ? , ?") == "SELECT $1 , $2"
    assert to_dollar("SELECT '?', 'it''s ?', \"a?\" FROM t WHERE x = ? AND y IN ('?', ?)") == (
        "SELECT '?', 'it''s ?', \"a?\" FROM t WHERE x = $1 AND y IN ('?', $2)"
    )
