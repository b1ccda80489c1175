"""Fixtures come from tests/support as pytest plugins, loaded here for the whole tree:
unit tests (tests/unit/) use none of the session servers, integration tests
(tests/integration/) start them on first use."""

pytest_plugins = [
    "tests.support.fixtures",  # the seeded upstream registries
    "tests.support.deployment",  # pullgate in front of them
    "tests.support.vendor",  # a pullgate with the vendor API, for the admin face
    "tests.support.s3gw",  # a real S3 server (versitygw), for the S3 cache
]
