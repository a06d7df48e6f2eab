// Shared pieces of the trt_gemma4 TensorRT plugins: the plugin namespace and version, logging through the logger
// TensorRT hands the library, and typed access to PluginFieldCollection entries.
//
// API followed: TensorRT 10.14 include/NvInferPluginBase.h (PluginField, PluginFieldCollection, PluginFieldType)
// and include/NvInferRuntime.h (ILoggerFinder, IPluginV3One*). The field schema each plugin reads and writes is
// mirrored as data in trt_gemma4/plugins.py, which the Python TRT-LLM backend uses to create the plugins; the test
// tests/test_plugin_fields.py checks the two agree.
#pragma once

#include <NvInferRuntime.h>

#include <cstdint>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

namespace trt_gemma4 {

// Plugin namespace in TensorRT's registry (IPluginCreatorV3One::getPluginNamespace) and the one version string.
constexpr char const* kPluginNamespace = "trt_gemma4";
constexpr char const* kPluginVersion = "1";

// Logs through the ILogger TensorRT gave the library (setLoggerFinder, NvInferRuntime.h ILoggerFinder); falls
// back to stderr when the library was loaded without one (e.g. LD_PRELOAD into a server process).
void logMessage(nvinfer1::ILogger::Severity severity, std::string const& message) noexcept;
void setLoggerFinderImpl(nvinfer1::ILoggerFinder* finder) noexcept;

inline void logError(std::string const& message) noexcept
{
    logMessage(nvinfer1::ILogger::Severity::kERROR, message);
}

// A plugin-level error with a message naming the plugin, the field or tensor, the expected and the found value.
// Thrown inside the plugin, caught at every noexcept TensorRT entry point and logged there.
class PluginError : public std::exception
{
public:
    explicit PluginError(std::string message)
        : mMessage(std::move(message))
    {
    }
    char const* what() const noexcept override
    {
        return mMessage.c_str();
    }

private:
    std::string mMessage;
};

template <typename... Args>
[[noreturn]] void fail(Args const&... parts)
{
    std::ostringstream os;
    (os << ... << parts);
    throw PluginError(os.str());
}

// PluginFieldType of a C++ field value type.
template <typename T>
constexpr nvinfer1::PluginFieldType fieldType();
template <>
constexpr nvinfer1::PluginFieldType fieldType<int32_t>()
{
    return nvinfer1::PluginFieldType::kINT32;
}
template <>
constexpr nvinfer1::PluginFieldType fieldType<float>()
{
    return nvinfer1::PluginFieldType::kFLOAT32;
}

// Reads one scalar field from a collection. Missing fields keep `value` (the default) unless `required`.
template <typename T>
void readField(char const* plugin, nvinfer1::PluginFieldCollection const* fc, char const* name, T& value,
    bool required)
{
    if (fc != nullptr)
    {
        for (int32_t i = 0; i < fc->nbFields; ++i)
        {
            nvinfer1::PluginField const& f = fc->fields[i];
            if (f.name == nullptr || std::strcmp(f.name, name) != 0)
            {
                continue;
            }
            if (f.type != fieldType<T>())
            {
                fail(plugin, ": field '", name, "': expected type ", static_cast<int32_t>(fieldType<T>()),
                    " (PluginFieldType), found ", static_cast<int32_t>(f.type));
            }
            if (f.length != 1 || f.data == nullptr)
            {
                fail(plugin, ": field '", name, "': expected 1 value, found ", f.length);
            }
            std::memcpy(&value, f.data, sizeof(T));
            return;
        }
    }
    if (required)
    {
        fail(plugin, ": field '", name, "' is required and missing");
    }
}

// Owns the PluginField array that getFieldsToSerialize() returns. Entries point into the plugin's own members, so
// the plugin re-binds them after a copy (clone) with bind().
class FieldTable
{
public:
    template <typename T>
    void add(char const* name, T const* value)
    {
        mFields.emplace_back(name, value, fieldType<T>(), 1);
        mCollection.nbFields = static_cast<int32_t>(mFields.size());
        mCollection.fields = mFields.data();
    }
    void clear()
    {
        mFields.clear();
        mCollection = nvinfer1::PluginFieldCollection{};
    }
    nvinfer1::PluginFieldCollection const* collection() const
    {
        return &mCollection;
    }

private:
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mCollection{};
};

// The field names a creator advertises (IPluginCreatorV3One::getFieldNames): name and type, no data.
class FieldNames
{
public:
    void add(char const* name, nvinfer1::PluginFieldType type)
    {
        mFields.emplace_back(name, nullptr, type, 1);
        mCollection.nbFields = static_cast<int32_t>(mFields.size());
        mCollection.fields = mFields.data();
    }
    nvinfer1::PluginFieldCollection const* collection() const
    {
        return &mCollection;
    }

private:
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mCollection{};
};

// Maps a CUDA error of a kernel launch to TensorRT's return convention (0 = success) and logs it.
int32_t checkLaunch(char const* plugin, char const* what, cudaError_t status) noexcept;

inline char const* dataTypeName(nvinfer1::DataType t)
{
    switch (t)
    {
    case nvinfer1::DataType::kFLOAT: return "float32";
    case nvinfer1::DataType::kHALF: return "float16";
    case nvinfer1::DataType::kBF16: return "bfloat16";
    case nvinfer1::DataType::kFP8: return "fp8e4m3";
    case nvinfer1::DataType::kINT32: return "int32";
    case nvinfer1::DataType::kINT64: return "int64";
    case nvinfer1::DataType::kINT8: return "int8";
    default: return "other";
    }
}

} // namespace trt_gemma4
