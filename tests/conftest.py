pytest_plugins = [
    "tests.fixtures.stores",
    "tests.fixtures.booking",
    "tests.fixtures.booking_flows",
    "tests.fixtures.s3",
    "tests.fixtures.smtp",
    "tests.fixtures.notifier",
    "tests.fixtures.services",
    "tests.fixtures.verification",
    "tests.fixtures.processes",
    "tests.fixtures.drills",
]
