"""vLLM token counters and scheduler state, per pod.

Names: `vllm:prompt_tokens_total` / `vllm:generation_tokens_total` (labels `model_name`, and `engine`
from V1 on: one series per data-parallel engine, summed here). The KV-cache ratio was
`vllm:gpu_cache_usage_perc` (V0) and is `vllm:kv_cache_usage_perc` (V1); some versions export both,
so the new name wins and the old one is only a fallback.
"""

from __future__ import annotations

from collectors.token_servers import SeriesRule, TokenServerCollector


class VllmCollector(TokenServerCollector):
    rules = (
        SeriesRule("vllm:generation_tokens_total", "generation_tokens_total", "counter"),
        SeriesRule("vllm:prompt_tokens_total", "prompt_tokens_total", "counter"),
        SeriesRule("vllm:num_requests_running", "requests_running", "sum"),
        SeriesRule("vllm:num_requests_waiting", "requests_waiting", "sum"),
        SeriesRule("vllm:kv_cache_usage_perc", "kv_cache_usage_ratio", "max"),
        SeriesRule("vllm:gpu_cache_usage_perc", "kv_cache_usage_ratio", "max", rank=1),
    )
