// Error checks for the torch ops that build their messages from std::string pieces.
//
// TORCH_CHECK with several message arguments formats them through std::ostringstream (c10::str) inlined into this
// extension. Where the process has loaded an older libstdc++ than the one whose headers compiled the extension, that
// ostringstream crashes (seen on a machine with torch 2.11.0+cu130 and g++ 13.3: every formatted check segfaulted,
// single-string checks raised normally), so a bad call would kill the process instead of raising. TG4_CHECK builds
// the message with std::string and std::to_string only and hands TORCH_CHECK one string (passed through unformatted).
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <string>
#include <type_traits>

namespace trt_gemma4::torch_ops {

inline std::string piece(const char* s) { return s; }
inline std::string piece(const std::string& s) { return s; }
inline std::string piece(c10::ScalarType t) { return c10::toString(t); }
inline std::string piece(c10::IntArrayRef sizes) {
    std::string r = "[";
    for (size_t i = 0; i < sizes.size(); ++i) r += (i ? ", " : "") + std::to_string(sizes[i]);
    return r + "]";
}
template <class T, std::enable_if_t<std::is_integral_v<T>, int> = 0>
std::string piece(T v) {
    return std::to_string(v);
}

template <class... Args>
std::string message(const Args&... args) {
    std::string r;
    ((r += piece(args)), ...);
    return r;
}

}  // namespace trt_gemma4::torch_ops

#define TG4_CHECK(cond, ...) TORCH_CHECK(cond, ::trt_gemma4::torch_ops::message(__VA_ARGS__))
