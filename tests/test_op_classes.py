"""Op classes a GPU engineer agrees with (llmtop.traces.importers.mapping).

Three tables written by hand: real kernel names (from the fixtures in tests/fixtures, the large Kineto
traces the import benchmark uses, and a B200 vLLM trace) with the class of the work they do; launches
(kernel, launching CPU op, enclosing annotation) for `op_class_for`; and the top kernels by total time
of every real GPU fixture, checked through the importers. For the Kineto fixtures the test also finds
each kernel's launcher in the raw file itself (correlation id -> runtime call -> innermost cpu_op on its
thread) and checks `op_class_for` with it.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from fixture_paths import HTA_A100, MI300X_SGLANG, NSYS_A100

from llmtop.events import OP_CLASS_ID, OP_CLASSES
from llmtop.traces.importers.mapping import op_class_column, op_class_for, op_class_of
from llmtop.traces.open import open_trace

NAMES = [
    # collectives: never "embedding" because of "gather"
    ("ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096ul>)", "comm"),
    ("ncclDevKernel_ReduceScatter_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096ul>)", "comm"),
    ("ncclKernel_AllReduce_RING_LL_Sum_half(ncclWorkElem)", "comm"),
    ("multimem_all_reduce_kernel", "comm"),
    ("void c10d::symmetric_memory::multimem_all_reduce_kernel<c10::BFloat16, 16, 8>(c10::BFloat16*, "
     "unsigned long, unsigned long, unsigned int**, unsigned long, unsigned long)", "comm"),
    ("void vllm::cross_device_reduce_1stage<__nv_bfloat16, 8>(vllm::RankData*, vllm::RankSignals, "
     "vllm::Signal*, __nv_bfloat16*, int, int)", "comm"),
    ("void flashinfer::trtllm_allreduce_fusion::allreduce_fusion_kernel_oneshot_lamport<__nv_bfloat16, 2, "
     "(flashinfer::trtllm_allreduce_fusion::AllReduceFusionPattern)1, true, true>(flashinfer::"
     "trtllm_allreduce_fusion::AllReduceFusionParams<__nv_bfloat16>)", "comm"),
    ("void deep_ep::intranode::dispatch<8, 768, 8192>(int4*, float*, int*, long*)", "comm"),
    # GEMMs: cuBLAS's nvjet, the FP4 MoE GEMM (its fused swiGlu does not make it elementwise), hipBLASLt
    ("nvjet_tst_128x64_64x8_2x1_v_bz_coopA_NNT", "matmul"),
    ("nvjet_hsh_256x128_64x4_1x2_h_bz_coopB_TNT", "matmul"),
    ("bmm_E2m1_E2m1E2m1_Fp32_t128x8x512u2_s4_et128x8_m128x8x64_cga1x1x1_16dp256b_rM_TN_transOut_schedS_bN_"
     "tmaOpt_clmp_swiGlu_dynBatch_sm100a", "matmul"),
    ("bmm_Bfloat16_E2m1E2m1_Fp32_t128x8x512u2_s6_et128x8_m128x8x64_cga1x1x1_16dp256b_rM_TN_transOut_schedS_"
     "bN_tmaOpt_clmp_dynBatch_sm100a", "matmul"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off_"
     "kernel__5x_cublas", "matmul"),
    ("Cijk_Alik_Bljk_BBS_BH_Bias_HA_S_SAV_UserArgs_MT256x32x64_MI16x16x1_SN_LDSB1_AFC1_AFEM1_AFEM1_ASEM1",
     "matmul"),
    ("ampere_sgemm_32x32_sliced1x4_tn", "matmul"),
    ("void cutlass::device_kernel<cutlass::gemm::kernel::GemmUniversal<cute::tuple<int, int, int, int> > >"
     "(cutlass::gemm::kernel::GemmUniversal<>::Params)", "matmul"),
    ("void deep_gemm::sm90_fp8_gemm_1d2d_impl<(deep_gemm::GemmType)0, 128u, 4096u>(unsigned int, unsigned "
     "int, unsigned int, __nv_fp8_e4m3*, float*)", "matmul"),
    ("fused_moe_kernel", "matmul"),
    ("triton_tem_fused_mm_0", "matmul"),
    ("void marlin::Marlin<256, 1, 8, 8, 4, 8>(int4 const*, int4 const*, int4*, int4 const*, int)", "matmul"),
    ("igemm_fwd_gtcx3_nhwc_bf16_bx0_ex1_bt128x128x32_wt32x32x8_ws1x1_wr2x2_ta1x8x2x1_1x4x1x64_tb1x8x2x1",
     "matmul"),
    ("fc-dtype_Float", "matmul"),  # MTIA fully connected
    ("batch_matmul-dtype_Float", "matmul"),
    # MoE routing: no class of its own, so other (not norm for "Renormalize", not sampling for "topk")
    ("void moe::dev::routing::routingRenormalize::routingIndicesClusterKernel<moe::dev::routing::"
     "routingRenormalize::KernelParams<__nv_bfloat16, __nv_bfloat16, 8, false> >(moe::dev::routing::"
     "routingRenormalize::KernelParams<__nv_bfloat16, __nv_bfloat16, 8, false>)", "other"),
    ("void vllm::moe::topkGatingSoftmax<8, 64, 4, 16, int>(float const*, bool const*, float*, int, int*, "
     "int*, int, int, int)", "other"),
    ("void vllm::moe::moe_align_block_size_kernel<int>(int const*, int*, int*, int*, int, int, int, int, "
     "unsigned long, int*)", "other"),
    ("void vllm::moe::count_and_sort_expert_tokens_kernel<int>(int const*, int*, int*, unsigned long)",
     "other"),
    ("void moe::dev::finalize::finalizeKernelVecLoad<moe::dev::finalize::KernelParams<__nv_bfloat16, "
     "__nv_bfloat16> >(moe::dev::finalize::KernelParams<__nv_bfloat16, __nv_bfloat16>)", "other"),
    # attention
    ("fmhaSm100fKernel_QkvE4m3OBfloat16HQk128HV128HVPerCta128PagedKvSparseP32VarSeqQ8Kv128PersistentSwapsAb"
     "ForGen", "attention"),
    ("void flash::flash_fwd_splitkv_kernel<Flash_fwd_kernel_traits<128, 64, 128, 4, false, false, "
     "cutlass::bfloat16_t>, false, false>(flash::Flash_fwd_params)", "attention"),
    ("void flashinfer::BatchDecodeWithPagedKVCacheKernel<(flashinfer::PosEncodingMode)0, 2u, 4u, 8u, 16u, "
     "1u, 8u>(flashinfer::BatchDecodeParams)", "attention"),
    ("void paged_attention_ll4mi_QKV_mfma16_kernel<0, __hip_bfloat16, __hip_bfloat16, "
     "(vllm::Fp8KVCacheDataType)0, 1, 128, 256, false, 4, 1>(__hip_bfloat16 const*)", "attention"),
    ("kernel_unified_attention_2d", "attention"),
    ("attn_fwd", "attention"),  # ROCm flash attention (aten::_flash_attention_forward)
    ("sage_fwd", "attention"),
    # flashinfer's other kernels are not attention because of "flash"
    ("void flashinfer::norm::FusedAddRMSNormKernel<8u, __nv_bfloat16>(__nv_bfloat16*, __nv_bfloat16*, "
     "__nv_bfloat16*, unsigned int, unsigned int, unsigned int, float, float)", "norm"),
    ("void flashinfer::sampling::TopKTopPSamplingFromProbKernel<1024u, (cub::BlockScanAlgorithm)1, "
     "(cub::BlockReduceAlgorithm)2, 4u, false, float, int>(float*, int*, float*)", "sampling"),
    ("void flashinfer::activation::act_and_mul_kernel<__nv_bfloat16, &silu>(__nv_bfloat16*, "
     "__nv_bfloat16 const*, int)", "elementwise"),
    ("void flashinfer::BatchQKApplyRotaryPosIdsCosSinCache<false, 128u, 8u, 16u, __nv_bfloat16, long>"
     "(__nv_bfloat16*, __nv_bfloat16*, float*, long*, unsigned int, unsigned int)", "rope"),
    # norms (not the random-number "normal" kernel, not torch.linalg.vector_norm)
    ("void vllm::fused_add_rms_norm_kernel<c10::BFloat16, 8>(c10::BFloat16*, c10::BFloat16*, "
     "c10::BFloat16 const*, float, int, int)", "norm"),
    ("_ZN5aiter24add_rmsnorm_quant_kernelIDF16bDF16bLi256ELi16ELb1ELb0ELb1ELi1EEEvPT0_PT_PfS4_S4_S4_diiiiiiib",
     "norm"),
    ("void (anonymous namespace)::groupnorm_kernel_dispatch_down<__hip_bfloat16, 1024u>(unsigned int)",
     "norm"),
    ("triton_red_fused_add_addmm_mul_native_layer_norm_split_unsqueeze_view_27", "norm"),
    ("triton_per_fused__to_copy_addmm_mean_pow_view_7", "norm"),  # an RMSNorm's mean of squares
    ("void at::native::(anonymous namespace)::distribution_elementwise_grid_stride_kernel<float, 4, "
     "at::native::templates::cuda::normal_and_transform<c10::BFloat16, float>()>(long)", "elementwise"),
    ("vector_norm_float_order-dtype_Float", "other"),
    # Inductor pointwise kernels that fused a matmul's bias add are not matmuls
    ("triton_poi_fused_addmm_gelu_view_26", "elementwise"),
    ("triton_poi_fused__to_copy_arange_cat_clone_cos_div_expand_mul_pow_reciprocal_select_sin_split_"
     "unsqueeze_view_12", "rope"),
    ("void rotary_embedding_kernel<c10::BFloat16, true>(long const*, c10::BFloat16*, c10::BFloat16*, "
     "c10::BFloat16 const*, int, long, long, long, int, int, int)", "rope"),
    # elementwise
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>, "
     "std::array<char*, 3ul> >(int, at::native::CUDAFunctor_add<float>, std::array<char*, 3ul>)",
     "elementwise"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::(anonymous namespace)::"
     "launch_clamp_scalar(at::TensorIteratorBase&, c10::Scalar, c10::Scalar, at::native::detail::"
     "ClampLimits)::{lambda()#1}::operator()() const::{lambda(float)#1}, at::detail::Array<char*, 2> >"
     "(int, at::detail::Array<char*, 2>)", "elementwise"),
    ("_ZN7sgl_hip10activation18act_and_mul_kernelI14__hip_bfloat16TnPFT_RKS3_EXadL_Z4siluIS2_ES3_S5_EEEEvPS3_",
     "elementwise"),
    ("void tensorrt_llm::kernels::quantize_with_block_size<(tensorrt_llm::BlockScaleQuantizationType)0, "
     "__nv_bfloat16, 16, false>(int, int, int, int, __nv_bfloat16 const*)", "elementwise"),
    ("void cvt_fp16_to_fp4<__nv_bfloat16, false>(int, int, __nv_bfloat16 const*)", "elementwise"),
    ("batched_transpose_32x32_half", "elementwise"),
    ("saxpy(double *, double *, double *, double, int)", "elementwise"),
    ("void (anonymous namespace)::softmax_warp_forward<float, float, float, 9, false, false>(float*)",
     "elementwise"),
    ("divide-dtype_Float", "elementwise"),
    # embedding lookups, copies, sampling
    ("void at::native::(anonymous namespace)::indexSelectLargeIndex<c10::BFloat16, long, unsigned int, 2, 2, "
     "-2, true>(at::cuda::detail::TensorInfo<c10::BFloat16, unsigned int>)", "embedding"),
    ("void at::native::vectorized_gather_kernel<16, long>(char*, char*, long*, int, long, long, long, long, "
     "bool)", "embedding"),
    ("split_eb_bwd_rowwise_adagrad-dtype_Half", "embedding"),
    ("fbgemm::split_embedding_codegen_forward_cpu-dtype_Half", "embedding"),  # fbgemm is no GEMM here
    ("Memcpy HtoD (Pageable -> Device)", "memcpy"),
    ("Memset (Device)", "memcpy"),
    ("dma_request", "memcpy"),
    ("void vllm::reshape_and_cache_flash_kernel<__nv_bfloat16, __nv_bfloat16, (vllm::Fp8KVCacheDataType)0>"
     "(__nv_bfloat16 const*)", "memcpy"),
    ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::ArgMaxOps<float>, "
     "unsigned int, long, 4, 4> >(at::native::ReduceOp<float, at::native::ArgMaxOps<float>, unsigned int, "
     "long, 4, 4>)", "sampling"),
    ("void at::native::(anonymous namespace)::upsample_nearest2d_out_frame<c10::BFloat16>(c10::BFloat16 "
     "const*)", "other"),  # "upsample" is no sampling
    # no class knows these
    ("void at::native::(anonymous namespace)::max_pool_forward_nchw<float, float>(int, float const*)",
     "other"),
    ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::MeanOps<float, float, "
     "float, float>, unsigned int, float, 4, 4> >(at::native::ReduceOp<float>)", "other"),
    ("void fft2d_c2r_32x32<float, false, false, 0u, false, false>(float*, float2 const*, int)", "other"),
]


@pytest.mark.parametrize(("name", "cls"), NAMES, ids=[f"{c}:{n[:50]}" for n, c in NAMES])
def test_kernel_name_table(name: str, cls: str) -> None:
    assert OP_CLASSES[op_class_of(name)] == cls
    assert OP_CLASSES[op_class_for(name)] == cls  # no launcher, no annotation: the name decides


ADD_KERNEL = ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>, "
              "std::array<char*, 3ul> >(int, at::native::CUDAFunctor_add<float>, std::array<char*, 3ul>)")
COPY_KERNEL = ("void at::native::elementwise_kernel_manual_unroll<128, 8, at::native::gpu_kernel_impl_nocast<"
               "at::native::direct_copy_kernel_cuda(at::TensorIteratorBase&)::{lambda()#3}> >(int)")
TOPK_KERNEL = "void at::native::sbtopk::gatherTopK<float, unsigned int, 2, false>(unsigned int)"
LAUNCHES = [
    # what launched the kernel decides first: the layout transform and FFT of a cuDNN convolution
    ("void fft2d_c2r_32x32<float, false, false, 0u, false, false>(float*)", "aten::cudnn_convolution", "",
     "matmul"),
    ("void cudnn::ops::nchwToNhwcKernel<float, float, float, false, true, (cudnnKernelDataType_t)2>(float*)",
     "aten::cudnn_convolution", "", "matmul"),
    (ADD_KERNEL, "aten::mm", "execute_diffusion_1_256x256", "matmul"),
    ("nvjet_tst_128x64_64x8_2x1_v_bz_coopA_NNT", "aten::linear", "nn.Module: LlamaAttention_0", "matmul"),
    (COPY_KERNEL, "vllm::unified_attention_with_output", "", "attention"),
    ("triton_poi_fused_0", "aten::_scaled_dot_product_flash_attention", "", "attention"),
    (ADD_KERNEL, "_C::fused_add_rms_norm", "", "norm"),
    (COPY_KERNEL, "_C::rotary_embedding", "", "rope"),
    (COPY_KERNEL, "c10d::allgather_", "", "comm"),
    (COPY_KERNEL, "record_param_comms", "", "comm"),
    ("void vllm::moe::topkGatingSoftmax<8, 64, 4, 16, int>(float const*)", "_moe_C::topk_softmax", "",
     "other"),
    ("fused_moe_kernel", "vllm::inplace_fused_experts", "", "matmul"),
    # then the annotation or module around the launch: an add inside an RMSNorm is the norm
    (ADD_KERNEL, "aten::add", "nn.Module: LlamaRMSNorm_3", "norm"),
    (ADD_KERNEL, "aten::mul", "nn.Module: LlamaRotaryEmbedding_0", "rope"),
    (TOPK_KERNEL, "aten::topk", "nn.Module: DeepseekV3TopkRouter_0", "other"),
    (ADD_KERNEL, "aten::mul", "nn.Module: SiluAndMul_3", "elementwise"),
    (COPY_KERNEL, "aten::copy_", "model.layers.0.self_attn.qkv_proj: QKVParallelLinear", "matmul"),
    (COPY_KERNEL, "", "MPI_Allreduce", "comm"),
    # step annotations and compiled graphs say nothing: the kernel name decides
    (COPY_KERNEL, "aten::copy_", "execute_context_0(0)_generation_32(32)", "elementwise"),
    ("unknown_kernel", "", "## Call CompiledFxGraph fjs75i4jmhjizyb52gwp7gln7sgi42fcmh5x", "other"),
    ("unknown_kernel", "Torch-Compiled Region: 0/0", "ProfilerStep#3", "other"),
    (TOPK_KERNEL, "aten::topk", "", "sampling"),
    # copies and collectives are what their name says, whoever launched them
    ("Memcpy DtoD (Device -> Device)", "aten::mm", "nn.Module: LlamaRMSNorm_0", "memcpy"),
    ("ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096ul>)", "aten::add", "", "comm"),
    # last, any class the launcher's own name suggests; other only when nothing knows
    ("some_custom_kernel", "aten::add", "", "elementwise"),
    ("void at::native::(anonymous namespace)::max_pool_forward_nchw<float, float>(int)",
     "aten::max_pool2d_with_indices", "", "other"),
]


@pytest.mark.parametrize(("kernel", "launcher", "annotation", "cls"), LAUNCHES,
                         ids=[f"{c}:{lau or ann or k}"[:60] for k, lau, ann, c in LAUNCHES])
def test_launch_table(kernel: str, launcher: str, annotation: str, cls: str) -> None:
    assert OP_CLASSES[op_class_for(kernel, launcher, annotation)] == cls


def test_op_class_column_classifies_each_triple_once() -> None:
    import numpy as np

    names = [ADD_KERNEL, "nvjet_tst_128x64_64x8_2x1_v_bz_coopA_NNT"]
    lau = ["aten::add", "aten::mm"]
    ann = ["nn.Module: LlamaRMSNorm_0"]
    got = op_class_column(names, np.array([0, 0, 1, 0]), lau, np.array([0, 1, 1, -1]), ann,
                          np.array([0, -1, -1, -1]))
    assert [OP_CLASSES[c] for c in got] == ["norm", "matmul", "matmul", "elementwise"]
    assert len(op_class_column(names, np.zeros(0, np.int64))) == 0


# -- every real GPU fixture: its top kernels by total time ----------------------------------------------
# (identifying substring, class, class from the name alone where the launcher decides otherwise)
FIXTURE_TOP: dict[Path, list[tuple[str, str, str | None]]] = {
    HTA_A100: [  # AlexNet forward on an A100: every kernel
        ("Memcpy HtoD (Pageable -> Device)", "memcpy", None),
        ("ampere_sgemm_32x32_sliced1x4_tn", "matmul", None),
        ("cudnn_ampere_scudnn_128x64_relu_xregs_large_nn_v1", "matmul", None),
        ("sm80_xmma_fprop_implicit_gemm_indexed", "matmul", None),
        ("gpu_kernel_impl<at::native::CUDAFunctor_add<float>", "elementwise", None),
        ("launch_clamp_scalar", "elementwise", None),  # ReLU
        ("max_pool_forward_nchw", "other", None),
        ("ampere_gcgemm_64x64_nt", "matmul", None),
        ("fft2d_c2r_32x32", "matmul", "other"),  # an FFT convolution inside aten::cudnn_convolution
        ("nchwToNhwcKernel", "matmul", "elementwise"),  # its layout transform
        ("adaptive_average_pool", "other", None),
        ("fft2d_r2c_32x32<float, false, 5u, true>", "matmul", "other"),
        ("fft2d_r2c_32x32<float, false, 0u, false>", "matmul", "other"),
        ("uniform_and_transform", "elementwise", None),
        ("cublasLtEpilogue_t", "matmul", None),
        ("fused_dropout_kernel_vec", "elementwise", None),
        ("Memset (Device)", "memcpy", None),
        ("computeOffsetsKernel", "matmul", "other"),  # cuDNN's, inside the convolution
    ],
    MI300X_SGLANG: [  # SGLang Qwen3-8B decode on an MI300X (HIP graph replay: no launchers)
        ("MT256x32x64_MI16x16x1", "matmul", None),
        ("paged_attention_ll4mi_QKV_mfma16_kernel", "attention", None),
        ("MT32x32x256_MI16x16x1", "matmul", None),
        ("MT64x32x256_MI16x16x1", "matmul", None),
        ("MT16x32x512_MI16x16x1", "matmul", None),
        ("MT256x48x64_MI16x16x1", "matmul", None),
        ("add_rmsnorm_quant_kernelIDF16bDF16bLi256ELi16ELb1", "norm", None),
        ("manual_unroll<128, 8, at::native::gpu_kernel_impl_nocast<at::native::direct_copy", "elementwise",
         None),
        ("add_rmsnorm_quant_kernelIDF16bDF16bLi64ELi8", "norm", None),
        ("act_and_mul_kernel", "elementwise", None),
        ("rotary_embedding_kernel", "rope", None),
        ("paged_attention_ll4mi_reduce_kernel", "attention", None),
        ("store_kvcache", "memcpy", None),
        ("ArgMaxOps<float>", "sampling", None),
        ("vectorized_gather_kernel", "embedding", None),
        ("Memcpy DtoD", "memcpy", None),
    ],
    NSYS_A100: [  # an MPI saxpy on an A100
        ("Memcpy HtoD", "memcpy", None),
        ("Memcpy DtoH", "memcpy", None),
        ("saxpy(double *, double *, double *, double, int)", "elementwise", None),
    ],
}


def _imported(path: Path) -> tuple[Counter[str], dict[str, set[str]]]:
    """Total ns and op classes per kernel name, as the importer gives them."""
    res = open_trace(path)
    total: Counter[str] = Counter()
    classes: dict[str, set[str]] = defaultdict(set)
    for b in res.batches:
        k = b.kernels
        for n, c, d in zip(k["name"].tolist(), k["op_class"].tolist(), k["dur_ns"].tolist(), strict=True):
            name = res.names[n]
            total[name] += d
            classes[name].add(OP_CLASSES[c])
    return total, classes


def _find(names: list[str], key: str) -> str:
    hits = [n for n in names if key in n]
    assert len(hits) == 1, (key, hits)
    return hits[0]


@pytest.mark.parametrize("path", list(FIXTURE_TOP), ids=lambda p: p.name)
def test_fixture_top_kernels(path: Path) -> None:
    table = FIXTURE_TOP[path]
    total, classes = _imported(path)
    top = [n for n, _ in total.most_common(len(table))]
    assert [_find(top, key) for key, _, _ in table] == top  # the table lists them by total time
    for key, cls, name_only in table:
        name = _find(top, key)
        got = classes[name]
        assert len(got) == 1, (name, got)  # one class per kernel name
        # rows where the launcher decides get their class once the importer passes launchers
        assert got == {cls} or (name_only is not None and got == {name_only}), (key, got)
        assert OP_CLASSES[op_class_of(name)] == (name_only or cls), key


def _kineto_launches(path: Path) -> dict[str, Counter[tuple[str, str]]]:
    """kernel name -> (innermost cpu_op, innermost user_annotation) around its launch -> launches, found
    in the raw file: the kernel's correlation id, the runtime call with it, the ranges on that thread."""
    with gzip.open(path, "rt") as f:
        doc = json.load(f)
    events = [e for e in (doc["traceEvents"] if isinstance(doc, dict) else doc)
              if isinstance(e, dict) and e.get("ph") == "X"]
    runtime = {e["args"]["correlation"]: e for e in events
               if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in (e.get("args") or {})}
    ranges: dict[tuple[object, object, str], list[tuple[float, float, str]]] = defaultdict(list)
    for e in events:
        if e.get("cat") in ("cpu_op", "user_annotation"):
            ranges[(e["pid"], e["tid"], e["cat"])].append((float(e["ts"]), float(e["ts"]) + float(e["dur"]),
                                                            e["name"]))

    def inner(key: tuple[object, object, str], t: float) -> str:
        around = [r for r in ranges.get(key, []) if r[0] <= t < r[1]]
        return max(around, key=lambda r: (r[0], -r[1]))[2] if around else ""

    out: dict[str, Counter[tuple[str, str]]] = defaultdict(Counter)
    for e in events:
        if e.get("cat") != "kernel":
            continue
        rt = runtime.get((e.get("args") or {}).get("correlation"))
        if rt is None:
            out[e["name"]][("", "")] += 1
            continue
        t = float(rt["ts"])
        out[e["name"]][(inner((rt["pid"], rt["tid"], "cpu_op"), t),
                        inner((rt["pid"], rt["tid"], "user_annotation"), t))] += 1
    return out


@pytest.mark.parametrize("path", [HTA_A100, MI300X_SGLANG], ids=lambda p: p.name)
def test_fixture_launchers_give_the_table_class(path: Path) -> None:
    """op_class_for with each top kernel's real launcher and annotation, found in the raw file."""
    launches = _kineto_launches(path)
    for key, cls, _ in FIXTURE_TOP[path]:
        if key.startswith(("Memcpy", "Memset")):
            continue
        name = _find(list(launches), key)
        for (launcher, annotation), _n in launches[name].items():
            assert OP_CLASSES[op_class_for(name, launcher, annotation)] == cls, (key, launcher, annotation)


def test_comm_is_the_last_class() -> None:
    """comm was appended: recorded op class ids of the older classes never move."""
    assert OP_CLASSES[:9] == ("matmul", "attention", "norm", "rope", "elementwise", "embedding", "sampling",
                              "memcpy", "other")
    assert OP_CLASS_ID["comm"] == 9
