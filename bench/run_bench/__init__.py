"""Reproduction of the paper's evaluation (§6) in the netns lab: ``python -m run_bench``.

Scenarios (one JSON each in ``bench/results/``, format in DESIGN.md): ``fig8_aggregation``,
``fig9_cell_rtt``, ``fig10_fixed_loss``, ``many_flows``, ``datapath_ceiling``, ``latency``;
plus ``RESULTS.md`` (tables) and PNG plots. See ``python -m run_bench --help``.
"""
