"""SGLang token counters and scheduler state, per pod (server started with `--enable-metrics`).

Series carry `tp_rank`; tensor-parallel ranks run one batch together, so a rank's series are copies
and only the lowest rank present is read.
"""

from __future__ import annotations

from collectors.token_servers import SeriesRule, TokenServerCollector


class SglangCollector(TokenServerCollector):
    copy_label = "tp_rank"
    rules = (
        SeriesRule("sglang:generation_tokens_total", "generation_tokens_total", "counter"),
        SeriesRule("sglang:prompt_tokens_total", "prompt_tokens_total", "counter"),
        SeriesRule("sglang:num_running_reqs", "requests_running", "sum"),
        SeriesRule("sglang:num_queue_reqs", "requests_waiting", "sum"),
        SeriesRule("sglang:token_usage", "kv_cache_usage_ratio", "max"),
    )
