"""Render: reports and comparisons made readable - the terminal tables, CSV/JSON exports, plots, the HTML pages, the
gate's summary and JUnit file. Reads reports, never computes a metric. A new output format goes here.
"""
