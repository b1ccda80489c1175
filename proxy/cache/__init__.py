"""The pull-through cache: content cached, access not (DESIGN.md, "The pull-through cache").

- `backend`: what a storage backend offers (the filesystem one is `fs`; `s3store` over
  `s3client` implements the same on an S3-compatible bucket).
- `index`: which digests are held, their last use (LRU), which repositories each came
  through (bindings), and tags; pure bookkeeping, no I/O.
- `tags`: when a cached tag is served, revalidated, or served stale.
- `flight`: single flight: one upstream fetch per digest, every client tailing its file.
- `send`: hits and growing files out to the client (sendfile, or large reads in a thread).
- `persist`: the index in the store (survives a restart; last-use times written in batches).
- `service`: `Cache`, the one object the pull facade (proxy.pull.cached) talks to.

The license and allowlist checks run before any of this (proxy.pull.routes); this package
never talks to a registry itself: the facade hands it the upstream as a `Source`.
"""
