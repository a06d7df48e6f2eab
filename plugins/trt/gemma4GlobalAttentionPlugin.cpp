// Gemma4GlobalAttention plugin. IPluginV3 structure follows TensorRT 10.14
// samples/sampleNonZeroPlugin/sampleNonZeroPlugin.cpp (one class implementing IPluginV3 and the three
// IPluginV3One* capability interfaces); the KV-cache inputs and their host-side reading follow TRT-LLM 1.2
// cpp/tensorrt_llm/plugins/gptAttentionPlugin/gptAttentionPlugin.cpp (enqueueSome), summarised in
// research/trtllm_attention.md §4.1-§4.2.
#include "gemma4GlobalAttentionPlugin.h"

#include "../kernels/gemma4_attention.cuh"

#include <algorithm>
#include <memory>

using namespace nvinfer1;

namespace trt_gemma4 {
namespace {

constexpr char const* kName = "Gemma4GlobalAttention";

// Positions of the inputs. Target mode has k_raw and k_norm_weight; draft mode has q_positions instead.
struct InputIndex
{
    int32_t q{0};
    int32_t kRaw{-1};
    int32_t kNormWeight{-1};
    int32_t ropeInvFreq{-1};
    int32_t qPositions{-1};
    int32_t sequenceLength{-1};
    int32_t hostPastKvLengths{-1};
    int32_t hostContextLengths{-1};
    int32_t hostRequestTypes{-1};
    int32_t blockOffsets{-1};
    int32_t hostPoolPointers{-1};
    int32_t hostPoolMapping{-1};
    int32_t hostMaxWindows{-1};
    int32_t count{0};
};

InputIndex inputIndex(bool draft)
{
    InputIndex ix;
    int32_t next = 1;
    if (draft)
    {
        ix.ropeInvFreq = next++;
        ix.qPositions = next++;
    }
    else
    {
        ix.kRaw = next++;
        ix.kNormWeight = next++;
        ix.ropeInvFreq = next++;
    }
    ix.sequenceLength = next++;
    ix.hostPastKvLengths = next++;
    ix.hostContextLengths = next++;
    ix.hostRequestTypes = next++;
    ix.blockOffsets = next++;
    ix.hostPoolPointers = next++;
    ix.hostPoolMapping = next++;
    ix.hostMaxWindows = next++;
    ix.count = next;
    return ix;
}

// TRT-LLM's RequestType (cpp/include/tensorrt_llm/runtime/requestType.h): kCONTEXT = 0, kGENERATION = 1.
constexpr int32_t kRequestContext = 0;
constexpr int32_t kRequestGeneration = 1;

constexpr size_t kAlign = 256;

size_t alignUp(size_t bytes)
{
    return (bytes + kAlign - 1) / kAlign * kAlign;
}

bool isPowerOfTwo(int32_t v)
{
    return v > 0 && (v & (v - 1)) == 0;
}

AttentionProblem problemShape(GlobalAttentionFields const& f)
{
    AttentionProblem p;
    p.num_q_heads = f.numQHeads;
    p.num_kv_heads = f.numKvHeads;
    p.head_dim = f.headDim;
    p.scale = f.softmaxScale;
    p.window = f.slidingWindow;
    p.kv.pool_heads = f.numKvHeads * f.headDim / f.kvHeadSize;
    p.kv.head_size = f.kvHeadSize;
    p.kv.tokens_per_block = f.tokensPerBlock;
    p.kv.dtype = f.kvCacheDtype == 0 ? KvDtype::kFp8E4M3 : KvDtype::kBf16;
    p.kv.k_scale = f.kScale;
    p.kv.v_scale = f.vScale;
    return p;
}

} // namespace

// ---- plugin -------------------------------------------------------------------------------------------------

Gemma4GlobalAttentionPlugin::Gemma4GlobalAttentionPlugin(GlobalAttentionFields const& fields)
    : mFields(fields)
{
    bindFields();
}

Gemma4GlobalAttentionPlugin::Gemma4GlobalAttentionPlugin(Gemma4GlobalAttentionPlugin const& other)
    : mFields(other.mFields)
{
    bindFields(); // the copied table would point into `other`
}

void Gemma4GlobalAttentionPlugin::bindFields()
{
    // Names and order: trt_gemma4/plugins.py GLOBAL_ATTENTION.fields.
    mSerialized.clear();
    mSerialized.add("layer_idx", &mFields.layerIdx);
    mSerialized.add("num_q_heads", &mFields.numQHeads);
    mSerialized.add("num_kv_heads", &mFields.numKvHeads);
    mSerialized.add("head_dim", &mFields.headDim);
    mSerialized.add("kv_head_size", &mFields.kvHeadSize);
    mSerialized.add("tokens_per_block", &mFields.tokensPerBlock);
    mSerialized.add("kv_cache_dtype", &mFields.kvCacheDtype);
    mSerialized.add("k_scale", &mFields.kScale);
    mSerialized.add("v_scale", &mFields.vScale);
    mSerialized.add("softmax_scale", &mFields.softmaxScale);
    mSerialized.add("rms_norm_eps", &mFields.rmsNormEps);
    mSerialized.add("sliding_window", &mFields.slidingWindow);
    mSerialized.add("draft_mode", &mFields.draftMode);
    mSerialized.add("max_kv_splits", &mFields.maxKvSplits);
}

void Gemma4GlobalAttentionPlugin::validate(GlobalAttentionFields const& f)
{
    if (f.layerIdx < 0)
        fail(kName, ": field 'layer_idx': expected >= 0, found ", f.layerIdx);
    if (f.numQHeads <= 0 || f.numKvHeads <= 0 || f.numQHeads % f.numKvHeads != 0)
        fail(kName, ": fields 'num_q_heads' ", f.numQHeads, " / 'num_kv_heads' ", f.numKvHeads,
            ": expected positive with num_q_heads a multiple of num_kv_heads");
    if (f.headDim != 64 && f.headDim != 128 && f.headDim != 256 && f.headDim != 512)
        fail(kName, ": field 'head_dim': expected 64, 128, 256 or 512 (the kernel's instantiations), found ",
            f.headDim);
    if (f.kvHeadSize <= 0 || f.headDim % f.kvHeadSize != 0)
        fail(kName, ": field 'kv_head_size': expected a divisor of head_dim ", f.headDim, ", found ", f.kvHeadSize);
    if (!isPowerOfTwo(f.tokensPerBlock))
        fail(kName, ": field 'tokens_per_block': expected a power of two (TRT-LLM KVBlockArray), found ",
            f.tokensPerBlock);
    if (f.kvCacheDtype != 0 && f.kvCacheDtype != 1)
        fail(kName, ": field 'kv_cache_dtype': expected 0 (fp8) or 1 (bf16), found ", f.kvCacheDtype);
    if (!(f.kScale > 0.0F) || !(f.vScale > 0.0F))
        fail(kName, ": fields 'k_scale'/'v_scale': expected > 0, found ", f.kScale, "/", f.vScale);
    if (!(f.rmsNormEps > 0.0F))
        fail(kName, ": field 'rms_norm_eps': expected > 0, found ", f.rmsNormEps);
    if (f.slidingWindow < 0)
        fail(kName, ": field 'sliding_window': expected >= 0, found ", f.slidingWindow);
    if (f.draftMode != 0 && f.draftMode != 1)
        fail(kName, ": field 'draft_mode': expected 0 or 1, found ", f.draftMode);
    if (f.draftMode == 0 && f.numKvHeads != 1)
        fail(kName, ": field 'num_kv_heads': target mode writes one global KV head, found ", f.numKvHeads);
    if (f.maxKvSplits < 1)
        fail(kName, ": field 'max_kv_splits': expected >= 1, found ", f.maxKvSplits);
}

int32_t Gemma4GlobalAttentionPlugin::numInputs() const
{
    return inputIndex(mFields.draftMode != 0).count;
}

IPluginCapability* Gemma4GlobalAttentionPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    }
    return nullptr;
}

IPluginV3* Gemma4GlobalAttentionPlugin::clone() noexcept
{
    try
    {
        return std::make_unique<Gemma4GlobalAttentionPlugin>(*this).release();
    }
    catch (std::exception const& e)
    {
        logError(std::string(kName) + ": clone: " + e.what());
    }
    return nullptr;
}

char const* Gemma4GlobalAttentionPlugin::getPluginName() const noexcept
{
    return kName;
}

char const* Gemma4GlobalAttentionPlugin::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* Gemma4GlobalAttentionPlugin::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

int32_t Gemma4GlobalAttentionPlugin::getNbOutputs() const noexcept
{
    return 1;
}

int32_t Gemma4GlobalAttentionPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const*, int32_t nbOutputs) noexcept
{
    InputIndex const ix = inputIndex(mFields.draftMode != 0);
    if (nbInputs != ix.count || nbOutputs != 1)
    {
        logError(std::string(kName) + ": expected " + std::to_string(ix.count) + " inputs and 1 output, found "
            + std::to_string(nbInputs) + " and " + std::to_string(nbOutputs));
        return 1;
    }
    int64_t const qWidth = static_cast<int64_t>(mFields.numQHeads) * mFields.headDim;
    if (in[ix.q].desc.dims.nbDims != 2 || (in[ix.q].desc.dims.d[1] != -1 && in[ix.q].desc.dims.d[1] != qWidth))
    {
        logError(std::string(kName) + ": input 'q': expected [tokens, " + std::to_string(qWidth) + "]");
        return 1;
    }
    return 0;
}

int32_t Gemma4GlobalAttentionPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const*, int32_t) const noexcept
{
    if (nbOutputs != 1)
        return 1;
    outputTypes[0] = DataType::kBF16;
    return 0;
}

int32_t Gemma4GlobalAttentionPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*,
    int32_t, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder&) noexcept
{
    InputIndex const ix = inputIndex(mFields.draftMode != 0);
    if (nbInputs != ix.count || nbOutputs != 1 || inputs[ix.q].nbDims != 2)
    {
        logError(std::string(kName) + ": getOutputShapes: expected " + std::to_string(ix.count)
            + " inputs with a 2-D q, found " + std::to_string(nbInputs));
        return 1;
    }
    outputs[0] = inputs[ix.q]; // [tokens, num_q_heads * head_dim]
    return 0;
}

bool Gemma4GlobalAttentionPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t) noexcept
{
    InputIndex const ix = inputIndex(mFields.draftMode != 0);
    PluginTensorDesc const& d = inOut[pos].desc;
    if (d.format != TensorFormat::kLINEAR)
        return false;
    if (pos == nbInputs || pos == ix.q || pos == ix.kRaw)
        return d.type == DataType::kBF16;
    if (pos == ix.kNormWeight || pos == ix.ropeInvFreq)
        return d.type == DataType::kFLOAT;
    if (pos == ix.hostPoolPointers)
        return d.type == DataType::kINT64;
    return d.type == DataType::kINT32;
}

size_t Gemma4GlobalAttentionPlugin::workspaceBytes(int32_t batch) const
{
    // Split-K buffers sized for a decode step (one query per sequence); attention() lowers the split count for
    // larger token counts to what fits (gemma4_attention.cuh), and the bytes grow with the batch, so the figure
    // for the run's batch never exceeds the one for the profile's largest batch that TensorRT allocated.
    AttentionProblem p = problemShape(mFields);
    p.tokens.batch = batch;
    p.tokens.num_tokens = batch;
    return alignUp(sizeof(int32_t) * (static_cast<size_t>(batch) + 1))
        + alignUp(attention_workspace_bytes(p, mFields.maxKvSplits));
}

size_t Gemma4GlobalAttentionPlugin::getWorkspaceSize(
    DynamicPluginTensorDesc const* inputs, int32_t nbInputs, DynamicPluginTensorDesc const*, int32_t) const noexcept
{
    InputIndex const ix = inputIndex(mFields.draftMode != 0);
    if (nbInputs != ix.count)
        return 0;
    auto const maxBatch = static_cast<int32_t>(inputs[ix.sequenceLength].max.d[0]);
    return workspaceBytes(std::max(maxBatch, 1));
}

int32_t Gemma4GlobalAttentionPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const*, int32_t nbOutputs) noexcept
{
    InputIndex const ix = inputIndex(mFields.draftMode != 0);
    if (nbInputs != ix.count || nbOutputs != 1)
        return 1;
    mHostCuQLens.reserve(static_cast<size_t>(in[ix.sequenceLength].dims.d[0]) + 1);
    return 0;
}

void Gemma4GlobalAttentionPlugin::runEnqueue(
    PluginTensorDesc const* inputDesc, void const* const* inputs, void* output, void* workspace, cudaStream_t stream)
{
    InputIndex const ix = inputIndex(mFields.draftMode != 0);
    bool const draft = mFields.draftMode != 0;
    auto const batch = static_cast<int32_t>(inputDesc[ix.sequenceLength].dims.d[0]);
    auto const numTokens = static_cast<int32_t>(inputDesc[ix.q].dims.d[0]);
    auto const numLayers = static_cast<int32_t>(inputDesc[ix.hostPoolMapping].dims.d[0]);
    auto const numPools = static_cast<int32_t>(inputDesc[ix.hostPoolPointers].dims.d[0]);
    Dims const& offDims = inputDesc[ix.blockOffsets].dims; // [pools, batch*beam, 2, max_blocks_per_seq]
    if (mFields.layerIdx >= numLayers)
        fail(kName, ": field 'layer_idx' ", mFields.layerIdx, " is outside host_kv_cache_pool_mapping (", numLayers,
            " layers)");
    if (offDims.nbDims != 4 || offDims.d[2] != 2)
        fail(kName, ": input 'kv_cache_block_offsets': expected [pools, batch, 2, max_blocks]");

    // Host side, as gptAttentionPlugin's enqueue does: which pool, which layer in it, which window.
    auto const* mapping = static_cast<int32_t const*>(inputs[ix.hostPoolMapping]);
    int32_t const pool = mapping[mFields.layerIdx * 2];
    int32_t const layerInPool = mapping[mFields.layerIdx * 2 + 1];
    if (pool < 0 || pool >= numPools)
        fail(kName, ": host_kv_cache_pool_mapping gives pool ", pool, " for layer ", mFields.layerIdx, "; ",
            numPools, " pools exist");
    auto const* poolPointers = static_cast<int64_t const*>(inputs[ix.hostPoolPointers]);
    auto const* windows = static_cast<int32_t const*>(inputs[ix.hostMaxWindows]);
    auto const* requestTypes = static_cast<int32_t const*>(inputs[ix.hostRequestTypes]);
    auto const* contextLengths = static_cast<int32_t const*>(inputs[ix.hostContextLengths]);
    auto const* pastLengths = static_cast<int32_t const*>(inputs[ix.hostPastKvLengths]);

    // Packed rows: context requests first (TRT-LLM orders them so), a context request contributes its chunk,
    // a generation request one token; the drafter asks one query per sequence.
    mHostCuQLens.assign(static_cast<size_t>(batch) + 1, 0);
    int32_t maxQ = 0;
    int32_t maxKv = 0;
    int64_t sumKv = 0;
    for (int32_t b = 0; b < batch; ++b)
    {
        int32_t qLen = 1;
        if (!draft && requestTypes[b] == kRequestContext)
            qLen = contextLengths[b];
        else if (!draft && requestTypes[b] != kRequestGeneration)
            fail(kName, ": host_request_types[", b, "] = ", requestTypes[b], ": expected 0 or 1");
        mHostCuQLens[b + 1] = mHostCuQLens[b] + qLen;
        // An upper bound of the cache length (host_past_key_value_lengths may or may not count this step's
        // token in generation); used only to size the grid.
        int32_t const kvBound = pastLengths[b] + qLen;
        maxQ = std::max(maxQ, qLen);
        maxKv = std::max(maxKv, kvBound);
        sumKv += kvBound;
    }
    if (mHostCuQLens[batch] != numTokens)
        fail(kName, ": the requests' query lengths add up to ", mHostCuQLens[batch], " tokens, q has ", numTokens,
            draft ? " (draft mode: one query per sequence)"
                  : " (speculative verification with several tokens per generation request is not supported)");

    auto* ws = static_cast<uint8_t*>(workspace);
    auto* cuQLens = reinterpret_cast<int32_t*>(ws);
    void* attnWorkspace = ws + alignUp(sizeof(int32_t) * (static_cast<size_t>(batch) + 1));
    size_t const attnWorkspaceBytes = workspaceBytes(batch) - alignUp(sizeof(int32_t) * (static_cast<size_t>(batch) + 1));
    // Pageable source: the copy is staged before cudaMemcpyAsync returns, so mHostCuQLens may be reused.
    cudaError_t status = cudaMemcpyAsync(
        cuQLens, mHostCuQLens.data(), sizeof(int32_t) * (batch + 1), cudaMemcpyHostToDevice, stream);
    if (status != cudaSuccess)
        fail(kName, ": copying cu_q_lens: ", cudaGetErrorString(status));

    AttentionProblem p = problemShape(mFields);
    auto const maxBlocks = static_cast<int32_t>(offDims.d[3]);
    auto const* offsets = static_cast<int32_t const*>(inputs[ix.blockOffsets]);
    p.kv.pool = reinterpret_cast<void*>(static_cast<uintptr_t>(poolPointers[pool * 2])); // primary pool
    p.kv.block_offsets = offsets + static_cast<int64_t>(pool) * offDims.d[1] * 2 * maxBlocks;
    p.kv.max_blocks_per_seq = maxBlocks;
    p.kv.layer_in_pool = layerInPool;
    // The ring length TRT-LLM's KVBlockArray uses (cyclic_attention_window_size); for a global layer it is the
    // whole sequence, so the ring never wraps.
    p.kv.cyclic_len = windows[mFields.layerIdx];
    p.tokens.batch = batch;
    p.tokens.num_tokens = numTokens;
    p.tokens.cu_q_lens = cuQLens;
    p.tokens.kv_lens = static_cast<int32_t const*>(inputs[ix.sequenceLength]);
    p.tokens.max_q_len = maxQ;
    p.tokens.max_kv_len = maxKv;
    p.tokens.sum_kv_len = sumKv;
    p.rope_inv_freq = static_cast<float const*>(inputs[ix.ropeInvFreq]);
    if (draft)
        p.q_positions = static_cast<int32_t const*>(inputs[ix.qPositions]);

    if (!draft)
    {
        status = write_global_kv(p.kv, p.tokens, mFields.headDim, inputs[ix.kRaw],
            static_cast<float const*>(inputs[ix.kNormWeight]), p.rope_inv_freq, mFields.rmsNormEps, stream);
        if (status != cudaSuccess)
            fail(kName, ": write_global_kv: ", cudaGetErrorString(status));
    }
    status = attention(p, inputs[ix.q], output, attnWorkspace, attnWorkspaceBytes, stream);
    if (status != cudaSuccess)
        fail(kName, ": attention: ", cudaGetErrorString(status));
}

int32_t Gemma4GlobalAttentionPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    try
    {
        runEnqueue(inputDesc, inputs, outputs[0], workspace, stream);
        return 0;
    }
    catch (std::exception const& e)
    {
        logError(std::string(e.what()) + " (layer " + std::to_string(mFields.layerIdx) + ")");
    }
    return 1;
}

IPluginV3* Gemma4GlobalAttentionPlugin::attachToContext(IPluginResourceContext*) noexcept
{
    return clone(); // no per-context resources
}

PluginFieldCollection const* Gemma4GlobalAttentionPlugin::getFieldsToSerialize() noexcept
{
    return mSerialized.collection();
}

// ---- creator ------------------------------------------------------------------------------------------------

Gemma4GlobalAttentionCreator::Gemma4GlobalAttentionCreator()
{
    mFieldNames.add("layer_idx", PluginFieldType::kINT32);
    mFieldNames.add("num_q_heads", PluginFieldType::kINT32);
    mFieldNames.add("num_kv_heads", PluginFieldType::kINT32);
    mFieldNames.add("head_dim", PluginFieldType::kINT32);
    mFieldNames.add("kv_head_size", PluginFieldType::kINT32);
    mFieldNames.add("tokens_per_block", PluginFieldType::kINT32);
    mFieldNames.add("kv_cache_dtype", PluginFieldType::kINT32);
    mFieldNames.add("k_scale", PluginFieldType::kFLOAT32);
    mFieldNames.add("v_scale", PluginFieldType::kFLOAT32);
    mFieldNames.add("softmax_scale", PluginFieldType::kFLOAT32);
    mFieldNames.add("rms_norm_eps", PluginFieldType::kFLOAT32);
    mFieldNames.add("sliding_window", PluginFieldType::kINT32);
    mFieldNames.add("draft_mode", PluginFieldType::kINT32);
    mFieldNames.add("max_kv_splits", PluginFieldType::kINT32);
}

GlobalAttentionFields Gemma4GlobalAttentionCreator::parse(PluginFieldCollection const* fc)
{
    GlobalAttentionFields f;
    readField(kName, fc, "layer_idx", f.layerIdx, true);
    readField(kName, fc, "num_q_heads", f.numQHeads, true);
    readField(kName, fc, "num_kv_heads", f.numKvHeads, false);
    readField(kName, fc, "head_dim", f.headDim, true);
    readField(kName, fc, "kv_head_size", f.kvHeadSize, true);
    readField(kName, fc, "tokens_per_block", f.tokensPerBlock, false);
    readField(kName, fc, "kv_cache_dtype", f.kvCacheDtype, false);
    readField(kName, fc, "k_scale", f.kScale, false);
    readField(kName, fc, "v_scale", f.vScale, false);
    readField(kName, fc, "softmax_scale", f.softmaxScale, false);
    readField(kName, fc, "rms_norm_eps", f.rmsNormEps, false);
    readField(kName, fc, "sliding_window", f.slidingWindow, false);
    readField(kName, fc, "draft_mode", f.draftMode, false);
    readField(kName, fc, "max_kv_splits", f.maxKvSplits, false);
    Gemma4GlobalAttentionPlugin::validate(f);
    return f;
}

IPluginV3* Gemma4GlobalAttentionCreator::createPlugin(
    char const*, PluginFieldCollection const* fc, TensorRTPhase) noexcept
{
    // Same fields in both phases: at kRUNTIME TensorRT passes what getFieldsToSerialize() returned.
    try
    {
        return std::make_unique<Gemma4GlobalAttentionPlugin>(parse(fc)).release();
    }
    catch (std::exception const& e)
    {
        logError(e.what());
    }
    return nullptr;
}

PluginFieldCollection const* Gemma4GlobalAttentionCreator::getFieldNames() noexcept
{
    return mFieldNames.collection();
}

char const* Gemma4GlobalAttentionCreator::getPluginName() const noexcept
{
    return kName;
}

char const* Gemma4GlobalAttentionCreator::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* Gemma4GlobalAttentionCreator::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

} // namespace trt_gemma4
