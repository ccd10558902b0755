"""NVIDIA Triton with the TensorRT-LLM backend, per pod.

Token counts come from the backend's `nv_llm_{input,output}_token_len` histograms (their `_sum`);
request state from `nv_trt_llm_request_metrics`. Triton's own GPU power and energy series
(`nv_gpu_power_usage`, `nv_energy_consumption`, labelled `gpu_uuid`) are left to the GPU collectors
(NVML, DCGM): a GPU read twice would be counted twice.
"""

from __future__ import annotations

from collectors.token_servers import SeriesRule, TokenServerCollector


class TritonCollector(TokenServerCollector):
    rules = (
        SeriesRule(
            "nv_llm_output_token_len_sum",
            "generation_tokens_total",
            "counter",
            match={"response_metric_type": "total_output_tokens"},
        ),
        SeriesRule(
            "nv_llm_input_token_len_sum",
            "prompt_tokens_total",
            "counter",
            match={"response_metric_type": "total_input_tokens"},
        ),
        SeriesRule("nv_trt_llm_request_metrics", "requests_running", "sum", match={"request_type": "active"}),
        SeriesRule(
            "nv_trt_llm_request_metrics", "requests_waiting", "sum", match={"request_type": "waiting"}
        ),
    )
