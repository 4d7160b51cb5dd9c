"""Reports: the typed results and their files - Report (metrics, per-class table, settings, warnings; JSON save/load
with validation), LayerReport, the comparison of two reports, and the regression gate's rules over reports. A new
report field goes here (and into its validation).
"""
