"""Reports: the typed results and their files - Report (metrics, per-class table, settings, warnings; JSON save/load
with validation: report_checks; its pandas tables: frames), LayerReport, the comparison of reports, and the
regression gate's rules over reports. Each gives back the settings it was made with as typed Settings
(``settings_typed``). A new report field goes here (and into its validation).
"""
