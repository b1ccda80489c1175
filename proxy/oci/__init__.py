"""Leaf: the OCI Distribution vocabulary: name/reference/digest grammar, name predicates, media types,
error codes and the error body, allowlist patterns. Imports nothing of pullgate."""
