// GCN sparse kernels on CPU, compiled once per instruction set (common/cpu_dispatch.h):
// everything here is in namespace pynotes::CPU_CAPABILITY.
//
// Threads own contiguous ranges of rows of equal cost (entries + rows), not equal row counts,
// so a power-law graph's hub rows do not pile onto one thread. Within a row the features are
// taken in blocks of up to kBlockVecs SIMD vectors held in registers while the row's entries
// stream past; the source rows x[col[e]] are random reads, so they are prefetched a few
// entries ahead. float16 and bfloat16 features are widened to float as they are read and
// summed in float (common/cpu_vec.h).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>

#include "common/cpu_vec.h"
#include "gcn/gcn_kernels.h"

namespace pynotes {
namespace CPU_CAPABILITY {
namespace {

constexpr int kBlockVecs = 4;
constexpr int64_t kPrefetchAhead = 16;   // entries
constexpr int64_t kMinParallelWork = 1 << 15;  // (entries + rows) * features
// Below this size x stays in the L2 cache, where prefetching only costs instructions.
constexpr int64_t kPrefetchMinBytes = int64_t(4) << 20;

// Calls fn(row_begin, row_end) on one range of rows per thread, of about equal cost.
template <typename Fn>
void for_balanced_rows(const CsrMatrix& a, int64_t features, const Fn& fn) {
  const int64_t rows = a.rows, total = a.rowptr[rows] + rows;
  const int64_t tasks = total * features < kMinParallelWork ? 1 : at::get_num_threads();
  // First row whose cost prefix rowptr[r] + r reaches t / tasks of the total.
  const auto boundary = [&](int64_t t) {
    const int64_t target = total / tasks * t + total % tasks * t / tasks;
    int64_t lo = 0, hi = rows;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (a.rowptr[mid] + mid < target) lo = mid + 1; else hi = mid;
    }
    return lo;
  };
  if (tasks == 1) return fn(int64_t(0), rows);
  at::parallel_for(0, tasks, 1, [&](int64_t t_begin, int64_t t_end) {
    for (int64_t t = t_begin; t < t_end; ++t) {
      const int64_t begin = boundary(t), end = t + 1 == tasks ? rows : boundary(t + 1);
      if (begin < end) fn(begin, end);
    }
  });
}

// The CSR of features of type T: values (weight, scale) in T's opmath type A.
template <typename T, typename I>
struct Csr {
  using A = opmath_t<T>;
  const int64_t* rowptr;
  const I* col;
  const A* weight;
  const A* scale;

  explicit Csr(const CsrMatrix& a)
      : rowptr(a.rowptr), col(static_cast<const I*>(a.col)),
        weight(static_cast<const A*>(a.weight)), scale(static_cast<const A*>(a.scale)) {}

  // The entry's value without the row's scale: weight[e] * scale[col[e]].
  A factor(int64_t e, int64_t c) const {
    A f = weight ? weight[e] : A(1);
    return scale ? f * scale[c] : f;
  }
};

inline void prefetch_row(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t offset = 0; offset < bytes; offset += 64) __builtin_prefetch(c + offset);
}

// out[i, j : j + width] for one row i; width <= kVecs vectors, only the last may be partial.
// (Splitting a row's entries over independent accumulator chains measured slower here.)
template <int kVecs, typename T, typename I>
void spmm_row_block(const Csr<T, I>& a, int64_t i, const T* x, int64_t features, int64_t j,
                    int64_t width, bool prefetch, T* out) {
  using V = OpVec<T>;
  using A = opmath_t<T>;
  constexpr int64_t kLanes = V::size();
  const int64_t last = width - (kVecs - 1) * kLanes;  // elements in the last vector
  V acc[kVecs];
  for (int v = 0; v < kVecs; ++v) acc[v] = V(A(0));
  const int64_t begin = a.rowptr[i], end = a.rowptr[i + 1];
  for (int64_t e = begin; e < end; ++e) {
    if (prefetch && e + kPrefetchAhead < end) {
      prefetch_row(x + int64_t(a.col[e + kPrefetchAhead]) * features + j, width * sizeof(T));
    }
    const int64_t c = a.col[e];
    const V f(a.factor(e, c));
    const T* src = x + c * features + j;
    for (int v = 0; v < kVecs - 1; ++v) {
      acc[v] = at::vec::fmadd(load_op(src + v * kLanes), f, acc[v]);
    }
    const T* tail = src + (kVecs - 1) * kLanes;
    acc[kVecs - 1] = at::vec::fmadd(load_op(tail, last), f, acc[kVecs - 1]);
  }
  T* dst = out + i * features + j;
  const V s(a.scale ? a.scale[i] : A(1));
  for (int v = 0; v < kVecs - 1; ++v) store_op(acc[v] * s, dst + v * kLanes);
  store_op(acc[kVecs - 1] * s, dst + (kVecs - 1) * kLanes, last);
}

template <typename T, typename I>
void spmm(const CsrSpmm& args) {
  using V = OpVec<T>;
  constexpr int64_t kBlock = kBlockVecs * V::size();
  const Csr<T, I> a(args.a);
  const int64_t F = args.features;
  const T* x = static_cast<const T*>(args.x);
  T* out = static_cast<T*>(args.out);
  const bool prefetch = args.a.rows * F * int64_t(sizeof(T)) >= kPrefetchMinBytes;
  for_balanced_rows(args.a, F, [&](int64_t row_begin, int64_t row_end) {
    for (int64_t i = row_begin; i < row_end; ++i) {
      for (int64_t j = 0; j < F; j += kBlock) {
        const int64_t width = std::min(kBlock, F - j);
        switch ((width + V::size() - 1) / V::size()) {
          case 1: spmm_row_block<1>(a, i, x, F, j, width, prefetch, out); break;
          case 2: spmm_row_block<2>(a, i, x, F, j, width, prefetch, out); break;
          case 3: spmm_row_block<3>(a, i, x, F, j, width, prefetch, out); break;
          default: spmm_row_block<4>(a, i, x, F, j, width, prefetch, out); break;
        }
      }
    }
  });
}

template <typename T>
opmath_t<T> dot(const T* a, const T* b, int64_t n) {
  using V = OpVec<T>;
  using A = opmath_t<T>;
  V acc0(A(0)), acc1(A(0));
  int64_t k = 0;
  for (; k + 2 * V::size() <= n; k += 2 * V::size()) {
    acc0 = at::vec::fmadd(load_op(a + k), load_op(b + k), acc0);
    acc1 = at::vec::fmadd(load_op(a + k + V::size()), load_op(b + k + V::size()), acc1);
  }
  for (; k < n; k += V::size()) {
    const int64_t m = std::min<int64_t>(V::size(), n - k);
    acc0 = at::vec::fmadd(load_op(a + k, m), load_op(b + k, m), acc0);
  }
  // Summed lane by lane (vec_reduce_all trips GCC's -Wuninitialized in its AVX512 header).
  A lanes[V::size()];
  (acc0 + acc1).store(lanes);
  A sum = A(0);
  for (int64_t l = 0; l < V::size(); ++l) sum += lanes[l];
  return sum;
}

template <typename T, typename I>
void sddmm(const CsrSddmm& args) {
  using A = opmath_t<T>;
  const Csr<T, I> a(args.a);
  const int64_t F = args.features;
  const T* g = static_cast<const T*>(args.grad_out);
  const T* x = static_cast<const T*>(args.x);
  A* out = static_cast<A*>(args.out);
  for_balanced_rows(args.a, F, [&](int64_t row_begin, int64_t row_end) {
    for (int64_t i = row_begin; i < row_end; ++i) {
      const A row_scale = a.scale ? a.scale[i] : A(1);
      const int64_t begin = a.rowptr[i], end = a.rowptr[i + 1];
      for (int64_t e = begin; e < end; ++e) {
        if (e + kPrefetchAhead < end) {
          prefetch_row(x + int64_t(a.col[e + kPrefetchAhead]) * F, F * sizeof(T));
        }
        const int64_t c = a.col[e];
        const A d = dot(g + i * F, x + c * F, F);
        out[e] = a.scale ? d * row_scale * a.scale[c] : d;
      }
    }
  });
}

template <typename Fn>
void dispatch(c10::ScalarType dtype, c10::ScalarType index_dtype, const Fn& fn) {
  TORCH_CHECK(index_dtype == at::kInt || index_dtype == at::kLong,
              "gcn CPU kernels: unsupported index dtype ", index_dtype);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "gcn_cpu", [&] {
    if (index_dtype == at::kInt) fn(scalar_t(), int32_t()); else fn(scalar_t(), int64_t());
  });
}

}  // namespace

void csr_spmm_cpu_kernel(const CsrSpmm& args) {
  dispatch(args.dtype, args.a.index_dtype, [&](auto t, auto i) {
    spmm<decltype(t), decltype(i)>(args);
  });
}

void csr_sddmm_cpu_kernel(const CsrSddmm& args) {
  dispatch(args.dtype, args.a.index_dtype, [&](auto t, auto i) {
    sddmm<decltype(t), decltype(i)>(args);
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace pynotes
