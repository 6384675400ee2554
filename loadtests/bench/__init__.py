"""Side-by-side benchmark of critic-rm against the paths users would otherwise run.

Every path scores the same pairs with the same checkpoint, m and critique length; see
`loadtests/bench_paths.py` for the command line and `report.py` for what is measured."""
