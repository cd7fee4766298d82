"""sdcli's tests: a package, so that its helper modules import as tests.models, tests.reference
and tests.scheduler_checks from wherever pytest runs."""
