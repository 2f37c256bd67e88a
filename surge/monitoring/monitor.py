"""`engine.start_monitoring(...)`: a Prometheus exporter and a live console table.

In: an engine (anything whose `stats()` returns an `EngineStats`, surge.engine.stats, read by
attribute), a port for the exporter (loopback by default; None for no exporter) and whether to draw the
console table; a server's `ServerMetrics` when there is one (anything with `.registry` and
`.totals()`: its registry is exported and its token counters give throughput). Out: a `MonitoringHandle` with `.port`,
`.url`, `.stop()`. On a terminal the console thread redraws a `rich` table
every `refresh_interval` seconds, in the words of eSurge's page: request
throughput, token generation rate, memory (KV-cache use), cache hit rate,
active (running) and waiting requests, preemptions, compiles. When the console is
not a terminal (output sent to a log file) it prints one summary line every
10 seconds instead.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

from prometheus_client import CollectorRegistry, start_http_server

from surge.monitoring.engine_stats import EngineStatsCollector

logger = logging.getLogger("surge")


@dataclass
class _Rates:
    """Per-second rates between two readings of cumulative counters."""

    last_time: float = field(default_factory=time.monotonic)
    last: dict = field(default_factory=dict)

    def update(self, counters: dict) -> dict:
        now = time.monotonic()
        elapsed = max(now - self.last_time, 1e-9)
        rates = {k: (v - self.last[k]) / elapsed for k, v in counters.items() if k in self.last}
        self.last_time, self.last = now, dict(counters)
        return rates


def _counters(engine, metrics: Optional[object], stats) -> dict:
    counters = {"steps": stats.num_steps}
    if metrics is not None:
        totals = metrics.totals()
        counters.update(prompt_tokens=totals["prompt_tokens"], generation_tokens=totals["generation_tokens"],
                        requests=totals["requests"])
    else:  # no server: the engine's own token and request counters
        counters.update(prompt_tokens=stats.num_prompt_tokens, generation_tokens=stats.num_generation_tokens,
                        requests=stats.num_finished_requests)
    return counters


def build_table(stats, rates: dict, title: str = "surge"):
    """The console table for one reading of engine stats (an `EngineStats`) and counter rates."""
    from rich.table import Table

    total, used = stats.pages.num_total_pages, stats.pages.num_used_pages
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    if "generation_tokens" in rates:
        table.add_row("token generation rate", f"{rates['generation_tokens']:.1f} tok/s")
    if "prompt_tokens" in rates:
        table.add_row("prompt token rate", f"{rates['prompt_tokens']:.1f} tok/s")
    if "requests" in rates:
        table.add_row("request throughput", f"{rates['requests']:.2f} req/s")
    table.add_row("engine steps", f"{rates.get('steps', 0.0):.1f} steps/s")
    table.add_row("active requests", str(stats.num_running))
    table.add_row("waiting requests", str(stats.num_waiting))
    table.add_row("memory (KV cache)", f"{100.0 * used / total if total else 0.0:.1f}% ({used}/{total} pages)")
    table.add_row("cached prefix pages", str(stats.pages.num_cached_pages))
    table.add_row("cache hit rate", f"{100.0 * stats.prefix_cache_hit_rate:.1f}%")
    table.add_row("preemptions", str(stats.num_preemptions))
    table.add_row("compiles", str(stats.num_compiles))
    return table


class MonitoringHandle:
    """What `start_monitoring` started; `stop()` ends the exporter and the console thread."""

    def __init__(self, host: str, port: Optional[int], http_server, console_thread: Optional[threading.Thread],
                 stop_event: threading.Event) -> None:
        self.host = host
        self.port = port
        self._http_server = http_server
        self._console_thread = console_thread
        self._stop_event = stop_event

    @property
    def url(self) -> Optional[str]:
        return None if self.port is None else f"http://{self.host}:{self.port}/metrics"

    def stop(self) -> None:
        self._stop_event.set()
        if self._console_thread is not None:
            self._console_thread.join(timeout=5)
        if self._http_server is not None:
            self._http_server.shutdown()
            self._http_server.server_close()
            self._http_server = None


def start_monitoring(engine, prometheus_port: Optional[int] = 9090, enable_console: bool = True, *,
                     host: str = "127.0.0.1", refresh_interval: float = 1.0, metrics: Optional[object] = None,
                     console=None, model_name: Optional[str] = None) -> MonitoringHandle:
    """Start the exporter (port 0 picks a free one; None starts none) and, if asked, the console table."""
    name = model_name or getattr(engine, "model_name", "surge")
    http_server, port = None, None
    if prometheus_port is not None:
        if metrics is not None:
            registry = metrics.registry
        else:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(EngineStatsCollector(engine.stats, name, getattr(engine, "replica_stats", None)))
        http_server, _ = start_http_server(prometheus_port, addr=host, registry=registry)
        port = http_server.server_port
        logger.info("Prometheus metrics on http://%s:%d/metrics", host, port)
    stop_event = threading.Event()
    thread = None
    if enable_console:
        thread = threading.Thread(target=_console_loop, name="surge-console-monitor", daemon=True,
                                  args=(engine, metrics, stop_event, refresh_interval, console, name))
        thread.start()
    return MonitoringHandle(host, port, http_server, thread, stop_event)


def summary_line(stats, rates: dict) -> str:
    """One log line with what the table shows (for consoles that are not terminals, e.g. a log file): the
    engine's state first, then the token rates (none on the first line: a rate needs two readings)."""
    total, used = stats.pages.num_total_pages, stats.pages.num_used_pages
    parts = [f"running {stats.num_running}", f"waiting {stats.num_waiting}",
             f"KV cache {100.0 * used / total if total else 0.0:.1f}% ({used}/{total} pages)",
             f"prefix hit rate {100.0 * stats.prefix_cache_hit_rate:.1f}%",
             f"preemptions {stats.num_preemptions}"]
    if "prompt_tokens" in rates:
        parts.append(f"prompt {rates['prompt_tokens']:.1f} tok/s")
    if "generation_tokens" in rates:
        parts.append(f"generation {rates['generation_tokens']:.1f} tok/s")
    return "surge: " + ", ".join(parts)


# A log file gets a summary line this often at most (a terminal gets the live table every refresh).
LOG_INTERVAL_S = 10.0


def _console_loop(engine, metrics, stop_event: threading.Event, refresh_interval: float, console, name: str) -> None:
    from rich.console import Console
    from rich.live import Live

    console = console or Console()
    rates = _Rates()

    def reading():
        stats = engine.stats()
        return stats, rates.update(_counters(engine, metrics, stats))

    try:
        if not console.is_terminal:
            interval = max(refresh_interval, LOG_INTERVAL_S)
            while not stop_event.wait(interval):
                console.print(summary_line(*reading()), highlight=False, soft_wrap=True)
            return
        with Live(build_table(*reading(), title=f"surge — {name}"), console=console,
                  refresh_per_second=max(1.0, 1.0 / refresh_interval), transient=False) as live:
            while not stop_event.wait(refresh_interval):
                live.update(build_table(*reading(), title=f"surge — {name}"))
    except Exception:  # the monitor must never take the engine down with it
        logger.exception("console monitor stopped")
