pytest_plugins = [
    "tests.fixtures.stores",
    "tests.fixtures.booking",
    "tests.fixtures.s3",
    "tests.fixtures.smtp",
]
