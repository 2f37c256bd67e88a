"""Watching a running engine: the Prometheus collector of its stats and `start_monitoring`'s exporter
and console table. Below the server (which registers the same collector) and called by the engine.
"""
