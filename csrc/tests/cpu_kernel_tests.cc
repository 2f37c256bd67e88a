// Unit tests of every CPU kernel variant this machine runs, independent of Python and XLA.
//
// For each supported variant (cpu/isa.h; or only those named on the command line): the float
// matmul in its three weight layouts (float32 and bfloat16), SiLU-and-multiply, paged
// attention (GQA, several pages, a sliding window, a soft cap) and the quantized matmul
// (Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K), each against a float64 reference. Prints one line per check and exits
// non-zero if any fails. tests/test_cpu_isa.py runs it natively and, cross-compiled for
// AArch64, under qemu-aarch64 (the NEON variants).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cpu/isa.h"
#include "common/numeric.h"

using namespace surge;

namespace {

int failures = 0;

void report(const std::string& isa, const std::string& what, double worst, double allowed) {
  const bool ok = worst <= allowed;
  if (!ok) ++failures;
  std::printf("%s %-12s %-40s worst %.3g (allowed %.3g)\n", ok ? "PASS" : "FAIL", isa.c_str(), what.c_str(), worst,
              allowed);
}

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(gen);
  return v;
}

// max over outputs of |y - ref| / bound, bound = sum |x w| (the float32 accumulation bound).
double worst_ratio(const std::vector<float>& y, const std::vector<double>& ref, const std::vector<double>& bound) {
  double worst = 0.0;
  for (size_t i = 0; i < y.size(); ++i) {
    if (!std::isfinite(y[i])) return INFINITY;
    worst = std::max(worst, std::abs(y[i] - ref[i]) / (bound[i] + 1e-30));
  }
  return worst;
}

void test_matmul(const std::string& isa, int64_t m, int64_t k, int64_t n, bool bf16, matmul::WeightLayout layout) {
  auto x = randn(m * k, 1 + m * 7 + k);
  auto w = randn(k * n, 2 + n);  // logical [K, N]
  std::vector<uint16_t> w16(k * n);
  if (bf16)
    for (int64_t i = 0; i < k * n; ++i) {
      w16[i] = cpu::f32_to_bf16(w[i]);
      w[i] = cpu::bf16_to_f32(w16[i]);
    }
  // The stored form: [K, N], [N, K] or panels of kPanelColumns.
  std::vector<float> stored32(k * n);
  std::vector<uint16_t> stored16(k * n);
  auto put = [&](int64_t at, int64_t kk, int64_t nn) {
    stored32[at] = w[kk * n + nn];
    if (bf16) stored16[at] = w16[kk * n + nn];
  };
  for (int64_t kk = 0; kk < k; ++kk)
    for (int64_t nn = 0; nn < n; ++nn) {
      if (layout == matmul::WeightLayout::kKN) {
        put(kk * n + nn, kk, nn);
      } else if (layout == matmul::WeightLayout::kNK) {
        put(nn * k + kk, kk, nn);
      } else {
        const int64_t panel = nn / matmul::kPanelColumns;
        const int64_t width = std::min(matmul::kPanelColumns, n - panel * matmul::kPanelColumns);
        put(panel * matmul::kPanelColumns * k + kk * width + nn % matmul::kPanelColumns, kk, nn);
      }
    }
  std::vector<float> y(m * n, NAN);
  matmul::MatmulProblem p;
  p.m = m, p.k = k, p.n = n, p.x = x.data(), p.y = y.data(), p.layout = layout;
  p.w = bf16 ? static_cast<const void*>(stored16.data()) : stored32.data();
  p.w_type = bf16 ? matmul::WeightType::kBFloat16 : matmul::WeightType::kFloat32;
  cpu::kernels().matmul(p);
  std::vector<double> ref(m * n, 0.0), bound(m * n, 0.0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t kk = 0; kk < k; ++kk)
      for (int64_t j = 0; j < n; ++j) {
        ref[i * n + j] += double(x[i * k + kk]) * w[kk * n + j];
        bound[i * n + j] += std::abs(double(x[i * k + kk]) * w[kk * n + j]);
      }
  const char* names[] = {"kn", "nk", "panels"};
  char what[96];
  std::snprintf(what, sizeof what, "matmul %s %s M%lld K%lld N%lld", names[int(layout)], bf16 ? "bf16" : "f32",
                (long long)m, (long long)k, (long long)n);
  report(isa, what, worst_ratio(y, ref, bound), 2e-6);
}

void test_silu(const std::string& isa) {
  const int64_t rows = 5, width = 77;
  auto x = randn(rows * 2 * width, 11, 6.0f);
  std::vector<float> y(rows * width);
  cpu::kernels().silu_mul_rows(x.data(), 0, rows, width, y.data());
  double worst = 0.0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < width; ++c) {
      const double g = x[r * 2 * width + c], u = x[r * 2 * width + width + c];
      const double want = g / (1.0 + std::exp(-g)) * u;
      worst = std::max(worst, std::abs(y[r * width + c] - want) / (std::abs(want) + 1e-6));
    }
  report(isa, "silu_mul 5x77", worst, 2e-6);
}

// Two sequences over a paged cache (page_size 4): one of 3 new tokens after 6 cached, one
// decode token after 8; 4 query heads over 2 KV heads, head_dim 40 (not whole vectors).
void test_attention(const std::string& isa, int64_t window, float soft_cap, int64_t chunk = 0) {
  const int64_t H = 4, KV = 2, hd = 40, ps = 4, num_pages = 8, S = 2, P = 3, T = 5;
  const int32_t cu[S + 1] = {0, 3, 4};  // token 4 is padding
  const int32_t kv_lens[S] = {9, 9};
  const int32_t positions[T] = {6, 7, 8, 8, 0};
  const int32_t table[S * P] = {3, 1, 5, 2, 7, 4};
  int32_t slots[T];
  for (int t = 0; t < 4; ++t) {
    const int s = t < 3 ? 0 : 1;
    slots[t] = table[s * P + positions[t] / ps] * ps + positions[t] % ps;
  }
  slots[4] = 0;  // the null page
  auto q = randn(T * H * hd, 21), k = randn(T * KV * hd, 22), v = randn(T * KV * hd, 23);
  auto k_cache = randn(num_pages * KV * ps * hd, 24), v_cache = randn(num_pages * KV * ps * hd, 25);
  std::vector<float> out(T * H * hd, NAN);
  attention::PagedAttentionProblem p;
  p.num_tokens = T, p.num_heads = H, p.num_kv_heads = KV, p.head_dim = hd, p.num_pages = num_pages;
  p.page_size = ps, p.max_num_seqs = S, p.pages_per_seq = P;
  p.q = q.data(), p.k = k.data(), p.v = v.data(), p.k_cache = k_cache.data(), p.v_cache = v_cache.data();
  p.out = out.data(), p.slot_mapping = slots, p.positions = positions, p.cu_q_lens = cu, p.page_table = table;
  p.kv_lens = kv_lens, p.num_seqs = S, p.scale = 1.0f / std::sqrt(float(hd)), p.sliding_window = window;
  p.soft_cap = soft_cap, p.attention_chunk = chunk;
  if (!attention::validate_problem(p).empty()) {
    report(isa, "attention problem invalid: " + attention::validate_problem(p), 1, 0);
    return;
  }
  attention::write_new_kv(p);
  attention::attend(p);
  double worst = 0.0;
  for (int64_t s = 0; s < S; ++s)
    for (int64_t t = cu[s]; t < cu[s + 1]; ++t)
      for (int64_t h = 0; h < H; ++h) {
        const int64_t g = h / (H / KV);
        std::vector<double> scores;
        std::vector<const float*> values;
        for (int64_t key = 0; key <= positions[t]; ++key) {
          if (window > 0 && key <= positions[t] - window) continue;
          if (chunk > 0 && key < positions[t] / chunk * chunk) continue;
          const int64_t row = ((table[s * P + key / ps] * KV + g) * ps + key % ps) * hd;
          double dot = 0.0;
          for (int64_t d = 0; d < hd; ++d) dot += double(q[(t * H + h) * hd + d]) * k_cache[row + d];
          dot *= p.scale;
          if (soft_cap > 0) dot = soft_cap * std::tanh(dot / soft_cap);
          scores.push_back(dot);
          values.push_back(&v_cache[row]);
        }
        double top = -INFINITY, total = 0.0;
        for (double sc : scores) top = std::max(top, sc);
        for (double& sc : scores) total += (sc = std::exp(sc - top));
        for (int64_t d = 0; d < hd; ++d) {
          double want = 0.0;
          for (size_t i = 0; i < scores.size(); ++i) want += scores[i] / total * values[i][d];
          const double got = out[(t * H + h) * hd + d];
          worst = std::max(worst, std::isfinite(got) ? std::abs(got - want) : INFINITY);
        }
      }
  for (int64_t d = 0; d < H * hd; ++d) worst = std::max(worst, double(std::abs(out[4 * H * hd + d])));  // padding: 0
  char what[96];
  std::snprintf(what, sizeof what, "attention window %lld cap %g chunk %lld", (long long)window, soft_cap,
                (long long)chunk);
  report(isa, what, worst, 2e-5);
}

uint16_t to_f16(float f) {  // test-side encoder (normal range only, round to nearest)
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  const uint32_t sign = (bits >> 16) & 0x8000u;
  const int32_t exponent = int32_t((bits >> 23) & 0xff) - 127 + 15;
  uint32_t mantissa = bits & 0x7fffffu;
  if (exponent <= 0) return uint16_t(sign);
  uint32_t h = sign | (uint32_t(exponent) << 10) | (mantissa >> 13);
  if (mantissa & 0x1000u) ++h;
  return uint16_t(h);
}

// Test-side decoding of one K-quant super-block (formats: cpu/kernels.h) into 256 doubles.
void dequantize_kquant(cpu::QuantType type, const uint8_t* block, double* out) {
  auto half = [&](int at) { return double(cpu::f16_to_f32(uint16_t(block[at] | block[at + 1] << 8))); };
  if (type == cpu::QuantType::kQ6_K) {
    const double d = half(208);
    for (int i = 0; i < 256; ++i) {
      const int h = i / 128, c = (i % 128) / 32, j = i % 32;
      const int low = (block[64 * h + 32 * (c % 2) + j] >> (4 * (c / 2))) & 15;
      const int high = (block[128 + 32 * h + j] >> (2 * c)) & 3;
      out[i] = d * int8_t(block[192 + i / 16]) * ((low | high << 4) - 32);
    }
    return;
  }
  const double d = half(0), dmin = half(2);
  const uint8_t* s = block + 4;
  const bool five = type == cpu::QuantType::kQ5_K;
  const uint8_t* qs = block + (five ? 48 : 16);
  for (int i = 0; i < 256; ++i) {
    const int j = i / 32;
    const int sc = j < 4 ? s[j] & 63 : (s[j + 4] & 15) | (s[j - 4] >> 6) << 4;
    const int mn = j < 4 ? s[j + 4] & 63 : (s[j + 4] >> 4) | (s[j] >> 6) << 4;
    int q = (qs[32 * (j / 2) + i % 32] >> (4 * (j % 2))) & 15;
    if (five) q |= ((block[16 + i % 32] >> j) & 1) << 4;
    out[i] = d * sc * q - dmin * mn;
  }
}

// Random blocks of `type` (any bytes; scales drawn small and finite) and their float64 weights [N, K].
void random_quant_weights(cpu::QuantType type, int64_t k, int64_t n, std::mt19937& gen, std::vector<uint8_t>& w,
                          std::vector<double>& wd) {
  const int64_t per = cpu::quant_block_weights(type), nb = k / per, bytes = cpu::quant_block_bytes(type);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> scale(0.001f, 0.05f);
  w.assign(n * nb * bytes, 0);
  wd.assign(n * k, 0.0);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t b = 0; b < nb; ++b) {
      uint8_t* block = &w[(r * nb + b) * bytes];
      for (int64_t i = 0; i < bytes; ++i) block[i] = uint8_t(byte(gen));
      const uint16_t d16 = to_f16(scale(gen)), m16 = to_f16(-scale(gen) * 8);
      double* out = &wd[r * k + b * per];
      if (per == 256) {
        const uint16_t dk = to_f16(scale(gen) / 16), dmin = to_f16(scale(gen) / 16);
        std::memcpy(block + (type == cpu::QuantType::kQ6_K ? 208 : 0), &dk, 2);
        if (type != cpu::QuantType::kQ6_K) std::memcpy(block + 2, &dmin, 2);
        dequantize_kquant(type, block, out);
        continue;
      }
      std::memcpy(block, &d16, 2);
      const double d = cpu::f16_to_f32(d16), mn = cpu::f16_to_f32(m16);
      int offset = 2;
      if (type == cpu::QuantType::kQ4_1) std::memcpy(block + 2, &m16, 2), offset = 4;
      for (int j = 0; j < 32; ++j) {
        if (type == cpu::QuantType::kQ8_0) {
          out[j] = d * int8_t(block[2 + j]);
        } else {
          const uint8_t packed = block[offset + (j % 16)];
          const int q = j < 16 ? packed & 0x0f : packed >> 4;
          out[j] = type == cpu::QuantType::kQ4_0 ? d * (q - 8) : d * q + mn;
        }
      }
    }
}

void test_quant(const std::string& isa, cpu::QuantType type, int64_t m, int64_t k, int64_t n) {
  const int64_t nb = k / 32;
  std::mt19937 gen(31 + m + n);
  std::vector<uint8_t> w;
  std::vector<double> wd;  // dequantized, [N, K]
  random_quant_weights(type, k, n, gen, w, wd);
  auto x = randn(m * k, 41 + m);
  // The activations as the kernel quantizes them (checked exactly against this reference).
  std::vector<int8_t> xq(m * k), xq_kernel(m * k);
  std::vector<float> xd(m * nb), xs(m * nb), xd_kernel(m * nb), xs_kernel(m * nb);
  for (int64_t r = 0; r < m; ++r)
    for (int64_t b = 0; b < nb; ++b) {
      float amax = 0.0f;
      for (int j = 0; j < 32; ++j) amax = std::max(amax, std::abs(x[r * k + b * 32 + j]));
      const float d = amax / 127.0f, inv = d != 0.0f ? 1.0f / d : 0.0f;
      int sum = 0;
      for (int j = 0; j < 32; ++j) sum += xq[r * k + b * 32 + j] = int8_t(std::nearbyint(x[r * k + b * 32 + j] * inv));
      xd[r * nb + b] = d;
      xs[r * nb + b] = d * float(sum);
    }
  for (int64_t r = 0; r < m; ++r)
    cpu::kernels().quantize_row(&x[r * k], k, &xq_kernel[r * k], &xd_kernel[r * nb], &xs_kernel[r * nb]);
  const bool same_q = xq == xq_kernel && xd == xd_kernel && xs == xs_kernel;
  std::vector<float> y(m * n, NAN);
  cpu::QuantMatmulProblem p;
  p.m = m, p.k = k, p.n = n, p.x = x.data(), p.w = w.data(), p.type = type, p.y = y.data();
  cpu::kernels().quant_matmul(p);
  std::vector<double> ref(m * n, 0.0), bound(m * n, 0.0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t kk = 0; kk < k; ++kk) {
        const double xv = double(xd[i * nb + kk / 32]) * xq[i * k + kk];
        ref[i * n + j] += xv * wd[j * k + kk];
        bound[i * n + j] += std::abs(xv * wd[j * k + kk]);
      }
  const char* names[] = {"", "", "q4_0", "q4_1", "", "", "", "", "q8_0", "", "", "", "q4_k", "q5_k", "q6_k"};
  char what[96];
  std::snprintf(what, sizeof what, "quant matmul %s M%lld K%lld N%lld", names[int(type)], (long long)m, (long long)k,
                (long long)n);
  report(isa, what, same_q ? worst_ratio(y, ref, bound) : INFINITY, 1e-5);
  if (!same_q) std::printf("     (activation quantization differs from the reference)\n");
}

void test_variant(const std::string& isa) {
  cpu::set_isa(isa);
  if (cpu::kernels().name != isa) {
    report(isa, "set_isa", 1, 0);
    return;
  }
  for (auto layout : {matmul::WeightLayout::kKN, matmul::WeightLayout::kNK, matmul::WeightLayout::kPanels})
    for (bool bf16 : {false, true})
      for (auto [m, k, n] : {std::array<int64_t, 3>{1, 64, 48}, {3, 70, 96}, {7, 33, 112}, {33, 100, 160},
                             {1, 576, 960}}) {
        if (layout != matmul::WeightLayout::kPanels && n % 16 == 0) n += 5;  // columns that are no whole vector
        test_matmul(isa, m, k, n, bf16, layout);
      }
  test_silu(isa);
  test_attention(isa, 0, 0.0f);
  test_attention(isa, 5, 0.0f);
  test_attention(isa, 0, 30.0f);
  test_attention(isa, 0, 0.0f, 3);  // chunks shorter than a page (4)
  test_attention(isa, 5, 2.0f, 8);  // a window inside chunks of two pages, capped
  for (auto type : {cpu::QuantType::kQ8_0, cpu::QuantType::kQ4_0, cpu::QuantType::kQ4_1})
    for (auto [m, k, n] : {std::array<int64_t, 3>{1, 64, 7}, {3, 576, 40}, {6, 160, 33}, {33, 96, 21}})
      test_quant(isa, type, m, k, n);
  for (auto type : {cpu::QuantType::kQ4_K, cpu::QuantType::kQ5_K, cpu::QuantType::kQ6_K})
    for (auto [m, k, n] : {std::array<int64_t, 3>{1, 256, 7}, {3, 768, 40}, {6, 512, 33}})
      test_quant(isa, type, m, k, n);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> wanted(argv + 1, argv + argc);
  std::printf("DEFAULT %s\n", cpu::kernels().name);  // the variant picked at start-up, before any set_isa
  int tested = 0;
  for (const auto& info : cpu::isas()) {
    const bool named = wanted.empty() || std::find(wanted.begin(), wanted.end(), info.name) != wanted.end();
    if (!named) continue;
    if (!info.supported) {
      std::printf("SKIP %-12s needs %s\n", info.name, info.needs);
      if (!wanted.empty()) ++failures;  // a variant asked for by name must run
      continue;
    }
    test_variant(info.name);
    ++tested;
  }
  std::printf("%d variant(s) tested, %d failure(s)\n", tested, failures);
  return failures == 0 && tested > 0 ? 0 : 1;
}
