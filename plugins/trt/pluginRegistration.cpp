// The library's entry points: how TensorRT (and processes around it) find the trt_gemma4 plugin creators.
//
//   * getCreators / setLoggerFinder: the interface IPluginRegistry::loadLibrary() looks up in a plugin library
//     (TensorRT 10.14 include/NvInferRuntimeCommon.h IPluginRegistry::loadLibrary; same exports as
//     plugin/vc/vfcCommon.cpp in the TensorRT OSS tree). Python: trt.get_plugin_registry().load_library(path);
//     trtexec: --dynamicPlugins=path.
//   * Registration when the library is loaded (the effect of REGISTER_TENSORRT_PLUGIN, NvInferRuntime.h
//     PluginRegistrar): for LD_PRELOAD into tritonserver or ctypes.CDLL(path, RTLD_GLOBAL) before an engine that
//     uses the plugins is deserialized (research/trtllm.md §4.4). It needs TensorRT's getPluginRegistry(): built
//     with libnvinfer linked (TRT_GEMMA4_LINKED_NVINFER, what CMake does where libnvinfer exists) the loader brings
//     TensorRT in first, which LD_PRELOAD needs; otherwise the function is looked up at run time, so the library
//     also builds where only the TensorRT headers exist. Set TRT_GEMMA4_PLUGINS_AUTOREGISTER=0 when loading
//     through loadLibrary(), which refuses creators that are already registered.
//   * initTrtGemma4Plugins: explicit registration for callers that load the library without it having
//     registered (modelled on TRT-LLM's initTrtLlmPlugins, cpp/tensorrt_llm/plugins/api/tllmPlugin.cpp).
#include "blockFp8WoGemmPlugin.h"
#include "gemma4GlobalAttentionPlugin.h"

#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

#define TRT_GEMMA4_API __attribute__((visibility("default")))

using namespace nvinfer1;

namespace trt_gemma4 {
namespace {

std::mutex gLogMutex;
ILoggerFinder* gLoggerFinder{nullptr};
ILogger* gLogger{nullptr};

BlockFp8WoGemmCreator& gemmCreator()
{
    static BlockFp8WoGemmCreator creator;
    return creator;
}

Gemma4GlobalAttentionCreator& attentionCreator()
{
    static Gemma4GlobalAttentionCreator creator;
    return creator;
}

IPluginCreatorInterface* const* creatorList(int32_t& count)
{
    static IPluginCreatorInterface* const kCreators[] = {&gemmCreator(), &attentionCreator()};
    count = static_cast<int32_t>(sizeof(kCreators) / sizeof(kCreators[0]));
    return kCreators;
}

using GetPluginRegistryFn = IPluginRegistry* (*) ();

// TensorRT's registry (NvInferRuntime.h: extern "C" getPluginRegistry), or null when TensorRT is not in the process.
IPluginRegistry* findRegistry()
{
#ifdef TRT_GEMMA4_LINKED_NVINFER
    return getPluginRegistry();
#else
    void* symbol = dlsym(RTLD_DEFAULT, "getPluginRegistry");
    return symbol != nullptr ? reinterpret_cast<GetPluginRegistryFn>(symbol)() : nullptr;
#endif
}

// Registers every creator not yet in the registry. Returns false if TensorRT is not loaded or a registration failed.
bool registerAll()
{
    IPluginRegistry* registry = findRegistry();
    if (registry == nullptr)
    {
        return false;
    }
    int32_t count = 0;
    IPluginCreatorInterface* const* creators = creatorList(count);
    bool ok = true;
    for (int32_t i = 0; i < count; ++i)
    {
        auto* creator = static_cast<IPluginCreatorV3One*>(creators[i]);
        if (registry->getCreator(creator->getPluginName(), creator->getPluginVersion(), kPluginNamespace) != nullptr)
        {
            continue;
        }
        ok = registry->registerCreator(*creators[i], kPluginNamespace) && ok;
    }
    return ok;
}

// Runs when the library is loaded: registers the creators if TensorRT is already in the process.
__attribute__((constructor)) void registerOnLoad()
{
    char const* env = std::getenv("TRT_GEMMA4_PLUGINS_AUTOREGISTER");
    if (env != nullptr && std::strcmp(env, "0") == 0)
    {
        return;
    }
    registerAll();
}

} // namespace

void setLoggerFinderImpl(ILoggerFinder* finder) noexcept
{
    std::lock_guard<std::mutex> lock(gLogMutex);
    if (gLoggerFinder == nullptr && finder != nullptr)
    {
        gLoggerFinder = finder;
    }
}

void logMessage(ILogger::Severity severity, std::string const& message) noexcept
{
    try
    {
        std::lock_guard<std::mutex> lock(gLogMutex);
        ILogger* logger = gLoggerFinder != nullptr ? gLoggerFinder->findLogger() : gLogger;
        if (logger != nullptr)
        {
            logger->log(severity, message.c_str());
        }
        else if (severity <= ILogger::Severity::kWARNING)
        {
            std::fprintf(stderr, "[trt_gemma4] %s\n", message.c_str());
        }
    }
    catch (...)
    {
        // Logging must never throw out of a noexcept TensorRT entry point.
    }
}

int32_t checkLaunch(char const* plugin, char const* what, cudaError_t status) noexcept
{
    if (status == cudaSuccess)
    {
        return 0;
    }
    logError(std::string(plugin) + ": " + what + " failed: " + cudaGetErrorString(status));
    return 1;
}

} // namespace trt_gemma4

extern "C" TRT_GEMMA4_API IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    return trt_gemma4::creatorList(nbCreators);
}

extern "C" TRT_GEMMA4_API void setLoggerFinder(ILoggerFinder* finder)
{
    trt_gemma4::setLoggerFinderImpl(finder);
}

// Registers the creators in TensorRT's registry (namespace "trt_gemma4"). `logger` is an nvinfer1::ILogger* used
// for messages when TensorRT gave the library no logger finder (may be null). Returns false when TensorRT is not
// loaded in the process or a registration failed. Safe to call more than once.
extern "C" TRT_GEMMA4_API bool initTrtGemma4Plugins(void* logger)
{
    if (logger != nullptr)
    {
        std::lock_guard<std::mutex> lock(trt_gemma4::gLogMutex);
        trt_gemma4::gLogger = static_cast<ILogger*>(logger);
    }
    return trt_gemma4::registerAll();
}
