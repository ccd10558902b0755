"""Hugging Face TGI, per pod.

TGI has no token counter, only per-request histograms; their `_sum` is a counter of tokens, observed
when each request finishes, so a rate over it is lumpy for long generations (window accordingly).
"""

from __future__ import annotations

from collectors.token_servers import SeriesRule, TokenServerCollector


class TgiCollector(TokenServerCollector):
    rules = (
        SeriesRule("tgi_request_generated_tokens_sum", "generation_tokens_total", "counter"),
        SeriesRule("tgi_request_input_length_sum", "prompt_tokens_total", "counter"),
        SeriesRule("tgi_batch_current_size", "requests_running", "sum"),
        SeriesRule("tgi_queue_size", "requests_waiting", "sum"),
    )
