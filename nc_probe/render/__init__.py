"""Renderers of reports and comparisons: terminal, tables and exports, plots, HTML."""
