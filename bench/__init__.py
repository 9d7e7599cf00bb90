"""Benchmarks of pushdeploy side by side with what users would run instead.

``python -m bench`` runs every scenario once on this machine and writes the raw numbers to
``bench/results/latest.json`` and the table to ``docs/benchmarks.md``; ``--smoke`` is the short
form CI runs to check that the harness still works (its numbers mean nothing).
"""
