"""Read models for the dashboard, admin and public pages, and the health report.
Must not import api or web (it may read relay state: breakers, probes, the model map)."""
