"""TGI and Triton/TensorRT-LLM: token counts from their histograms' sums."""

from __future__ import annotations

from collector_helpers import ServeText, make
from prometheus_client import CollectorRegistry

from collectors.tgi import TgiCollector
from collectors.triton import TritonCollector

POD = {"namespace": "llm", "pod": "srv-0"}

TGI = """# TYPE tgi_request_generated_tokens histogram
tgi_request_generated_tokens_bucket{le="+Inf"} 3
tgi_request_generated_tokens_sum 420
tgi_request_generated_tokens_count 3
# TYPE tgi_request_input_length histogram
tgi_request_input_length_bucket{le="+Inf"} 3
tgi_request_input_length_sum 96
tgi_request_input_length_count 3
# TYPE tgi_queue_size gauge
tgi_queue_size 2
# TYPE tgi_batch_current_size gauge
tgi_batch_current_size 5
"""

TRITON = """# TYPE nv_llm_output_token_len histogram
nv_llm_output_token_len_bucket{{model="ensemble",le="+Inf",response_metric_type="total_output_tokens"}} 4
nv_llm_output_token_len_sum{{model="ensemble",response_metric_type="total_output_tokens",version="1"}} {out}
nv_llm_output_token_len_count{{model="ensemble",response_metric_type="total_output_tokens",version="1"}} 4
# TYPE nv_llm_input_token_len histogram
nv_llm_input_token_len_bucket{{model="ensemble",le="+Inf",response_metric_type="total_input_tokens"}} 4
nv_llm_input_token_len_sum{{model="ensemble",response_metric_type="total_input_tokens",version="1"}} 800
nv_llm_input_token_len_count{{model="ensemble",response_metric_type="total_input_tokens",version="1"}} 4
# TYPE nv_trt_llm_request_metrics gauge
nv_trt_llm_request_metrics{{model="tensorrt_llm",request_type="active",version="1"}} 6
nv_trt_llm_request_metrics{{model="tensorrt_llm",request_type="waiting",version="1"}} 1
nv_trt_llm_request_metrics{{model="tensorrt_llm",request_type="max",version="1"}} 64
# TYPE nv_gpu_power_usage gauge
nv_gpu_power_usage{{gpu_uuid="GPU-1"}} 350
"""


async def test_tgi_histogram_sums_are_token_counters(
    serve_text: ServeText, registry: CollectorRegistry
) -> None:
    _, url = await serve_text(TGI)
    collector = make(TgiCollector, registry, scrape_urls=[{"url": url, "labels": POD}])
    try:
        samples = {s.metric: s.value for s in await collector.collect()}
    finally:
        await collector.aclose()
    assert samples == {
        "generation_tokens_total": 420.0,
        "prompt_tokens_total": 96.0,
        "requests_waiting": 2.0,
        "requests_running": 5.0,
    }


async def test_triton_reads_tokens_and_requests_but_not_gpu_power(
    serve_text: ServeText, registry: CollectorRegistry
) -> None:
    endpoint, url = await serve_text(TRITON.format(out=1000))
    collector = make(TritonCollector, registry, scrape_urls=[{"url": url, "labels": POD}])
    try:
        samples = {s.metric: s.value for s in await collector.collect()}
        assert samples == {
            "generation_tokens_total": 1000.0,
            "prompt_tokens_total": 800.0,
            "requests_running": 6.0,
            "requests_waiting": 1.0,
        }
        endpoint.text = TRITON.format(out=1500)
        assert {s.metric: s.value for s in await collector.collect()}["generation_tokens_total"] == 1500.0
    finally:
        await collector.aclose()
