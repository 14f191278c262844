"""The benchmarks and studies, a package run from the repository root as ``python -m benchmarks.<name>`` (see
``benchmarks/README.md``); shared code is in :mod:`benchmarks.common`, the regime studies' statistics and tables in
:mod:`benchmarks.regime_stats` and :mod:`benchmarks.regime_plots`, and every interval in
:mod:`dynsdpb_selfplay.stats`."""
