// CPU tests of libdefmamba_trt_plugins.so: no libnvinfer, no GPU.
//
//   defmamba_test_trt_plugins <path/to/libdefmamba_trt_plugins.so>
//
// The library is dlopen'ed (RTLD_NOW: every symbol must resolve without libnvinfer) and driven through
// its exported getCreators()/setLoggerFinder() exactly as TensorRT would: creators, createPlugin from
// fields (valid, missing, wrong), clone, field round trip, capability interfaces, output types, the
// supportsFormatCombination matrix, getOutputShapes with a test IExprBuilder (symbolic and constant
// dimensions), configurePlugin/onShapeChange/enqueue validation errors, TokenSort's workspace size,
// error recording after attachToContext, and the logger/stderr error routes.
// Launching kernels needs a GPU and is not done here (reported as SKIP).
#include <NvInferRuntime.h>

#include <dlfcn.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

using namespace nvinfer1;

#define TEST_STR2(x) #x
#define TEST_STR(x) TEST_STR2(x)

namespace {

// ---- tiny test harness ---------------------------------------------------------------------------------
int gChecks = 0;
int gFailures = 0;
std::string gSection;

#define CHECK(cond)                                                                                  \
  do {                                                                                               \
    ++gChecks;                                                                                       \
    if (!(cond)) {                                                                                   \
      ++gFailures;                                                                                   \
      std::fprintf(stderr, "FAIL [%s] %s:%d: %s\n", gSection.c_str(), __FILE__, __LINE__, #cond);  \
    }                                                                                                \
  } while (0)

#define CHECK_MSG(cond, msg)                                                                                  \
  do {                                                                                                        \
    ++gChecks;                                                                                                \
    if (!(cond)) {                                                                                            \
      ++gFailures;                                                                                            \
      std::fprintf(stderr, "FAIL [%s] %s:%d: %s -- %s\n", gSection.c_str(), __FILE__, __LINE__, #cond,       \
                   std::string(msg).c_str());                                                                 \
    }                                                                                                         \
  } while (0)

void section(std::string const& name) {
  gSection = name;
  std::printf("-- %s\n", name.c_str());
}

// ---- logger that TensorRT would pass through setLoggerFinder --------------------------------------------
class TestLogger : public ILogger {
 public:
  void log(Severity severity, AsciiChar const* msg) noexcept override {
    mMessages.push_back({severity, msg ? msg : ""});
  }
  struct Entry {
    Severity severity;
    std::string text;
  };
  std::vector<Entry> mMessages;
  void clear() { mMessages.clear(); }
  std::string last() const { return mMessages.empty() ? std::string() : mMessages.back().text; }
  size_t errors() const {
    size_t n = 0;
    for (auto const& m : mMessages) n += m.severity <= Severity::kERROR;
    return n;
  }
};

class TestLoggerFinder : public ILoggerFinder {
 public:
  explicit TestLoggerFinder(ILogger* logger) : mLogger(logger) {}
  ILogger* findLogger() override { return mLogger; }

 private:
  ILogger* mLogger;
};

TestLogger gLogger;

bool contains(std::string const& text, std::string const& part) { return text.find(part) != std::string::npos; }

// The last error message contains every part.
void expectError(std::initializer_list<char const*> parts) {
  std::string const msg = gLogger.last();
  CHECK_MSG(gLogger.errors() > 0, "no error was logged");
  for (char const* p : parts) CHECK_MSG(contains(msg, p), "message '" + msg + "' lacks '" + p + "'");
}

// ---- error recorder / resource context (attachToContext) -----------------------------------------------
class TestErrorRecorder : public IErrorRecorder {
 public:
  int32_t getNbErrors() const noexcept override { return static_cast<int32_t>(mErrors.size()); }
  ErrorCode getErrorCode(int32_t i) const noexcept override { return mErrors.at(i).first; }
  ErrorDesc getErrorDesc(int32_t i) const noexcept override { return mErrors.at(i).second.c_str(); }
  bool hasOverflowed() const noexcept override { return false; }
  void clear() noexcept override { mErrors.clear(); }
  bool reportError(ErrorCode val, ErrorDesc desc) noexcept override {
    mErrors.emplace_back(val, desc ? desc : "");
    return false;
  }
  RefCount incRefCount() noexcept override { return ++mRefs; }
  RefCount decRefCount() noexcept override { return --mRefs; }

 private:
  std::vector<std::pair<ErrorCode, std::string>> mErrors;
  RefCount mRefs{0};
};

class TestResourceContext : public IPluginResourceContext {
 public:
  explicit TestResourceContext(IErrorRecorder* recorder) : mRecorder(recorder) {}
  IGpuAllocator* getGpuAllocator() const noexcept override { return nullptr; }
  IErrorRecorder* getErrorRecorder() const noexcept override { return mRecorder; }

 private:
  IErrorRecorder* mRecorder;
};

// ---- a test IExprBuilder --------------------------------------------------------------------------------
// IExprBuilder/IDimensionExpr are implemented inside libnvinfer; their public classes forward to
// apiv::VExprBuilder/VDimensionExpr through mImpl. The test supplies its own implementations (symbolic
// and constant dimensions); TensorRT's headers warn against this outside of tests.
class TestDimImpl : public apiv::VDimensionExpr {
 public:
  TestDimImpl(bool constant, int64_t value) : mConstant(constant), mValue(value) {}
  bool isConstant() const override { return mConstant; }
  int64_t getConstantValue() const override { return mConstant ? mValue : std::numeric_limits<int64_t>::min(); }
  bool isSizeTensor() const override { return false; }

 private:
  bool mConstant;
  int64_t mValue;
};

class TestDim : public IDimensionExpr {
 public:
  TestDim(bool constant, int64_t value) : mImplObject(constant, value) { mImpl = &mImplObject; }
  ~TestDim() override = default;

 private:
  TestDimImpl mImplObject;
};

class TestExprBuilderImpl : public apiv::VExprBuilder {
 public:
  IDimensionExpr const* constant(int64_t value) override { return make(true, value); }
  IDimensionExpr const* symbol() { return make(false, 0); }
  IDimensionExpr const* operation(DimensionOperation op, IDimensionExpr const& a, IDimensionExpr const& b) override {
    if (!a.isConstant() || !b.isConstant()) return make(false, 0);
    int64_t x = a.getConstantValue(), y = b.getConstantValue(), r = 0;
    switch (op) {
      case DimensionOperation::kSUM: r = x + y; break;
      case DimensionOperation::kPROD: r = x * y; break;
      case DimensionOperation::kMAX: r = x > y ? x : y; break;
      case DimensionOperation::kMIN: r = x < y ? x : y; break;
      case DimensionOperation::kSUB: r = x - y; break;
      case DimensionOperation::kEQUAL: r = x == y; break;
      case DimensionOperation::kLESS: r = x < y; break;
      case DimensionOperation::kFLOOR_DIV: r = x / y; break;
      case DimensionOperation::kCEIL_DIV: r = (x + y - 1) / y; break;
      default: return nullptr;
    }
    return make(true, r);
  }
  IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override {
    return nullptr;
  }

 private:
  IDimensionExpr const* make(bool c, int64_t v) {
    mPool.push_back(std::make_unique<TestDim>(c, v));
    return mPool.back().get();
  }
  std::deque<std::unique_ptr<TestDim>> mPool;
};

class TestExprBuilder : public IExprBuilder {
 public:
  TestExprBuilder() { mImpl = &mImplObject; }
  ~TestExprBuilder() override = default;
  IDimensionExpr const* symbol() { return mImplObject.symbol(); }

 private:
  TestExprBuilderImpl mImplObject;
};

// A dimension list: value >= 0 is a constant, -1 a fresh symbol.
DimsExprs exprs(TestExprBuilder& eb, std::vector<int64_t> const& d) {
  DimsExprs e{};
  e.nbDims = static_cast<int32_t>(d.size());
  for (size_t i = 0; i < d.size(); ++i) e.d[i] = d[i] >= 0 ? eb.constant(d[i]) : eb.symbol();
  return e;
}

Dims dims(std::vector<int64_t> const& d) {
  Dims r{};
  r.nbDims = static_cast<int32_t>(d.size());
  for (size_t i = 0; i < d.size(); ++i) r.d[i] = d[i];
  return r;
}

PluginTensorDesc desc(DataType t, std::vector<int64_t> const& d) {
  PluginTensorDesc p{};
  p.dims = dims(d);
  p.type = t;
  p.format = TensorFormat::kLINEAR;
  p.scale = -1.F;
  return p;
}

// desc.dims = network dims (may hold -1), min/max = profile bounds (default: the network dims).
DynamicPluginTensorDesc dyn(DataType t, std::vector<int64_t> const& d, std::vector<int64_t> const& mn = {},
                            std::vector<int64_t> const& mx = {}) {
  DynamicPluginTensorDesc p{};
  p.desc = desc(t, d);
  p.min = dims(mn.empty() ? d : mn);
  p.max = dims(mx.empty() ? d : mx);
  p.opt = p.max;
  return p;
}

// ---- plugin access --------------------------------------------------------------------------------------
struct PluginDeleter {
  void operator()(IPluginV3* p) const { delete p; }
};
using PluginPtr = std::unique_ptr<IPluginV3, PluginDeleter>;

IPluginV3OneCore* core(IPluginV3* p) {
  return static_cast<IPluginV3OneCore*>(p->getCapabilityInterface(PluginCapabilityType::kCORE));
}
IPluginV3OneBuild* build(IPluginV3* p) {
  return static_cast<IPluginV3OneBuild*>(p->getCapabilityInterface(PluginCapabilityType::kBUILD));
}
IPluginV3OneRuntime* runtime(IPluginV3* p) {
  return static_cast<IPluginV3OneRuntime*>(p->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
}

struct Field {
  char const* name;
  PluginFieldType type;
  std::vector<uint8_t> bytes;
  int32_t length;
};
Field i32(char const* name, int32_t v) {
  Field f{name, PluginFieldType::kINT32, std::vector<uint8_t>(sizeof v), 1};
  std::memcpy(f.bytes.data(), &v, sizeof v);
  return f;
}
Field i64(char const* name, int64_t v) {
  Field f{name, PluginFieldType::kINT64, std::vector<uint8_t>(sizeof v), 1};
  std::memcpy(f.bytes.data(), &v, sizeof v);
  return f;
}
Field f32(char const* name, float v) {
  Field f{name, PluginFieldType::kFLOAT32, std::vector<uint8_t>(sizeof v), 1};
  std::memcpy(f.bytes.data(), &v, sizeof v);
  return f;
}
// Integer list fields (an ONNX INTS attribute as TensorRT's ONNX parser passes it: kINT32[]).
template <typename T>
Field ints(char const* name, PluginFieldType type, std::vector<T> const& v) {
  Field f{name, type, std::vector<uint8_t>(v.size() * sizeof(T)), static_cast<int32_t>(v.size())};
  if (!v.empty()) std::memcpy(f.bytes.data(), v.data(), f.bytes.size());
  return f;
}
Field i32s(char const* name, std::vector<int32_t> const& v) { return ints(name, PluginFieldType::kINT32, v); }
Field i64s(char const* name, std::vector<int64_t> const& v) { return ints(name, PluginFieldType::kINT64, v); }

PluginPtr create(IPluginCreatorV3One* c, std::vector<Field> const& fields, char const* layer = "layer0",
                 TensorRTPhase phase = TensorRTPhase::kBUILD) {
  std::vector<PluginField> pf;
  for (auto const& f : fields) {
    pf.emplace_back(f.name, f.bytes.empty() ? nullptr : f.bytes.data(), f.type, f.length);
  }
  PluginFieldCollection fc{static_cast<int32_t>(pf.size()), pf.empty() ? nullptr : pf.data()};
  return PluginPtr(c->createPlugin(layer, &fc, phase));
}

// delta_softplus as serialised by a SelectiveScan plugin (-1: not found / not an int32 field).
int64_t serialisedSoftplus(IPluginV3* p) {
  PluginFieldCollection const* fc = runtime(p)->getFieldsToSerialize();
  if (fc == nullptr) return -1;
  for (int32_t i = 0; i < fc->nbFields; ++i) {
    if (std::strcmp(fc->fields[i].name, "delta_softplus") == 0 && fc->fields[i].type == PluginFieldType::kINT32 &&
        fc->fields[i].length == 1) {
      int32_t v;
      std::memcpy(&v, fc->fields[i].data, sizeof v);
      return v;
    }
  }
  return -1;
}

// reverse as serialised by a SelectiveScan plugin: the kINT32 array, "absent" if not serialised, "bad" if
// serialised otherwise.
std::string serialisedReverse(IPluginV3* p) {
  PluginFieldCollection const* fc = runtime(p)->getFieldsToSerialize();
  if (fc == nullptr) return "bad";
  for (int32_t i = 0; i < fc->nbFields; ++i) {
    if (std::strcmp(fc->fields[i].name, "reverse") != 0) continue;
    if (fc->fields[i].type != PluginFieldType::kINT32 || fc->fields[i].length < 1) return "bad";
    std::string r;
    for (int32_t k = 0; k < fc->fields[i].length; ++k) {
      int32_t v;
      std::memcpy(&v, static_cast<char const*>(fc->fields[i].data) + k * sizeof v, sizeof v);
      r += (k ? "," : "") + std::to_string(v);
    }
    return r;
  }
  return "absent";
}

std::string metadata(IPluginV3* p) {
  char const* m = build(p)->getMetadataString();
  return m != nullptr ? m : "(null)";
}

std::string typeName(DataType t) {
  switch (t) {
    case DataType::kFLOAT: return "F32";
    case DataType::kHALF: return "F16";
    case DataType::kINT32: return "I32";
    case DataType::kINT64: return "I64";
    case DataType::kBF16: return "BF16";
    case DataType::kINT8: return "I8";
    default: return "?";
  }
}

constexpr DataType kF = DataType::kFLOAT;
constexpr DataType kH = DataType::kHALF;
constexpr DataType kALL_TYPES[] = {DataType::kFLOAT, DataType::kHALF, DataType::kINT32, DataType::kINT64,
                                   DataType::kBF16,  DataType::kINT8};

// ---- generic checks for every creator ------------------------------------------------------------------
// expectedFields: declared by getFieldNames; serialisedFields: written by a plugin created without fields.
void checkCreator(IPluginCreatorV3One* c, int32_t expectedFields, int32_t serialisedFields) {
  CHECK(std::strcmp(c->getPluginVersion(), "1") == 0);
  CHECK(std::strcmp(c->getPluginNamespace(), "") == 0);
  PluginFieldCollection const* names = c->getFieldNames();
  CHECK(names != nullptr && names->nbFields == expectedFields);

  PluginPtr p = create(c, {}, "node_a");
  CHECK(p != nullptr);
  if (!p) return;
  CHECK(std::strcmp(p->getInterfaceInfo().kind, "PLUGIN") == 0);
  CHECK(core(p.get()) != nullptr && build(p.get()) != nullptr && runtime(p.get()) != nullptr);
  CHECK(std::strcmp(core(p.get())->getInterfaceInfo().kind, "PLUGIN_V3ONE_CORE") == 0);
  CHECK(std::strcmp(build(p.get())->getInterfaceInfo().kind, "PLUGIN_V3ONE_BUILD") == 0);
  CHECK(std::strcmp(runtime(p.get())->getInterfaceInfo().kind, "PLUGIN_V3ONE_RUNTIME") == 0);
  CHECK(std::strcmp(core(p.get())->getPluginName(), c->getPluginName()) == 0);
  CHECK(std::strcmp(core(p.get())->getPluginVersion(), "1") == 0);
  CHECK(std::strcmp(core(p.get())->getPluginNamespace(), "") == 0);
  CHECK(build(p.get())->getNbOutputs() == (std::strcmp(c->getPluginName(), "TokenSort") == 0 ? 2 : 1));

  // nullptr field collection = no fields; runtime phase with the serialised fields
  PluginPtr q(c->createPlugin("node_b", nullptr, TensorRTPhase::kBUILD));
  CHECK(q != nullptr);
  PluginPtr r(c->createPlugin("node_c", runtime(p.get())->getFieldsToSerialize(), TensorRTPhase::kRUNTIME));
  CHECK(r != nullptr);

  // clone is a deep copy that outlives the original
  PluginPtr cl(p->clone());
  CHECK(cl != nullptr && cl.get() != p.get());
  p.reset();
  if (cl) {
    CHECK(std::strcmp(core(cl.get())->getPluginName(), c->getPluginName()) == 0);
    CHECK(runtime(cl.get())->getFieldsToSerialize() != nullptr);
    CHECK(runtime(cl.get())->getFieldsToSerialize()->nbFields == serialisedFields);
  }

  // unknown field -> failure naming the op, the field and the layer
  gLogger.clear();
  CHECK(create(c, {i32("no_such_field", 1)}, "node_x") == nullptr);
  expectError({c->getPluginName(), "unknown plugin field 'no_such_field'", "node_x"});
}

// supportsFormatCombination over every (pos, type) with the types at the positions it may depend on.
void checkFormatMatrix(IPluginV3* p, int32_t nbIn, int32_t nbOut,
                       std::function<bool(int32_t pos, std::vector<DataType> const& t)> expected) {
  int32_t const n = nbIn + nbOut;
  std::vector<DynamicPluginTensorDesc> io(n, dyn(kF, {1, 1}));
  int mismatches = 0;
  for (int32_t pos = 0; pos < n; ++pos) {
    for (DataType t0 : kALL_TYPES) {
      for (DataType t1 : kALL_TYPES) {
        for (DataType t : kALL_TYPES) {
          std::vector<DataType> types(n, kF);
          types[0] = t0;
          if (n > 1) types[1] = t1;
          types[pos] = t;
          for (int32_t i = 0; i < n; ++i) io[i].desc.type = types[i];
          bool const got = build(p)->supportsFormatCombination(pos, io.data(), nbIn, nbOut);
          bool const want = expected(pos, types);
          if (got != want && mismatches++ < 10) {
            std::fprintf(stderr, "  pos %d types[0]=%s types[1]=%s type=%s: got %d want %d\n", pos,
                         typeName(types[0]).c_str(), typeName(types[1]).c_str(), typeName(t).c_str(), got, want);
          }
        }
      }
    }
    // only linear
    for (int32_t i = 0; i < n; ++i) io[i].desc.type = kF;
    io[pos].desc.format = TensorFormat::kCHW32;
    CHECK(!build(p)->supportsFormatCombination(pos, io.data(), nbIn, nbOut));
    io[pos].desc.format = TensorFormat::kLINEAR;
  }
  CHECK_MSG(mismatches == 0, std::to_string(mismatches) + " format combinations differ from the contract");
  CHECK(!build(p)->supportsFormatCombination(n, io.data(), nbIn, nbOut));       // out of range
  CHECK(!build(p)->supportsFormatCombination(0, io.data(), nbIn + 1, nbOut));   // wrong count
}

// ---- SelectiveScan --------------------------------------------------------------------------------------
void testSelectiveScan(IPluginCreatorV3One* c) {
  section("SelectiveScan: creator and fields");
  checkCreator(c, 2, 1);  // reverse is serialised only when given
  {
    PluginFieldCollection const* names = c->getFieldNames();
    CHECK(names->nbFields == 2 && std::strcmp(names->fields[0].name, "delta_softplus") == 0);
    CHECK(names->fields[0].type == PluginFieldType::kINT32 && names->fields[0].length == 1);
    // an ONNX INTS attribute arrives as kINT32[G]; length 0: not fixed
    CHECK(names->nbFields == 2 && std::strcmp(names->fields[1].name, "reverse") == 0);
    CHECK(names->fields[1].type == PluginFieldType::kINT32 && names->fields[1].length == 0);
  }
  PluginPtr def = create(c, {});
  CHECK(def && serialisedSoftplus(def.get()) == 1);  // default when absent
  PluginPtr zero = create(c, {i32("delta_softplus", 0)});
  CHECK(zero && serialisedSoftplus(zero.get()) == 0);
  PluginPtr one64 = create(c, {i64("delta_softplus", 1)});
  CHECK(one64 && serialisedSoftplus(one64.get()) == 1);
  PluginPtr zero64 = create(c, {i64("delta_softplus", 0)});
  CHECK(zero64 && serialisedSoftplus(zero64.get()) == 0);

  gLogger.clear();
  CHECK(create(c, {i32("delta_softplus", 2)}, "scan_7") == nullptr);
  expectError({"SelectiveScan:", "'delta_softplus'", "must be 0 or 1, got 2", "scan_7"});
  CHECK(create(c, {i64("delta_softplus", -1)}) == nullptr);
  expectError({"SelectiveScan:", "'delta_softplus'", "must be 0 or 1, got -1"});
  CHECK(create(c, {f32("delta_softplus", 1.F)}) == nullptr);
  expectError({"SelectiveScan:", "'delta_softplus'", "kINT32 or kINT64", "kFLOAT32"});
  {
    Field f = i32("delta_softplus", 1);
    f.length = 2;
    f.bytes.resize(8);
    CHECK(create(c, {f}) == nullptr);
    expectError({"SelectiveScan:", "'delta_softplus'", "exactly 1 value, got length 2"});
    Field g{"delta_softplus", PluginFieldType::kINT32, {}, 1};
    CHECK(create(c, {g}) == nullptr);
    expectError({"SelectiveScan:", "'delta_softplus'", "no data"});
  }
  CHECK(create(c, {i32("delta_softplus", 1), i32("delta_softplus", 0)}) == nullptr);
  expectError({"SelectiveScan:", "'delta_softplus' given twice"});

  section("SelectiveScan: field round trip and clone");
  for (int32_t v : {0, 1}) {
    PluginPtr p = create(c, {i32("delta_softplus", v)});
    CHECK(p != nullptr);
    if (!p) continue;
    PluginPtr back(c->createPlugin("rt", runtime(p.get())->getFieldsToSerialize(), TensorRTPhase::kRUNTIME));
    CHECK(back && serialisedSoftplus(back.get()) == v);
    PluginPtr cl(p->clone());
    CHECK(cl && serialisedSoftplus(cl.get()) == v);
    CHECK(build(p.get())->getMetadataString() != nullptr &&
          contains(build(p.get())->getMetadataString(), "delta_softplus=" + std::to_string(v)));
  }

  section("SelectiveScan: reverse field");
  {
    // absent or empty: every group forward, nothing serialised, the metadata of a plugin without the field
    PluginPtr fwd = create(c, {});
    CHECK(fwd && serialisedReverse(fwd.get()) == "absent" && metadata(fwd.get()) == "delta_softplus=1");
    PluginPtr empty = create(c, {i32s("reverse", {})});
    CHECK(empty && serialisedReverse(empty.get()) == "absent" && metadata(empty.get()) == "delta_softplus=1");

    PluginPtr r = create(c, {i32("delta_softplus", 0), i32s("reverse", {0, 1, 0})});
    CHECK(r != nullptr);
    if (r) {
      CHECK(serialisedReverse(r.get()) == "0,1,0");
      CHECK_MSG(metadata(r.get()) == "delta_softplus=0;reverse=0,1,0", metadata(r.get()));
      CHECK(std::string(build(r.get())->getTimingCacheID()) == metadata(r.get()));
      // round trip (runtime phase) and clone keep the flags
      PluginPtr back(c->createPlugin("rt", runtime(r.get())->getFieldsToSerialize(), TensorRTPhase::kRUNTIME));
      CHECK(back && serialisedReverse(back.get()) == "0,1,0" && serialisedSoftplus(back.get()) == 0);
      CHECK(back && metadata(back.get()) == "delta_softplus=0;reverse=0,1,0");
      PluginPtr cl(r->clone());
      CHECK(cl && serialisedReverse(cl.get()) == "0,1,0");
    }
    PluginPtr r64 = create(c, {i64s("reverse", {1, 0, 1})});  // kINT64 accepted, serialised as kINT32
    CHECK(r64 && serialisedReverse(r64.get()) == "1,0,1" && metadata(r64.get()) == "delta_softplus=1;reverse=1,0,1");
    // G > 64 works as long as only groups 0..63 are reversed
    std::vector<int32_t> wide(70, 0);
    wide[0] = wide[63] = 1;
    PluginPtr w = create(c, {i32s("reverse", wide)});
    CHECK(w != nullptr);

    gLogger.clear();
    CHECK(create(c, {i32s("reverse", {0, 2, 0})}, "scan_r") == nullptr);
    expectError({"SelectiveScan:", "plugin field 'reverse' must hold 0 or 1 per group, got 2 at index 1", "scan_r"});
    CHECK(create(c, {i64s("reverse", {-1})}) == nullptr);
    expectError({"SelectiveScan:", "'reverse'", "got -1 at index 0"});
    wide[64] = 1;
    CHECK(create(c, {i32s("reverse", wide)}) == nullptr);
    expectError({"SelectiveScan:", "'reverse'", "only groups 0..63 can be reversed, got a 1 at index 64",
                 "reversed ones come first"});
    CHECK(create(c, {f32("reverse", 1.F)}) == nullptr);
    expectError({"SelectiveScan:", "'reverse'", "list of integers (kINT32 or kINT64)", "kFLOAT32"});
    Field noData{"reverse", PluginFieldType::kINT32, {}, 3};
    CHECK(create(c, {noData}) == nullptr);
    expectError({"SelectiveScan:", "'reverse'", "no data"});
    Field negative{"reverse", PluginFieldType::kINT32, {}, -1};
    CHECK(create(c, {negative}) == nullptr);
    expectError({"SelectiveScan:", "'reverse'", "negative length -1"});
    CHECK(create(c, {i32s("reverse", {0}), i32s("reverse", {1})}) == nullptr);
    expectError({"SelectiveScan:", "'reverse' given twice"});
  }

  PluginPtr p = create(c, {}, "scan");
  IPluginV3OneBuild* b = build(p.get());

  section("SelectiveScan: output types");
  {
    DataType out[1];
    DataType f32in[7] = {kF, kF, kF, kF, kF, kF, kF};
    CHECK(b->getOutputDataTypes(out, 1, f32in, 7) == 0 && out[0] == kF);
    DataType f16in[7] = {kH, kH, kF, kH, kH, kF, kF};
    CHECK(b->getOutputDataTypes(out, 1, f16in, 7) == 0 && out[0] == kH);
    gLogger.clear();
    DataType mixed[7] = {kH, kF, kF, kH, kH, kF, kF};
    CHECK(b->getOutputDataTypes(out, 1, mixed, 7) != 0);
    expectError({"SelectiveScan:", "input 'delta' (index 1)", "type of input 'u' (float16)", "got float32"});
    DataType halfA[7] = {kH, kH, kH, kH, kH, kF, kF};
    CHECK(b->getOutputDataTypes(out, 1, halfA, 7) != 0);
    expectError({"SelectiveScan:", "input 'A' (index 2) must be float32, got float16"});
    DataType bf16[7] = {DataType::kBF16, DataType::kBF16, kF, DataType::kBF16, DataType::kBF16, kF, kF};
    CHECK(b->getOutputDataTypes(out, 1, bf16, 7) != 0);
    expectError({"SelectiveScan:", "input 'u' (index 0) must be float32 or float16, got bfloat16"});
    CHECK(b->getOutputDataTypes(out, 1, f32in, 6) != 0);
    expectError({"SelectiveScan:", "expects 7 inputs"});
  }

  section("SelectiveScan: supportsFormatCombination");
  checkFormatMatrix(p.get(), 7, 1, [](int32_t pos, std::vector<DataType> const& t) {
    if (pos == 0) return t[0] == kF || t[0] == kH;
    if (pos == 2 || pos == 5 || pos == 6) return t[pos] == kF;
    return t[pos] == t[0];  // delta, B, C, y
  });

  section("SelectiveScan: getOutputShapes");
  {
    TestExprBuilder eb;
    // Bt, Ch, L symbolic; G = 3, N = 4 constant
    IDimensionExpr const* bt = eb.symbol();
    IDimensionExpr const* ch = eb.symbol();
    IDimensionExpr const* len = eb.symbol();
    DimsExprs in[7];
    in[0] = DimsExprs{3, {bt, ch, len}};
    in[1] = in[0];
    in[2] = DimsExprs{2, {ch, eb.constant(4)}};
    in[3] = DimsExprs{4, {bt, eb.constant(3), eb.constant(4), len}};
    in[4] = in[3];
    in[5] = DimsExprs{1, {ch}};
    in[6] = in[5];
    DimsExprs out[1];
    CHECK(b->getOutputShapes(in, 7, nullptr, 0, out, 1, eb) == 0);
    CHECK(out[0].nbDims == 3 && out[0].d[0] == bt && out[0].d[1] == ch && out[0].d[2] == len);

    auto constants = [&](std::vector<std::vector<int64_t>> const& shapes, DimsExprs* dst) {
      for (size_t i = 0; i < shapes.size(); ++i) dst[i] = exprs(eb, shapes[i]);
    };
    std::vector<std::vector<int64_t>> ok = {{2, 6, 10}, {2, 6, 10}, {6, 4}, {2, 3, 4, 10}, {2, 3, 4, 10}, {6}, {6}};
    constants(ok, in);
    CHECK(b->getOutputShapes(in, 7, nullptr, 0, out, 1, eb) == 0);
    CHECK(out[0].nbDims == 3 && out[0].d[0]->isConstant() && out[0].d[0]->getConstantValue() == 2 &&
          out[0].d[1]->getConstantValue() == 6 && out[0].d[2]->getConstantValue() == 10);

    struct Bad {
      int32_t input;
      std::vector<int64_t> shape;
      std::vector<char const*> parts;
    };
    std::vector<Bad> bad = {
        {0, {2, 6}, {"input 'u' (index 0) must have rank 3 (Bt, Ch, L), got rank 2"}},
        {3, {2, 3, 4}, {"input 'B' (index 3) must have rank 4 (Bt, G, N, L), got rank 3"}},
        {3, {2, 3, 4, 11}, {"input 'B' (index 3) dim 3 (L) must equal dim 2 of input 'u' (L = 10), got 11"}},
        {3, {1, 3, 4, 10}, {"input 'B' (index 3) dim 0 (Bt) must equal dim 0 of input 'u' (Bt = 2), got 1"}},
        {1, {2, 6, 9}, {"input 'delta' (index 1) dim 2 (L) must equal dim 2 of input 'u' (L = 10), got 9"}},
        {4, {2, 3, 5, 10}, {"input 'C' (index 4) dim 2 (N) must equal dim 2 of input 'B' (N = 4), got 5"}},
        {2, {6, 5}, {"input 'A' (index 2) dim 1 (N) must equal dim 2 of input 'B' (N = 4), got 5"}},
        {2, {5, 4}, {"input 'A' (index 2) dim 0 (Ch) must equal dim 1 of input 'u' (Ch = 6), got 5"}},
        {5, {7}, {"input 'D' (index 5) dim 0 (Ch) must equal dim 1 of input 'u' (Ch = 6), got 7"}},
        {6, {6, 1}, {"input 'delta_bias' (index 6) must have rank 1 (Ch,), got rank 2"}},
    };
    for (auto const& t : bad) {
      constants(ok, in);
      in[t.input] = exprs(eb, t.shape);
      gLogger.clear();
      CHECK(b->getOutputShapes(in, 7, nullptr, 0, out, 1, eb) != 0);
      std::vector<char const*> parts = t.parts;
      parts.push_back("SelectiveScan:");
      parts.push_back("[layer 'scan']");
      for (char const* part : parts) CHECK_MSG(contains(gLogger.last(), part), gLogger.last() + " lacks " + part);
    }
    // G does not divide Ch: B/C with G = 4
    constants(ok, in);
    in[3] = exprs(eb, {2, 4, 4, 10});
    in[4] = in[3];
    gLogger.clear();
    CHECK(b->getOutputShapes(in, 7, nullptr, 0, out, 1, eb) != 0);
    expectError({"SelectiveScan:", "input 'B' (index 3) dim 1 (G = 4) must divide dim 1 of input 'u' (Ch = 6)"});
    in[3] = exprs(eb, {2, 0, 4, 10});
    in[4] = in[3];
    CHECK(b->getOutputShapes(in, 7, nullptr, 0, out, 1, eb) != 0);
    expectError({"SelectiveScan:", "(G) must be >= 1, got 0"});
    // unknown extents are not judged
    constants(ok, in);
    in[3] = exprs(eb, {-1, 3, 4, -1});
    in[4] = exprs(eb, {2, -1, 4, 10});
    CHECK(b->getOutputShapes(in, 7, nullptr, 0, out, 1, eb) == 0);
    // wrong counts
    constants(ok, in);
    CHECK(b->getOutputShapes(in, 6, nullptr, 0, out, 1, eb) != 0);
    CHECK(b->getOutputShapes(in, 7, in, 1, out, 1, eb) != 0);
    expectError({"SelectiveScan:", "no shape inputs"});
  }

  section("SelectiveScan: configurePlugin");
  {
    auto io = [](DataType t, int64_t L, int64_t LB) {
      return std::vector<DynamicPluginTensorDesc>{
          dyn(t, {-1, 6, L}, {1, 6, 1}, {8, 6, 4096}),        dyn(t, {-1, 6, L}, {1, 6, 1}, {8, 6, 4096}),
          dyn(kF, {6, 4}),                                    dyn(t, {-1, 3, 4, LB}, {1, 3, 4, 1}, {8, 3, 4, 4096}),
          dyn(t, {-1, 3, 4, LB}, {1, 3, 4, 1}, {8, 3, 4, 4096}), dyn(kF, {6}),
          dyn(kF, {6}),                                       dyn(t, {-1, 6, L}, {1, 6, 1}, {8, 6, 4096})};
    };
    auto v = io(kF, -1, -1);
    CHECK(b->configurePlugin(v.data(), 7, v.data() + 7, 1) == 0);
    v = io(kH, 196, 196);
    CHECK(b->configurePlugin(v.data(), 7, v.data() + 7, 1) == 0);
    v = io(kF, 196, 197);
    gLogger.clear();
    CHECK(b->configurePlugin(v.data(), 7, v.data() + 7, 1) != 0);
    expectError({"SelectiveScan:", "input 'B' (index 3) dim 3 (L) must equal dim 2 of input 'u' (L = 196), got 197"});
    v = io(kF, -1, -1);
    v[7].desc.type = kH;
    CHECK(b->configurePlugin(v.data(), 7, v.data() + 7, 1) != 0);
    expectError({"SelectiveScan:", "output 'y'", "got float16"});
  }

  section("SelectiveScan: getWorkspaceSize, onShapeChange, enqueue (no launch)");
  {
    std::vector<DynamicPluginTensorDesc> dv = {dyn(kF, {2, 6, 10}), dyn(kF, {2, 6, 10}), dyn(kF, {6, 4}),
                                               dyn(kF, {2, 3, 4, 10}), dyn(kF, {2, 3, 4, 10}), dyn(kF, {6}),
                                               dyn(kF, {6}),           dyn(kF, {2, 6, 10})};
    CHECK(b->getWorkspaceSize(dv.data(), 7, dv.data() + 7, 1) == 0);
    IPluginV3OneRuntime* rt = runtime(p.get());
    std::vector<PluginTensorDesc> in = {desc(kF, {2, 6, 10}),    desc(kF, {2, 6, 10}),    desc(kF, {6, 4}),
                                        desc(kF, {2, 3, 4, 10}), desc(kF, {2, 3, 4, 10}), desc(kF, {6}),
                                        desc(kF, {6})};
    PluginTensorDesc out = desc(kF, {2, 6, 10});
    CHECK(rt->onShapeChange(in.data(), 7, &out, 1) == 0);
    in[3] = desc(kF, {2, 3, 4, 12});
    gLogger.clear();
    CHECK(rt->onShapeChange(in.data(), 7, &out, 1) != 0);
    expectError({"SelectiveScan:", "input 'B' (index 3) dim 3 (L) must equal dim 2 of input 'u' (L = 10), got 12"});
    // enqueue validates its own descriptors before launching anything
    void const* inputs[7] = {};
    void* outputs[1] = {};
    gLogger.clear();
    CHECK(rt->enqueue(in.data(), &out, inputs, outputs, nullptr, nullptr) != 0);
    expectError({"SelectiveScan:", "(L) must equal", "got 12"});
    // empty batch: valid, nothing to launch
    in = {desc(kF, {0, 6, 10}), desc(kF, {0, 6, 10}), desc(kF, {6, 4}), desc(kF, {0, 3, 4, 10}),
          desc(kF, {0, 3, 4, 10}), desc(kF, {6}), desc(kF, {6})};
    out = desc(kF, {0, 6, 10});
    CHECK(rt->onShapeChange(in.data(), 7, &out, 1) == 0);
    CHECK(rt->enqueue(in.data(), &out, inputs, outputs, nullptr, nullptr) == 0);
  }

  section("SelectiveScan: attachToContext reports run-time errors to the context's error recorder");
  {
    TestErrorRecorder recorder;
    TestResourceContext ctx(&recorder);
    PluginPtr attached(runtime(p.get())->attachToContext(&ctx));
    CHECK(attached != nullptr && attached.get() != p.get());
    if (attached) {
      CHECK(serialisedSoftplus(attached.get()) == 1);
      std::vector<PluginTensorDesc> in = {desc(kF, {2, 6, 10}), desc(kF, {2, 6, 10}), desc(kF, {6, 4}),
                                          desc(kF, {2, 3, 4, 10}), desc(kF, {2, 3, 4, 10}), desc(kF, {5}),
                                          desc(kF, {6})};
      PluginTensorDesc out = desc(kF, {2, 6, 10});
      CHECK(runtime(attached.get())->onShapeChange(in.data(), 7, &out, 1) != 0);
      CHECK(recorder.getNbErrors() == 1);
      if (recorder.getNbErrors() == 1) {
        CHECK(recorder.getErrorCode(0) == ErrorCode::kINVALID_ARGUMENT);
        CHECK(contains(recorder.getErrorDesc(0), "SelectiveScan: input 'D' (index 5)"));
      }
    }
  }

  section("SelectiveScan: reverse flags against G (dim 1 of B) wherever G is known");
  {
    PluginPtr two = create(c, {i32s("reverse", {0, 1})}, "scan_g");  // 2 flags; the inputs below have G = 3
    PluginPtr three = create(c, {i32s("reverse", {0, 1, 0})}, "scan_g3");
    CHECK(two != nullptr && three != nullptr);
    if (two && three) {
      char const* const wrongG = "plugin field 'reverse' has 2 flags but input 'B' (index 3) has G = 3 groups (dim 1)";
      // getOutputShapes: constant G checked, symbolic G not
      TestExprBuilder eb;
      std::vector<std::vector<int64_t>> ok = {{2, 6, 10}, {2, 6, 10}, {6, 4}, {2, 3, 4, 10}, {2, 3, 4, 10}, {6}, {6}};
      DimsExprs in[7];
      for (size_t i = 0; i < ok.size(); ++i) in[i] = exprs(eb, ok[i]);
      DimsExprs out[1];
      CHECK(build(three.get())->getOutputShapes(in, 7, nullptr, 0, out, 1, eb) == 0);
      gLogger.clear();
      CHECK(build(two.get())->getOutputShapes(in, 7, nullptr, 0, out, 1, eb) != 0);
      expectError({"SelectiveScan:", wrongG, "one 0/1 flag per group, or none", "[layer 'scan_g']"});
      in[3] = exprs(eb, {2, -1, 4, 10});
      in[4] = in[3];
      CHECK(build(two.get())->getOutputShapes(in, 7, nullptr, 0, out, 1, eb) == 0);
      // the shape rules come first
      in[3] = exprs(eb, {2, 3, 4, 11});
      gLogger.clear();
      CHECK(build(two.get())->getOutputShapes(in, 7, nullptr, 0, out, 1, eb) != 0);
      expectError({"SelectiveScan:", "(L) must equal"});

      // configurePlugin: network dims (G = 3 known; -1 would not be judged)
      std::vector<DynamicPluginTensorDesc> dv = {dyn(kF, {-1, 6, 10}),   dyn(kF, {-1, 6, 10}),   dyn(kF, {6, 4}),
                                                 dyn(kF, {-1, 3, 4, 10}), dyn(kF, {-1, 3, 4, 10}), dyn(kF, {6}),
                                                 dyn(kF, {6}),            dyn(kF, {-1, 6, 10})};
      CHECK(build(three.get())->configurePlugin(dv.data(), 7, dv.data() + 7, 1) == 0);
      gLogger.clear();
      CHECK(build(two.get())->configurePlugin(dv.data(), 7, dv.data() + 7, 1) != 0);
      expectError({"SelectiveScan:", wrongG});
      dv[3].desc.dims.d[1] = -1;
      dv[4].desc.dims.d[1] = -1;
      CHECK(build(two.get())->configurePlugin(dv.data(), 7, dv.data() + 7, 1) == 0);

      // onShapeChange and enqueue (concrete shapes; enqueue fails before any launch)
      std::vector<PluginTensorDesc> cin = {desc(kF, {2, 6, 10}),    desc(kF, {2, 6, 10}),    desc(kF, {6, 4}),
                                           desc(kF, {2, 3, 4, 10}), desc(kF, {2, 3, 4, 10}), desc(kF, {6}),
                                           desc(kF, {6})};
      PluginTensorDesc yDesc = desc(kF, {2, 6, 10});
      CHECK(runtime(three.get())->onShapeChange(cin.data(), 7, &yDesc, 1) == 0);
      gLogger.clear();
      CHECK(runtime(two.get())->onShapeChange(cin.data(), 7, &yDesc, 1) != 0);
      expectError({"SelectiveScan:", wrongG});
      void const* inputs[7] = {};
      void* outputs[1] = {};
      gLogger.clear();
      CHECK(runtime(two.get())->enqueue(cin.data(), &yDesc, inputs, outputs, nullptr, nullptr) != 0);
      expectError({"SelectiveScan:", wrongG});
    }
  }
}

// ---- DeformGather ---------------------------------------------------------------------------------------
void testDeformGather(IPluginCreatorV3One* c) {
  section("DeformGather: creator and fields");
  checkCreator(c, 0, 0);
  gLogger.clear();
  CHECK(create(c, {i32("delta_softplus", 1)}, "g1") == nullptr);
  expectError({"DeformGather:", "unknown plugin field 'delta_softplus' (expected no fields)", "g1"});

  PluginPtr p = create(c, {}, "gather");
  IPluginV3OneBuild* b = build(p.get());
  PluginPtr back(c->createPlugin("rt", runtime(p.get())->getFieldsToSerialize(), TensorRTPhase::kRUNTIME));
  CHECK(back != nullptr && runtime(back.get())->getFieldsToSerialize()->nbFields == 0);

  section("DeformGather: output types");
  {
    DataType out[1];
    DataType f[3] = {kF, kF, kF}, h[3] = {kH, kH, kH}, mixed[3] = {kH, kH, kF};
    CHECK(b->getOutputDataTypes(out, 1, f, 3) == 0 && out[0] == kF);
    CHECK(b->getOutputDataTypes(out, 1, h, 3) == 0 && out[0] == kH);
    gLogger.clear();
    CHECK(b->getOutputDataTypes(out, 1, mixed, 3) != 0);
    expectError({"DeformGather:", "input 'rpe_table' (index 2) must have the type of input 'x' (float16), got float32"});
  }

  section("DeformGather: supportsFormatCombination");
  checkFormatMatrix(p.get(), 3, 1, [](int32_t pos, std::vector<DataType> const& t) {
    if (pos == 0) return t[0] == kF || t[0] == kH;
    return t[pos] == t[0];
  });

  section("DeformGather: getOutputShapes");
  {
    TestExprBuilder eb;
    IDimensionExpr const* bt = eb.symbol();
    IDimensionExpr const* h = eb.symbol();
    IDimensionExpr const* w = eb.symbol();
    DimsExprs in[3];
    in[0] = DimsExprs{4, {bt, eb.constant(96), h, w}};
    in[1] = DimsExprs{4, {bt, eb.constant(3), h, w}};
    in[2] = DimsExprs{3, {eb.constant(96), eb.constant(7), eb.constant(7)}};
    DimsExprs out[1];
    CHECK(b->getOutputShapes(in, 3, nullptr, 0, out, 1, eb) == 0);
    CHECK(out[0].nbDims == 4 && out[0].d[0] == bt && out[0].d[2] == h && out[0].d[3] == w &&
          out[0].d[1]->getConstantValue() == 96);

    std::vector<std::vector<int64_t>> ok = {{2, 8, 5, 6}, {2, 3, 5, 6}, {8, 7, 7}};
    auto set = [&](std::vector<std::vector<int64_t>> const& s) {
      for (int i = 0; i < 3; ++i) in[i] = exprs(eb, s[i]);
    };
    set(ok);
    CHECK(b->getOutputShapes(in, 3, nullptr, 0, out, 1, eb) == 0);
    struct Bad {
      int32_t input;
      std::vector<int64_t> shape;
      char const* part;
    };
    std::vector<Bad> bad = {
        {0, {2, 8, 5}, "input 'x' (index 0) must have rank 4 (Bt, Ch, H, W), got rank 3"},
        {1, {2, 1, 5, 6}, "input 'offset' (index 1) dim 1 (K) must be >= 2, got 1"},
        {1, {2, 3, 4, 6}, "input 'offset' (index 1) dim 2 (H) must equal dim 2 of input 'x' (H = 5), got 4"},
        {1, {1, 3, 5, 6}, "input 'offset' (index 1) dim 0 (Bt) must equal dim 0 of input 'x' (Bt = 2), got 1"},
        {2, {9, 7, 7}, "input 'rpe_table' (index 2) dim 0 (Ch) must equal dim 1 of input 'x' (Ch = 8), got 9"},
        {2, {8, 0, 7}, "input 'rpe_table' (index 2) dim 1 (Th) must be >= 1, got 0"},
        {2, {8, 49}, "input 'rpe_table' (index 2) must have rank 3 (Ch, Th, Tw), got rank 2"},
    };
    for (auto const& t : bad) {
      set(ok);
      in[t.input] = exprs(eb, t.shape);
      gLogger.clear();
      CHECK(b->getOutputShapes(in, 3, nullptr, 0, out, 1, eb) != 0);
      expectError({"DeformGather:", t.part, "[layer 'gather']"});
    }
    // H = 1 / W = 1
    set({{2, 8, 1, 6}, {2, 3, 1, 6}, {8, 7, 7}});
    gLogger.clear();
    CHECK(b->getOutputShapes(in, 3, nullptr, 0, out, 1, eb) != 0);
    expectError({"DeformGather:", "input 'x' (index 0) dim 2 (H) must be >= 2, got 1"});
    set({{2, 8, 5, 1}, {2, 3, 5, 1}, {8, 7, 7}});
    CHECK(b->getOutputShapes(in, 3, nullptr, 0, out, 1, eb) != 0);
    expectError({"DeformGather:", "input 'x' (index 0) dim 3 (W) must be >= 2, got 1"});
    set({{1, 8, 65536, 32768}, {1, 3, 65536, 32768}, {8, 7, 7}});
    CHECK(b->getOutputShapes(in, 3, nullptr, 0, out, 1, eb) != 0);
    expectError({"DeformGather:", "H*W = 2147483648 must be < 2147483648"});
  }

  section("DeformGather: configurePlugin (network dims and profile kMIN)");
  {
    std::vector<DynamicPluginTensorDesc> v = {dyn(kH, {-1, 8, -1, -1}, {1, 8, 2, 2}, {4, 8, 64, 64}),
                                              dyn(kH, {-1, 3, -1, -1}, {1, 3, 2, 2}, {4, 3, 64, 64}),
                                              dyn(kH, {8, 7, 7}), dyn(kH, {-1, 8, -1, -1}, {1, 8, 2, 2}, {4, 8, 64, 64})};
    CHECK(b->configurePlugin(v.data(), 3, v.data() + 3, 1) == 0);
    v[0].min = dims({1, 8, 1, 2});
    gLogger.clear();
    CHECK(b->configurePlugin(v.data(), 3, v.data() + 3, 1) != 0);
    expectError({"DeformGather:", "input 'x' (index 0) dim 2 (H) must be >= 2, got 1",
                 "in the optimization profile (kMIN)"});
    v[0].min = dims({1, 8, 2, 2});
    v[1].desc.dims = dims({-1, 1, -1, -1});
    CHECK(b->configurePlugin(v.data(), 3, v.data() + 3, 1) != 0);
    expectError({"DeformGather:", "(K) must be >= 2, got 1"});
  }

  section("DeformGather: getWorkspaceSize, onShapeChange, enqueue (no launch)");
  {
    std::vector<DynamicPluginTensorDesc> dv = {dyn(kF, {2, 8, 5, 6}), dyn(kF, {2, 3, 5, 6}), dyn(kF, {8, 7, 7}),
                                               dyn(kF, {2, 8, 5, 6})};
    CHECK(b->getWorkspaceSize(dv.data(), 3, dv.data() + 3, 1) == 0);
    IPluginV3OneRuntime* rt = runtime(p.get());
    std::vector<PluginTensorDesc> in = {desc(kF, {2, 8, 5, 6}), desc(kF, {2, 3, 5, 6}), desc(kF, {8, 7, 7})};
    PluginTensorDesc out = desc(kF, {2, 8, 5, 6});
    CHECK(rt->onShapeChange(in.data(), 3, &out, 1) == 0);
    in[1] = desc(kF, {2, 3, 5, 7});
    gLogger.clear();
    CHECK(rt->onShapeChange(in.data(), 3, &out, 1) != 0);
    expectError({"DeformGather:", "input 'offset' (index 1) dim 3 (W) must equal dim 3 of input 'x' (W = 6), got 7"});
    void const* inputs[3] = {};
    void* outputs[1] = {};
    CHECK(rt->enqueue(in.data(), &out, inputs, outputs, nullptr, nullptr) != 0);
    in = {desc(kF, {0, 8, 5, 6}), desc(kF, {0, 3, 5, 6}), desc(kF, {8, 7, 7})};
    out = desc(kF, {0, 8, 5, 6});
    CHECK(rt->enqueue(in.data(), &out, inputs, outputs, nullptr, nullptr) == 0);
  }
}

// ---- TokenSort ------------------------------------------------------------------------------------------
void testTokenSort(IPluginCreatorV3One* c) {
  section("TokenSort: creator and fields");
  checkCreator(c, 0, 0);
  PluginPtr p = create(c, {}, "sort");
  IPluginV3OneBuild* b = build(p.get());

  section("TokenSort: output types");
  {
    DataType out[2];
    DataType f[1] = {kF}, h[1] = {kH}, i[1] = {DataType::kINT32};
    CHECK(b->getOutputDataTypes(out, 2, f, 1) == 0 && out[0] == DataType::kINT64 && out[1] == DataType::kINT64);
    CHECK(b->getOutputDataTypes(out, 2, h, 1) == 0 && out[0] == DataType::kINT64 && out[1] == DataType::kINT64);
    gLogger.clear();
    CHECK(b->getOutputDataTypes(out, 2, i, 1) != 0);
    expectError({"TokenSort:", "input 'token_offset' (index 0) must be float32 or float16, got int32"});
    CHECK(b->getOutputDataTypes(out, 1, f, 1) != 0);
    expectError({"TokenSort:", "expects 1 input (token_offset) and 2 outputs"});
  }

  section("TokenSort: supportsFormatCombination");
  checkFormatMatrix(p.get(), 1, 2, [](int32_t pos, std::vector<DataType> const& t) {
    if (pos == 0) return t[0] == kF || t[0] == kH;
    if (pos == 1) return t[1] == DataType::kINT64 || t[1] == DataType::kINT32;
    return t[2] == t[1];
  });

  section("TokenSort: getOutputShapes");
  {
    TestExprBuilder eb;
    IDimensionExpr const* bt = eb.symbol();
    DimsExprs in[1] = {DimsExprs{2, {bt, eb.constant(3136)}}};
    DimsExprs out[2];
    CHECK(b->getOutputShapes(in, 1, nullptr, 0, out, 2, eb) == 0);
    for (auto const& o : out) {
      CHECK(o.nbDims == 2 && o.d[0] == bt && o.d[1]->isConstant() && o.d[1]->getConstantValue() == 3136);
    }
    in[0] = exprs(eb, {1, 56, 56});
    gLogger.clear();
    CHECK(b->getOutputShapes(in, 1, nullptr, 0, out, 2, eb) != 0);
    expectError({"TokenSort:", "input 'token_offset' (index 0) must have rank 2 (Bt, L), got rank 3 (1, 56, 56)",
                 "[layer 'sort']"});
    in[0] = exprs(eb, {1, int64_t{1} << 31});
    CHECK(b->getOutputShapes(in, 1, nullptr, 0, out, 2, eb) != 0);
    expectError({"TokenSort:", "L = 2147483648 must be < 2147483648"});
  }

  section("TokenSort: configurePlugin");
  {
    std::vector<DynamicPluginTensorDesc> v = {dyn(kF, {-1, -1}, {1, 1}, {8, 16384}),
                                              dyn(DataType::kINT64, {-1, -1}, {1, 1}, {8, 16384}),
                                              dyn(DataType::kINT64, {-1, -1}, {1, 1}, {8, 16384})};
    CHECK(b->configurePlugin(v.data(), 1, v.data() + 1, 2) == 0);
    v[1].desc.type = v[2].desc.type = DataType::kINT32;
    CHECK(b->configurePlugin(v.data(), 1, v.data() + 1, 2) == 0);
    v[2].desc.type = DataType::kINT64;
    gLogger.clear();
    CHECK(b->configurePlugin(v.data(), 1, v.data() + 1, 2) != 0);
    expectError({"TokenSort:", "output 'inv_perm' must have the type of output 'perm' (int32), got int64"});
  }

  section("TokenSort: getWorkspaceSize (tokenSortWorkspaceSize: CUB's size query on the host)");
  // CUB's size query makes no allocation or launch but reads the device's properties, so without a CUDA
  // device (or driver) it fails; the plugin must then report the CUDA error, not return a bogus size.
  bool haveDevice = true;
  {
    auto ws = [&](int64_t batch, int64_t length) {
      std::vector<DynamicPluginTensorDesc> v = {dyn(kF, {-1, -1}, {1, 1}, {batch, length}),
                                                dyn(DataType::kINT64, {-1, -1}, {1, 1}, {batch, length}),
                                                dyn(DataType::kINT64, {-1, -1}, {1, 1}, {batch, length})};
      return b->getWorkspaceSize(v.data(), 1, v.data() + 1, 2);
    };
    gLogger.clear();
    size_t const w8 = ws(8, 3136);
    std::string const msg = gLogger.last();
    bool const deviceMissing = contains(msg, "cudaErrorNoDevice") || contains(msg, "cudaErrorInsufficientDriver") ||
                               contains(msg, "cudaErrorInvalidDevice");
    if (w8 == 0 && deviceMissing) {
      haveDevice = false;
      expectError({"TokenSort:", "workspace size query for (Bt, L) = (8, 3136) (optimization profile kMAX) failed"});
      std::printf("   SKIP: workspace sizes need a CUDA device (CUB reads its properties): %s\n", msg.c_str());
    } else {
      size_t const w1 = ws(1, 3136);
      size_t const wl = ws(8, 16384);
      std::printf("   workspace bytes: (1, 3136) %zu, (8, 3136) %zu, (8, 16384) %zu\n", w1, w8, wl);
      CHECK_MSG(gLogger.errors() == 0, "tokenSortWorkspaceSize failed: " + gLogger.last());
      CHECK(w8 > 0);
      CHECK(w1 <= w8 && w8 <= wl);  // the kMAX size covers every smaller shape of the profile
    }
    gLogger.clear();
    CHECK(ws(0, 3136) == 0 && ws(8, 1) == 0 && gLogger.errors() == 0);  // nothing to sort: no query at all
    std::vector<DynamicPluginTensorDesc> bad = {dyn(kF, {-1}, {1}, {3136}), dyn(DataType::kINT64, {-1}),
                                                dyn(DataType::kINT64, {-1})};
    CHECK(b->getWorkspaceSize(bad.data(), 1, bad.data() + 1, 2) == 0);
    expectError({"TokenSort:", "must have rank 2 (Bt, L)"});
  }

  section("TokenSort: onShapeChange, enqueue (no launch)");
  {
    IPluginV3OneRuntime* rt = runtime(p.get());
    PluginTensorDesc in = desc(kF, {2, 3136});
    PluginTensorDesc out[2] = {desc(DataType::kINT64, {2, 3136}), desc(DataType::kINT64, {2, 3136})};
    void const* inputs[1] = {};
    void* outputs[2] = {};
    gLogger.clear();
    if (haveDevice) {
      CHECK(rt->onShapeChange(&in, 1, out, 2) == 0);
      // a workspace is required for a non-empty sort: refused before anything is launched
      CHECK(rt->enqueue(&in, out, inputs, outputs, nullptr, nullptr) != 0);
      expectError({"TokenSort:", "bytes of workspace for (Bt, L) = (2, 3136)"});
    } else {
      CHECK(rt->onShapeChange(&in, 1, out, 2) != 0);
      expectError({"TokenSort:", "workspace size query for (Bt, L) = (2, 3136) failed", "[layer 'sort']"});
    }
    PluginTensorDesc bad = desc(kF, {2, 56, 56});
    CHECK(rt->onShapeChange(&bad, 1, out, 2) != 0);
    expectError({"TokenSort:", "must have rank 2 (Bt, L), got rank 3"});
    PluginTensorDesc huge = desc(kF, {65536, 65536});
    CHECK(rt->onShapeChange(&huge, 1, out, 2) != 0);
    expectError({"TokenSort:", "Bt*L = 4294967296 must be < 2147483648"});
    PluginTensorDesc empty = desc(kF, {0, 3136});
    PluginTensorDesc emptyOut[2] = {desc(DataType::kINT64, {0, 3136}), desc(DataType::kINT64, {0, 3136})};
    gLogger.clear();
    CHECK(rt->onShapeChange(&empty, 1, emptyOut, 2) == 0);
    CHECK(rt->enqueue(&empty, emptyOut, inputs, outputs, nullptr, nullptr) == 0);
    CHECK(gLogger.errors() == 0);
  }
}

// Run fn with fd 2 redirected to a temporary file; return what was written.
std::string captureStderr(std::function<void()> const& fn) {
  std::fflush(stderr);
  char path[] = "/tmp/defmamba_trt_stderr_XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0) return "";
  int saved = dup(2);
  dup2(fd, 2);
  fn();
  std::fflush(stderr);
  dup2(saved, 2);
  close(saved);
  std::string out;
  lseek(fd, 0, SEEK_SET);
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
  close(fd);
  unlink(path);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <path/to/libdefmamba_trt_plugins.so>\n", argv[0]);
    return 2;
  }
  section("dlopen (RTLD_NOW, no libnvinfer in the process)");
  void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    std::fprintf(stderr, "FAIL: dlopen(%s): %s\n", argv[1], dlerror());
    return 1;
  }
  using GetCreators = IPluginCreatorInterface* const* (*)(int32_t&);
  using SetLoggerFinder = void (*)(ILoggerFinder*);
  auto getCreators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
  auto setLoggerFinder = reinterpret_cast<SetLoggerFinder>(dlsym(lib, "setLoggerFinder"));
  CHECK(getCreators != nullptr);
  CHECK(setLoggerFinder != nullptr);
  if (getCreators == nullptr || setLoggerFinder == nullptr) return 1;
  CHECK(dlsym(lib, "getPluginCreators") == nullptr);  // no IPluginV2 creators
  CHECK(dlsym(lib, "cudaLaunchKernel") == nullptr);   // static CUDA runtime kept private
  CHECK(dlopen("libnvinfer.so." TEST_STR(NV_TENSORRT_MAJOR), RTLD_NOW | RTLD_NOLOAD) == nullptr);

  section("setLoggerFinder: ABI guard (no TensorRT loaded -> the finder is not used)");
  TestLoggerFinder finder(&gLogger);
  unsetenv("DEFMAMBA_TRT_LOGGER");
  setLoggerFinder(&finder);
  int32_t nb = -1;
  IPluginCreatorInterface* const* creators = getCreators(nb);
  CHECK(creators != nullptr && nb == 3);
  if (creators == nullptr || nb != 3) return 1;
  IPluginCreatorV3One* scan = nullptr;
  IPluginCreatorV3One* gather = nullptr;
  IPluginCreatorV3One* sort = nullptr;
  for (int32_t i = 0; i < nb; ++i) {
    InterfaceInfo info = creators[i]->getInterfaceInfo();
    CHECK(std::strcmp(info.kind, "PLUGIN CREATOR_V3ONE") == 0 && info.major == 1);
    auto* c = static_cast<IPluginCreatorV3One*>(creators[i]);
    std::string const name = c->getPluginName();
    if (name == "SelectiveScan") scan = c;
    if (name == "DeformGather") gather = c;
    if (name == "TokenSort") sort = c;
  }
  CHECK(scan && gather && sort);
  if (!scan || !gather || !sort) return 1;
  int32_t nb2 = 0;
  CHECK(getCreators(nb2) == creators && nb2 == 3);  // the same static creators every time

  gLogger.clear();
  std::string err = captureStderr([&] { CHECK(create(sort, {i32("x", 1)}, "guarded") == nullptr); });
  CHECK(gLogger.mMessages.empty());
  CHECK_MSG(contains(err, "[defmamba TensorRT plugin] ERROR: TokenSort: unknown plugin field 'x'"), err);

  section("setLoggerFinder: stderr fallback without a finder");
  setLoggerFinder(nullptr);
  err = captureStderr([&] { CHECK(create(scan, {i32("delta_softplus", 5)}, "n") == nullptr); });
  CHECK_MSG(contains(err, "SelectiveScan: plugin field 'delta_softplus' must be 0 or 1, got 5 [layer 'n']"), err);

  // From here on messages go to the test logger, as they would to TensorRT's (DEFMAMBA_TRT_LOGGER=finder
  // skips the libnvinfer check, as for a statically linked TensorRT).
  setenv("DEFMAMBA_TRT_LOGGER", "finder", 1);
  setLoggerFinder(&finder);
  gLogger.clear();
  CHECK(create(sort, {i32("x", 1)}, "via_logger") == nullptr);
  CHECK(gLogger.errors() == 1 && contains(gLogger.last(), "TokenSort: unknown plugin field 'x'"));

  testSelectiveScan(scan);
  testDeformGather(gather);
  testTokenSort(sort);

  section("GPU");
  std::printf("   SKIP: kernel launches through enqueue need a CUDA device (tests/runtime/test_trt_plugins.py runs them "
              "with TensorRT when one is available)\n");

  setLoggerFinder(nullptr);
  std::printf("%d checks, %d failures\n", gChecks, gFailures);
  return gFailures == 0 ? 0 : 1;
}
