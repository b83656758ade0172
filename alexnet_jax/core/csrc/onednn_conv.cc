// oneDNN convolutions for XLA:CPU, as XLA FFI custom calls.
//
// float32 or bfloat16, activations NHWC, kernels HWIO: XLA's layouts, read in
// place (oneDNN's NHWC convolutions are as fast as its blocked ones here).
// Kernels are reordered into the layout oneDNN picks for the shape (a few
// MB at most; the convolutions are 0.1-1 GFLOP each). Built and loaded by
// alexnet_jax/core/onednn.py; the maths is lax.conv_general_dilated's, and
// tests/test_onednn.py checks all three against it.
//
// Every call checks its buffers' shapes against each other before oneDNN
// sees them: oneDNN builds all its descriptors from the one geometry given,
// so a kernel with fewer input channels than x would be read (or written)
// past its end, silently.
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <pthread.h>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

// libgomp's, which libdnnl.so.3 (the GNU OpenMP build) links: declared rather
// than taken from <omp.h> with -fopenmp, which under another compiler would
// link another OpenMP runtime than the one oneDNN runs on.
extern "C" void omp_set_num_threads(int);

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

struct Geometry {
  memory::data_type dt;
  memory::dim n, h, w, c, kh, kw, o, oh, ow, stride, pt, pb, pl, pr;
  // oneDNN splits the work for the thread count current when a primitive
  // is made: one made for another count is another primitive.
  int threads;
  memory::dims src() const { return {n, c, h, w}; }
  memory::dims wei() const { return {o, c, kh, kw}; }
  memory::dims dst() const { return {n, o, oh, ow}; }
  memory::dims strides() const { return {stride, stride}; }
  memory::dims padl() const { return {pt, pl}; }
  memory::dims padr() const { return {pb, pr}; }
  std::string Key(char kind) const {
    std::string k(1, kind);
    k += dt == memory::data_type::bf16 ? "bf16" : "f32";
    for (auto v : {n, h, w, c, kh, kw, o, oh, ow, stride, pt, pb, pl, pr})
      k += "," + std::to_string(v);
    return k + "@" + std::to_string(threads);
  }
};

memory::desc Plain(const Geometry& g, const memory::dims& d, tag t) {
  return memory::desc(d, g.dt, t);
}
memory::desc Any(const Geometry& g, const memory::dims& d) {
  return memory::desc(d, g.dt, tag::any);
}

// XLA runs devices' programs (and independent ops) on concurrent threads.
// In oneDNN's default scratchpad mode, primitives share one scratchpad,
// which concurrent executions overwrite (seen here: wrong gradients and a
// deadlock across two simulated devices), so each call brings its own.
dnnl::primitive_attr Attr() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

dnnl::convolution_forward::primitive_desc FwdPd(const Geometry& g) {
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training,
      dnnl::algorithm::convolution_direct, Plain(g, g.src(), tag::nhwc),
      Any(g, g.wei()), Plain(g, g.dst(), tag::nhwc), g.strides(), g.padl(),
      g.padr(), Attr());
}

// A primitive, plus the reorder between the caller's HWIO kernel and the
// kernel layout the primitive chose (none if they agree).
struct Entry {
  dnnl::primitive prim;
  memory::desc scratch_md;
  memory::desc user_md, prim_md;
  bool reorder = false;
  dnnl::reorder kernel_reorder;
  memory::desc reorder_scratch_md;
};

template <typename Primitive, typename Pd>
Entry MakeEntry(const Pd& pd, const Geometry& g, const memory::desc& prim_md,
                bool to_user) {
  Entry e{Primitive(pd), pd.scratchpad_desc(),
          Plain(g, g.wei(), tag::hwio), prim_md};
  if (e.prim_md != e.user_md) {
    e.reorder = true;
    const auto& from = to_user ? e.prim_md : e.user_md;
    const auto& to = to_user ? e.user_md : e.prim_md;
    dnnl::reorder::primitive_desc rpd(Engine(), from, Engine(), to, Attr());
    e.kernel_reorder = dnnl::reorder(rpd);
    e.reorder_scratch_md = rpd.scratchpad_desc();
  }
  return e;
}

// This call's own scratchpad (see Attr).
memory Scratch(const memory::desc& md) { return memory(md, Engine()); }

void Reorder(const Entry& e, dnnl::stream& s, memory& from, memory& to) {
  e.kernel_reorder.execute(s, {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to},
                               {DNNL_ARG_SCRATCHPAD,
                                Scratch(e.reorder_scratch_md)}});
}

// Primitives are made once per shape (making one searches implementations)
// and executed concurrently: oneDNN primitives are thread-safe to execute.
std::mutex cache_mu;
std::unordered_map<std::string, std::shared_ptr<const Entry>> cache;

template <typename Make>
std::shared_ptr<const Entry> Lookup(const std::string& key, Make make) {
  std::lock_guard<std::mutex> lock(cache_mu);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  auto e = std::make_shared<const Entry>(make());
  cache.emplace(key, e);
  return e;
}

// A call whose buffers do not fit together (shapes, dtypes, attributes):
// reported to XLA as INVALID_ARGUMENT before oneDNN sees anything.
struct BadCall : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

std::string Shape(ffi::Span<const int64_t> d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i)
    s += (i ? "," : "") + std::to_string(d[i]);
  return s + "]";
}

// One call's operands: the convolution's input x [N,H,W,C], kernel w
// [KH,KW,C,O] and output y [N,OH,OW,O], whichever of them are the call's
// arguments or result, with what they are called in messages.
struct Operand {
  const char* name;
  const ffi::AnyBuffer& buffer;
};

struct Attrs {
  int64_t stride, pt, pb, pl, pr, threads, runners;
};

// The geometry of conv(x, w) = y, after checking that every dimension of
// the three buffers agrees with the others and with stride and padding.
Geometry FromShapes(const char* call, Operand x, Operand w, Operand y,
                    const Attrs& a) {
  auto fail = [&](const std::string& why) {
    throw BadCall(std::string(call) + ": " + why);
  };
  ffi::DataType type = x.buffer.element_type();
  if (type != ffi::DataType::F32 && type != ffi::DataType::BF16)
    fail(std::string(x.name) + " is neither float32 nor bfloat16");
  for (const Operand& b : {w, y})
    if (b.buffer.element_type() != type)
      fail(std::string(b.name) + " has another dtype than " + x.name);
  for (const Operand& b : {x, w, y})
    if (b.buffer.dimensions().size() != 4)
      fail(std::string(b.name) + " has rank " +
           std::to_string(b.buffer.dimensions().size()) + ", not 4");
  if (a.stride < 1) fail("stride " + std::to_string(a.stride) + " < 1");
  if (a.pt < 0 || a.pb < 0 || a.pl < 0 || a.pr < 0)
    fail("negative padding");
  if (a.threads < 1 || a.runners < 1) fail("threads and runners must be >= 1");
  for (const Operand& b : {x, w, y})
    for (int64_t d : b.buffer.dimensions())
      if (d < 1)
        fail(std::string(b.name) + " " + Shape(b.buffer.dimensions()) +
             " is empty");
  auto xd = x.buffer.dimensions(), wd = w.buffer.dimensions(),
       yd = y.buffer.dimensions();
  auto is = [](const Operand& b) {
    return std::string(b.name) + " " + Shape(b.buffer.dimensions());
  };
  auto n = [](int64_t v) { return std::to_string(v); };
  if (wd[2] != xd[3])
    fail(is(w) + " has " + n(wd[2]) + " input channels but " + is(x) +
         " has " + n(xd[3]));
  if (yd[0] != xd[0])
    fail(is(y) + " has " + n(yd[0]) + " images but " + is(x) + " has " +
         n(xd[0]));
  if (yd[3] != wd[3])
    fail(is(y) + " has " + n(yd[3]) + " channels but " + is(w) + " has " +
         n(wd[3]) + " output channels");
  int64_t padded_h = xd[1] + a.pt + a.pb, padded_w = xd[2] + a.pl + a.pr;
  if (padded_h < wd[0] || padded_w < wd[1])
    fail(is(w) + " is larger than " + is(x) + " padded");
  int64_t oh = (padded_h - wd[0]) / a.stride + 1;
  int64_t ow = (padded_w - wd[1]) / a.stride + 1;
  std::string from = " but " + is(x) + ", " + is(w) + ", stride " +
                     n(a.stride) + " and its padding give ";
  if (yd[1] != oh) fail(is(y) + " has " + n(yd[1]) + " rows" + from + n(oh));
  if (yd[2] != ow)
    fail(is(y) + " has " + n(yd[2]) + " columns" + from + n(ow));
  return Geometry{type == ffi::DataType::BF16 ? memory::data_type::bf16
                                               : memory::data_type::f32,
                  xd[0], xd[1], xd[2], xd[3], wd[0], wd[1], wd[3], oh, ow,
                  a.stride, a.pt, a.pb, a.pl, a.pr,
                  static_cast<int>(a.threads)};
}

// oneDNN's OpenMP build gives every thread that calls it its own team of
// OpenMP threads, alive as long as that thread. XLA calls custom calls from
// any of its worker threads, so teams piled up, one per worker (up to
// cores x cores threads). Calls therefore run on a few threads of our own
// instead: at most `runners` of them (one per device sharing the
// process's cores), each with a team of `threads` (that device's cores).
class Runners {
 public:
  // Never destroyed: runners wait on its members until the process ends. A
  // forked child has none of the parent's threads (and maybe a locked
  // mutex): it starts over with a fresh set.
  static Runners& Get() {
    static std::once_flag once;
    std::call_once(once, [] {
      instance_ = new Runners;
      pthread_atfork(nullptr, nullptr, [] { instance_ = new Runners; });
    });
    return *instance_;
  }

  // Runs body on a runner with `threads` OpenMP threads; returns when it is
  // done, rethrowing what it threw.
  void Run(int threads, int max_runners, std::function<void()> body) {
    Job job{std::move(body), threads, nullptr, false};
    std::unique_lock<std::mutex> lock(mu_);
    queue_.push_back(&job);
    if (queue_.size() > static_cast<size_t>(idle_) && started_ < max_runners) {
      ++started_;
      std::thread([this] { Loop(); }).detach();
    } else {
      work_.notify_one();
    }
    done_.wait(lock, [&] { return job.done; });
    if (job.error) std::rethrow_exception(job.error);
  }

  int started() {
    std::lock_guard<std::mutex> lock(mu_);
    return started_;
  }

 private:
  struct Job {
    std::function<void()> body;
    int threads;
    std::exception_ptr error;
    bool done = false;
  };

  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      ++idle_;
      work_.wait(lock, [&] { return !queue_.empty(); });
      --idle_;
      Job* job = queue_.front();
      queue_.pop_front();
      lock.unlock();
      // This thread's own OpenMP setting: its team has this many threads.
      omp_set_num_threads(job->threads);
      try {
        job->body();
      } catch (...) {
        job->error = std::current_exception();
      }
      lock.lock();
      job->done = true;
      done_.notify_all();
    }
  }

  static inline Runners* instance_ = nullptr;
  std::mutex mu_;
  std::condition_variable work_, done_;
  std::deque<Job*> queue_;
  int idle_ = 0, started_ = 0;
};

// The convolution's kernel as the primitive reads it: the caller's buffer,
// or a reordered copy of it.
memory KernelIn(const Entry& e, dnnl::stream& s, void* data) {
  memory user(e.user_md, Engine(), data);
  if (!e.reorder) return user;
  memory prim(e.prim_md, Engine());
  Reorder(e, s, user, prim);
  return prim;
}

// Checks the call (on XLA's thread), then runs it on a runner. oneDNN
// reports failures by throwing; XLA wants an error value.
template <typename Check, typename Body>
ffi::Error Guarded(const Attrs& a, Check check, Body body) {
  try {
    Geometry g = check();
    Runners::Get().Run(g.threads, static_cast<int>(a.runners),
                       [&] { body(g); });
    return ffi::Error::Success();
  } catch (const BadCall& e) {
    return ffi::Error::InvalidArgument(e.what());
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what());
  } catch (const std::exception& e) {
    return ffi::Error::Internal(e.what());
  }
}

// y = conv(x, w)
ffi::Error Fwd(ffi::AnyBuffer x, ffi::AnyBuffer w,
               ffi::Result<ffi::AnyBuffer> y, int64_t stride, int64_t pt,
               int64_t pb, int64_t pl, int64_t pr, int64_t threads,
               int64_t runners) {
  Attrs a{stride, pt, pb, pl, pr, threads, runners};
  auto check = [&] {
    return FromShapes("AlexnetConvFwd", {"x", x}, {"kernel", w},
                      {"output", *y}, a);
  };
  return Guarded(a, check, [&](const Geometry& g) {
    auto e = Lookup(g.Key('f'), [&] {
      auto pd = FwdPd(g);
      return MakeEntry<dnnl::convolution_forward>(pd, g, pd.weights_desc(),
                                                  false);
    });
    dnnl::stream s(Engine());
    memory src(Plain(g, g.src(), tag::nhwc), Engine(), x.untyped_data());
    memory dst(Plain(g, g.dst(), tag::nhwc), Engine(), y->untyped_data());
    memory kernel = KernelIn(*e, s, w.untyped_data());
    e->prim.execute(s, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, kernel},
                        {DNNL_ARG_DST, dst},
                        {DNNL_ARG_SCRATCHPAD, Scratch(e->scratch_md)}});
    s.wait();
  });
}

// dx = d(loss)/dx from dy = d(loss)/dy and w
ffi::Error BwdData(ffi::AnyBuffer dy, ffi::AnyBuffer w,
                   ffi::Result<ffi::AnyBuffer> dx, int64_t stride, int64_t pt,
                   int64_t pb, int64_t pl, int64_t pr, int64_t threads,
                   int64_t runners) {
  Attrs a{stride, pt, pb, pl, pr, threads, runners};
  auto check = [&] {
    return FromShapes("AlexnetConvBwdData", {"input gradient (result)", *dx},
                      {"kernel", w}, {"dy", dy}, a);
  };
  return Guarded(a, check, [&](const Geometry& g) {
    auto e = Lookup(g.Key('d'), [&] {
      auto pd = dnnl::convolution_backward_data::primitive_desc(
          Engine(), dnnl::algorithm::convolution_direct,
          Plain(g, g.src(), tag::nhwc), Any(g, g.wei()), Plain(g, g.dst(), tag::nhwc),
          g.strides(), g.padl(), g.padr(), FwdPd(g), Attr());
      return MakeEntry<dnnl::convolution_backward_data>(
          pd, g, pd.weights_desc(), false);
    });
    dnnl::stream s(Engine());
    memory diff_dst(Plain(g, g.dst(), tag::nhwc), Engine(), dy.untyped_data());
    memory diff_src(Plain(g, g.src(), tag::nhwc), Engine(), dx->untyped_data());
    memory kernel = KernelIn(*e, s, w.untyped_data());
    e->prim.execute(s, {{DNNL_ARG_DIFF_DST, diff_dst},
                        {DNNL_ARG_WEIGHTS, kernel},
                        {DNNL_ARG_DIFF_SRC, diff_src},
                        {DNNL_ARG_SCRATCHPAD, Scratch(e->scratch_md)}});
    s.wait();
  });
}

// dw = d(loss)/dw from x and dy
ffi::Error BwdKernel(ffi::AnyBuffer x, ffi::AnyBuffer dy,
                     ffi::Result<ffi::AnyBuffer> dw, int64_t stride,
                     int64_t pt, int64_t pb, int64_t pl, int64_t pr,
                     int64_t threads, int64_t runners) {
  Attrs a{stride, pt, pb, pl, pr, threads, runners};
  auto check = [&] {
    return FromShapes("AlexnetConvBwdKernel", {"x", x},
                      {"kernel gradient (result)", *dw}, {"dy", dy}, a);
  };
  return Guarded(a, check, [&](const Geometry& g) {
    auto e = Lookup(g.Key('w'), [&] {
      auto pd = dnnl::convolution_backward_weights::primitive_desc(
          Engine(), dnnl::algorithm::convolution_direct,
          Plain(g, g.src(), tag::nhwc), Any(g, g.wei()), Plain(g, g.dst(), tag::nhwc),
          g.strides(), g.padl(), g.padr(), FwdPd(g), Attr());
      return MakeEntry<dnnl::convolution_backward_weights>(
          pd, g, pd.diff_weights_desc(), true);
    });
    dnnl::stream s(Engine());
    memory src(Plain(g, g.src(), tag::nhwc), Engine(), x.untyped_data());
    memory diff_dst(Plain(g, g.dst(), tag::nhwc), Engine(), dy.untyped_data());
    memory user(e->user_md, Engine(), dw->untyped_data());
    memory kernel = e->reorder ? memory(e->prim_md, Engine()) : user;
    e->prim.execute(s, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, diff_dst},
                        {DNNL_ARG_DIFF_WEIGHTS, kernel},
                        {DNNL_ARG_SCRATCHPAD, Scratch(e->scratch_md)}});
    if (e->reorder) Reorder(*e, s, kernel, user);
    s.wait();
  });
}

}  // namespace

#define ALEXNET_CONV_BINDING                                              \
  ffi::Ffi::Bind()                                                        \
      .Arg<ffi::AnyBuffer>()                                       \
      .Arg<ffi::AnyBuffer>()                                       \
      .Ret<ffi::AnyBuffer>()                                       \
      .Attr<int64_t>("stride")                                            \
      .Attr<int64_t>("pad_top")                                           \
      .Attr<int64_t>("pad_bottom")                                        \
      .Attr<int64_t>("pad_left")                                          \
      .Attr<int64_t>("pad_right")                                         \
      .Attr<int64_t>("threads")                                           \
      .Attr<int64_t>("runners")

XLA_FFI_DEFINE_HANDLER_SYMBOL(AlexnetConvFwd, Fwd, ALEXNET_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(AlexnetConvBwdData, BwdData,
                              ALEXNET_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(AlexnetConvBwdKernel, BwdKernel,
                              ALEXNET_CONV_BINDING);

// The implementation oneDNN picks for a bfloat16 convolution on this CPU
// ("ref:any" where the CPU has no bfloat16 instructions, too slow to use).
extern "C" int AlexnetConvBf16Impl(char* out, int size) {
  try {
    Geometry g{memory::data_type::bf16, 8, 13, 13, 64, 3, 3, 64, 13, 13,
               1, 1, 1, 1, 1, 1};
    std::snprintf(out, size, "%s", FwdPd(g).impl_info_str());
    return 0;
  } catch (const std::exception& e) {
    std::snprintf(out, size, "%s", e.what());
    return 1;
  }
}

// How many runner threads this process has started (tests/test_onednn.py).
extern "C" int AlexnetConvRunners() { return Runners::Get().started(); }
