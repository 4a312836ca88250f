"""The simulated GPU: Llama-3.1-8B-Instruct (bf16) on one NVIDIA H100 SXM 80GB, SGLang-like.

Every constant is either a published figure or derived from published figures
by the arithmetic shown; ``README.md`` beside this file discusses them. Sources:

[model]  meta-llama/Llama-3.1-8B-Instruct ``config.json`` (Hugging Face): 8.03 B
         parameters, 32 layers, hidden size 4096, 32 attention heads of dim 128,
         8 key/value heads (GQA), 131072 positions.
[h100]   NVIDIA H100 Tensor Core GPU datasheet, SXM5 80 GB: HBM3 3.35 TB/s,
         989 TFLOPS dense BF16 (1979 "with sparsity").
[sglang] SGLang server defaults for this GPU class: ``mem_fraction_static`` 0.88
         at TP 1 (sgl-project/sglang ``benchmark/benchmark_vllm_060/README.md``);
         ``chunked_prefill_size=8192``, ``schedule_policy='fcfs'``, ``page_size=1``
         (the ``server_args`` SGLang logs, e.g. in sgl-project/sglang PR #5813).
[vllm]   vLLM engine arguments: ``--max-num-seqs`` default 256, ``--block-size``
         default 16 (docs.vllm.ai, "Engine Arguments").
[ci]     SGLang's own performance floors for Llama-3.1-8B-Instruct on its H100 CI:
         ``test/srt/test_bench_one_batch.py`` (batch-1 output > 135 tok/s) and
         ``test/srt/test_bench_serving.py`` (1 req/s: median TTFT < 80 ms, median
         ITL < 12 ms; 500 prompts at once: output > 2830 tok/s).
[lambda] LambdaLabsML/vllm-benchmark (vLLM 0.6, 1x H100 SXM):
         ``results/prompt_10/1xH100-80GB-SXM/Meta-Llama-3-8B-Instruct_tp1_len2048.json``,
         10 concurrent ShareGPT prompts: median TPOT 7.56 ms, median TTFT 62 ms.
[runinfra] runinfra.ai, "vLLM vs SGLang vs TensorRT-LLM" (Llama-3.1-8B-Instruct,
         one H100, June 2026): 5,333 output tok/s at saturation (vLLM 0.23).
"""

from __future__ import annotations

MODEL_NAME = "Llama-3.1-8B-Instruct"
GPU_NAME = "H100-SXM-80GB"

# -- the model [model] --------------------------------------------------------------
PARAMS = 8.03e9
LAYERS = 32
HIDDEN = 4096
KV_HEADS = 8
HEAD_DIM = 128
CONTEXT_LENGTH = 131072
WEIGHT_BYTES = PARAMS * 2  # bf16: 16.06 GB
#: K and V, every layer, bf16: 2 * 32 * 8 * 128 * 2 = 131072 bytes (128 KiB) per token.
KV_BYTES_PER_TOKEN = 2 * LAYERS * KV_HEADS * HEAD_DIM * 2

# -- the GPU [h100] ------------------------------------------------------------------
HBM_BYTES_PER_S = 3.35e12
BF16_FLOPS = 989e12
#: nvidia-smi's 81559 MiB.
HBM_CAPACITY_BYTES = 81559 * 2**20

# -- efficiencies (assumed; checked against [ci], [lambda], [runinfra], see README) ------
#: Fraction of peak HBM bandwidth a decode step reaches reading weights and KV.
BANDWIDTH_EFFICIENCY = 0.8
#: Model FLOPs utilisation of a prefill forward pass.
PREFILL_MFU = 0.4

# -- decode: step = DECODE_BASE_S + DECODE_PER_SEQ_S * batch + DECODE_PER_KV_TOKEN_S * KV tokens --
#: Reading all weights once per step: 16.06 GB / (3.35 TB/s * 0.8) = 6.0 ms
#: (batch 1: ~164 tok/s, above [ci]'s 135 tok/s floor).
DECODE_BASE_S = WEIGHT_BYTES / (HBM_BYTES_PER_S * BANDWIDTH_EFFICIENCY)
#: Per running request per step (its share of the GEMMs, attention launch, sampling,
#: scheduling). Fitted: batch 10 at ~500 tokens of context gives 6.9 ms per token
#: ([lambda] measured 7.56 ms), batch 256 gives ~26 ms per step, which with the
#: prefills in between lands at 6-7k output tok/s at saturation ([runinfra] 5.3k, [ci] > 2.8k).
DECODE_PER_SEQ_S = 60e-6
#: Reading one token's KV once per step: 131072 B / (3.35 TB/s * 0.8) = 49 ns.
DECODE_PER_KV_TOKEN_S = KV_BYTES_PER_TOKEN / (HBM_BYTES_PER_S * BANDWIDTH_EFFICIENCY)

# -- prefill: max(DECODE_BASE_S, tokens * PREFILL_PER_TOKEN_S + attention) ----------------
#: 2 * 8.03e9 FLOPs per token / (989 TFLOPS * 0.4) = 40.6 us (~24.6k tok/s); a 1k-token
#: prompt then has a TTFT of ~42 ms, under [ci]'s 80 ms median at 1 req/s.
PREFILL_PER_TOKEN_S = 2 * PARAMS / (BF16_FLOPS * PREFILL_MFU)
#: Causal attention: 4 * HIDDEN * LAYERS FLOPs per token per earlier position.
PREFILL_ATTENTION_S = 4 * HIDDEN * LAYERS / (BF16_FLOPS * PREFILL_MFU)

# -- memory and scheduler limits --------------------------------------------------------
#: [sglang] mem_fraction_static 0.88 of HBM holds weights + KV pool:
#: (85.5 GB * 0.88 - 16.06 GB) / 128 KiB = ~451k tokens.
MEM_FRACTION_STATIC = 0.88
CACHE_TOKENS = int((HBM_CAPACITY_BYTES * MEM_FRACTION_STATIC - WEIGHT_BYTES) / KV_BYTES_PER_TOKEN)
#: [vllm] default max_num_seqs (SGLang derives its limit from the pool size instead).
MAX_RUNNING = 256
#: [sglang] tokens of prompt computed per prefill batch (longer prompts are chunked).
CHUNK_TOKENS = 8192
#: [vllm] prefix-cache block: hashes chain over full 16-token blocks (SGLang's radix
#: tree matches single tokens; this loses at most 15 tokens per request).
BLOCK_TOKENS = 16
#: SGLang's default ``max_new_tokens`` when a request names none.
DEFAULT_MAX_NEW_TOKENS = 128
