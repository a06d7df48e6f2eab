// BlockFp8WoGemm: Y[M, N] bf16 = X[M, K] bf16 · dequant(W[N, K] fp8 e4m3, S[⌈N/128⌉, ⌈K/128⌉] fp32)ᵀ with FP32
// accumulation, as a TensorRT IPluginV3 (DESIGN.md "Plugins"). X may carry leading dimensions ([..., K]); they are
// flattened into M. W and S are the checkpoint's tensors in their plain layout (weight_layout_version 1).
//
// Inputs: 0 X bf16 [..., K]; 1 W fp8 [N, K]; 2 S fp32 [⌈N/128⌉, ⌈K/128⌉]. Output: Y bf16 [..., N].
// The kernel is plugins/kernels/block_fp8_gemm.cuh (blockFp8WoGemm, the launch the torch op and its tests use).
#pragma once

#include "pluginCommon.h"

#include <memory>

namespace trt_gemma4 {

struct BlockFp8GemmFields
{
    int32_t outFeatures{0};         // N
    int32_t inFeatures{0};          // K
    int32_t blockSize{128};         // weight block edge; the kernel implements 128
    int32_t weightLayoutVersion{1}; // 1: W as [N, K] row-major, the checkpoint's own layout
};

class BlockFp8WoGemmPlugin : public nvinfer1::IPluginV3,
                             public nvinfer1::IPluginV3OneCore,
                             public nvinfer1::IPluginV3OneBuild,
                             public nvinfer1::IPluginV3OneRuntime
{
public:
    explicit BlockFp8WoGemmPlugin(BlockFp8GemmFields const& fields);
    BlockFp8WoGemmPlugin(BlockFp8WoGemmPlugin const& other);
    BlockFp8WoGemmPlugin& operator=(BlockFp8WoGemmPlugin const&) = delete;
    ~BlockFp8WoGemmPlugin() override = default;

    // Throws PluginError naming the field when the combination cannot work.
    static void validate(BlockFp8GemmFields const& f);
    BlockFp8GemmFields const& fields() const
    {
        return mFields;
    }

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
    void allocateSemaphores() noexcept;

    BlockFp8GemmFields mFields;
    FieldTable mSerialized;
    // The GEMM's semaphores (block_fp8_gemm.cuh: zeroed once, left zero by every call), one buffer per plugin
    // instance attached to an execution context (never copied to a clone), so layers that TensorRT runs concurrently
    // never share one. Empty
    // (nullptr) until attachToContext, and if the allocation fails: stream-K then zeroes its flags with a memset.
    std::shared_ptr<int> mSemaphores;
};

class BlockFp8WoGemmCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    BlockFp8WoGemmCreator();

    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // Parses a collection into fields (defaults for missing optional ones) and validates them; throws PluginError.
    static BlockFp8GemmFields parse(nvinfer1::PluginFieldCollection const* fc);

private:
    FieldNames mFieldNames;
};

} // namespace trt_gemma4
