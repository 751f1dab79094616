"""Monitoring: the Prometheus rules, their promtool unit tests, the dashboard and the console."""
