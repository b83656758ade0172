// oneDNN convolutions for XLA:CPU, as XLA FFI custom calls.
//
// float32 or bfloat16, activations NHWC, kernels HWIO: XLA's layouts, read in
// place (oneDNN's NHWC convolutions are as fast as its blocked ones here).
// Kernels are reordered into the layout oneDNN picks for the shape (a few
// MB at most; the convolutions are 0.1-1 GFLOP each). Built and loaded by
// alexnet_jax/onednn.py; the maths is lax.conv_general_dilated's, and
// tests/test_onednn.py checks all three against it.
#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

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
    return k;
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

// x [N,H,W,C], w [KH,KW,C,O], y [N,OH,OW,O], all of one dtype.
Geometry FromShapes(const ffi::AnyBuffer& xb, const ffi::AnyBuffer& wb,
                    const ffi::AnyBuffer& yb, int64_t stride, int64_t pt,
                    int64_t pb, int64_t pl, int64_t pr) {
  ffi::DataType type = xb.element_type();
  if (wb.element_type() != type || yb.element_type() != type ||
      (type != ffi::DataType::F32 && type != ffi::DataType::BF16))
    throw std::invalid_argument(
        "oneDNN convolutions take float32 or bfloat16 operands of one type");
  auto x = xb.dimensions(), w = wb.dimensions(), y = yb.dimensions();
  return Geometry{type == ffi::DataType::BF16 ? memory::data_type::bf16
                                               : memory::data_type::f32,
                  x[0], x[1], x[2], x[3], w[0], w[1], w[3], y[1], y[2],
                  stride, pt, pb, pl, pr};
}

// The convolution's kernel as the primitive reads it: the caller's buffer,
// or a reordered copy of it.
memory KernelIn(const Entry& e, dnnl::stream& s, void* data) {
  memory user(e.user_md, Engine(), data);
  if (!e.reorder) return user;
  memory prim(e.prim_md, Engine());
  Reorder(e, s, user, prim);
  return prim;
}

// oneDNN reports failures by throwing; XLA wants an error value.
template <typename Body>
ffi::Error Guarded(Body body) {
  try {
    body();
    return ffi::Error::Success();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what());
  } catch (const std::exception& e) {
    return ffi::Error::Internal(e.what());
  }
}

// y = conv(x, w)
ffi::Error Fwd(ffi::AnyBuffer x, ffi::AnyBuffer w,
               ffi::Result<ffi::AnyBuffer> y, int64_t stride, int64_t pt,
               int64_t pb, int64_t pl, int64_t pr) {
  return Guarded([&] {
    Geometry g = FromShapes(x, w, *y,
                            stride, pt, pb, pl, pr);
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
                   int64_t pb, int64_t pl, int64_t pr) {
  return Guarded([&] {
    Geometry g = FromShapes(*dx, w, dy,
                            stride, pt, pb, pl, pr);
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
                     int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  return Guarded([&] {
    Geometry g = FromShapes(x, *dw, dy,
                            stride, pt, pb, pl, pr);
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
      .Attr<int64_t>("pad_right")

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
               1, 1, 1, 1, 1};
    std::snprintf(out, size, "%s", FwdPd(g).impl_info_str());
    return 0;
  } catch (const std::exception& e) {
    std::snprintf(out, size, "%s", e.what());
    return 1;
  }
}
