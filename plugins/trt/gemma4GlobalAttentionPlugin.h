// Gemma4GlobalAttention: Gemma-4's global-layer attention (one 512-d KV head shared by all query heads, K = V from
// one projection, proportional RoPE) over TensorRT-LLM 1.2's paged KV cache, as a TensorRT IPluginV3.
//
// Two modes, chosen by the field `draft_mode`:
//   * target (0): K/V of the new tokens are derived from k_raw (V = scale-free RMSNorm, K = RoPE(k_norm)) and
//     written into the cache (write_global_kv), then the new queries attend the cache (attention). One launch
//     serves a mixed batch: context requests (a whole prompt or a chunk after a cached prefix) and generation
//     requests (one token each).
//   * draft (1): read-only. The drafter's queries attend the target's cache of layer `layer_idx` at the positions
//     given per sequence (input q_positions); nothing is written. Also serves the drafter's read of a sliding
//     layer (head_dim 256, several KV heads, sliding_window > 0).
//
// Inputs (research/trtllm_attention.md §4.1; TRT-LLM names, bound by the runtime in transformerBuffers.cpp):
//   target mode                                draft mode
//   0  q               bf16 [T, Hq*D]           0  q               bf16 [T, Hq*D]   (T = batch: one query each)
//   1  k_raw           bf16 [T, D]              1  rope_inv_freq   fp32 [D/2]
//   2  k_norm_weight   fp32 [D]                 2  q_positions     int32 [B]        device
//   3  rope_inv_freq   fp32 [D/2]
//   then, in both modes, the TRT-LLM runtime tensors:
//      sequence_length                  int32 [B]                       device  cache length after this step
//      host_past_key_value_lengths      int32 [B]                       host
//      host_context_lengths             int32 [B]                       host    q length of context requests
//      host_request_types               int32 [B]                       host    0 context, 1 generation
//      kv_cache_block_offsets           int32 [P, B, 2, max_blocks]     device
//      host_kv_cache_pool_pointers      int64 [P, 2]                    host
//      host_kv_cache_pool_mapping       int32 [L, 2]                    host    (pool, layer in pool) per layer
//      host_max_attention_window_sizes  int32 [L]                       host    ring length per layer
// Output: bf16 [T, Hq*D].
//
// The kernels are plugins/kernels/gemma4_attention.cuh (the same launch API the torch binding and its tests use).
#pragma once

#include "pluginCommon.h"

#include <string>
#include <vector>

namespace trt_gemma4 {

struct GlobalAttentionFields
{
    int32_t layerIdx{-1};       // row of host_kv_cache_pool_mapping (the local attention layer index)
    int32_t numQHeads{0};       // query heads on this rank
    int32_t numKvHeads{1};      // real KV heads (1 on global layers)
    int32_t headDim{0};         // 512 on the 12B's global layers
    int32_t kvHeadSize{0};      // the engine's one declared KV head size (256): a head is headDim/kvHeadSize planes
    int32_t tokensPerBlock{32}; // TRT-LLM PluginConfig.tokens_per_block
    int32_t kvCacheDtype{0};    // 0 FP8 E4M3, 1 BF16
    float kScale{1.0F};         // K dequantisation multiplier (quant -> orig)
    float vScale{1.0F};         // V dequantisation multiplier
    float softmaxScale{1.0F};   // Gemma-4: 1.0
    float rmsNormEps{1e-6F};    // of the k/v norms
    int32_t slidingWindow{0};   // 0: full attention (global layers); else the model's window
    int32_t draftMode{0};       // 1: read-only drafter attention
    int32_t maxKvSplits{16};    // bound on flash-decoding splits the workspace is sized for
};

class Gemma4GlobalAttentionPlugin : public nvinfer1::IPluginV3,
                                    public nvinfer1::IPluginV3OneCore,
                                    public nvinfer1::IPluginV3OneBuild,
                                    public nvinfer1::IPluginV3OneRuntime
{
public:
    explicit Gemma4GlobalAttentionPlugin(GlobalAttentionFields const& fields);
    Gemma4GlobalAttentionPlugin(Gemma4GlobalAttentionPlugin const& other);
    Gemma4GlobalAttentionPlugin& operator=(Gemma4GlobalAttentionPlugin const&) = delete;
    ~Gemma4GlobalAttentionPlugin() override = default;

    // Throws PluginError naming the field when the combination cannot work.
    static void validate(GlobalAttentionFields const& f);
    GlobalAttentionFields const& fields() const
    {
        return mFields;
    }
    int32_t numInputs() const;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t getNbOutputs() const noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    void bindFields();
    // Workspace for a batch of `batch` sequences: cu_q_lens plus the split-K buffers of a decode-sized problem.
    size_t workspaceBytes(int32_t batch) const;
    void runEnqueue(nvinfer1::PluginTensorDesc const* inputDesc, void const* const* inputs, void* output,
        void* workspace, cudaStream_t stream);

    GlobalAttentionFields mFields;
    FieldTable mSerialized;
    std::vector<int32_t> mHostCuQLens; // staged for the host -> device copy of each enqueue
};

class Gemma4GlobalAttentionCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    Gemma4GlobalAttentionCreator();

    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // Parses a collection into fields (defaults for missing optional ones) and validates them; throws PluginError.
    static GlobalAttentionFields parse(nvinfer1::PluginFieldCollection const* fc);

private:
    FieldNames mFieldNames;
};

} // namespace trt_gemma4
