// FReLU training kernels for CPU: fp32 or bf16 channels_last (NHWC) activations.
//
// FReLU is y = max(a, BN(depthwise_conv(a))). With stock ops, training runs the depthwise conv,
// BN's statistics and its output, the comparison and the max as separate passes over the
// activation, and as many again in backward. Here forward is two passes (the conv's statistics,
// then the BN'd condition, the max and the mask) and backward two (BN's gradient sums, then the
// conv's gradient, made row by row and used at once for the weight gradient and, through the
// transposed conv, the input gradient). The passes are bound by memory traffic, so the depthwise
// conv is recomputed from the input rows around it, which are in cache, rather than stored: fp32
// forward alone keeps it from one pass to the next, in its output, which it writes anyway.
//
// The unit of work is one image row, W * C contiguous floats in NHWC. A conv tap shifts a whole
// row by whole pixels, so every inner loop runs over a contiguous span of a row, with
// per-channel factors tiled to the row's length: long loops that the compiler vectorizes.
//
// bf16 activations (autocast, or a bf16 model) are widened to fp32 as their rows are read and
// rounded back only where an activation-sized result is stored: the arithmetic, the sums and
// the per-channel parameters are fp32, as torch's own bf16 batch norm keeps them.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

using BFloat16 = c10::BFloat16;

// Element conversions written on the bits, branch-free, so that loops over rows vectorize.
inline float widen(float v) { return v; }
inline float widen(BFloat16 v) {
  const uint32_t bits = static_cast<uint32_t>(v.x) << 16;
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

template <typename T>
inline T narrow(float v);
template <>
inline float narrow<float>(float v) { return v; }
// Round to nearest even, NaN kept a (quiet) NaN: what torch's own conversion gives.
template <>
inline BFloat16 narrow<BFloat16>(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  const uint16_t rounded = static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
  return BFloat16(v != v ? uint16_t{0x7fc0} : rounded, BFloat16::from_bits());
}

struct Geometry {
  int64_t N, H, W, C, K, P;
  int64_t rows() const { return N * H; }
  int64_t row_length() const { return W * C; }
  int64_t count() const { return N * H * W; }
  std::vector<int64_t> sizes() const { return {N, C, H, W}; }
};

// Float sums over this many rows at most before they go into double ones.
constexpr int64_t kRowsPerFloatSum = 16;
constexpr int64_t kRowGrain = 4;

// How the FReLU input a is made from the tensor x a window reads: a = x, or, when FReLU takes
// over the BN (and residual add) before it, a = x * scale + shift (+ shortcut), per-channel scale
// and shift tiled over a row. a is then never stored: its rows are made, in fp32, as the window
// needs them. T is the activations' type, x's and the shortcut's.
template <typename T>
struct InputTransform {
  const float* scale = nullptr;
  const float* shift = nullptr;
  const T* shortcut = nullptr;
};

template <typename T>
void make_row(const T* __restrict__ x, const InputTransform<T>& transform, int64_t row, int64_t L,
              float* __restrict__ out) {
  const T* __restrict__ src = x + row * L;
  if (!transform.scale) {
    for (int64_t t = 0; t < L; ++t) out[t] = widen(src[t]);
    return;
  }
  const float* __restrict__ scale = transform.scale;
  const float* __restrict__ shift = transform.shift;
  if (transform.shortcut) {
    const T* __restrict__ shortcut = transform.shortcut + row * L;
    for (int64_t t = 0; t < L; ++t) out[t] = widen(src[t]) * scale[t] + shift[t] + widen(shortcut[t]);
  } else {
    for (int64_t t = 0; t < L; ++t) out[t] = widen(src[t]) * scale[t] + shift[t];
  }
}

// Floats whose first one starts a cache line, for buffers read with full-width vector loads: a
// 64-byte load that straddles two lines costs two.
class CacheAlignedFloats {
 public:
  explicit CacheAlignedFloats(int64_t n) : storage_(n + kLineFloats, 0.f) {
    void* first = storage_.data();
    size_t space = storage_.size() * sizeof(float);
    data_ = static_cast<float*>(std::align(kLineBytes, n * sizeof(float), first, space));
  }
  float* data() { return data_; }
  const float* data() const { return data_; }

 private:
  static constexpr size_t kLineBytes = 64;
  static constexpr int64_t kLineFloats = kLineBytes / sizeof(float);
  std::vector<float> storage_;
  float* data_;
};

// The K input rows around an output row, each held with P zero pixels on either side, and rows
// outside the image all zeros, so the conv needs no bounds checks. Walking down an image copies
// one new row per output row.
class RowWindow {
 public:
  // The rows are of `input`, of the activations' type T, made into fp32 rows of a by `transform`.
  template <typename T>
  RowWindow(const T* input, const Geometry& g, const InputTransform<T>& transform = {})
      : RowWindow(g, [input, transform, L = g.row_length()](int64_t row, float* out) {
          make_row(input, transform, row, L, out);
        }) {}

  // The rows are computed by make_row(row, out), which writes W * C floats. Walking down, it is
  // called once for each row the window takes in, in increasing order.
  RowWindow(const Geometry& g, std::function<void(int64_t, float*)> make_row)
      : make_row_(std::move(make_row)), g_(g), padded_length_((g.W + 2 * g.P) * g.C), buffer_(g.K * padded_length_),
        key_of_slot_(g.K, kZeroRow), slot_of_tap_row_(g.K) {}

  void move_to(int64_t row) {
    const int64_t n = row / g_.H, h = row % g_.H;
    for (int64_t i = 0; i < g_.K; ++i) {
      const int64_t hh = h + i - g_.P;
      const int64_t slot = (hh + g_.K) % g_.K;
      const int64_t key = (hh >= 0 && hh < g_.H) ? n * g_.H + hh : kZeroRow;
      slot_of_tap_row_[i] = slot;
      if (key_of_slot_[slot] == key) continue;
      float* interior = buffer_.data() + slot * padded_length_ + g_.P * g_.C;
      if (key == kZeroRow) {
        std::fill(interior, interior + g_.row_length(), 0.f);
      } else {
        make_row_(key, interior);
      }
      key_of_slot_[slot] = key;
    }
  }

  // Tap row i (0..K-1) of the current output row, starting at its left padding.
  const float* tap_row(int64_t i) const { return buffer_.data() + slot_of_tap_row_[i] * padded_length_; }

  // The current row itself (of a, after the transform), without padding.
  const float* center_row() const { return tap_row(g_.P) + g_.P * g_.C; }

 private:
  static constexpr int64_t kZeroRow = -1;
  std::function<void(int64_t, float*)> make_row_;
  Geometry g_;
  int64_t padded_length_;
  CacheAlignedFloats buffer_;
  std::vector<int64_t> key_of_slot_, slot_of_tap_row_;
};

// B channels as one value of GCC's vector extension: one vector register when B floats fill it.
// Unaligned, and allowed to alias the floats it is loaded from.
template <int B>
struct Lanes {
  typedef float type __attribute__((vector_size(B * sizeof(float)), aligned(sizeof(float)), may_alias));
};

template <int B>
inline typename Lanes<B>::type load(const float* p) {
  return *reinterpret_cast<const typename Lanes<B>::type*>(p);
}

template <int B>
inline void store(float* p, typename Lanes<B>::type v) {
  *reinterpret_cast<typename Lanes<B>::type*>(p) = v;
}

// Pixels handled together: independent accumulators, so consecutive multiply-adds do not wait
// for each other's results.
constexpr int64_t kPixelBlock = 4;

// nan_propagating_max (below) on B lanes.
template <int B>
inline typename Lanes<B>::type nan_propagating_max_lanes(typename Lanes<B>::type condition,
                                                         typename Lanes<B>::type input) {
  return (condition > input || condition != condition) ? condition : input;
}

// out_row = bias + the depthwise conv at the window's row; taps are [K * K][C]. B channels at a
// time (a compile-time width), kPixelBlock pixels at a time; with MaxWithCenter, max(conv, a)
// instead, FReLU's output, in the same pass. FixedK is the kernel size when it is known at
// compile time (0: read it from g): the tap loops then unroll, which for 3x3 takes half a pass's
// time off.
template <int B, int FixedK, bool MaxWithCenter>
void conv_row_of_size(const RowWindow& window, const float* __restrict__ taps, const float* __restrict__ bias,
                      const Geometry& g, float* __restrict__ out_row) {
  using V = typename Lanes<B>::type;
  const float* center = window.center_row();
  const int64_t C = g.C, K = FixedK ? FixedK : g.K;
  for (int64_t cb = 0; cb < C; cb += B) {
    const V init = bias ? load<B>(bias + cb) : V{};
    int64_t w = 0;
    for (; w + kPixelBlock <= g.W; w += kPixelBlock) {
      V acc[kPixelBlock];
      for (int64_t u = 0; u < kPixelBlock; ++u) acc[u] = init;
      for (int64_t i = 0; i < K; ++i) {
        const float* row = window.tap_row(i) + w * C + cb;
        for (int64_t j = 0; j < K; ++j) {
          const V tap = load<B>(taps + (i * K + j) * C + cb);
          for (int64_t u = 0; u < kPixelBlock; ++u) acc[u] += tap * load<B>(row + (j + u) * C);
        }
      }
      for (int64_t u = 0; u < kPixelBlock; ++u) {
        if (MaxWithCenter) acc[u] = nan_propagating_max_lanes<B>(acc[u], load<B>(center + (w + u) * C + cb));
        store<B>(out_row + (w + u) * C + cb, acc[u]);
      }
    }
    for (; w < g.W; ++w) {
      V acc = init;
      for (int64_t i = 0; i < K; ++i) {
        const float* row = window.tap_row(i) + w * C + cb;
        for (int64_t j = 0; j < K; ++j) acc += load<B>(taps + (i * K + j) * C + cb) * load<B>(row + j * C);
      }
      if (MaxWithCenter) acc = nan_propagating_max_lanes<B>(acc, load<B>(center + w * C + cb));
      store<B>(out_row + w * C + cb, acc);
    }
  }
}

// Calls f with the kernel size as a compile-time constant where the code is specialised for it
// (3, FReLU's), else with 0: read it at run time.
template <typename F>
void with_kernel_size(int64_t K, const F& f) {
  if (K == 3) {
    f(std::integral_constant<int, 3>());
  } else {
    f(std::integral_constant<int, 0>());
  }
}

template <int B, bool MaxWithCenter = false>
void conv_row(const RowWindow& window, const float* __restrict__ taps, const float* __restrict__ bias,
              const Geometry& g, float* __restrict__ out_row) {
  with_kernel_size(g.K, [&](auto size) {
    conv_row_of_size<B, decltype(size)::value, MaxWithCenter>(window, taps, bias, g, out_row);
  });
}

// sum_taps[(i * K + j) * C + c] += sum over the row's pixels w of grad_row[w, c] * input[w + j - P, c]
// in tap row i: the depthwise weight's gradient from one output row.
// FixedK as in conv_row_of_size.
template <int B, int FixedK>
void add_tap_products_of_size(const RowWindow& window, const float* __restrict__ grad_row, const Geometry& g,
                              float* __restrict__ sum_taps) {
  using V = typename Lanes<B>::type;
  const int64_t C = g.C, K = FixedK ? FixedK : g.K;
  for (int64_t cb = 0; cb < C; cb += B) {
    for (int64_t i = 0; i < K; ++i) {
      for (int64_t j = 0; j < K; ++j) {
        const float* src = window.tap_row(i) + j * C + cb;
        const float* grad = grad_row + cb;
        V acc[kPixelBlock] = {};
        int64_t w = 0;
        for (; w + kPixelBlock <= g.W; w += kPixelBlock) {
          for (int64_t u = 0; u < kPixelBlock; ++u) acc[u] += load<B>(grad + (w + u) * C) * load<B>(src + (w + u) * C);
        }
        for (; w < g.W; ++w) acc[0] += load<B>(grad + w * C) * load<B>(src + w * C);
        float* sum = sum_taps + (i * K + j) * C + cb;
        V total = load<B>(sum);
        for (int64_t u = 0; u < kPixelBlock; ++u) total += acc[u];
        store<B>(sum, total);
      }
    }
  }
}

template <int B>
void add_tap_products(const RowWindow& window, const float* __restrict__ grad_row, const Geometry& g,
                      float* __restrict__ sum_taps) {
  with_kernel_size(g.K, [&](auto size) {
    add_tap_products_of_size<B, decltype(size)::value>(window, grad_row, g, sum_taps);
  });
}

// Calls f with the widest channel block (16 where one register holds it, 8, 4 or 1) that divides
// C. A block wider than a register is split by the compiler into code that runs ~4x slower.
template <typename F>
void with_channel_block(int64_t C, const F& f) {
#ifdef __AVX512F__
  if (C % 16 == 0) {
    f(std::integral_constant<int, 16>());
    return;
  }
#endif
  if (C % 8 == 0) {
    f(std::integral_constant<int, 8>());
  } else if (C % 4 == 0) {
    f(std::integral_constant<int, 4>());
  } else {
    f(std::integral_constant<int, 1>());
  }
}

// Row loops are functions of their own, with restrict pointers as arguments: inside the lambdas,
// pointers captured by reference could alias the stores, and the loops would not vectorize.

template <typename T>
void add_moments(const T* __restrict__ values, float* __restrict__ sum, float* __restrict__ sumsq, int64_t n) {
  for (int64_t t = 0; t < n; ++t) {
    const float v = widen(values[t]);
    sum[t] += v;
    sumsq[t] += v * v;
  }
}

// max(condition, input) as torch.maximum has it: NaN from either side propagates, where a plain
// comparison would drop the condition's.
inline float nan_propagating_max(float condition, float input) {
  return (condition > input || condition != condition) ? condition : input;
}

template <typename T>
void funnel_max(const float* __restrict__ conv, const float* __restrict__ scale, const float* __restrict__ shift,
                const float* __restrict__ input, T* __restrict__ out, uint8_t* __restrict__ wins, int64_t n) {
  for (int64_t t = 0; t < n; ++t) {
    const float condition = conv[t] * scale[t] + shift[t];
    out[t] = narrow<T>(nan_propagating_max(condition, input[t]));
    wins[t] = condition > input[t];
  }
}

// funnel_max for fp32 with the conv output in the output row: conv_then_out holds the conv output
// on entry and FReLU's output on return.
void funnel_max_in_place(float* __restrict__ conv_then_out, const float* __restrict__ scale,
                         const float* __restrict__ shift, const float* __restrict__ input, uint8_t* __restrict__ wins,
                         int64_t n) {
  for (int64_t t = 0; t < n; ++t) {
    const float condition = conv_then_out[t] * scale[t] + shift[t];
    conv_then_out[t] = nan_propagating_max(condition, input[t]);
    wins[t] = condition > input[t];
  }
}

template <typename T>
void add_norm_grad_sums(const float* __restrict__ conv, const T* __restrict__ grad, const uint8_t* __restrict__ wins,
                        const float* __restrict__ mean, const float* __restrict__ invstd, float* __restrict__ sum_grad,
                        float* __restrict__ sum_grad_normed, int64_t n) {
  for (int64_t t = 0; t < n; ++t) {
    const float grad_condition = wins[t] ? widen(grad[t]) : 0.f;
    sum_grad[t] += grad_condition;
    sum_grad_normed[t] += grad_condition * ((conv[t] - mean[t]) * invstd[t]);
  }
}

template <typename T>
void conv_grad(const float* __restrict__ conv, const T* __restrict__ grad, const uint8_t* __restrict__ wins,
               const float* __restrict__ k, const float* __restrict__ offset, const float* __restrict__ slope,
               float* __restrict__ grad_conv, int64_t n) {
  for (int64_t t = 0; t < n; ++t) {
    const float grad_condition = wins[t] ? widen(grad[t]) : 0.f;
    grad_conv[t] = k[t] * grad_condition + offset[t] + slope[t] * conv[t];
  }
}

void add_row(const float* __restrict__ values, float* __restrict__ sum, int64_t n) {
  for (int64_t t = 0; t < n; ++t) sum[t] += values[t];
}

// The gradient sums of the BN before FReLU: of the gradient of its output, and of that gradient
// times its input.
template <typename T>
void add_grad_sums(const T* __restrict__ grad, const T* __restrict__ input, float* __restrict__ sum_grad,
                   float* __restrict__ sum_grad_input, int64_t n) {
  for (int64_t t = 0; t < n; ++t) {
    const float g = widen(grad[t]);
    sum_grad[t] += g;
    sum_grad_input[t] += g * widen(input[t]);
  }
}

// A BN's input gradient, k * grad + slope * input + offset. out may be grad itself.
template <typename T>
void batch_norm_input_grad(const T* grad, const T* __restrict__ input, const float* __restrict__ k,
                           const float* __restrict__ slope, const float* __restrict__ offset, T* out, int64_t n) {
  for (int64_t t = 0; t < n; ++t) out[t] = narrow<T>(k[t] * widen(grad[t]) + slope[t] * widen(input[t]) + offset[t]);
}

// The input's gradient: the transposed conv's part, plus grad where the input won the max.
template <typename T>
void input_grad(const float* __restrict__ through_conv, const T* __restrict__ grad, const uint8_t* __restrict__ wins,
                T* __restrict__ out, int64_t n) {
  for (int64_t t = 0; t < n; ++t) out[t] = narrow<T>(through_conv[t] + (wins[t] ? 0.f : widen(grad[t])));
}

template <typename T>
void narrow_row(const float* __restrict__ values, T* __restrict__ out, int64_t n) {
  for (int64_t t = 0; t < n; ++t) out[t] = narrow<T>(values[t]);
}

void flush(float* __restrict__ partial, double* __restrict__ total, int64_t n) {
  for (int64_t t = 0; t < n; ++t) {
    total[t] += partial[t];
    partial[t] = 0.f;
  }
}

// Sums over rows [r0, r1) into `total` (doubles, `width` of them): `sum_row(row, partial)` adds one
// row into float partial sums, which go into the doubles every kRowsPerFloatSum rows.
template <typename F>
void sum_rows(int64_t r0, int64_t r1, int64_t width, double* total, const F& sum_row) {
  CacheAlignedFloats partial(width);
  for (int64_t r = r0; r < r1; ++r) {
    sum_row(r, partial.data());
    if ((r - r0 + 1) % kRowsPerFloatSum == 0 || r + 1 == r1) flush(partial.data(), total, width);
  }
}

// The bookkeeping below is plain loops over per-channel vectors rather than tensor ops: these
// vectors are small, and each tensor op costs microseconds of dispatch, many times per step.
using Doubles = std::vector<double>;
using Floats = std::vector<float>;

// Rows split into one chunk per thread: each chunk sums into its own accumulators, which are
// then added in chunk order, so results do not depend on scheduling.
template <typename F>
Doubles sum_over_row_chunks(const Geometry& g, int64_t width, const F& sum_chunk) {
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), g.rows()));
  Doubles partial(chunks * width, 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      const int64_t r0 = g.rows() * chunk / chunks, r1 = g.rows() * (chunk + 1) / chunks;
      sum_chunk(r0, r1, partial.data() + chunk * width);
    }
  });
  Doubles total(partial.begin(), partial.begin() + width);
  for (int64_t chunk = 1; chunk < chunks; ++chunk) {
    for (int64_t t = 0; t < width; ++t) total[t] += partial[chunk * width + t];
  }
  return total;
}

// Per-channel sums tiled over a row (W * C values from `tiled`) folded to C.
Doubles fold_row(const double* tiled, const Geometry& g) {
  Doubles folded(g.C, 0.0);
  for (int64_t w = 0; w < g.W; ++w) {
    for (int64_t c = 0; c < g.C; ++c) folded[c] += tiled[w * g.C + c];
  }
  return folded;
}

// A per-channel vector repeated for every pixel of a row: W * C floats.
template <typename T>
Floats tile(const T& per_channel, const Geometry& g) {
  Floats tiled(g.row_length());
  for (int64_t w = 0; w < g.W; ++w) {
    for (int64_t c = 0; c < g.C; ++c) tiled[w * g.C + c] = static_cast<float>(per_channel[c]);
  }
  return tiled;
}

at::Tensor to_tensor(const Doubles& values) {
  at::Tensor t = at::empty({static_cast<int64_t>(values.size())}, at::kFloat);
  std::copy(values.begin(), values.end(), t.data_ptr<float>());
  return t;
}

// Undefined for a result that does not exist: a gradient of the depthwise bias without one, the
// norm's results without a BN before FReLU.
at::Tensor to_tensor_if(bool exists, const Doubles& values) { return exists ? to_tensor(values) : at::Tensor(); }

bool is_activation_type(at::ScalarType type) { return type == at::kFloat || type == at::kBFloat16; }

// An activation-sized tensor: 4-D, on the CPU, channels_last, and of `type` (fp32 or bf16).
void check_activation(const at::Tensor& t, const char* name, at::ScalarType type) {
  TORCH_CHECK(t.device().is_cpu() && is_activation_type(t.scalar_type()) && t.dim() == 4 &&
                  t.is_contiguous(at::MemoryFormat::ChannelsLast),
              "FReLU CPU kernel: ", name, " must be a 4-D float32 or bfloat16 CPU tensor in channels_last layout");
  TORCH_CHECK(t.scalar_type() == type, "FReLU CPU kernel: ", name, " is ", t.scalar_type(), " but the input is ", type);
}

Geometry geometry(const at::Tensor& a, const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) == a.size(1) && weight.size(1) == 1 &&
                  weight.size(2) == weight.size(3) && weight.size(2) % 2 == 1 && weight.scalar_type() == at::kFloat,
              "FReLU CPU kernel: the depthwise weight must be a float32 [C, 1, K, K] with K odd and C = ",
              a.size(1), " input channels, got ", weight.sizes());
  const int64_t K = weight.size(2);
  return {a.size(0), a.size(2), a.size(3), a.size(1), K, K / 2};
}

// A per-channel parameter's data: a contiguous float32 vector of C.
const float* channel_data(const at::Tensor& t, const Geometry& g) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.numel() == g.C,
              "FReLU CPU kernel: a per-channel parameter must be a contiguous float32 vector of ", g.C,
              " values, got ", t.sizes());
  return t.data_ptr<float>();
}

const float* channel_data_or_null(const c10::optional<at::Tensor>& t, const Geometry& g) {
  return t.has_value() && t->defined() ? channel_data(*t, g) : nullptr;
}

// The depthwise kernel [C, 1, K, K] as taps [K * K][C]; `flip` gives the kernel of the transposed
// conv, which maps the output's gradient back to the input.
Floats tap_major(const at::Tensor& weight, const Geometry& g, bool flip) {
  const at::Tensor contiguous = weight.contiguous();
  const float* w = contiguous.data_ptr<float>();
  const int64_t KK = g.K * g.K;
  Floats taps(KK * g.C);
  for (int64_t c = 0; c < g.C; ++c) {
    for (int64_t t = 0; t < KK; ++t) taps[t * g.C + c] = w[c * KK + (flip ? KK - 1 - t : t)];
  }
  return taps;
}

// What every kernel starts from: the activation x (checked), its geometry, and the depthwise
// conv's taps and bias. T is the activations' type; the parameters are fp32.
template <typename T>
struct ConvInputs {
  ConvInputs(const at::Tensor& x_tensor, const at::Tensor& weight, const c10::optional<at::Tensor>& bias_tensor)
      : g((check_activation(x_tensor, "input", x_tensor.scalar_type()), geometry(x_tensor, weight))),
        taps(tap_major(weight, g, false)),
        bias(channel_data_or_null(bias_tensor, g)),
        x(x_tensor.data_ptr<T>()) {}
  Geometry g;
  Floats taps;
  const float* bias;
  const T* x;
};

// Runs row_op(window, row, scratch) over all rows, in parallel, each thread walking its rows in
// order; scratch holds one row.
template <typename T, typename F>
void for_each_row(const T* input, const InputTransform<T>& transform, const Geometry& g, const F& row_op) {
  at::parallel_for(0, g.rows(), kRowGrain, [&](int64_t r0, int64_t r1) {
    RowWindow window(input, g, transform);
    CacheAlignedFloats scratch(g.row_length());
    for (int64_t r = r0; r < r1; ++r) {
      window.move_to(r);
      row_op(window, r, scratch.data());
    }
  });
}

// Sums row_op(window, row, scratch, partial) over all rows into `width` doubles; see
// sum_over_row_chunks.
template <typename T, typename F>
Doubles sum_each_row(const T* input, const InputTransform<T>& transform, const Geometry& g, int64_t width,
                     const F& row_op) {
  return sum_over_row_chunks(g, width, [&](int64_t r0, int64_t r1, double* total) {
    RowWindow window(input, g, transform);
    CacheAlignedFloats scratch(g.row_length());
    sum_rows(r0, r1, width, total, [&](int64_t r, float* partial) {
      window.move_to(r);
      row_op(window, r, scratch.data(), partial);
    });
  });
}

// A training-mode BN's batch statistics per channel.
struct BatchStatistics {
  Doubles mean, var, invstd;
};

// From tiled sums and sums of squares (2 * W * C values).
BatchStatistics batch_statistics(const Doubles& moments, const Geometry& g, double eps) {
  const Doubles sum = fold_row(moments.data(), g), sumsq = fold_row(moments.data() + g.row_length(), g);
  const double count = static_cast<double>(g.count());
  BatchStatistics stats{Doubles(g.C), Doubles(g.C), Doubles(g.C)};
  for (int64_t c = 0; c < g.C; ++c) {
    stats.mean[c] = sum[c] / count;
    stats.var[c] = std::max(0.0, sumsq[c] / count - stats.mean[c] * stats.mean[c]);
    stats.invstd[c] = 1.0 / std::sqrt(stats.var[c] + eps);
  }
  return stats;
}

// A BN's output as scale * input + shift per channel, tiled over a row.
struct TiledAffine {
  Floats scale, shift;
};

template <typename T>
TiledAffine batch_norm_affine(const T& mean, const T& invstd, const float* weight, const float* bias, const Geometry& g) {
  Doubles scale(g.C), shift(g.C);
  for (int64_t c = 0; c < g.C; ++c) {
    scale[c] = static_cast<double>(invstd[c]) * weight[c];
    shift[c] = bias[c] - static_cast<double>(mean[c]) * scale[c];
  }
  return {tile(scale, g), tile(shift, g)};
}

// A training-mode BN's backward as grad_input = k * grad_output + slope * input + offset per
// channel, tiled over a row: k * (grad - mean(grad) - normed * mean(grad * normed)) with normed =
// (input - mean) * invstd, from the sums of grad (the BN bias's gradient) and of grad * normed
// (its weight's).
struct BatchNormGrad {
  Floats k, slope, offset;
};

template <typename T>
BatchNormGrad batch_norm_grad(const float* weight, const T& mean, const T& invstd, const Doubles& sum_grad,
                              const Doubles& sum_grad_normed, const Geometry& g) {
  const double count = static_cast<double>(g.count());
  Doubles k(g.C), slope(g.C), offset(g.C);
  for (int64_t c = 0; c < g.C; ++c) {
    k[c] = static_cast<double>(weight[c]) * invstd[c];
    slope[c] = -k[c] * sum_grad_normed[c] / count * invstd[c];
    offset[c] = -k[c] * sum_grad[c] / count - slope[c] * mean[c];
  }
  return {tile(k, g), tile(slope, g), tile(offset, g)};
}

// The BN before FReLU, given as `affine`, and the residual add after it, as an InputTransform.
template <typename T>
InputTransform<T> norm_transform(const TiledAffine& affine, const c10::optional<at::Tensor>& shortcut, const Geometry& g) {
  InputTransform<T> transform;
  transform.scale = affine.scale.data();
  transform.shift = affine.shift.data();
  if (shortcut.has_value() && shortcut->defined()) {
    check_activation(*shortcut, "shortcut", c10::CppTypeToScalarType<T>::value);
    TORCH_CHECK(shortcut->sizes().vec() == g.sizes(), "FReLU CPU kernel: shortcut must be shaped like the input");
    transform.shortcut = shortcut->data_ptr<T>();
  }
  return transform;
}

// FReLU of a = x, or of a = norm(x) (+ shortcut) with `norm` a training-mode BN given by its
// weight and bias. Returns out, mask (uint8), and the batch mean, invstd and biased variance of
// the funnel's BN, then of `norm` (undefined without it).
template <typename T>
std::vector<at::Tensor> forward_of(const at::Tensor& x, const c10::optional<at::Tensor>& shortcut,
                                   const c10::optional<at::Tensor>& norm_weight,
                                   const c10::optional<at::Tensor>& norm_bias, double norm_eps, const at::Tensor& weight,
                                   const c10::optional<at::Tensor>& bias, const at::Tensor& bn_weight,
                                   const at::Tensor& bn_bias, double eps) {
  const ConvInputs<T> in(x, weight, bias);
  const Geometry& g = in.g;
  const int64_t L = g.row_length();
  const float* taps = in.taps.data();
  at::Tensor out = at::empty_like(x);
  at::Tensor mask = at::empty_like(x, x.options().dtype(at::kByte));
  T* out_data = out.data_ptr<T>();
  uint8_t* mask_data = mask.data_ptr<uint8_t>();

  InputTransform<T> transform;
  TiledAffine norm_affine;
  BatchStatistics norm_stats;
  const bool has_norm = norm_weight.has_value() && norm_weight->defined();
  if (has_norm) {
    const Doubles norm_moments = sum_over_row_chunks(g, 2 * L, [&](int64_t r0, int64_t r1, double* total) {
      sum_rows(r0, r1, 2 * L, total, [&](int64_t r, float* partial) {
        add_moments(in.x + r * L, partial, partial + L, L);
      });
    });
    norm_stats = batch_statistics(norm_moments, g, norm_eps);
    TORCH_CHECK(norm_bias.has_value() && norm_bias->defined(), "FReLU CPU kernel: the BN before FReLU needs its bias");
    norm_affine = batch_norm_affine(norm_stats.mean, norm_stats.invstd, channel_data(*norm_weight, g),
                                    channel_data(*norm_bias, g), g);
    transform = norm_transform<T>(norm_affine, shortcut, g);
  } else {
    TORCH_CHECK(!(shortcut.has_value() && shortcut->defined()), "FReLU CPU kernel: a shortcut needs the BN before it");
  }

  // fp32 keeps the conv output from the first pass to the second in the output itself, so the
  // second needs no window; bf16 computes it again (an fp32 buffer for it measured slower).
  constexpr bool kKeepConv = std::is_same<T, float>::value;
  float* kept_conv = kKeepConv ? reinterpret_cast<float*>(out_data) : nullptr;
  BatchStatistics stats;
  with_channel_block(g.C, [&](auto block) {
    constexpr int B = decltype(block)::value;
    const Doubles moments = sum_each_row(in.x, transform, g, 2 * L, [&](const RowWindow& window, int64_t r,
                                                                          float* scratch, float* partial) {
      float* conv = kKeepConv ? kept_conv + r * L : scratch;
      conv_row<B>(window, taps, in.bias, g, conv);
      add_moments(conv, partial, partial + L, L);
    });
    stats = batch_statistics(moments, g, eps);
    const TiledAffine affine = batch_norm_affine(stats.mean, stats.invstd, channel_data(bn_weight, g),
                                                 channel_data(bn_bias, g), g);
    if constexpr (kKeepConv) {
      at::parallel_for(0, g.rows(), kRowGrain, [&](int64_t r0, int64_t r1) {
        CacheAlignedFloats input(L);
        for (int64_t r = r0; r < r1; ++r) {
          make_row(in.x, transform, r, L, input.data());
          funnel_max_in_place(kept_conv + r * L, affine.scale.data(), affine.shift.data(), input.data(),
                              mask_data + r * L, L);
        }
      });
    } else {
      for_each_row(in.x, transform, g, [&](const RowWindow& window, int64_t r, float* conv) {
        conv_row<B>(window, taps, in.bias, g, conv);
        funnel_max(conv, affine.scale.data(), affine.shift.data(), window.center_row(), out_data + r * L,
                   mask_data + r * L, L);
      });
    }
  });
  return {out, mask, to_tensor(stats.mean), to_tensor(stats.invstd), to_tensor(stats.var),
          to_tensor_if(has_norm, norm_stats.mean), to_tensor_if(has_norm, norm_stats.invstd),
          to_tensor_if(has_norm, norm_stats.var)};
}

// Eval-mode FReLU with its BN folded into the depthwise weight and bias: max(x, conv(x) + bias),
// one pass, nothing kept.
template <typename T>
at::Tensor inference_of(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  const ConvInputs<T> in(x, weight, bias);
  const Geometry& g = in.g;
  const int64_t L = g.row_length();
  at::Tensor out = at::empty_like(x);
  T* out_data = out.data_ptr<T>();
  with_channel_block(g.C, [&](auto block) {
    constexpr int B = decltype(block)::value;
    for_each_row(in.x, InputTransform<T>{}, g, [&](const RowWindow& window, int64_t r, float* scratch) {
      if constexpr (std::is_same<T, float>::value) {
        conv_row<B, true>(window, in.taps.data(), in.bias, g, out_data + r * L);
      } else {
        conv_row<B, true>(window, in.taps.data(), in.bias, g, scratch);
        narrow_row(scratch, out_data + r * L, L);
      }
    });
  });
  return out;
}

// The gradients of forward's a (the shortcut's too), of the depthwise weight, its bias (undefined
// without one), and of the funnel BN's weight and bias; then, with `norm`, the gradients of x and
// of norm's weight and bias (else undefined). Without a shortcut, x's gradient is made in a's
// tensor, which then holds it.
template <typename T>
std::vector<at::Tensor> backward_of(const at::Tensor& grad_out_any, const at::Tensor& x,
                                    const c10::optional<at::Tensor>& shortcut,
                                    const c10::optional<at::Tensor>& norm_weight,
                                    const c10::optional<at::Tensor>& norm_bias,
                                    const c10::optional<at::Tensor>& norm_mean,
                                    const c10::optional<at::Tensor>& norm_invstd, const at::Tensor& mask,
                                    const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                                    const at::Tensor& bn_weight, const at::Tensor& mean, const at::Tensor& invstd) {
  const ConvInputs<T> in(x, weight, bias);
  const Geometry& g = in.g;
  const at::Tensor grad_out = grad_out_any.contiguous(at::MemoryFormat::ChannelsLast);
  check_activation(grad_out, "grad_out", x.scalar_type());
  TORCH_CHECK(mask.scalar_type() == at::kByte && mask.is_contiguous(at::MemoryFormat::ChannelsLast) &&
                  mask.sizes() == x.sizes(),
              "FReLU CPU kernel: mask must be a channels_last uint8 tensor shaped like the input");
  const int64_t L = g.row_length(), KK = g.K * g.K, C = g.C;
  const float* taps = in.taps.data();
  const Floats flipped = tap_major(weight, g, true);
  const float* mean_data = channel_data(mean, g);
  const float* invstd_data = channel_data(invstd, g);
  const Floats mean_tiled = tile(mean_data, g), invstd_tiled = tile(invstd_data, g);
  const T* grad_data = grad_out.data_ptr<T>();
  const uint8_t* mask_data = mask.data_ptr<uint8_t>();
  at::Tensor grad_input = at::empty_like(x);
  T* grad_input_data = grad_input.data_ptr<T>();

  InputTransform<T> transform;
  TiledAffine norm_affine;
  const bool has_norm = norm_weight.has_value() && norm_weight->defined();
  if (has_norm) {
    TORCH_CHECK(norm_bias.has_value() && norm_mean.has_value() && norm_invstd.has_value(),
                "FReLU CPU kernel: the BN before FReLU needs its bias and batch statistics");
    norm_affine = batch_norm_affine(channel_data(*norm_mean, g), channel_data(*norm_invstd, g),
                                    channel_data(*norm_weight, g), channel_data(*norm_bias, g), g);
    transform = norm_transform<T>(norm_affine, shortcut, g);
  }

  Doubles grad_bn_weight(C), grad_bn_bias(C), grad_weight(KK * C), grad_bias, grad_norm_weight, grad_norm_bias;
  at::Tensor grad_x;
  with_channel_block(g.C, [&](auto block) {
    constexpr int B = decltype(block)::value;
    // BN's gradient sums: of the condition's gradient (grad_out where the funnel won), and of
    // its product with the normalised conv output.
    const Doubles sums = sum_each_row(in.x, transform, g, 2 * L, [&](const RowWindow& window, int64_t r, float* conv,
                                                                       float* partial) {
      conv_row<B>(window, taps, in.bias, g, conv);
      add_norm_grad_sums(conv, grad_data + r * L, mask_data + r * L, mean_tiled.data(), invstd_tiled.data(), partial,
                         partial + L, L);
    });
    grad_bn_bias = fold_row(sums.data(), g);
    grad_bn_weight = fold_row(sums.data() + L, g);
    const BatchNormGrad funnel_bn_grad = batch_norm_grad(channel_data(bn_weight, g), mean_data, invstd_data,
                                                         grad_bn_bias, grad_bn_weight, g);

    // The input's gradient, the transposed conv of the conv output's gradient plus grad_out where
    // the input won, and the depthwise weight's gradient, the conv output's gradient times the
    // input rows it came from. The conv output's gradient is never stored: each chunk of rows
    // makes its rows (the conv again, from the input) as the transposed conv's window takes them
    // in, and the P rows beyond either end of the chunk as well, which only the window uses.
    // With the BN before FReLU, its gradient sums too, from the input's gradient rows as they are made.
    const int64_t width = KK * C + L + (has_norm ? 2 * L : 0);
    const Doubles weight_sums = sum_over_row_chunks(g, width, [&](int64_t r0, int64_t r1, double* total) {
      RowWindow input_window(in.x, g, transform);
      CacheAlignedFloats conv(L), through_conv(L);
      float* partial = nullptr;
      RowWindow grad_conv_window(g, [&](int64_t q, float* grad_conv) {
        input_window.move_to(q);
        conv_row<B>(input_window, taps, in.bias, g, conv.data());
        conv_grad(conv.data(), grad_data + q * L, mask_data + q * L, funnel_bn_grad.k.data(),
                  funnel_bn_grad.offset.data(), funnel_bn_grad.slope.data(), grad_conv, L);
        if (q < r0 || q >= r1) return;  // the chunk beside sums its own rows
        add_tap_products<B>(input_window, grad_conv, g, partial);
        if (in.bias) add_row(grad_conv, partial + KK * C, L);
      });
      sum_rows(r0, r1, width, total, [&](int64_t r, float* row_partial) {
        partial = row_partial;
        grad_conv_window.move_to(r);
        conv_row<B>(grad_conv_window, flipped.data(), nullptr, g, through_conv.data());
        input_grad(through_conv.data(), grad_data + r * L, mask_data + r * L, grad_input_data + r * L, L);
        if (has_norm) {
          float* norm_sums = row_partial + KK * C + L;
          add_grad_sums(grad_input_data + r * L, in.x + r * L, norm_sums, norm_sums + L, L);
        }
      });
    });
    std::copy(weight_sums.begin(), weight_sums.begin() + KK * C, grad_weight.begin());
    if (in.bias) grad_bias = fold_row(weight_sums.data() + KK * C, g);
    if (has_norm) {
      grad_norm_bias = fold_row(weight_sums.data() + KK * C + L, g);
      grad_norm_weight = fold_row(weight_sums.data() + KK * C + 2 * L, g);
    }
  });
  if (has_norm) {
    // The sums above are of grad * x; the BN's weight gradient is the sum of grad * normed x.
    const float* norm_mean_data = channel_data(*norm_mean, g);
    const float* norm_invstd_data = channel_data(*norm_invstd, g);
    for (int64_t c = 0; c < C; ++c) {
      grad_norm_weight[c] = norm_invstd_data[c] * (grad_norm_weight[c] - norm_mean_data[c] * grad_norm_bias[c]);
    }
    const BatchNormGrad norm_grad = batch_norm_grad(channel_data(*norm_weight, g), norm_mean_data, norm_invstd_data,
                                                    grad_norm_bias, grad_norm_weight, g);
    // The gradient of a is the shortcut's too; without a shortcut, x's takes its place.
    grad_x = transform.shortcut ? at::empty_like(x) : grad_input;
    T* grad_x_data = grad_x.data_ptr<T>();
    at::parallel_for(0, g.rows(), kRowGrain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        batch_norm_input_grad(grad_input_data + r * L, in.x + r * L, norm_grad.k.data(), norm_grad.slope.data(),
                              norm_grad.offset.data(), grad_x_data + r * L, L);
      }
    });
  }
  // grad_weight is tap-major [K * K][C]; the weight is [C, 1, K, K].
  at::Tensor grad_weight_tensor = at::empty(weight.sizes(), at::kFloat);
  float* gw = grad_weight_tensor.data_ptr<float>();
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t t = 0; t < KK; ++t) gw[c * KK + t] = static_cast<float>(grad_weight[t * C + c]);
  }
  return {grad_input, grad_weight_tensor, to_tensor_if(in.bias != nullptr, grad_bias), to_tensor(grad_bn_weight),
          to_tensor(grad_bn_bias), grad_x, to_tensor_if(has_norm, grad_norm_weight),
          to_tensor_if(has_norm, grad_norm_bias)};
}

// Calls f with a value of the activations' C++ type, float or BFloat16, as x's dtype says.
template <typename F>
auto with_activation_type(const at::Tensor& x, const F& f) {
  TORCH_CHECK(is_activation_type(x.scalar_type()),
              "FReLU CPU kernel: the input must be float32 or bfloat16, got ", x.scalar_type());
  return x.scalar_type() == at::kBFloat16 ? f(BFloat16()) : f(float());
}

std::vector<at::Tensor> forward(const at::Tensor& x, const c10::optional<at::Tensor>& shortcut,
                                const c10::optional<at::Tensor>& norm_weight, const c10::optional<at::Tensor>& norm_bias,
                                double norm_eps, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                                const at::Tensor& bn_weight, const at::Tensor& bn_bias, double eps) {
  return with_activation_type(x, [&](auto type) {
    return forward_of<decltype(type)>(x, shortcut, norm_weight, norm_bias, norm_eps, weight, bias, bn_weight, bn_bias,
                                      eps);
  });
}

at::Tensor inference(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  return with_activation_type(x, [&](auto type) { return inference_of<decltype(type)>(x, weight, bias); });
}

std::vector<at::Tensor> backward(const at::Tensor& grad_out, const at::Tensor& x,
                                 const c10::optional<at::Tensor>& shortcut, const c10::optional<at::Tensor>& norm_weight,
                                 const c10::optional<at::Tensor>& norm_bias, const c10::optional<at::Tensor>& norm_mean,
                                 const c10::optional<at::Tensor>& norm_invstd, const at::Tensor& mask,
                                 const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                                 const at::Tensor& bn_weight, const at::Tensor& mean, const at::Tensor& invstd) {
  return with_activation_type(x, [&](auto type) {
    return backward_of<decltype(type)>(grad_out, x, shortcut, norm_weight, norm_bias, norm_mean, norm_invstd, mask,
                                       weight, bias, bn_weight, mean, invstd);
  });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "FReLU training forward (CPU, fp32 or bf16, channels_last), with the BN before it optional");
  m.def("inference", &inference, "FReLU with its BN folded, for inference (CPU, fp32 or bf16, channels_last)");
  m.def("backward", &backward, "FReLU training backward (CPU, fp32 or bf16, channels_last), with the BN before it optional");
}
