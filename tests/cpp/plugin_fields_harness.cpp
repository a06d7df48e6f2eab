// Drives the plugin creators of libtrt_gemma4_plugins.so the way TensorRT does, without TensorRT: loads the
// library, takes the creators from getCreators() (the IPluginRegistry::loadLibrary entry point), creates plugins
// from field collections, and reads back what they would serialize. Used by tests/test_plugin_fields.py.
//
// The harness also stands in for libnvinfer's getPluginRegistry() (exported from the executable, link with
// -rdynamic) with a registry that records registrations, so the library's own registration can be observed.
//
// Usage: plugin_fields_harness LIB < requests; one JSON line out per request line:
//   names                                      -> creators with name, version, namespace and getFieldNames()
//   create PLUGIN [field:int32|float32:value]  -> fields serialized at build, after a kRUNTIME re-creation from
//                                                  them, and after clone() (or {"ok": false} when rejected)
//   formats PLUGIN [fields...] | T0 T1 ...     -> supportsFormatCombination per position (bf16 fp8 f32 i32 i64)
//   registered                                 -> what the library registered so far (name, version, namespace)
//   init                                       -> calls initTrtGemma4Plugins(nullptr), then as `registered`
#include <NvInferRuntime.h>

#include <dlfcn.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace {

// Records registerCreator() calls; the rest of IPluginRegistry (NvInferRuntimeCommon.h) is not used by the library.
class RecordingRegistry : public IPluginRegistry
{
public:
    std::vector<std::pair<IPluginCreatorV3One*, std::string>> registered;
    int32_t calls{0};

    bool registerCreator(IPluginCreatorInterface& creator, AsciiChar const* const ns) noexcept override
    {
        ++calls;
        auto* c = static_cast<IPluginCreatorV3One*>(&creator);
        if (getCreator(c->getPluginName(), c->getPluginVersion(), ns) != nullptr)
            return false; // TensorRT refuses a second creator of the same type
        registered.emplace_back(c, ns);
        return true;
    }
    IPluginCreatorInterface* getCreator(
        AsciiChar const* const name, AsciiChar const* const version, AsciiChar const* const ns) noexcept override
    {
        for (auto const& [c, cns] : registered)
            if (std::strcmp(c->getPluginName(), name) == 0 && std::strcmp(c->getPluginVersion(), version) == 0
                && cns == ns)
                return c;
        return nullptr;
    }
    bool registerCreator(IPluginCreator&, AsciiChar const* const) noexcept override
    {
        return false;
    }
    IPluginCreator* const* getPluginCreatorList(int32_t* const n) const noexcept override
    {
        *n = 0;
        return nullptr;
    }
    IPluginCreator* getPluginCreator(AsciiChar const* const, AsciiChar const* const, AsciiChar const* const) noexcept
        override
    {
        return nullptr;
    }
    void setErrorRecorder(IErrorRecorder* const) noexcept override {}
    IErrorRecorder* getErrorRecorder() const noexcept override
    {
        return nullptr;
    }
    bool deregisterCreator(IPluginCreator const&) noexcept override
    {
        return false;
    }
    bool isParentSearchEnabled() const override
    {
        return false;
    }
    void setParentSearchEnabled(bool const) override {}
    PluginLibraryHandle loadLibrary(AsciiChar const*) noexcept override
    {
        return nullptr;
    }
    void deregisterLibrary(PluginLibraryHandle) noexcept override {}
    IPluginCreatorInterface* const* getAllCreators(int32_t* const n) const noexcept override
    {
        *n = 0;
        return nullptr;
    }
    bool deregisterCreator(IPluginCreatorInterface const&) noexcept override
    {
        return false;
    }
    IPluginResource* acquirePluginResource(AsciiChar const*, IPluginResource*) noexcept override
    {
        return nullptr;
    }
    int32_t releasePluginResource(AsciiChar const*) noexcept override
    {
        return 0;
    }
    IPluginCreatorInterface* const* getAllCreatorsRecursive(int32_t* const n) noexcept override
    {
        *n = 0;
        return nullptr;
    }
};

RecordingRegistry gRegistry;

std::string registeredJson()
{
    std::ostringstream os;
    os << "{\"calls\": " << gRegistry.calls << ", \"registered\": [";
    for (size_t i = 0; i < gRegistry.registered.size(); ++i)
    {
        auto const& [c, ns] = gRegistry.registered[i];
        os << (i ? ", " : "") << "[\"" << c->getPluginName() << "\", \"" << c->getPluginVersion() << "\", \"" << ns
           << "\"]";
    }
    os << "]}";
    return os.str();
}

using GetCreatorsFn = IPluginCreatorInterface* const* (*) (int32_t&);

struct OwnedFields
{
    std::vector<std::string> names;
    std::vector<int32_t> ints;
    std::vector<float> floats;
    std::vector<PluginField> fields;
    PluginFieldCollection fc{};
};

// Parses "name:type:value" tokens into a collection (storage reserved up front so pointers stay valid).
void parseFields(std::vector<std::string> const& tokens, OwnedFields& out)
{
    out.names.reserve(tokens.size());
    out.ints.reserve(tokens.size());
    out.floats.reserve(tokens.size());
    for (auto const& t : tokens)
    {
        auto a = t.find(':');
        auto b = t.find(':', a + 1);
        out.names.push_back(t.substr(0, a));
        std::string const type = t.substr(a + 1, b - a - 1);
        std::string const value = t.substr(b + 1);
        if (type == "int32")
        {
            out.ints.push_back(std::stoi(value));
            out.fields.emplace_back(out.names.back().c_str(), &out.ints.back(), PluginFieldType::kINT32, 1);
        }
        else
        {
            out.floats.push_back(std::stof(value));
            out.fields.emplace_back(out.names.back().c_str(), &out.floats.back(), PluginFieldType::kFLOAT32, 1);
        }
    }
    out.fc.nbFields = static_cast<int32_t>(out.fields.size());
    out.fc.fields = out.fields.data();
}

std::string fieldsJson(PluginFieldCollection const* fc)
{
    std::ostringstream os;
    os.precision(9);
    os << "{";
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        PluginField const& f = fc->fields[i];
        os << (i ? ", " : "") << "\"" << f.name << "\": ";
        if (f.type == PluginFieldType::kINT32)
            os << "[\"int32\", " << *static_cast<int32_t const*>(f.data) << ", " << f.length << "]";
        else if (f.type == PluginFieldType::kFLOAT32)
            os << "[\"float32\", " << *static_cast<float const*>(f.data) << ", " << f.length << "]";
        else
            os << "[\"type" << static_cast<int32_t>(f.type) << "\", null, " << f.length << "]";
    }
    os << "}";
    return os.str();
}

PluginFieldCollection const* serialized(IPluginV3* plugin)
{
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    return runtime->getFieldsToSerialize();
}

DataType parseType(std::string const& s)
{
    if (s == "bf16")
        return DataType::kBF16;
    if (s == "fp8")
        return DataType::kFP8;
    if (s == "f32")
        return DataType::kFLOAT;
    if (s == "i64")
        return DataType::kINT64;
    return DataType::kINT32;
}

} // namespace

// Stands in for libnvinfer's registry (NvInferRuntime.h: extern "C" getPluginRegistry()).
extern "C" __attribute__((visibility("default"))) IPluginRegistry* getPluginRegistry() noexcept
{
    return &gRegistry;
}

int main(int argc, char** argv)
{
    if (argc != 2)
    {
        std::cerr << "usage: plugin_fields_harness LIB < requests\n";
        return 2;
    }
    void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr)
    {
        std::cerr << "dlopen: " << dlerror() << "\n";
        return 2;
    }
    auto getCreators = reinterpret_cast<GetCreatorsFn>(dlsym(lib, "getCreators"));
    if (getCreators == nullptr)
    {
        std::cerr << "getCreators not exported\n";
        return 2;
    }
    int32_t nb = 0;
    IPluginCreatorInterface* const* list = getCreators(nb);
    auto find = [&](std::string const& name) -> IPluginCreatorV3One* {
        for (int32_t i = 0; i < nb; ++i)
        {
            auto* c = static_cast<IPluginCreatorV3One*>(list[i]);
            if (name == c->getPluginName())
                return c;
        }
        return nullptr;
    };

    std::string line;
    while (std::getline(std::cin, line))
    {
        std::istringstream in(line);
        std::string cmd;
        in >> cmd;
        if (cmd == "registered")
        {
            std::cout << registeredJson() << std::endl;
            continue;
        }
        if (cmd == "init")
        {
            using InitFn = bool (*)(void*);
            auto init = reinterpret_cast<InitFn>(dlsym(lib, "initTrtGemma4Plugins"));
            bool const ok = init != nullptr && init(nullptr);
            std::cout << "{\"init\": " << (ok ? "true" : "false") << ", \"after\": " << registeredJson() << "}"
                      << std::endl;
            continue;
        }
        if (cmd == "names")
        {
            std::cout << "[";
            for (int32_t i = 0; i < nb; ++i)
            {
                InterfaceInfo const info = list[i]->getInterfaceInfo();
                auto* c = static_cast<IPluginCreatorV3One*>(list[i]);
                PluginFieldCollection const* fc = c->getFieldNames();
                std::cout << (i ? ", " : "") << "{\"kind\": \"" << info.kind << "\", \"name\": \"" << c->getPluginName()
                          << "\", \"version\": \"" << c->getPluginVersion() << "\", \"namespace\": \""
                          << c->getPluginNamespace() << "\", \"fields\": [";
                for (int32_t j = 0; j < fc->nbFields; ++j)
                    std::cout << (j ? ", " : "") << "[\"" << fc->fields[j].name << "\", "
                              << static_cast<int32_t>(fc->fields[j].type) << "]";
                std::cout << "]}";
            }
            std::cout << "]" << std::endl;
            continue;
        }
        std::string pluginName;
        in >> pluginName;
        IPluginCreatorV3One* creator = find(pluginName);
        std::vector<std::string> fieldTokens;
        std::vector<DataType> types;
        std::string tok;
        bool afterBar = false;
        while (in >> tok)
        {
            if (tok == "|")
                afterBar = true;
            else if (afterBar)
                types.push_back(parseType(tok));
            else
                fieldTokens.push_back(tok);
        }
        OwnedFields fields;
        parseFields(fieldTokens, fields);
        std::unique_ptr<IPluginV3> plugin(
            creator ? creator->createPlugin("harness", &fields.fc, TensorRTPhase::kBUILD) : nullptr);
        if (!plugin)
        {
            std::cout << "{\"ok\": false}" << std::endl;
            continue;
        }
        if (cmd == "create")
        {
            auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
            std::string const name = core->getPluginName();
            PluginFieldCollection const* built = serialized(plugin.get());
            std::string const builtJson = fieldsJson(built);
            // What TensorRT does when deserializing an engine: createPlugin(kRUNTIME) with the serialized fields.
            std::unique_ptr<IPluginV3> runtime(creator->createPlugin("harness", built, TensorRTPhase::kRUNTIME));
            std::unique_ptr<IPluginV3> cloned(runtime ? runtime->clone() : nullptr);
            plugin.reset(); // the clone's fields must not point into the original
            std::cout << "{\"ok\": true, \"name\": \"" << name << "\", \"build\": " << builtJson
                      << ", \"runtime\": " << (runtime ? fieldsJson(serialized(runtime.get())) : "null")
                      << ", \"clone\": " << (cloned ? fieldsJson(serialized(cloned.get())) : "null") << "}"
                      << std::endl;
        }
        else if (cmd == "formats")
        {
            auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
            std::vector<DynamicPluginTensorDesc> descs(types.size());
            for (size_t i = 0; i < types.size(); ++i)
            {
                descs[i].desc.type = types[i];
                descs[i].desc.format = TensorFormat::kLINEAR;
            }
            int32_t const nbInputs = static_cast<int32_t>(types.size()) - build->getNbOutputs();
            std::cout << "{\"ok\": true, \"supported\": [";
            for (size_t i = 0; i < types.size(); ++i)
                std::cout << (i ? ", " : "")
                          << (build->supportsFormatCombination(static_cast<int32_t>(i), descs.data(), nbInputs,
                                  build->getNbOutputs())
                                     ? "true"
                                     : "false");
            std::cout << "]}" << std::endl;
        }
    }
    return 0;
}
