"""Benchmarks: each prints a table and writes JSON to benchmarks/results/ (machine, versions, date, figures)."""
