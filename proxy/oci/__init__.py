"""The client-facing OCI Distribution pull API."""
