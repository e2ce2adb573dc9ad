// Helpers shared by the TensorRT plugins (<op>/trt_plugin.cpp) and register_trt.cpp: plugin
// identity, error reporting without libnvinfer, PluginField parsing/serialisation, dims checks.
//
// Everything here uses only header-inline TensorRT code (classes, enums, virtual calls on objects that
// TensorRT hands us), so the plugin library links without libnvinfer (-Wl,--no-undefined).
#pragma once

#include <NvInferRuntime.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__linux__) || defined(__APPLE__)
#include <dlfcn.h>
#endif

namespace defmamba {
namespace trt {

// ---- plugin identity -------------------------------------------------------------------------------------
// Name = ONNX op type; version "1"; namespace "" so that TensorRT's ONNX parser, which looks a node up as
// (op_type, attribute plugin_version default "1", attribute plugin_namespace default ""), finds the plugins
// from our nodes as exported. See plugins/README.md, section "TensorRT".
inline constexpr char const* kPluginVersion = "1";
inline constexpr char const* kPluginNamespace = "";

// Thrown inside plugin code; every noexcept entry point catches it and reports the message.
class PluginError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// ---- error reporting ------------------------------------------------------------------------------------
// TensorRT's logging helpers for plugins (getLogger(), plugin::gLogCallback, ...) live in libnvinfer or
// libnvinfer_plugin, which this library must not link. Two header-only routes exist instead:
//  * setLoggerFinder(ILoggerFinder*), exported by register_trt.cpp, is called by TensorRT when it loads the
//    library through IPluginRegistry::loadLibrary (trtexec --dynamicPlugins, Python
//    registry.load_library, plugins serialised into version-compatible plans). findLogger() returns the
//    ILogger of the builder/runtime that called into the plugin: messages appear in TensorRT's own log.
//  * IPluginResourceContext::getErrorRecorder() in attachToContext: the execution context's IErrorRecorder,
//    used for errors found at run time (onShapeChange/enqueue).
// Without a logger (library registered another way, no finder, or one we cannot trust) messages go to stderr.
//
// ABI guard: ILoggerFinder is not a versioned interface in TensorRT 10 (a plain class with findLogger as
// its first virtual) but derives from IVersionedInterface in TensorRT 11, so its vtable layout differs
// between majors. The finder is used only when the TensorRT library of the major we compiled against is
// the one loaded in the process (dlopen RTLD_NOLOAD of libnvinfer{,_lean,_dispatch}.so.<major>).
// DEFMAMBA_TRT_LOGGER=finder|stderr overrides the check (finder: statically linked TensorRT, tests).
#define DEFMAMBA_TRT_STR2(x) #x
#define DEFMAMBA_TRT_STR(x) DEFMAMBA_TRT_STR2(x)

inline bool loadedTensorRtMatchesHeaders() noexcept {
#if defined(__linux__)
  static char const* const kLibs[] = {
      "libnvinfer.so." DEFMAMBA_TRT_STR(NV_TENSORRT_MAJOR),
      "libnvinfer_lean.so." DEFMAMBA_TRT_STR(NV_TENSORRT_MAJOR),
      "libnvinfer_dispatch.so." DEFMAMBA_TRT_STR(NV_TENSORRT_MAJOR),
  };
  for (char const* lib : kLibs) {
    if (void* handle = dlopen(lib, RTLD_NOW | RTLD_NOLOAD)) {  // only finds an already loaded library
      dlclose(handle);
      return true;
    }
  }
#endif
  return false;
}

class Log {
 public:
  // Called from setLoggerFinder (register_trt.cpp). nullptr switches back to stderr.
  static void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept {
    bool trusted = false;
    if (finder != nullptr) {
      char const* mode = std::getenv("DEFMAMBA_TRT_LOGGER");
      if (mode != nullptr && std::strcmp(mode, "finder") == 0) {
        trusted = true;
      } else if (mode != nullptr && std::strcmp(mode, "stderr") == 0) {
        trusted = false;
      } else {
        trusted = loadedTensorRtMatchesHeaders();
      }
    }
    finderSlot().store(trusted ? finder : nullptr);
  }

  static void log(nvinfer1::ILogger::Severity severity, char const* msg) noexcept {
    if (nvinfer1::ILoggerFinder* finder = finderSlot().load()) {
      if (nvinfer1::ILogger* logger = finder->findLogger()) {
        logger->log(severity, msg);
        return;
      }
    }
    char const* tag = severity <= nvinfer1::ILogger::Severity::kERROR ? "ERROR"
                      : severity == nvinfer1::ILogger::Severity::kWARNING ? "WARNING"
                                                                          : "INFO";
    std::fprintf(stderr, "[defmamba TensorRT plugin] %s: %s\n", tag, msg);
    std::fflush(stderr);
  }

 private:
  static std::atomic<nvinfer1::ILoggerFinder*>& finderSlot() noexcept {
    static std::atomic<nvinfer1::ILoggerFinder*> slot{nullptr};
    return slot;
  }
};

// "<Op>: <message> [layer '<name>']", to the TensorRT logger (or stderr) and, at run time, to the execution
// context's error recorder. Never throws.
inline void reportError(char const* op, std::string const& layer, char const* message,
                        nvinfer1::IErrorRecorder* recorder = nullptr,
                        nvinfer1::ErrorCode code = nvinfer1::ErrorCode::kINVALID_ARGUMENT) noexcept {
  try {
    std::string text = std::string(op) + ": " + message;
    if (!layer.empty()) text += " [layer '" + layer + "']";
    Log::log(nvinfer1::ILogger::Severity::kERROR, text.c_str());
    if (recorder != nullptr) recorder->reportError(code, text.c_str());
  } catch (...) {
    Log::log(nvinfer1::ILogger::Severity::kERROR, message);
  }
}

// ---- names for messages -----------------------------------------------------------------------------------
inline char const* dataTypeName(nvinfer1::DataType t) noexcept {
  using nvinfer1::DataType;
  switch (t) {
    case DataType::kFLOAT: return "float32";
    case DataType::kHALF: return "float16";
    case DataType::kINT8: return "int8";
    case DataType::kINT32: return "int32";
    case DataType::kBOOL: return "bool";
    case DataType::kUINT8: return "uint8";
    case DataType::kFP8: return "fp8";
    case DataType::kBF16: return "bfloat16";
    case DataType::kINT64: return "int64";
    default: return "other";
  }
}

inline char const* fieldTypeName(nvinfer1::PluginFieldType t) noexcept {
  using nvinfer1::PluginFieldType;
  switch (t) {
    case PluginFieldType::kFLOAT16: return "kFLOAT16";
    case PluginFieldType::kFLOAT32: return "kFLOAT32";
    case PluginFieldType::kFLOAT64: return "kFLOAT64";
    case PluginFieldType::kINT8: return "kINT8";
    case PluginFieldType::kINT16: return "kINT16";
    case PluginFieldType::kINT32: return "kINT32";
    case PluginFieldType::kCHAR: return "kCHAR";
    case PluginFieldType::kDIMS: return "kDIMS";
    case PluginFieldType::kBF16: return "kBF16";
    case PluginFieldType::kINT64: return "kINT64";
    default: return "other";
  }
}

inline std::string dimsToString(nvinfer1::Dims const& d) {
  if (d.nbDims < 0) return "(unknown rank)";
  std::ostringstream s;
  s << '(';
  for (int32_t i = 0; i < d.nbDims; ++i) s << (i ? ", " : "") << d.d[i];
  s << ')';
  return s.str();
}

// Message builder: fail() << "input 'B' ..." ; throw in one expression.
class Message {
 public:
  template <typename T>
  Message& operator<<(T const& v) {
    mStream << v;
    return *this;
  }
  [[noreturn]] void raise() const { throw PluginError(mStream.str()); }
  std::string str() const { return mStream.str(); }

 private:
  std::ostringstream mStream;
};

// ---- plugin fields ----------------------------------------------------------------------------------------
inline nvinfer1::PluginField const* findField(nvinfer1::PluginFieldCollection const* fc, char const* name) {
  if (fc == nullptr || fc->fields == nullptr) return nullptr;
  for (int32_t i = 0; i < fc->nbFields; ++i) {
    if (fc->fields[i].name != nullptr && std::strcmp(fc->fields[i].name, name) == 0) return &fc->fields[i];
  }
  return nullptr;
}

// Every field must be one of `known` (the fields the creator advertises), each at most once.
inline void checkFieldNames(nvinfer1::PluginFieldCollection const* fc,
                            std::vector<nvinfer1::PluginField> const& known) {
  if (fc == nullptr) return;
  if (fc->nbFields < 0 || (fc->nbFields > 0 && fc->fields == nullptr)) {
    (Message() << "invalid PluginFieldCollection (nbFields " << fc->nbFields << ", fields "
               << (fc->fields ? "set" : "null") << ")").raise();
  }
  for (int32_t i = 0; i < fc->nbFields; ++i) {
    char const* name = fc->fields[i].name;
    if (name == nullptr) (Message() << "plugin field " << i << " has no name").raise();
    bool isKnown = false;
    for (nvinfer1::PluginField const& k : known) isKnown = isKnown || std::strcmp(k.name, name) == 0;
    if (!isKnown) {
      Message m;
      m << "unknown plugin field '" << name << "' (expected ";
      if (known.empty()) m << "no fields";
      int32_t j = 0;
      for (nvinfer1::PluginField const& k : known) m << (j++ ? ", " : "") << "'" << k.name << "'";
      (m << ")").raise();
    }
    for (int32_t j = 0; j < i; ++j) {
      if (std::strcmp(fc->fields[j].name, name) == 0) (Message() << "plugin field '" << name << "' given twice").raise();
    }
  }
}

// Integer scalar field: TensorRT's ONNX parser passes an ONNX INT attribute as kINT32 (length 1); kINT64 is
// accepted too (C++/Python callers). Returns nullopt when the field is absent.
inline std::optional<int64_t> readIntField(nvinfer1::PluginFieldCollection const* fc, char const* name) {
  nvinfer1::PluginField const* f = findField(fc, name);
  if (f == nullptr) return std::nullopt;
  if (f->length != 1) {
    (Message() << "plugin field '" << name << "' must hold exactly 1 value, got length " << f->length).raise();
  }
  if (f->data == nullptr) (Message() << "plugin field '" << name << "' has no data").raise();
  if (f->type == nvinfer1::PluginFieldType::kINT32) {
    int32_t v;
    std::memcpy(&v, f->data, sizeof v);
    return v;
  }
  if (f->type == nvinfer1::PluginFieldType::kINT64) {
    int64_t v;
    std::memcpy(&v, f->data, sizeof v);
    return v;
  }
  (Message() << "plugin field '" << name << "' must be an integer (kINT32 or kINT64), got "
             << fieldTypeName(f->type)).raise();
}

// Integer list field: TensorRT's ONNX parser passes an ONNX INTS attribute as a kINT32 array; kINT64 is
// accepted too (C++/Python callers). Length 0 is an empty list. Returns nullopt when the field is absent.
inline std::optional<std::vector<int64_t>> readIntsField(nvinfer1::PluginFieldCollection const* fc,
                                                         char const* name) {
  using nvinfer1::PluginFieldType;
  nvinfer1::PluginField const* f = findField(fc, name);
  if (f == nullptr) return std::nullopt;
  if (f->type != PluginFieldType::kINT32 && f->type != PluginFieldType::kINT64) {
    (Message() << "plugin field '" << name << "' must be a list of integers (kINT32 or kINT64), got "
               << fieldTypeName(f->type)).raise();
  }
  if (f->length < 0) (Message() << "plugin field '" << name << "' has a negative length " << f->length).raise();
  if (f->length > 0 && f->data == nullptr) (Message() << "plugin field '" << name << "' has no data").raise();
  std::vector<int64_t> values(static_cast<size_t>(f->length));
  for (size_t i = 0; i < values.size(); ++i) {
    if (f->type == PluginFieldType::kINT32) {
      int32_t v;
      std::memcpy(&v, static_cast<char const*>(f->data) + i * sizeof v, sizeof v);
      values[i] = v;
    } else {
      std::memcpy(&values[i], static_cast<char const*>(f->data) + i * sizeof(int64_t), sizeof(int64_t));
    }
  }
  return values;
}

// Fields written by getFieldsToSerialize / advertised by getFieldNames; the collection points into this
// object, so it stays valid as long as the object does.
class FieldList {
 public:
  FieldList() = default;
  FieldList(FieldList const&) = delete;
  FieldList& operator=(FieldList const&) = delete;

  void clear() { mFields.clear(); }
  std::vector<nvinfer1::PluginField> const& fields() const { return mFields; }
  void add(char const* name, void const* data, nvinfer1::PluginFieldType type, int32_t length) {
    mFields.emplace_back(name, data, type, length);
  }
  nvinfer1::PluginFieldCollection const* collection() {
    mCollection.nbFields = static_cast<int32_t>(mFields.size());
    mCollection.fields = mFields.empty() ? nullptr : mFields.data();
    return &mCollection;
  }

 private:
  std::vector<nvinfer1::PluginField> mFields;
  nvinfer1::PluginFieldCollection mCollection{};
};

// ---- dimensions -------------------------------------------------------------------------------------------
// Value of a symbolic dimension if TensorRT knows it at build time.
inline std::optional<int64_t> constantOf(nvinfer1::IDimensionExpr const* e) {
  if (e != nullptr && e->isConstant()) return e->getConstantValue();
  return std::nullopt;
}

// Dims view used by the shape checks: a known extent or -1 (unknown / wildcard).
struct ShapeView {
  int32_t rank{-1};
  int64_t d[nvinfer1::Dims::MAX_DIMS]{};

  static ShapeView of(nvinfer1::Dims const& dims) {
    ShapeView v;
    v.rank = dims.nbDims;
    for (int32_t i = 0; i < dims.nbDims && i < nvinfer1::Dims::MAX_DIMS; ++i) v.d[i] = dims.d[i] >= 0 ? dims.d[i] : -1;
    return v;
  }
  static ShapeView of(nvinfer1::DimsExprs const& dims) {
    ShapeView v;
    v.rank = dims.nbDims;
    for (int32_t i = 0; i < dims.nbDims && i < nvinfer1::Dims::MAX_DIMS; ++i) {
      std::optional<int64_t> c = constantOf(dims.d[i]);
      v.d[i] = c && *c >= 0 ? *c : -1;
    }
    return v;
  }
  bool known(int32_t i) const { return i < rank && d[i] >= 0; }
  std::string str() const {
    if (rank < 0) return "(unknown rank)";
    std::ostringstream s;
    s << '(';
    for (int32_t i = 0; i < rank; ++i) {
      s << (i ? ", " : "");
      if (d[i] >= 0) s << d[i]; else s << '?';
    }
    s << ')';
    return s.str();
  }
};

inline bool isFloatIO(nvinfer1::DataType t) { return t == nvinfer1::DataType::kFLOAT || t == nvinfer1::DataType::kHALF; }

// Concrete input shapes last validated by onShapeChange: enqueue re-validates only when the shapes it is
// given differ (it always takes its sizes from its own PluginTensorDesc).
template <int32_t N>
class ShapeCache {
 public:
  bool matches(nvinfer1::PluginTensorDesc const* desc, int32_t nb) const {
    if (!mValid || nb != N) return false;
    for (int32_t i = 0; i < N; ++i) {
      if (desc[i].dims.nbDims != mDims[i].nbDims) return false;
      for (int32_t k = 0; k < desc[i].dims.nbDims; ++k) {
        if (desc[i].dims.d[k] != mDims[i].d[k]) return false;
      }
    }
    return true;
  }
  void store(nvinfer1::PluginTensorDesc const* desc) {
    for (int32_t i = 0; i < N; ++i) mDims[i] = desc[i].dims;
    mValid = true;
  }

 private:
  nvinfer1::Dims mDims[N]{};
  bool mValid{false};
};

// Shape rules over the inputs of one plugin call. Relations are checked only where both extents are
// known, so the same rules serve getOutputShapes (symbolic), configurePlugin (wildcards) and
// onShapeChange/enqueue (concrete). Each failure throws PluginError naming the tensor, the dimension and
// the expected value; `where` is appended (e.g. " in the optimization profile (kMIN)").
class ShapeRules {
 public:
  ShapeRules(char const* const* names, ShapeView const* in, int32_t nbInputs, char const* where = "")
      : mNames(names), mIn(in), mNb(nbInputs), mWhere(where) {}

  // Input i has the given rank; layout like "(Bt, Ch, L)".
  void rank(int32_t i, int32_t rank, char const* layout) const {
    ShapeView const& v = at(i);
    if (v.rank != rank) {
      (tensor(i) << " must have rank " << rank << " " << layout << ", got rank " << v.rank << " " << v.str()
                 << mWhere).raise();
    }
  }
  // in[i].d[di] == in[j].d[dj] (both named `dimName`).
  void equal(int32_t i, int32_t di, int32_t j, int32_t dj, char const* dimName) const {
    ShapeView const& a = at(i);
    ShapeView const& b = at(j);
    if (a.known(di) && b.known(dj) && a.d[di] != b.d[dj]) {
      (tensor(i) << " dim " << di << " (" << dimName << ") must equal dim " << dj << " of input '" << mNames[j]
                 << "' (" << dimName << " = " << b.d[dj] << "), got " << a.d[di] << "; shape " << a.str()
                 << mWhere).raise();
    }
  }
  // in[i].d[di] >= minValue.
  void atLeast(int32_t i, int32_t di, char const* dimName, int64_t minValue) const {
    ShapeView const& v = at(i);
    if (v.known(di) && v.d[di] < minValue) {
      (tensor(i) << " dim " << di << " (" << dimName << ") must be >= " << minValue << ", got " << v.d[di]
                 << "; shape " << v.str() << mWhere).raise();
    }
  }
  // in[i].d[di] < limit (index arithmetic of the kernels).
  void below(int32_t i, int64_t value, char const* what, int64_t limit) const {
    if (value >= limit) {
      (tensor(i) << ": " << what << " = " << value << " must be < " << limit << "; shape " << at(i).str() << mWhere)
          .raise();
    }
  }
  // in[i].d[dd] > 0 divides in[j].d[dn].
  void divides(int32_t i, int32_t dd, char const* divName, int32_t j, int32_t dn, char const* numName) const {
    ShapeView const& a = at(i);
    ShapeView const& b = at(j);
    if (a.known(dd) && b.known(dn) && a.d[dd] > 0 && b.d[dn] % a.d[dd] != 0) {
      (tensor(i) << " dim " << dd << " (" << divName << " = " << a.d[dd] << ") must divide dim " << dn
                 << " of input '" << mNames[j] << "' (" << numName << " = " << b.d[dn] << ")" << mWhere).raise();
    }
  }

  ShapeView const& at(int32_t i) const {
    if (i < 0 || i >= mNb) (Message() << "internal error: no input " << i << " (" << mNb << " inputs)").raise();
    return mIn[i];
  }
  Message tensor(int32_t i) const {
    at(i);
    Message m;
    m << "input '" << mNames[i] << "' (index " << i << ")";
    return m;
  }

 private:
  char const* const* mNames;
  ShapeView const* mIn;
  int32_t mNb;
  char const* mWhere;
};

}  // namespace trt
}  // namespace defmamba
