"""The maintainers' GPU benchmarks of InternVL2-2B's and -4B's shapes (not part of the learners' package).

See benchmarks/build.py for what each command measures and docs/benchmarks.md for the results."""
