"""Read counters from a server's Prometheus `/metrics` page.

In: the page's text (or the base URL to GET it from) and sample names such as
`surge:prompt_tokens_total`. Out: each name's value summed over its label sets
(None when the page does not have it), so the token counts the server saw can
be set beside the ones the client counted.
"""

from __future__ import annotations

from typing import Iterable, Optional

# The server-side token counters of surge/server/metrics.py (vLLM's, with the surge: prefix).
PROMPT_TOKENS = "surge:prompt_tokens_total"
GENERATION_TOKENS = "surge:generation_tokens_total"


def parse_counters(text: str, names: Iterable[str]) -> dict[str, Optional[float]]:
    from prometheus_client.parser import text_string_to_metric_families

    wanted = set(names)
    totals: dict[str, Optional[float]] = {name: None for name in wanted}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                totals[sample.name] = (totals[sample.name] or 0.0) + sample.value
    return totals


def scrape_counters(base_url: str, names: Iterable[str], headers: Optional[dict] = None) -> dict[str, Optional[float]]:
    """GET `<base_url>/metrics` and parse `names`; an unreachable page gives None for each."""
    import httpx

    names = list(names)
    try:
        response = httpx.get(base_url.rstrip("/") + "/metrics", headers=headers, timeout=10.0)
        response.raise_for_status()
    except httpx.HTTPError:
        return {name: None for name in names}
    return parse_counters(response.text, names)
