// BlockFp8WoGemm plugin. IPluginV3 structure follows TensorRT 10.14
// samples/sampleNonZeroPlugin/sampleNonZeroPlugin.cpp (one class implementing IPluginV3 and the three
// IPluginV3One* capability interfaces); API: include/NvInferRuntime.h (IPluginV3OneBuild, IPluginV3OneRuntime).
#include "blockFp8WoGemmPlugin.h"

#include "../kernels/block_fp8_gemm.cuh"

#include <algorithm>
#include <memory>

using namespace nvinfer1;

namespace trt_gemma4 {
namespace {

constexpr char const* kName = "BlockFp8WoGemm";
constexpr int32_t kX = 0;
constexpr int32_t kW = 1;
constexpr int32_t kS = 2;
constexpr int32_t kNumInputs = 3;
// M values probed one by one when sizing the workspace; above this, every kWorkspaceStride-th M.
constexpr int64_t kWorkspaceExactM = 1 << 14;
constexpr int64_t kWorkspaceStride = 16;

int64_t ceilDiv(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

// Rows of X: the product of all dimensions but the last.
int64_t rowsOf(Dims const& d)
{
    int64_t m = 1;
    for (int32_t i = 0; i + 1 < d.nbDims; ++i)
        m *= d.d[i];
    return m;
}

} // namespace

BlockFp8WoGemmPlugin::BlockFp8WoGemmPlugin(BlockFp8GemmFields const& fields)
    : mFields(fields)
{
    bindFields();
}

BlockFp8WoGemmPlugin::BlockFp8WoGemmPlugin(BlockFp8WoGemmPlugin const& other)
    : mFields(other.mFields) // not the semaphores: only an instance attached to a context allocates its own
{
    bindFields(); // the copied table would point into `other`
}

void BlockFp8WoGemmPlugin::bindFields()
{
    // Names and order: trt_gemma4/plugins.py BLOCK_FP8_GEMM.fields.
    mSerialized.clear();
    mSerialized.add("out_features", &mFields.outFeatures);
    mSerialized.add("in_features", &mFields.inFeatures);
    mSerialized.add("block_size", &mFields.blockSize);
    mSerialized.add("weight_layout_version", &mFields.weightLayoutVersion);
}

void BlockFp8WoGemmPlugin::validate(BlockFp8GemmFields const& f)
{
    // block_fp8_gemm.cuh: N and K multiples of 16, 128x128 blocks, plain [N, K] layout.
    if (f.outFeatures <= 0 || f.outFeatures % 16 != 0)
        fail(kName, ": field 'out_features': expected a positive multiple of 16, found ", f.outFeatures);
    if (f.inFeatures <= 0 || f.inFeatures % 16 != 0)
        fail(kName, ": field 'in_features': expected a positive multiple of 16, found ", f.inFeatures);
    if (f.blockSize != 128)
        fail(kName, ": field 'block_size': expected 128, found ", f.blockSize);
    if (f.weightLayoutVersion != 1)
        fail(kName, ": field 'weight_layout_version': expected 1 ([N, K] row-major), found ", f.weightLayoutVersion);
}

IPluginCapability* BlockFp8WoGemmPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    }
    return nullptr;
}

IPluginV3* BlockFp8WoGemmPlugin::clone() noexcept
{
    try
    {
        return std::make_unique<BlockFp8WoGemmPlugin>(*this).release();
    }
    catch (std::exception const& e)
    {
        logError(std::string(kName) + ": clone: " + e.what());
    }
    return nullptr;
}

char const* BlockFp8WoGemmPlugin::getPluginName() const noexcept
{
    return kName;
}

char const* BlockFp8WoGemmPlugin::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* BlockFp8WoGemmPlugin::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

int32_t BlockFp8WoGemmPlugin::getNbOutputs() const noexcept
{
    return 1;
}

int32_t BlockFp8WoGemmPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const*, int32_t nbOutputs) noexcept
{
    if (nbInputs != kNumInputs || nbOutputs != 1)
    {
        logError(std::string(kName) + ": expected 3 inputs (X, W, S) and 1 output");
        return 1;
    }
    Dims const& x = in[kX].desc.dims;
    Dims const& w = in[kW].desc.dims;
    Dims const& s = in[kS].desc.dims;
    int64_t const n = mFields.outFeatures;
    int64_t const k = mFields.inFeatures;
    bool const xOk = x.nbDims >= 2 && (x.d[x.nbDims - 1] == -1 || x.d[x.nbDims - 1] == k);
    bool const wOk = w.nbDims == 2 && w.d[0] == n && w.d[1] == k;
    bool const sOk = s.nbDims == 2 && s.d[0] == ceilDiv(n, 128) && s.d[1] == ceilDiv(k, 128);
    if (!xOk || !wOk || !sOk)
    {
        logError(std::string(kName) + ": expected X [..., " + std::to_string(k) + "], W [" + std::to_string(n)
            + ", " + std::to_string(k) + "], S [" + std::to_string(ceilDiv(n, 128)) + ", "
            + std::to_string(ceilDiv(k, 128)) + "] (fields out_features/in_features)");
        return 1;
    }
    return 0;
}

int32_t BlockFp8WoGemmPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const*, int32_t) const noexcept
{
    if (nbOutputs != 1)
        return 1;
    outputTypes[0] = DataType::kBF16;
    return 0;
}

int32_t BlockFp8WoGemmPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t,
    DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept
{
    if (nbInputs != kNumInputs || nbOutputs != 1 || inputs[kX].nbDims < 2)
    {
        logError(std::string(kName) + ": getOutputShapes: expected X of rank >= 2 and 3 inputs");
        return 1;
    }
    outputs[0] = inputs[kX];
    outputs[0].d[outputs[0].nbDims - 1] = exprBuilder.constant(mFields.outFeatures);
    return 0;
}

bool BlockFp8WoGemmPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t) noexcept
{
    PluginTensorDesc const& d = inOut[pos].desc;
    if (d.format != TensorFormat::kLINEAR)
        return false;
    if (pos == kX || pos == nbInputs)
        return d.type == DataType::kBF16;
    if (pos == kW)
        return d.type == DataType::kFP8;
    return d.type == DataType::kFLOAT; // S
}

size_t BlockFp8WoGemmPlugin::getWorkspaceSize(
    DynamicPluginTensorDesc const* inputs, int32_t nbInputs, DynamicPluginTensorDesc const*, int32_t) const noexcept
{
    if (nbInputs != kNumInputs)
        return 0;
    // The kernel's split-K choice (and so its workspace) is not monotone in M: a small M may split K where a
    // large one does not. Take the maximum over every M the profile allows.
    int64_t const maxM = rowsOf(inputs[kX].max);
    int32_t const n = mFields.outFeatures;
    int32_t const k = mFields.inFeatures;
    size_t bytes = 0;
    for (int64_t m = 1; m <= maxM; m += (m < kWorkspaceExactM ? 1 : kWorkspaceStride))
        bytes = std::max(bytes, blockFp8WoGemmWorkspace(static_cast<int>(m), n, k));
    return std::max(bytes, blockFp8WoGemmWorkspace(static_cast<int>(std::max<int64_t>(maxM, 1)), n, k));
}

int32_t BlockFp8WoGemmPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const*, int32_t nbOutputs) noexcept
{
    if (nbInputs != kNumInputs || nbOutputs != 1 || in[kX].dims.d[in[kX].dims.nbDims - 1] != mFields.inFeatures)
    {
        logError(std::string(kName) + ": onShapeChange: X's last dimension must be in_features "
            + std::to_string(mFields.inFeatures));
        return 1;
    }
    return 0;
}

int32_t BlockFp8WoGemmPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    int64_t const m = rowsOf(inputDesc[kX].dims);
    if (m == 0)
        return 0;
    int32_t const n = mFields.outFeatures;
    int32_t const k = mFields.inFeatures;
    // The bytes this M needs; getWorkspaceSize allocated the maximum over the profile's M. The split-K choice
    // depends on the GPU's SM count, so this holds on the GPU model the engine was built for (TensorRT engines are
    // specific to it anyway); a GPU with more SMs could need more than was allocated for some M.
    size_t const wsBytes = blockFp8WoGemmWorkspace(static_cast<int>(m), n, k);
    cudaError_t const status = blockFp8WoGemm(static_cast<__nv_bfloat16 const*>(inputs[kX]),
        static_cast<__nv_fp8_e4m3 const*>(inputs[kW]), static_cast<float const*>(inputs[kS]),
        static_cast<__nv_bfloat16*>(outputs[0]), static_cast<int>(m), n, k, workspace, wsBytes, stream,
        mSemaphores.get());
    return checkLaunch(kName, "blockFp8WoGemm", status);
}

IPluginV3* BlockFp8WoGemmPlugin::attachToContext(IPluginResourceContext*) noexcept
{
    auto* attached = static_cast<BlockFp8WoGemmPlugin*>(clone());
    if (attached != nullptr)
        attached->allocateSemaphores(); // this context's own buffer, never shared with another context
    return attached;
}

void BlockFp8WoGemmPlugin::allocateSemaphores() noexcept
{
    mSemaphores.reset();
    int* buffer = nullptr;
    size_t const bytes = sizeof(int) * kBlockFp8GemmSemaphores;
    // Zeroed once here, on a private stream that is waited for (no legacy-stream or device-wide synchronization), so
    // the zeros are complete before any enqueue; each GEMM leaves them zero.
    cudaStream_t zeroing = nullptr;
    bool ok = cudaMalloc(&buffer, bytes) == cudaSuccess
        && cudaStreamCreateWithFlags(&zeroing, cudaStreamNonBlocking) == cudaSuccess
        && cudaMemsetAsync(buffer, 0, bytes, zeroing) == cudaSuccess && cudaStreamSynchronize(zeroing) == cudaSuccess;
    if (zeroing != nullptr)
        ok = cudaStreamDestroy(zeroing) == cudaSuccess && ok;
    if (!ok)
    {
        if (buffer != nullptr)
            cudaFree(buffer);
        (void) cudaGetLastError();
        logError(std::string(kName) + ": attachToContext: could not allocate " + std::to_string(bytes)
            + " bytes of GEMM semaphores; stream-K GEMMs zero their flags with a memset instead");
        return;
    }
    try
    {
        mSemaphores = std::shared_ptr<int>(buffer, [](int* p) { cudaFree(p); });
    }
    catch (std::exception const&)
    {
        cudaFree(buffer);
    }
}

PluginFieldCollection const* BlockFp8WoGemmPlugin::getFieldsToSerialize() noexcept
{
    return mSerialized.collection();
}

// ---- creator ------------------------------------------------------------------------------------------------

BlockFp8WoGemmCreator::BlockFp8WoGemmCreator()
{
    mFieldNames.add("out_features", PluginFieldType::kINT32);
    mFieldNames.add("in_features", PluginFieldType::kINT32);
    mFieldNames.add("block_size", PluginFieldType::kINT32);
    mFieldNames.add("weight_layout_version", PluginFieldType::kINT32);
}

BlockFp8GemmFields BlockFp8WoGemmCreator::parse(PluginFieldCollection const* fc)
{
    BlockFp8GemmFields f;
    readField(kName, fc, "out_features", f.outFeatures, true);
    readField(kName, fc, "in_features", f.inFeatures, true);
    readField(kName, fc, "block_size", f.blockSize, false);
    readField(kName, fc, "weight_layout_version", f.weightLayoutVersion, false);
    BlockFp8WoGemmPlugin::validate(f);
    return f;
}

IPluginV3* BlockFp8WoGemmCreator::createPlugin(char const*, PluginFieldCollection const* fc, TensorRTPhase) noexcept
{
    // Same fields in both phases: at kRUNTIME TensorRT passes what getFieldsToSerialize() returned.
    try
    {
        return std::make_unique<BlockFp8WoGemmPlugin>(parse(fc)).release();
    }
    catch (std::exception const& e)
    {
        logError(e.what());
    }
    return nullptr;
}

PluginFieldCollection const* BlockFp8WoGemmCreator::getFieldNames() noexcept
{
    return mFieldNames.collection();
}

char const* BlockFp8WoGemmCreator::getPluginName() const noexcept
{
    return kName;
}

char const* BlockFp8WoGemmCreator::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* BlockFp8WoGemmCreator::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

} // namespace trt_gemma4
